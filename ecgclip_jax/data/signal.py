"""Signal preparation shared by every builder: raw leads in, contract-shaped int16 µV out.

`prepare(signal_mv, fs, lead_names, spec)` runs the steps in this order, each a function here:
  1. leads   - names canonicalized (`AVR`, `avr` -> aVR; `-aVR` is a different lead and is
               dropped), reordered to I, II, III, aVR, aVL, aVF, V1..V6; missing leads are
               zero and False in `lead_mask`.
  2. repair  - a lead with no finite sample (disconnected) counts as missing; other NaN/Inf
               are replaced by the mean of the finite samples within +-6 samples (as MERL
               does); more than `max_nonfinite_fraction` of the present samples -> skipped.
  3. check   - flat leads (peak-to-peak < `flat_uv`) and saturated leads (>= `saturated_fraction`
               of samples sit at the lead's own min or max: a clipped amplifier) are counted
               at the native rate; more than `max_flat_leads` / `max_saturated_leads` -> skipped.
  4. resample to `spec.sample_rate` with a polyphase anti-aliasing filter.
  5. filter  - optional zero-phase Butterworth band-pass (or high-pass only: baseline wander).
  6. length  - longer records are cropped to `duration_s` (from the start, or centred);
               records shorter than `min_duration_s` are skipped (checked right after
               resampling, before the filter sees them); between the two they are
               zero-padded at the end (the padded tail is zeros in every lead).
  7. quantize to int16 microvolts; samples beyond +-32.767 mV are clipped and counted.
A record that cannot be used raises `SkipRecord` with its reason.

Builds always crop and pad. Predict, the Python API and the probe may instead read a longer
record whole, as windows of the model's length (`Length`, `fit_windows`), and reject a
shorter one instead of padding it.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools

import numpy as np
import scipy.signal

from ecgclip_jax.data.leads import LEAD_INDEX, LEAD_NAMES, NUM_LEADS
from ecgclip_jax.data.skips import SkipRecord

NONFINITE_WINDOW = 6  # samples either side whose finite mean replaces a NaN/Inf (MERL)
INT16_MAX_UV = 32767

_CANONICAL_BY_FOLDED = {name.casefold(): name for name in LEAD_NAMES}


@dataclasses.dataclass(frozen=True)
class SignalSpec:
  """What every prepared record looks like, and when a record is rejected."""

  sample_rate: int = 500
  duration_s: float = 10.0
  min_duration_s: float | None = None  # None: records must reach `duration_s` (1% slack)
  crop: str = "start"  # 'start' | 'center'
  bandpass_hz: tuple[float | None, float | None] | None = None  # (low, high); None: off
  max_nonfinite_fraction: float = 0.01
  flat_uv: float = 10.0
  saturated_fraction: float = 0.05
  max_flat_leads: int = 2
  max_saturated_leads: int = 2

  def __post_init__(self):
    if self.bandpass_hz is not None:  # a JSON config gives a list
      if len(self.bandpass_hz) != 2:
        raise ValueError(f"bandpass_hz must be (low, high), got {self.bandpass_hz!r}")
      object.__setattr__(self, "bandpass_hz", tuple(self.bandpass_hz))
    if self.crop not in ("start", "center"):
      raise ValueError(f"crop must be 'start' or 'center', got {self.crop!r}")
    if self.sample_rate <= 0 or self.duration_s <= 0:
      raise ValueError("sample_rate and duration_s must be positive")

  @property
  def num_samples(self) -> int:
    return round(self.sample_rate * self.duration_s)

  @property
  def min_samples(self) -> int:
    if self.min_duration_s is None:
      return int(np.ceil(0.99 * self.num_samples))
    return round(self.sample_rate * self.min_duration_s)


LONG_CHOICES = ("crop", "window")
SHORT_CHOICES = ("pad", "reject")


@dataclasses.dataclass(frozen=True)
class Length:
  """What predict, the API and the probe do with a record longer or shorter than the model's
  input (after resampling to its rate).

  long:  'crop' - the build's own crop (`SignalSpec.crop`), so a record scores as it would
         in a build; 'window' - every window of the model's length, `window_stride_s` apart
         (default: the window length, no overlap), plus one aligned to the end when the last
         would leave a tail, so no sample is lost; the record's embedding is the mean of its
         windows' (see inference.mean_over_windows).
  short: 'pad' - zeros at the end, as builds pad (records shorter than the spec's
         `min_duration_s` are still rejected); 'reject' - any shorter record is rejected.
  """

  long: str = "crop"
  window_stride_s: float | None = None
  short: str = "pad"

  def __post_init__(self):
    if self.long not in LONG_CHOICES:
      raise ValueError(f"long must be one of {LONG_CHOICES}, got {self.long!r}")
    if self.short not in SHORT_CHOICES:
      raise ValueError(f"short must be one of {SHORT_CHOICES}, got {self.short!r}")
    if self.window_stride_s is not None:
      if self.long != "window":
        raise ValueError("window_stride_s needs long='window'")
      if not self.window_stride_s > 0:
        raise ValueError(f"window_stride_s must be positive, got {self.window_stride_s}")

  def stride(self, spec: SignalSpec) -> int:
    """Samples between window starts at the spec's rate (at least 1)."""
    if self.window_stride_s is None:
      return spec.num_samples
    return max(1, round(self.window_stride_s * spec.sample_rate))


@dataclasses.dataclass
class PreparedSignal:
  ecg: np.ndarray  # int16 [num_samples, 12], microvolts, canonical lead order; with a
  # `Length`: [windows, num_samples, 12]
  lead_mask: np.ndarray  # bool [12]
  nonfinite_repaired: int = 0
  clipped: int = 0
  flat_leads: tuple[str, ...] = ()
  saturated_leads: tuple[str, ...] = ()
  padded_samples: int = 0
  note: str = ""  # with a `Length`: how a record of another length was fit ('' if it was not)

  def fit(self) -> dict:
    """How a record prepared with a `Length` (`ecg` [windows, T, 12]) was fit to the model's
    input: what predict and the API report beside its scores."""
    return {"windows": len(self.ecg), "padded_samples": self.padded_samples, "note": self.note}


def canonical_lead_name(name: str) -> str | None:
  """The contract's name for a lead as spelled in a file, or None for any other lead."""
  return _CANONICAL_BY_FOLDED.get(name.strip().casefold())


def to_canonical_leads(signal: np.ndarray, lead_names) -> tuple[np.ndarray, np.ndarray]:
  """[T, C] with the file's lead names -> ([T, 12] float64 in contract order, lead_mask).

  The result is a new array laid out lead by lead (Fortran order): every later step reduces
  or filters along time within a lead, which numpy does about ten times faster on a lead's
  contiguous samples than across the rows of a [T, 12] C-order array."""
  signal = np.asarray(signal, np.float64)
  if signal.ndim != 2 or signal.shape[1] != len(lead_names):
    raise SkipRecord("header_data_mismatch",
                     f"signal shape {signal.shape} vs {len(lead_names)} lead names")
  columns, slots = _lead_slots(tuple(map(str, lead_names)))
  mask = np.zeros(NUM_LEADS, np.bool_)
  mask[slots] = True
  if mask.all():  # the common case: one column gather (already in Fortran order: no copy)
    return np.asfortranarray(signal[:, columns[np.argsort(slots)]]), mask
  out = np.zeros((signal.shape[0], NUM_LEADS), order="F")
  out[:, slots] = signal[:, columns]
  return out, mask


@functools.lru_cache(maxsize=64)
def _lead_slots(lead_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(the file's columns of standard leads, their canonical indices), worked out once per
  spelling of a corpus's lead names."""
  columns, slots = [], []
  for column, name in enumerate(lead_names):
    canonical = canonical_lead_name(name)
    if canonical is None:
      continue
    if LEAD_INDEX[canonical] in slots:
      raise SkipRecord("unsupported_format", f"lead {canonical} appears twice in "
                       f"{list(lead_names)}")
    columns.append(column)
    slots.append(LEAD_INDEX[canonical])
  if not slots:
    raise SkipRecord("unsupported_format", f"none of the leads {list(lead_names)} is one of "
                     f"the 12 standard leads")
  columns, slots = np.array(columns), np.array(slots)
  columns.flags.writeable = slots.flags.writeable = False  # shared by every call
  return columns, slots


def drop_dead_leads(signal: np.ndarray, lead_mask: np.ndarray) -> np.ndarray:
  """Leads with no finite sample at all (a disconnected lead) count as missing: the mask
  is returned without them, so they become zeros instead of failing the NaN cap."""
  dead = lead_mask & ~np.isfinite(signal).any(axis=0)
  if not (lead_mask & ~dead).any():
    raise SkipRecord("too_many_nonfinite", "no lead has a finite sample")
  return lead_mask & ~dead


def repair_nonfinite(signal: np.ndarray, lead_mask: np.ndarray,
                     max_fraction: float) -> tuple[np.ndarray, int]:
  """NaN/Inf -> mean of the finite samples within +-NONFINITE_WINDOW (0 if there are none)."""
  bad = ~np.isfinite(signal) & lead_mask
  count = int(bad.sum())
  if count == 0:
    return signal, 0
  present = signal.shape[0] * int(lead_mask.sum())
  if count > max_fraction * present:
    raise SkipRecord("too_many_nonfinite", f"{count} of {present} samples are NaN/Inf")
  finite = np.where(bad, 0.0, signal)
  kernel = np.ones(2 * NONFINITE_WINDOW + 1)
  window_sum = _moving_sum(finite, kernel)
  window_count = _moving_sum((~bad).astype(np.float64), kernel)
  local_mean = np.divide(window_sum, window_count, out=np.zeros_like(window_sum),
                         where=window_count > 0)
  return np.where(bad, local_mean, np.where(lead_mask, signal, 0.0)), count


def _moving_sum(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  return scipy.signal.convolve(x, kernel[:, None], mode="same", method="direct")


def bad_leads(signal_uv: np.ndarray, lead_mask: np.ndarray, flat_uv: float,
              saturated_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(flat, saturated) present leads. Saturation: a clipped lead sits on its own extreme."""
  present = np.flatnonzero(lead_mask)
  leads = signal_uv if len(present) == NUM_LEADS else signal_uv[:, present]
  low, high = leads.min(axis=0), leads.max(axis=0)
  at_low, at_high = leads == low, leads == high
  is_flat = high - low < flat_uv
  minimum = saturated_fraction * len(signal_uv)
  if np.count_nonzero(at_low) + np.count_nonzero(at_high) < minimum:  # bounds every lead's
    is_saturated = np.zeros_like(is_flat)  # count: no need to count lead by lead
  else:
    at_extreme = np.maximum(at_low.sum(axis=0), at_high.sum(axis=0))
    is_saturated = ~is_flat & (at_extreme >= minimum)
  return (tuple(LEAD_NAMES[i] for i in present[is_flat]),
          tuple(LEAD_NAMES[i] for i in present[is_saturated]))


def resample(signal: np.ndarray, fs_in: float, fs_out: int) -> np.ndarray:
  """Polyphase resampling along time (scipy's Kaiser-windowed anti-aliasing filter)."""
  if not np.isfinite(fs_in) or fs_in <= 0:
    raise SkipRecord("missing_metadata", f"sampling rate {fs_in}")
  if fs_in == fs_out:  # the common case, without the Fraction arithmetic below
    return signal
  ratio = fractions.Fraction(fs_out) / fractions.Fraction(fs_in).limit_denominator(1000)
  if ratio == 1:
    return signal
  return scipy.signal.resample_poly(signal, ratio.numerator, ratio.denominator, axis=0)


def bandpass(signal: np.ndarray, fs: float, low: float | None, high: float | None,
             order: int = 3) -> np.ndarray:
  """Zero-phase Butterworth filter: band-pass, or high-pass only (baseline wander) when
  `high` is None, low-pass only when `low` is None."""
  if high is not None and high >= fs / 2:
    high = None  # nothing to remove above Nyquist
  if low is None and high is None:
    return signal
  return scipy.signal.sosfiltfilt(_butterworth(fs, low, high, order), signal, axis=0)


@functools.lru_cache(maxsize=16)
def _butterworth(fs: float, low: float | None, high: float | None, order: int) -> np.ndarray:
  """The filter's second-order sections, designed once per process (the design costs almost
  as much as filtering a record)."""
  if low is None:
    return scipy.signal.butter(order, high, "lowpass", fs=fs, output="sos")
  if high is None:
    return scipy.signal.butter(order, low, "highpass", fs=fs, output="sos")
  return scipy.signal.butter(order, (low, high), "bandpass", fs=fs, output="sos")


def fit_length(signal: np.ndarray, spec: SignalSpec) -> tuple[np.ndarray, int]:
  """Crop or zero-pad to `spec.num_samples`; returns the signal and the samples padded.
  (`prepare` has already rejected records shorter than `spec.min_samples`.)"""
  n, target = signal.shape[0], spec.num_samples
  if n >= target:
    start = 0 if spec.crop == "start" else (n - target) // 2
    return signal[start:start + target], 0
  return np.pad(signal, ((0, target - n), (0, 0))), target - n


def window_starts(n: int, window: int, stride: int) -> list[int]:
  """Starts of the `window`-sample windows of an n-sample record: every `stride` samples,
  and one more aligned to the end when the last would leave a tail (every sample is in a
  window). A record no longer than a window is one window, at 0."""
  if n <= window:
    return [0]
  starts = list(range(0, n - window + 1, stride))
  if starts[-1] + window < n:
    starts.append(n - window)
  return starts


def fit_windows(signal: np.ndarray, spec: SignalSpec,
                length: Length) -> tuple[np.ndarray, int, str]:
  """An n-sample record at the spec's rate -> its windows `[W, spec.num_samples, ...]`, the
  samples padded, and a note on how it was fit ('' for a record of the model's length).
  A shorter record must have passed `check_min_length`."""
  n, target, rate = len(signal), spec.num_samples, spec.sample_rate
  seconds = f"{n / rate:.2f} s"
  if n > target and length.long == "window":
    stride = length.stride(spec)
    starts = window_starts(n, target, stride)
    return (np.stack([signal[s:s + target] for s in starts]), 0,
            f"{seconds}: {len(starts)} windows of {target / rate:g} s, {stride / rate:g} s "
            f"apart{' (the last aligned to the end)' if (n - target) % stride else ''}, "
            f"averaged")
  fitted, padded = fit_length(signal, spec)
  if n > target:
    note = f"{seconds}: cropped to {target / rate:g} s from the {spec.crop}"
  else:
    note = f"{seconds}: zero-padded by {padded / rate:.2f} s" if padded else ""
  return fitted[None], padded, note


def check_min_length(n: int, spec: SignalSpec, length: Length | None = None) -> None:
  """Rejects a record too short to pad: below `spec.min_samples`, or below the model's
  length when `length.short` is 'reject'."""
  strict = length is not None and length.short == "reject"
  minimum = spec.num_samples if strict else spec.min_samples
  if n < minimum:
    raise SkipRecord("wrong_duration",
                     f"{n / spec.sample_rate:.2f} s < {minimum / spec.sample_rate:.2f} s"
                     + (" (short='reject')" if strict else ""))


def quantize_uv(signal_mv: np.ndarray) -> tuple[np.ndarray, int]:
  """Millivolts -> int16 microvolts (C order); returns the samples clipped to +-32767 µV
  (symmetric, so every sample counted as clipped is changed, and only those)."""
  uv = np.multiply(signal_mv, 1000.0)
  np.rint(uv, out=uv)
  clipped = np.count_nonzero(uv > INT16_MAX_UV) + np.count_nonzero(uv < -INT16_MAX_UV)
  if clipped:
    np.clip(uv, -INT16_MAX_UV, INT16_MAX_UV, out=uv)
  return uv.astype(np.int16, order="C"), int(clipped)


def prepare(signal_mv: np.ndarray, fs: float, lead_names, spec: SignalSpec,
            length: Length | None = None) -> PreparedSignal:
  """A raw [T, C] millivolt record -> the data contract's int16 [T, 12] µV and lead mask.
  With a `length` (predict, the API): `ecg` is the record's windows [W, T, 12] (one for a
  record cropped or padded) and `note` says how it was fit."""
  signal, mask = to_canonical_leads(signal_mv, lead_names)
  if signal.shape[0] == 0:
    raise SkipRecord("wrong_duration", "no samples")
  repaired = 0
  if not np.isfinite(signal).all():  # one check for the common case: a lead by lead one costs
    mask = drop_dead_leads(signal, mask)  # several times more
    signal, repaired = repair_nonfinite(signal, mask, spec.max_nonfinite_fraction)
  flat, saturated = bad_leads(signal * 1000.0, mask, spec.flat_uv, spec.saturated_fraction)
  if len(flat) > spec.max_flat_leads:
    raise SkipRecord("flat_leads", f"flat: {', '.join(flat)}")
  if len(saturated) > spec.max_saturated_leads:
    raise SkipRecord("saturated_leads", f"saturated: {', '.join(saturated)}")
  signal = resample(signal, fs, spec.sample_rate)
  check_min_length(signal.shape[0], spec, length)  # before filtering (a few dozen samples)
  if spec.bandpass_hz is not None:
    signal = bandpass(signal, spec.sample_rate, *spec.bandpass_hz)
  if length is None:
    (signal, padded), note = fit_length(signal, spec), ""
  else:
    signal, padded, note = fit_windows(signal, spec, length)
  if not mask.all():
    signal[..., ~mask] = 0.0
  ecg, clipped = quantize_uv(signal)
  return PreparedSignal(ecg=ecg, lead_mask=mask, nonfinite_repaired=repaired, clipped=clipped,
                        flat_leads=flat, saturated_leads=saturated, padded_samples=padded,
                        note=note)
