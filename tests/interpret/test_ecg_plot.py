"""The clinical page: exact paper scale in the saved PNG, grid, panel placement, overlay."""

import numpy as np
import pytest
from PIL import Image

from ecgclip_jax.data.leads import LEAD_INDEX
from ecgclip_jax.interpret import curves, ecg_plot


def _line(fig, gid):
  (line,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == gid]
  return line


@pytest.mark.parametrize("sample_rate, dpi, pixels", [(500, 254, (2700, 1840)),
                                                      (100, 127, (1350, 920))])
def test_png_size_follows_the_millimetre_layout(tmp_path, sample_rate, dpi, pixels):
  # 10 s: 10 mm calibration + 4 x 62.5 mm columns + 2 x 5 mm margins = 270 mm wide;
  # 4 rows x 40 mm + 2 x 5 mm margins + 14 mm title = 184 mm high.
  ecg = np.random.default_rng(0).normal(0, 0.3, (10 * sample_rate, 12))
  path = tmp_path / "page.png"
  curves.save_png(ecg_plot.plot_ecg(ecg, sample_rate, saliency=ecg, title="x"), tmp_path,
                  path.name, dpi)
  assert Image.open(path).size == pixels == ecg_plot.Layout().pixels(dpi)


def test_grid_axes_and_traces_are_in_paper_millimetres():
  rate = 250  # any rate: the time axis is seconds x 25 mm/s
  ecg = np.random.default_rng(1).normal(0, 0.5, (10 * rate, 12))
  fig = ecg_plot.plot_ecg(ecg, rate)
  ax = fig.axes[0]
  box = ax.get_position()
  w_mm, h_mm = (s * 25.4 for s in fig.get_size_inches())
  assert (w_mm, h_mm) == pytest.approx((270, 184))
  assert (box.x0 * w_mm, box.y0 * h_mm, box.width * w_mm, box.height * h_mm) == pytest.approx(
      (5, 5, 260, 160))
  assert ax.get_xlim() == (0, 260) and ax.get_ylim() == (0, 160)

  t = np.arange(10 * rate) / rate
  v2 = _line(fig, "V2")  # third column (5-7.5 s), second row (baseline 160 - 1.5 x 40 mm)
  window = (t >= 5) & (t < 7.5)
  np.testing.assert_allclose(v2.get_xdata(), 10 + 25 * t[window])
  np.testing.assert_allclose(v2.get_ydata(), 100 + 10 * ecg[window, LEAD_INDEX["V2"]])
  strip = _line(fig, "rhythm II")  # the whole 10 s of lead II, bottom row
  np.testing.assert_allclose(strip.get_xdata(), 10 + 25 * t)
  np.testing.assert_allclose(strip.get_ydata(), 20 + 10 * ecg[:, LEAD_INDEX["II"]])
  layout = {ln.get_gid() for ln in ax.lines} - {None, "calibration"}
  assert layout == {*(lead for column in ecg_plot.COLUMNS for lead in column), "rhythm II"}

  grids = {c.get_gid(): c.get_segments() for c in ax.collections}
  minor_x = sorted({s[0][0] for s in grids["grid_minor"] if s[0][0] == s[1][0]})
  major_y = sorted({s[0][1] for s in grids["grid_major"] if s[0][1] == s[1][1]})
  assert minor_x == list(range(0, 261)) and major_y == list(range(0, 161, 5))
  assert "saliency" not in grids


def test_saved_image_has_25_mm_per_s_and_10_mm_per_mv(tmp_path):
  """A 1 mV pulse from 4.0 to 4.4 s in lead II, measured in the rhythm strip's pixels."""
  ecg = np.zeros((1000, 12))
  ecg[400:440, LEAD_INDEX["II"]] = 1.0
  path = tmp_path / "pulse.png"
  curves.save_png(ecg_plot.plot_ecg(ecg, 100, calibration=False), tmp_path, path.name,
                  ecg_plot.DPI)  # 10 px per mm
  dark = np.asarray(Image.open(path).convert("RGB")).max(axis=2) < 100
  row = lambda mm: 1840 - round((5 + mm) * 10)  # grid starts 5 mm from the bottom edge
  col = lambda mm: round((5 + mm) * 10)
  baseline, top = row(20), row(30)  # rhythm strip baseline 20 mm; +1 mV = +10 mm
  band = dark[top - 30:baseline + 30]
  level = lambda x_px: np.flatnonzero(band[:, x_px]).mean() + top - 30
  assert level(col(10 + 25 * 4.2)) == pytest.approx(top, abs=2)
  assert level(col(10 + 25 * 3.0)) == pytest.approx(baseline, abs=2)
  high = np.flatnonzero(band[25:36].any(axis=0))  # columns dark at the pulse top
  assert high.min() == pytest.approx(col(10 + 25 * 4.0), abs=3)
  assert high.max() == pytest.approx(col(10 + 25 * 4.4), abs=3)


def test_saliency_overlay_colours_and_scale():
  ecg = np.zeros((1000, 12))
  saliency = np.zeros((1000, 12))
  saliency[510:520, LEAD_INDEX["V1"]] = 4.0  # raises the score
  saliency[200:210, LEAD_INDEX["I"]] = -4.0  # lowers it
  fig = ecg_plot.plot_ecg(ecg, 100, saliency=saliency, title="V1 finding: score +0.50")
  bands = [c for c in fig.axes[0].collections if c.get_gid() == "saliency"]
  assert len(bands) == 13  # 12 panels and the rhythm strip
  rgba = np.concatenate([band.get_colors() for band in bands])
  x = np.concatenate([[seg[:, 0].mean() for seg in band.get_segments()] for band in bands])
  assert (rgba[:, 3] == 0).sum() == len(rgba) - 2 * (9 + 2)  # per run: 9 inside, 2 edges
  strong = rgba[:, 3] == 1
  red, blue = strong & (rgba[:, 0] > rgba[:, 2]), strong & (rgba[:, 2] > rgba[:, 0])
  assert red.sum() == blue.sum() == 9 and (red | blue).sum() == strong.sum()
  assert ((x[red] > 10 + 25 * 5.1) & (x[red] < 10 + 25 * 5.2)).all()  # V1 at 5.1-5.2 s
  assert ((x[blue] > 10 + 25 * 2.0) & (x[blue] < 10 + 25 * 2.1)).all()  # I at 2.0-2.1 s
  assert len(fig.axes) == 2  # the grid and the colour bar
  assert any(t.get_text() == "V1 finding: score +0.50" for t in fig.texts)
  with pytest.raises(ValueError, match="does not match"):
    ecg_plot.plot_ecg(ecg, 100, saliency=saliency[:500])


def test_a_short_record_fills_four_even_columns():
  fig = ecg_plot.plot_ecg(np.zeros((400, 12)), 100)  # 4 s: 1 s columns
  assert fig.axes[0].get_xlim() == (0, 10 + 4 * 25)
  np.testing.assert_allclose(_line(fig, "V4").get_xdata()[[0, -1]], [10 + 75, 10 + 25 * 3.99])
