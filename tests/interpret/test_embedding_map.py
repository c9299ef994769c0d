"""Embedding maps: seeded subsampling, one panel per label, t-SNE by default, UMAP only
with its extra installed."""

import importlib.util

import numpy as np
import pytest
from matplotlib import image

from ecgclip_jax.interpret import embedding_map


def _clusters(n=60, seed=0):
  """Two well separated clusters of unit vectors; label 0 marks the first, label 1 nothing."""
  rng = np.random.default_rng(seed)
  first = np.arange(n) < n // 2
  emb = rng.normal(size=(n, 16)) * 0.1 + np.where(first[:, None], 1.0, -1.0) * np.eye(16)[0]
  labels = np.stack([first, np.zeros(n, bool)], axis=1)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_tsne_map_of_a_seeded_subsample(tmp_path, capsys):
  emb, labels = _clusters()
  options = embedding_map.MapOptions(max_points=40, seed=1)
  written = embedding_map.write_map(str(tmp_path), emb, labels, ["afib", "never"], options,
                                    title="step 4 test")
  assert list(written) == ["embedding_map_tsne.png"]
  assert "t-SNE map of 40 of 60" in written["embedding_map_tsne.png"]
  assert "t-SNE of 40 of 60 ECGs" in capsys.readouterr().out
  assert image.imread(tmp_path / "embedding_map_tsne.png").shape[0] > 100


def test_tsne_keeps_clusters_apart():
  emb, labels = _clusters()
  xy = embedding_map.project(emb, "tsne", seed=0)
  nearest = np.argsort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
  assert (labels[nearest, 0] == labels[:, 0]).mean() > 0.95


def test_no_map_when_asked_for_none_or_nothing_to_colour(tmp_path):
  emb, labels = _clusters()
  assert embedding_map.write_map(str(tmp_path), emb, labels, ["a", "b"],
                                 embedding_map.MapOptions("none"), title="t") == {}
  assert embedding_map.write_map(str(tmp_path), emb, labels[:, 1:], ["b"],
                                 embedding_map.MapOptions(), title="t") == {}
  assert not list(tmp_path.iterdir())


def test_bad_options_are_one_line_errors():
  with pytest.raises(ValueError, match="choose one of"):
    embedding_map.MapOptions("pca")
  with pytest.raises(ValueError, match="at least 5"):
    embedding_map.MapOptions(max_points=2)
  if importlib.util.find_spec("umap") is None:
    with pytest.raises(ValueError, match=r"pip install -e '\.\[umap\]'"):
      embedding_map.MapOptions("umap")
