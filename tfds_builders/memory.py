"""How a process that builds a dataset uses memory: two settings for speed, neither of which
changes what is written.

Freed memory stays in the heap for the next record (`keep_freed_memory`). A record's signal
passes through several float64 arrays of about half a megabyte each (5,000 samples x 12
leads). glibc's malloc gives the free memory at the top of its heap back to the system once
more than its trim threshold lies there (by default twice the largest block freed so far), so
in a fresh process every record faulted its arrays' pages in anew: in a 400-record PTB-XL
build at 500 Hz, 136,000 page faults and 0.25 s of kernel time, about an eighth of the build.
Later builds in the same process had 11,000, once some larger block had raised the threshold.

Python's cyclic garbage collector skips what the process holds when its build starts
(`existing_objects_frozen`). A process's first full collection walks every object its imports
made (130,000 with TFDS and scipy loaded), which took 0.07 s of the same build.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc

_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap (glibc's maximum)
TRIM_THRESHOLD = 64 << 20  # free memory the heap keeps at its top


@functools.cache
def keep_freed_memory() -> bool:
  """Sets glibc's thresholds, once per process (they stay: a worker process builds and
  exits). False where the C library has no `mallopt` (not glibc: macOS, say), which leaves
  its allocator as it is."""
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
              and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@contextlib.contextmanager
def existing_objects_frozen():
  """`gc.freeze()` for the duration (the objects that exist now are skipped by collections;
  the build's own are collected as before), undone after it unless the process had frozen
  objects of its own before, which then stay frozen as they were."""
  frozen_before = gc.get_freeze_count()
  gc.freeze()
  try:
    yield
  finally:
    if not frozen_before:
      gc.unfreeze()
