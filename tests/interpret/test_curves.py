"""PR and ROC small multiples: one panel per task with both classes, readable PNGs."""

import numpy as np
from matplotlib import image

from ecgclip_jax.interpret import curves


def _labels_scores(n=80, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.random((n, 3)) < 0.3
  labels[:, 2] = False  # no positive: no curve
  return labels, rng.normal(size=(3, n, 3)) + labels  # 3 training seeds


def test_writes_a_pr_and_a_roc_png_with_a_panel_per_scorable_task(tmp_path):
  labels, scores = _labels_scores()
  written = curves.write_curves(str(tmp_path), "linear_probe_10pct", labels, scores,
                                ["afib", "lbbb", "rare"], title="run, linear_probe 10%")
  assert list(written) == ["linear_probe_10pct_pr.png", "linear_probe_10pct_roc.png"]
  assert all("1 task(s) without both classes left out" in c for c in written.values())
  for name in written:
    pixels = image.imread(tmp_path / name)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_unknown_labels_are_left_out_of_a_task(tmp_path):
  labels, scores = _labels_scores()
  known = np.ones_like(labels)
  known[labels[:, 0], 0] = False  # only negatives known: no curve for task 0
  written = curves.write_curves(str(tmp_path), "zs", labels[:, :2], scores[0, :, :2],
                                ["afib", "lbbb"], known=known[:, :2], title="zero-shot")
  assert all("1 task(s)" in c for c in written.values())
  assert curves.write_curves(str(tmp_path / "none"), "zs", labels[:, 2:], scores[0, :, 2:],
                             ["rare"], title="zero-shot") == {}
  assert not (tmp_path / "none").exists()


def test_panel_grid_stays_near_square():
  for count, cols in ((1, 1), (5, 4), (13, 4), (70, 9)):
    fig, axes = curves.panel_grid(count, "t")
    assert len(axes) == count and all(ax.get_visible() for ax in axes)
    assert axes[0].get_subplotspec().get_gridspec().ncols == cols
