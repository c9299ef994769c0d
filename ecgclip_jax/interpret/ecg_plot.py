"""12-lead ECGs on the clinical paper layout, with an optional saliency overlay, as PNG.

Paper conventions hold exactly in the saved image: 25 mm/s, 10 mm/mV, a 1 mm / 5 mm grid.
The page is laid out in millimetres and the grid axes' data units are millimetres, so an
image saved at `dpi` has dpi / 25.4 pixels per mm (the default, 254 dpi: 10 px per mm).
Layout: 3 rows x 4 columns of consecutive 2.5 s windows (I aVR V1 V4 / II aVL V2 V5 /
III aVF V3 V6), then a lead II rhythm strip over the same 10 s; a 1 mV, 0.2 s calibration
pulse opens each row. Only matplotlib's object API is used (no pyplot state): safe in any
thread, never opens a window.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import matplotlib
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ecgclip_jax.data.leads import LEAD_INDEX, NUM_LEADS

MM_PER_S = 25.0
MM_PER_MV = 10.0
MM_PER_INCH = 25.4
DPI = 254  # 10 pixels per mm
COLUMNS = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
RHYTHM_LEAD = "II"
SALIENCY_CMAP = "RdBu_r"  # red: raises the score; blue: lowers it
_GRID = ((1.0, "#f7d4d4", 0.25, "grid_minor"), (5.0, "#eb9f9f", 0.6, "grid_major"))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Millimetre geometry of a page: the grid box holds the calibration margin, 4 columns of
  `column_s` and 4 rows (3 of the 3 x 4 layout, then the rhythm strip)."""

  column_s: float = 2.5
  row_mm: float = 40.0  # baseline to baseline: 4 mV, so tall complexes rarely collide
  calibration_mm: float = 10.0
  margin_mm: float = 5.0  # around the grid
  title_mm: float = 14.0  # above the grid

  @classmethod
  def for_duration(cls, duration_s: float) -> Layout:
    """The standard 2.5 s columns; a record shorter than 10 s fills the 4 columns evenly."""
    return cls(column_s=min(2.5, duration_s / 4))

  @property
  def grid_width_mm(self) -> float:
    return self.calibration_mm + 4 * self.column_s * MM_PER_S

  @property
  def grid_height_mm(self) -> float:
    return 4 * self.row_mm

  @property
  def width_mm(self) -> float:
    return self.grid_width_mm + 2 * self.margin_mm

  @property
  def height_mm(self) -> float:
    return self.grid_height_mm + 2 * self.margin_mm + self.title_mm

  def baseline_mm(self, row: int) -> float:
    """Height of row `row`'s 0 mV line in the grid box (row 0 at the top, 3: rhythm)."""
    return self.grid_height_mm - (row + 0.5) * self.row_mm

  def x_mm(self, t_s):
    return self.calibration_mm + np.asarray(t_s) * MM_PER_S

  def pixels(self, dpi: float = DPI) -> tuple[int, int]:
    """(width, height) of the saved PNG."""
    return (round(self.width_mm / MM_PER_INCH * dpi), round(self.height_mm / MM_PER_INCH * dpi))


def panels(layout: Layout) -> list[tuple[str, int, float, float]]:
  """(lead, row, start s, end s) of every trace drawn: the 3 x 4 windows, then the strip."""
  out = [(lead, row, c * layout.column_s, (c + 1) * layout.column_s)
         for c, leads in enumerate(COLUMNS) for row, lead in enumerate(leads)]
  return out + [(RHYTHM_LEAD, 3, 0.0, 4 * layout.column_s)]


def _draw_grid(ax, layout: Layout) -> None:
  w, h = layout.grid_width_mm, layout.grid_height_mm
  for step, colour, width, gid in _GRID:
    xs, ys = np.arange(0, w + 1e-6, step), np.arange(0, h + 1e-6, step)
    lines = ([[(x, 0), (x, h)] for x in xs] + [[(0, y), (w, y)] for y in ys])
    ax.add_collection(LineCollection(lines, colors=colour, linewidths=width, gid=gid,
                                     zorder=0))


def _scaled_saliency(saliency: np.ndarray) -> np.ndarray | None:
  """Attributions over the 99th percentile of their magnitude, clipped to [-1, 1]: one
  scale per figure, so leads compare, and one extreme sample does not wash out the rest."""
  magnitude = np.abs(saliency)
  scale = np.percentile(magnitude, 99) or magnitude.max()
  return None if scale == 0 else np.clip(saliency / scale, -1, 1)


def _overlay(ax, x: np.ndarray, y: np.ndarray, values: np.ndarray) -> None:
  """A band under the trace, coloured by the signed attribution, opaque where it is large."""
  points = np.stack([x, y], axis=1)
  segments = np.stack([points[:-1], points[1:]], axis=1)
  mid = (values[:-1] + values[1:]) / 2
  rgba = matplotlib.colormaps[SALIENCY_CMAP]((mid + 1) / 2)
  rgba[:, 3] = np.abs(mid)
  ax.add_collection(LineCollection(segments, colors=rgba, linewidths=7, zorder=1,
                                   capstyle="butt", gid="saliency"))


def plot_ecg(ecg_mv: np.ndarray, sample_rate: float, *, saliency: np.ndarray | None = None,
             title: str = "", calibration: bool = True, colorbar: bool = True,
             layout: Layout | None = None) -> Figure:
  """The page of `ecg_mv` [T, 12] (mV, LEAD_NAMES order) sampled at `sample_rate` Hz, with
  `saliency` [T, 12] as a colour band along the traces. Shows the first 10 s (4 columns)."""
  ecg_mv = np.asarray(ecg_mv, np.float64)
  if ecg_mv.ndim != 2 or ecg_mv.shape[1] != NUM_LEADS:
    raise ValueError(f"ecg must be [T, {NUM_LEADS}], got {ecg_mv.shape}")
  if saliency is not None and np.shape(saliency) != ecg_mv.shape:
    raise ValueError(f"saliency {np.shape(saliency)} does not match the ecg {ecg_mv.shape}")
  layout = layout or Layout.for_duration(len(ecg_mv) / sample_rate)
  t = np.arange(len(ecg_mv)) / sample_rate
  shown = t < 4 * layout.column_s
  t, ecg_mv = t[shown], ecg_mv[shown]
  scaled = None if saliency is None else _scaled_saliency(np.asarray(saliency)[shown])

  fig = Figure(figsize=(layout.width_mm / MM_PER_INCH, layout.height_mm / MM_PER_INCH))
  FigureCanvasAgg(fig)
  w, h, m = layout.width_mm, layout.height_mm, layout.margin_mm
  ax = fig.add_axes((m / w, m / h, layout.grid_width_mm / w, layout.grid_height_mm / h))
  ax.set_xlim(0, layout.grid_width_mm)
  ax.set_ylim(0, layout.grid_height_mm)
  ax.set_axis_off()
  _draw_grid(ax, layout)

  for lead, row, start, end in panels(layout):
    window = (t >= start) & (t < end)
    x = layout.x_mm(t[window])
    y = layout.baseline_mm(row) + MM_PER_MV * ecg_mv[window, LEAD_INDEX[lead]]
    if scaled is not None:
      _overlay(ax, x, y, scaled[window, LEAD_INDEX[lead]])
    ax.plot(x, y, color="black", linewidth=0.6, zorder=2,
            gid=f"rhythm {lead}" if row == 3 else lead)
    ax.text(layout.x_mm(start) + 1.5, layout.baseline_mm(row) + 0.3 * layout.row_mm, lead,
            fontsize=9, zorder=3)
    if 0 < start and row < 3:  # the column boundary, as a short bar on the baseline
      ax.plot([layout.x_mm(start)] * 2, layout.baseline_mm(row) + np.array([-4, 4]), color="black",
              linewidth=0.8, zorder=2)
  if calibration:
    pulse_x = np.array([1, 2.5, 2.5, 7.5, 7.5, 9]) * layout.calibration_mm / 10
    pulse_y = np.array([0, 0, 1, 1, 0, 0]) * MM_PER_MV
    for row in range(4):
      ax.plot(pulse_x, layout.baseline_mm(row) + pulse_y, color="black", linewidth=0.8,
              zorder=2, gid="calibration")

  top = 1 - layout.title_mm / 2 / h
  fig.text(m / w, top, title, fontsize=11, va="center")
  fig.text(1 - m / w, m / 2 / h, f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV", fontsize=7,
           ha="right", va="center")
  if scaled is not None and colorbar:
    cax = fig.add_axes(((w - m - 60) / w, top, 50 / w, 3 / h))
    bar = fig.colorbar(cm.ScalarMappable(colors.Normalize(-1, 1), SALIENCY_CMAP), cax=cax,
                       orientation="horizontal")
    bar.set_ticks([-1, 0, 1], labels=["lowers score", "0", "raises"], fontsize=7)
  return fig
