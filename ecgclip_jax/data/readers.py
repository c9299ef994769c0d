"""Waveform readers: a file on disk or in a bucket (gs://) -> millivolts [T, C] with its rate
and lead names.

Every failure becomes a `SkipRecord` with the reason the build report counts, so a builder
never needs its own try/except around reading: missing files, truncated or unreadable data,
headers that disagree with their data, units or formats we cannot convert.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import pathlib
import tempfile

import numpy as np
import wfdb
from etils import epath
from wfdb.io import header as wfdb_header

from ecgclip_jax import storage
from ecgclip_jax.data.skips import SkipRecord

# Physical units a WFDB header may give, as a factor to millivolts.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
# Bits one sample takes in a WFDB signal file, for the formats stored at a fixed width.
_FORMAT_BITS = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12}


@dataclasses.dataclass
class RawSignal:
  signal_mv: np.ndarray  # float [T, C]
  fs: float
  lead_names: list[str]
  comments: list[str] = dataclasses.field(default_factory=list)


def units_to_mv(units: str) -> float:
  factor = _TO_MV.get(units.strip().casefold())
  if factor is None:
    raise SkipRecord("unsupported_format", f"signal units {units!r}")
  return factor


def _path(location: str) -> pathlib.Path | epath.Path:
  """A local file through pathlib (no fsspec layer in a build's hot loop), a bucket's through
  etils' epath."""
  return epath.Path(location) if storage.is_remote(location) else pathlib.Path(location)


def _wfdb(read, record_path: str, file_names=()):
  """`read` (wfdb.rdheader or wfdb.rdrecord) of a record. One in a bucket is read from a
  temporary local copy of its header and `file_names`, so that wfdb reads it as it reads a
  local one: its own gs:// support decodes a header as UTF-8 where it drops a local header's
  non-ASCII bytes."""
  if not storage.is_remote(record_path):
    return read(record_path)
  remote = epath.Path(record_path)
  with tempfile.TemporaryDirectory(prefix="ecgclip-wfdb-") as folder:
    for name in sorted({remote.name + ".hea", *file_names}):
      pathlib.Path(folder, name).write_bytes((remote.parent / name).read_bytes())
    return read(os.path.join(folder, remote.name))


def read_wfdb(record_path: str | os.PathLike) -> RawSignal:
  """A WFDB record (`path/NAME` for NAME.hea; its signal file may be .dat or CinC's .mat),
  on the local disk or in a bucket.

  The common layout (every signal in format 16 in one file: PTB-XL, MIMIC-IV-ECG, the CinC
  challenges) is read directly with numpy, giving exactly wfdb's values without wfdb's slow
  header parsing; any other header goes through `wfdb.rdheader` and `wfdb.rdrecord`."""
  record_path = str(record_path)
  for suffix in (".hea", ".dat", ".mat"):
    record_path = record_path.removesuffix(suffix)
  if not _path(record_path + ".hea").exists():
    raise SkipRecord("missing_file", f"{record_path}.hea")
  header = _format16_header(record_path + ".hea")
  if header is None:
    try:
      header = _wfdb(wfdb.rdheader, record_path)
    except Exception as e:  # wfdb raises bare ValueError/IndexError on malformed headers
      raise SkipRecord("unreadable_signal", f"{record_path}.hea: {e}") from None
  if not getattr(header, "file_name", None):  # a multi-segment header has none
    raise SkipRecord("unsupported_format", f"{record_path}.hea names no signal file")
  if len(header.file_name) != header.n_sig:
    raise SkipRecord("unreadable_signal", f"{record_path}.hea: {len(header.file_name)} signal "
                     f"lines for {header.n_sig} signals")
  directory = _path(record_path).parent
  for name in sorted(set(header.file_name)):
    if not (directory / name).exists():
      raise SkipRecord("missing_file", str(directory / name))
  _check_file_sizes(header, directory)
  if isinstance(header, _Format16Header):
    signal, record = header.read(directory), header
  else:
    try:
      record = _wfdb(wfdb.rdrecord, record_path, header.file_name)
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
  factors = np.array([units_to_mv(u or "mV") for u in record.units])
  if (factors != 1.0).any():
    signal = signal * factors
  return RawSignal(signal_mv=signal, fs=float(record.fs),
                   lead_names=list(record.sig_name), comments=list(record.comments or []))


@dataclasses.dataclass
class _Format16Header:
  """A single-segment header whose signals all lie in one format 16 file (one sample per
  frame, no skew), with the fields `wfdb.rdheader` would give it (the same names)."""

  n_sig: int
  fs: float
  sig_len: int
  file_name: list[str]
  fmt: list[str]
  samps_per_frame: list[int]
  byte_offset: list[int]
  adc_gain: list[float]
  baseline: list[int]
  units: list[str]
  sig_name: list[str]
  comments: list[str]

  def read(self, directory: pathlib.Path | epath.Path) -> np.ndarray:
    """The physical signal [T, C] float64, computed as wfdb's `Record.dac` computes it:
    (digital - baseline) / gain, NaN where the sample holds format 16's missing value. Laid
    out lead by lead (Fortran order), as a lead's samples are used together from here on."""
    with (directory / self.file_name[0]).open("rb") as file:
      file.seek(self.byte_offset[0])
      data = file.read(2 * self.sig_len * self.n_sig)
    digital = np.frombuffer(data, dtype="<i2").reshape(self.sig_len, self.n_sig).T
    physical = np.empty(digital.shape)  # [C, T]: the transposing copy is the one pass
    physical[...] = digital
    if any(self.baseline):  # most files' baselines are all zero: nothing to subtract
      np.subtract(physical, np.array(self.baseline, np.float64)[:, None], out=physical)
    np.divide(physical, np.array(self.adc_gain)[:, None], out=physical)
    if digital.min() == _FORMAT16_NAN:
      physical[digital == _FORMAT16_NAN] = np.nan
    return physical.T


_FORMAT16_NAN = -32768  # the sample value format 16 stores for "no sample"


def _format16_header(path: str) -> _Format16Header | None:
  """The header at `path` parsed as wfdb parses it (its own line patterns and defaults) when
  it has `_Format16Header`'s layout and every field wfdb would convert converts; None
  otherwise, so that wfdb reads it (and reports what is wrong with it)."""
  try:
    # ASCII, other bytes dropped, as wfdb.rdheader reads a local header (bytes decoded whole:
    # the same lines as its text read, and epath's open() takes no `errors`).
    text = _path(path).read_bytes().decode("ascii", errors="ignore")
    lines, comment_lines = wfdb_header.parse_header_content(text)
    record = wfdb_header.rx_record.match(lines[0]) if lines else None
    if record is None:
      return None
    _, n_seg, n_sig, fs, counter_freq, base_counter, sig_len, base_time, base_date = (
        record.groups())
    n_sig = int(n_sig)
    if n_seg or not fs or not sig_len or not int(sig_len) or not 0 < n_sig == len(lines) - 1:
      return None
    for number in (counter_freq, base_counter):
      if number:
        float(number)
    if base_time:
      wfdb_header.wfdb_strptime(base_time)
    if base_date:
      datetime.datetime.strptime(base_date, "%d/%m/%Y")
    fs = float(fs)
    if round(fs, 8) == float(int(fs)):  # wfdb's rounding of a rate close to an integer
      fs = int(fs)
    signals = [wfdb_header.rx_signal.match(line) for line in lines[1:]]
    if any(s is None for s in signals):
      return None
    fields = [s.groups() for s in signals]
    gains, baselines = [], []
    for (file_name, fmt, per_frame, skew, offset, gain, baseline, _, *numbers,
         name) in fields:
      if (fmt != "16" or per_frame not in ("", "1") or skew not in ("", "0") or not name
          or file_name != fields[0][0] or offset != fields[0][4]):
        return None
      adc_zero = numbers[1]
      for number in numbers:  # adc_res, adc_zero, init_value, checksum, block_size
        if number:
          int(number)
      gains.append((float(gain) if gain else 0.0) or 200.0)  # wfdb: none or 0 means 200
      baselines.append(int(baseline) if baseline else int(adc_zero) if adc_zero else 0)
  except (OSError, ValueError):  # unreadable, or a field wfdb fails to convert: wfdb says why
    return None
  return _Format16Header(
      n_sig=n_sig, fs=fs, sig_len=int(sig_len), file_name=[f[0] for f in fields],
      fmt=[f[1] for f in fields], samps_per_frame=[1] * n_sig,
      byte_offset=[int(fields[0][4] or 0)] * n_sig, adc_gain=gains, baseline=baselines,
      units=[f[7] or "mV" for f in fields], sig_name=[f[-1] for f in fields],
      comments=[line.strip(" \t#") for line in comment_lines])


def _check_file_sizes(header, directory: pathlib.Path | epath.Path) -> None:
  """Each signal file against the size its header implies (fixed-width formats only): wfdb
  itself reads only the header's `sig_len` samples, so a file holding more goes unnoticed, and
  it fails the same way for a truncated file and for a header promising too many samples.
  A file short by whole frames disagrees with its header; one cut mid-frame is truncated."""
  if not header.sig_len:
    return
  n = len(header.file_name)
  frames = collections.defaultdict(lambda: [0, 0])  # file -> [bits per frame, byte offset]
  for name, fmt, per_frame, offset in zip(header.file_name, header.fmt,
                                          header.samps_per_frame or [1] * n,
                                          header.byte_offset or [0] * n):
    if str(fmt) not in _FORMAT_BITS:
      frames[name] = None  # compressed or bit-packed: no fixed size to check
    elif frames[name] is not None:
      frames[name][0] += _FORMAT_BITS[str(fmt)] * (per_frame or 1)
      frames[name][1] = offset or 0
  for name, frame in sorted((k, v) for k, v in frames.items() if v is not None):
    frame_bits, offset = frame
    path = directory / name
    size = storage.file_size(path)
    expected = offset + -(-header.sig_len * frame_bits // 8)
    data_bits = (size - offset) * 8
    if size <= offset:
      raise SkipRecord("unreadable_signal", f"{path}: empty")
    if size < expected:
      if data_bits % frame_bits == 0:
        raise SkipRecord("header_data_mismatch", f"{path}: holds {data_bits // frame_bits} "
                         f"samples, header says {header.sig_len}")
      raise SkipRecord("unreadable_signal", f"{path}: truncated, {size} of {expected} bytes")
    if (size - expected) * 8 >= frame_bits:
      raise SkipRecord("header_data_mismatch", f"{path}: holds {data_bits // frame_bits} "
                       f"samples, header says {header.sig_len}")


def read_npy(path: str | os.PathLike, fs: float, lead_names: list[str],
             units: str = "mV") -> RawSignal:
  """A bare array file: [T, C] (or [C, T] when C matches the lead names) in `units`."""
  path = _path(str(path))
  if not path.exists():
    raise SkipRecord("missing_file", str(path))
  try:
    with path.open("rb") as file:
      array = np.load(file, allow_pickle=False)
  except Exception as e:
    raise SkipRecord("unreadable_signal", f"{path}: {type(e).__name__}: {e}") from None
  if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer)
                             or np.issubdtype(array.dtype, np.floating)):
    raise SkipRecord("unsupported_format", f"{path}: array of shape {array.shape}, "
                     f"dtype {array.dtype}; expected a numeric [time, lead] array")
  if array.shape[1] != len(lead_names) and array.shape[0] == len(lead_names):
    array = array.T
  if array.shape[1] != len(lead_names):
    raise SkipRecord("header_data_mismatch",
                     f"{path}: shape {array.shape} vs {len(lead_names)} lead names")
  if array.shape[0] == 0:
    raise SkipRecord("unreadable_signal", f"{path}: no samples")
  return RawSignal(signal_mv=array.astype(np.float64) * units_to_mv(units), fs=float(fs),
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
