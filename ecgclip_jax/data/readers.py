"""Waveform readers: a file on disk -> millivolts [T, C] with its rate and lead names.

Every failure becomes a `SkipRecord` with the reason the build report counts, so a builder
never needs its own try/except around reading: missing files, truncated or unreadable data,
headers that disagree with their data, units or formats we cannot convert.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import wfdb

from ecgclip_jax.data.skips import SkipRecord

# Physical units a WFDB header may give, as a factor to millivolts.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


@dataclasses.dataclass
class RawSignal:
  signal_mv: np.ndarray  # float [T, C]
  fs: float
  lead_names: list[str]
  comments: list[str] = dataclasses.field(default_factory=list)


def _units_to_mv(units: str) -> float:
  factor = _TO_MV.get(units.strip().casefold())
  if factor is None:
    raise SkipRecord("unsupported_format", f"signal units {units!r}")
  return factor


def read_wfdb(record_path: str | os.PathLike) -> RawSignal:
  """A WFDB record (`path/NAME` for NAME.hea; its signal file may be .dat or CinC's .mat)."""
  record_path = str(record_path)
  for suffix in (".hea", ".dat", ".mat"):
    record_path = record_path.removesuffix(suffix)
  if not os.path.exists(record_path + ".hea"):
    raise SkipRecord("missing_file", f"{record_path}.hea")
  try:
    header = wfdb.rdheader(record_path)
  except Exception as e:  # wfdb raises bare ValueError/IndexError on malformed headers
    raise SkipRecord("unreadable_signal", f"{record_path}.hea: {e}") from None
  if not header.file_name:
    raise SkipRecord("unsupported_format", f"{record_path}.hea names no signal file")
  directory = pathlib.Path(record_path).parent
  for name in sorted(set(header.file_name)):
    if not (directory / name).exists():
      raise SkipRecord("missing_file", str(directory / name))
  try:
    record = wfdb.rdrecord(record_path)
  except ValueError as e:  # numpy's reshape error: fewer bytes than the header promises
    raise SkipRecord("unreadable_signal", f"{record_path}: {e}") from None
  except Exception as e:
    raise SkipRecord("unreadable_signal", f"{record_path}: {type(e).__name__}: {e}") from None
  signal = record.p_signal
  if signal is None or signal.ndim != 2 or signal.shape[0] == 0:
    raise SkipRecord("unreadable_signal", f"{record_path}: no samples")
  if header.sig_len and signal.shape[0] != header.sig_len:
    raise SkipRecord("header_data_mismatch",
                     f"{record_path}: {signal.shape[0]} samples, header says {header.sig_len}")
  factors = np.array([_units_to_mv(u or "mV") for u in record.units])
  return RawSignal(signal_mv=signal * factors, fs=float(record.fs),
                   lead_names=list(record.sig_name), comments=list(record.comments or []))


def read_npy(path: str | os.PathLike, fs: float, lead_names: list[str],
             units: str = "mV") -> RawSignal:
  """A bare array file: [T, C] (or [C, T] when C matches the lead names) in `units`."""
  path = pathlib.Path(path)
  if not path.exists():
    raise SkipRecord("missing_file", str(path))
  try:
    array = np.load(path, allow_pickle=False)
  except Exception as e:
    raise SkipRecord("unreadable_signal", f"{path}: {type(e).__name__}: {e}") from None
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
    raise SkipRecord("unsupported_format", f"{path}: array of shape {array.shape}, "
                     f"dtype {array.dtype}; expected a numeric [time, lead] array")
  if array.shape[1] != len(lead_names) and array.shape[0] == len(lead_names):
    array = array.T
  if array.shape[1] != len(lead_names):
    raise SkipRecord("header_data_mismatch",
                     f"{path}: shape {array.shape} vs {len(lead_names)} lead names")
  return RawSignal(signal_mv=array.astype(np.float64) * _units_to_mv(units), fs=float(fs),
                   lead_names=list(lead_names))


def read_signal(path: str | os.PathLike, fs: float | None = None,
                lead_names: list[str] | None = None, units: str = "mV") -> RawSignal:
  """Any supported waveform file, chosen by extension: WFDB (`.hea`, `.dat`, no extension),
  CinC `.mat` (read through its `.hea`), or `.npy` (which needs `fs` and `lead_names`)."""
  path = str(path)
  suffix = pathlib.Path(path).suffix.casefold()
  if suffix in (".hea", ".dat", ".mat", ""):
    return read_wfdb(path)
  if suffix == ".npy":
    if not fs or not lead_names:
      raise SkipRecord("missing_metadata", f"{path}: .npy needs a sampling rate and lead names")
    return read_npy(path, fs, lead_names, units)
  raise SkipRecord("unsupported_format", f"{path}: unknown extension {suffix!r}")
