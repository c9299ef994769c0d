"""Lets TFDS's in-process writer spill to disk without TensorFlow.

Above 1 GB of examples per split, `tensorflow_datasets.core.shuffle` moves its buffer into
temporary bucket files through `tf.io.gfile`, so building a large corpus without Beam would
stop with "No module named 'tensorflow'". Where TensorFlow is absent, those three file calls
go through `etils.epath` instead (local disk and, with its extras, cloud buckets)."""

from __future__ import annotations

import importlib.util
import types

from etils import epath
from tensorflow_datasets.core import shuffle


class _NeverRaised(Exception):
  """Stands in for tf.errors.ResourceExhaustedError, which only TensorFlow raises."""


def _gfile_open(path, mode="r"):
  return epath.Path(path).open(mode)


def _exists(path) -> bool:
  return epath.Path(path).exists()


def _remove(path) -> None:
  epath.Path(path).unlink()


_FILE_CALLS = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=_gfile_open, exists=_exists,
                                                         remove=_remove)),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised))


def install() -> None:
  """Routes the shuffler's bucket files through epath unless TensorFlow is installed."""
  if importlib.util.find_spec("tensorflow") is None:
    shuffle.tf = _FILE_CALLS
