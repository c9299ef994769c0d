"""PR and ROC curves of every task, one small-multiples PNG per curve kind, so each PRAUC and
AUROC in a results table can be read against the curve it summarizes.

Only matplotlib's object API is used (no pyplot state): safe in any thread, never opens a
window. `panel_grid` is shared with the embedding maps, `save_png` with every figure.
"""

from __future__ import annotations

import io
import math

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

PANEL_INCHES = (3.0, 2.6)
DPI = 100


def panel_grid(count: int, title: str) -> tuple[Figure, list]:
  """A figure of `count` panels in a near-square grid, at least 4 wide when there are that
  many, so 5 tasks and 70 tasks both stay legible."""
  cols = min(count, max(4, math.ceil(math.sqrt(count))))
  rows = math.ceil(count / cols)
  fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows + 0.5),
               layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes[count:]:
    ax.set_visible(False)
  fig.suptitle(title)
  return fig, list(axes[:count])


def save_png(fig: Figure, folder: str, name: str, dpi: float = DPI) -> str:
  """Writes `folder/name` (a local or cloud path, like the workdir) and returns `name`. No
  tight bounding box: the 12-lead page (ecg_plot) must keep its millimetre scale."""
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=dpi)
  epath.Path(folder).mkdir(parents=True, exist_ok=True)
  (epath.Path(folder) / name).write_bytes(png.getvalue())
  return name


def _pr_panel(ax, y: np.ndarray, scores: np.ndarray) -> str:
  for s in scores:
    precision, recall, _ = skm.precision_recall_curve(y, s)
    ax.plot(recall, precision, drawstyle="steps-post", color="C0", lw=1,
            alpha=1 if len(scores) == 1 else 0.6)
  ax.axhline(y.mean(), color="grey", ls="--", lw=0.8)  # a random ranking's precision
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
  return f"PRAUC {np.mean([skm.average_precision_score(y, s) for s in scores]):.3f}"


def _roc_panel(ax, y: np.ndarray, scores: np.ndarray) -> str:
  for s in scores:
    fpr, tpr, _ = skm.roc_curve(y, s)
    ax.plot(fpr, tpr, color="C0", lw=1, alpha=1 if len(scores) == 1 else 0.6)
  ax.plot((0, 1), (0, 1), color="grey", ls="--", lw=0.8)
  ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
         ylim=(0, 1.02))
  return f"AUROC {np.mean([skm.roc_auc_score(y, s) for s in scores]):.3f}"


KINDS = {"pr": ("precision-recall", _pr_panel), "roc": ("ROC", _roc_panel)}


def write_curves(folder: str, stem: str, labels: np.ndarray, scores: np.ndarray,
                 task_names: list[str], *, title: str,
                 known: np.ndarray | None = None) -> dict[str, str]:
  """`{stem}_pr.png` and `{stem}_roc.png` in `folder`: one panel per task with both classes
  among its known examples; scores [N, T], or [S, N, T] for S training seeds (one line
  each; the panel's metric is their mean, as in the tables). Returns file -> caption."""
  labels = np.asarray(labels, bool)
  scores = np.asarray(scores, np.float64).reshape((-1, *labels.shape))
  known = np.ones_like(labels) if known is None else np.asarray(known, bool)
  tasks = [j for j in range(labels.shape[1])
           if 0 < labels[known[:, j], j].sum() < known[:, j].sum()]
  if not tasks:
    return {}
  left_out = len(task_names) - len(tasks)
  note = f", one line per seed ({len(scores)})" if len(scores) > 1 else ""
  note += f"; {left_out} task(s) without both classes left out" if left_out else ""
  written = {}
  for kind, (what, draw) in KINDS.items():
    fig, axes = panel_grid(len(tasks), f"{title}: {what} curves")
    for ax, j in zip(axes, tasks):
      rows = known[:, j]
      metric = draw(ax, labels[rows, j], scores[:, rows, j])
      ax.set_title(f"{task_names[j]}\n{metric}, {labels[rows, j].sum()}/{rows.sum()} pos.",
                   fontsize=8)
      ax.tick_params(labelsize=7)
      ax.xaxis.label.set_size(7)
      ax.yaxis.label.set_size(7)
    name = save_png(fig, folder, f"{stem}_{kind}.png")
    written[name] = f"{title}: {what} curves per task{note}"
  return written
