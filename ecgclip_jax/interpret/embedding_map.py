"""2-D maps of ECG embeddings, t-SNE (scikit-learn) or UMAP (the `umap` extra), with one
panel per label showing its positives in colour: ECGs are multi-label, so one colour per
ECG would hide every finding but one. Shows whether the encoder groups ECGs by finding.

t-SNE costs minutes on tens of thousands of points, so at most `max_points` ECGs, drawn
with a seed, are mapped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from typing import Callable

import numpy as np
from absl import flags

from ecgclip_jax.interpret.curves import panel_grid, save_png

METHODS = ("tsne", "umap", "none")
_SHOWN = {"tsne": "t-SNE", "umap": "UMAP"}


@dataclasses.dataclass(frozen=True)
class MapOptions:
  method: str = "tsne"  # one of METHODS; "none" draws no map
  max_points: int = 2000
  seed: int = 0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"embedding map method {self.method!r}; choose one of {METHODS}")
    if self.method == "umap" and importlib.util.find_spec("umap") is None:
      raise ValueError("UMAP maps need umap-learn: pip install -e '.[umap]' (or use "
                       "--embedding_map tsne)")
    if self.max_points < 5:
      raise ValueError(f"embedding map max_points must be at least 5, got {self.max_points}")


def define_flags() -> Callable[[], MapOptions]:
  """The jobs' --embedding_map and --map_max_points flags; returns their MapOptions."""
  method = flags.DEFINE_enum("embedding_map", "tsne", list(METHODS),
                             "2-D map of the test ECG embeddings (umap: pip install -e "
                             "'.[umap]'); none: no map.")
  max_points = flags.DEFINE_integer("map_max_points", 2000,
                                    "ECGs drawn (seeded) for the map: t-SNE is slow on many.")
  return lambda: MapOptions(method.value, max_points.value)


def project(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
  """[n, D] -> [n, 2] coordinates."""
  n = len(embeddings)
  if method == "umap":  # an optional extra, checked by MapOptions
    import umap  # pylint: disable=g-import-not-at-top
    return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1),
                     random_state=seed).fit_transform(embeddings)
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
              random_state=seed).fit_transform(embeddings)


def write_map(folder: str, embeddings: np.ndarray, labels: np.ndarray, label_names: list[str],
              options: MapOptions, *, title: str,
              known: np.ndarray | None = None) -> dict[str, str]:
  """`embedding_map_<method>.png` in `folder`, one panel per label with a positive among
  the mapped ECGs (unknown labels, `known` False, are not drawn). Returns file -> caption."""
  n = len(embeddings)
  if options.method == "none" or n < 5:
    return {}
  labels = np.asarray(labels, bool)
  known = np.ones_like(labels) if known is None else np.asarray(known, bool)
  chosen = np.arange(n)
  if n > options.max_points:
    rng = np.random.default_rng(options.seed)
    chosen = np.sort(rng.choice(n, options.max_points, replace=False))
  panels = [j for j in range(labels.shape[1]) if (labels & known)[chosen, j].any()]
  if not panels:
    return {}
  start = time.time()
  shown = _SHOWN[options.method]
  print(f"embedding map: {shown} of {len(chosen)} of {n} ECGs ...", flush=True)
  xy = project(np.asarray(embeddings, np.float64)[chosen], options.method, options.seed)
  print(f"embedding map: done in {time.time() - start:.1f} s", flush=True)
  fig, axes = panel_grid(len(panels), f"{title}: {shown} of {len(chosen)} ECGs")
  for ax, j in zip(axes, panels):
    lab, kno = labels[chosen, j], known[chosen, j]
    ax.scatter(*xy[kno & ~lab].T, s=3, color="lightgrey", linewidths=0)
    ax.scatter(*xy[kno & lab].T, s=5, color="C3", linewidths=0)
    ax.set_title(f"{label_names[j]} ({lab[kno].sum()} of {kno.sum()})", fontsize=8)
    ax.set(xticks=[], yticks=[])
  name = save_png(fig, folder, f"embedding_map_{options.method}.png")
  return {name: f"{title}: {shown} map of {len(chosen)} of {n} ECG embeddings, "
                f"one panel per label (red: positive)"}
