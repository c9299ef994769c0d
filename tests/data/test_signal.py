"""Signal preparation: every step checked against an independent reference (a plain loop, the
analytic signal, scipy called directly, an FFT measurement, or the raw WFDB samples)."""

import glob
import pathlib

import numpy as np
import pytest
import scipy.signal

from ecgclip_jax.data import signal as sig
from ecgclip_jax.data.leads import LEAD_INDEX, LEAD_NAMES
from ecgclip_jax.data.skips import SkipRecord

PTBXL = str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "ptbxl")


def rng_for(request):
  """A fresh generator per test, seeded by the test's name (reproducible, never shared)."""
  return np.random.default_rng(list(request.node.nodeid.encode()))


@pytest.fixture
def rng(request):
  return rng_for(request)


def ptbxl_records(pattern, count):
  files = sorted(glob.glob(f"{PTBXL}/{pattern}"))[:count]
  if len(files) < count:
    pytest.skip(f"shared PTB-XL slice not found under {PTBXL} (needs {count} records)")
  return [f.removesuffix(".hea") for f in files]


def skip_reason(fn, *args, **kwargs):
  with pytest.raises(SkipRecord) as e:
    fn(*args, **kwargs)
  return e.value.reason


def exact_spec(fs, n, **kwargs):
  """A spec that keeps an n-sample record at its rate as it is (no crop, pad or filter)."""
  return sig.SignalSpec(sample_rate=fs, duration_s=n / fs, **kwargs)


# ------------------------------------------------------------------------------------- leads


@pytest.mark.parametrize("spelling, canonical", [
    ("AVR", "aVR"), ("avr", "aVR"), (" aVL ", "aVL"), ("AVF", "aVF"), ("v1", "V1"),
    ("V6", "V6"), ("i", "I"), ("ii", "II"), ("III", "III"), ("\tV3\n", "V3")])
def test_file_spellings_map_to_the_canonical_name(spelling, canonical):
  assert sig.canonical_lead_name(spelling) == canonical


@pytest.mark.parametrize("name", ["-aVR", "V4R", "MLII", "V7", "aVR-", "IIII", "", "X", "V1 V2"])
def test_other_leads_are_not_standard(name):
  assert sig.canonical_lead_name(name) is None


def test_shuffled_leads_land_at_their_canonical_index(rng):
  spellings = ["i", "II", "iii", "AVR", " avl", "aVF", "v1", "V2", "v3", "V4", "V5 ", "v6"]
  order = rng.permutation(12)
  extra = ["MLII", "-aVR", "V4R"]  # dropped wherever they sit
  names = [spellings[i] for i in order] + extra
  x = rng.normal(size=(300, len(names)))
  out, mask = sig.to_canonical_leads(x, names)
  assert out.shape == (300, 12) and mask.all()
  for column, lead in enumerate(order):
    np.testing.assert_array_equal(out[:, lead], x[:, column])


def test_missing_leads_are_zero_and_masked(rng):
  present = ["V2", "I", "aVF", "V6", "II"]
  x = rng.normal(size=(200, len(present)))
  out, mask = sig.to_canonical_leads(x, present)
  assert [LEAD_NAMES[i] for i in np.flatnonzero(mask)] == ["I", "II", "aVF", "V2", "V6"]
  for column, name in enumerate(present):
    np.testing.assert_array_equal(out[:, LEAD_INDEX[name]], x[:, column])
  assert not out[:, ~mask].any()
  # and through prepare(): zeros in the int16 output, False in the mask
  prepared = sig.prepare(x, 100, present, exact_spec(100, 200))
  np.testing.assert_array_equal(prepared.lead_mask, mask)
  assert not prepared.ecg[:, ~mask].any()
  np.testing.assert_array_equal(prepared.ecg[:, LEAD_INDEX["V2"]], np.rint(x[:, 0] * 1000))


@pytest.mark.parametrize("names", [["I", "II", "i"], ["AVR", "aVR", "V1"], ["V1", " v1 "]])
def test_duplicate_leads_are_unsupported(rng, names):
  x = rng.normal(size=(50, len(names)))
  assert skip_reason(sig.to_canonical_leads, x, names) == "unsupported_format"


def test_no_standard_lead_is_unsupported(rng):
  x = rng.normal(size=(50, 3))
  assert skip_reason(sig.to_canonical_leads, x, ["MLII", "V4R", "-aVR"]) == "unsupported_format"
  assert skip_reason(sig.prepare, x, 100, ["MLII", "V5R", "ABP"],
                     sig.SignalSpec()) == "unsupported_format"


def test_names_and_columns_must_agree(rng):
  x = rng.normal(size=(50, 3))
  assert skip_reason(sig.to_canonical_leads, x, ["I", "II"]) == "header_data_mismatch"


# ------------------------------------------------------------------------------- NaN repair


def reference_repair(x, mask):
  """NaN/Inf -> mean of the finite samples within +-6 of it in its lead (0 if none)."""
  out = np.where(mask, x, 0.0)
  for c in np.flatnonzero(mask):
    for t in range(x.shape[0]):
      if not np.isfinite(x[t, c]):
        window = x[max(0, t - 6):t + 7, c]
        finite = window[np.isfinite(window)]
        out[t, c] = finite.mean() if len(finite) else 0.0
  return out


def plant_nonfinite(rng, x, count):
  """NaN/+Inf/-Inf at random places, plus runs at both edges and one run too long to span."""
  t, c = x.shape
  x = x.copy()
  x[0:3, 1] = np.nan
  x[t - 2:, 4] = np.inf
  x[100:118, 7] = np.nan  # 18 in a row: the middle ones have no finite sample within +-6
  flat = rng.choice(t * c, size=count, replace=False)
  x.flat[flat] = rng.choice([np.nan, np.inf, -np.inf], size=count)
  return x


def test_nonfinite_repair_equals_the_reference_loop(rng):
  x = plant_nonfinite(rng, rng.normal(size=(1000, 12)), count=40)
  mask = np.ones(12, bool)
  mask[[2, 9]] = False
  x[:, ~mask] = 0.0
  bad = int((~np.isfinite(x)).sum())
  repaired, count = sig.repair_nonfinite(x, mask, max_fraction=0.02)
  assert count == bad > 40
  np.testing.assert_allclose(repaired, reference_repair(x, mask), rtol=0, atol=1e-12)
  assert np.all(repaired[110, 7] == 0.0)  # no finite neighbour within 6: zero
  # end to end: the int16 record is the reference rounded to microvolts
  prepared = sig.prepare(x[:, mask], 250, [n for n, m in zip(LEAD_NAMES, mask) if m],
                         exact_spec(250, 1000, max_nonfinite_fraction=0.02))
  assert prepared.nonfinite_repaired == bad
  np.testing.assert_array_equal(prepared.ecg, np.rint(reference_repair(x, mask) * 1000))


def test_nonfinite_cap(rng):
  t = 1000
  x = rng.normal(size=(t, 12))
  cap = 0.01 * t * 12  # 120 samples
  at_cap = x.copy()
  at_cap.flat[rng.choice(x.size, size=int(cap), replace=False)] = np.nan
  _, count = sig.repair_nonfinite(at_cap, np.ones(12, bool), 0.01)
  assert count == cap
  over = at_cap.copy()
  over.flat[np.flatnonzero(np.isfinite(over))[rng.integers(x.size - cap)]] = np.inf
  assert skip_reason(sig.repair_nonfinite, over, np.ones(12, bool), 0.01) == "too_many_nonfinite"
  assert skip_reason(sig.prepare, over, 500, LEAD_NAMES,
                     sig.SignalSpec(duration_s=2.0)) == "too_many_nonfinite"


def test_missing_leads_do_not_count_toward_the_cap(rng):
  # Three present leads: the cap is 1% of their 3000 samples (30), not of 12 leads' 12000.
  names = ["II", "V1", "V5", "MLII"]
  x = rng.normal(size=(1000, 4))
  x[:, 3] = np.nan  # a non-standard lead: dropped, never counted
  idx = rng.choice(3000, size=30, replace=False)
  x[idx % 1000, idx // 1000] = np.nan
  spec = exact_spec(500, 1000)
  assert sig.prepare(x, 500, names, spec).nonfinite_repaired == 30
  x[np.flatnonzero(np.isfinite(x[:, 0]))[0], 0] = np.nan
  assert skip_reason(sig.prepare, x, 500, names, spec) == "too_many_nonfinite"


# ----------------------------------------------------------------------- flat and saturated


def read_ptbxl(record):
  wfdb = pytest.importorskip("wfdb")
  x, fields = wfdb.rdsamp(record)
  return x, fields


def test_clipped_and_constant_leads_on_a_real_record():
  (record,) = ptbxl_records("records500/00000/*_hr.hea", 1)
  x, fields = read_ptbxl(record)
  names = fields["sig_name"]
  clean_flat, clean_sat = sig.bad_leads(np.rint(x * 1000), np.ones(12, bool), 10.0, 0.05)
  assert clean_flat == clean_sat == ()
  y = x.copy()
  # An amplifier pinned at its +1 mV rail for 1.5 s of 10 s (an electrode shifting the
  # baseline by 3 mV): lead V2 is saturated.
  y[2000:2750, 7] += 3.0
  y[:, 7] = np.clip(y[:, 7], None, 1.0)
  # The R peaks of lead II clipped at 60% of the lead's maximum: detected once the share of
  # samples on the rail reaches `saturated_fraction`.
  rail = 0.6 * x[:, 1].max()
  y[:, 1] = np.clip(x[:, 1], None, rail)
  share_on_rail = np.mean(y[:, 1] == rail)
  assert 0.005 < share_on_rail < 0.05
  y[:, 10] = 0.25  # V5: a constant lead (an unplugged electrode)
  spec = sig.SignalSpec(saturated_fraction=share_on_rail)
  prepared = sig.prepare(y, 500, names, spec)
  assert prepared.flat_leads == ("V5",)
  assert prepared.saturated_leads == ("II", "V2")
  default = sig.prepare(y, 500, names, sig.SignalSpec())
  assert default.saturated_leads == ("V2",)  # 60% clipping of narrow peaks is below 5%
  # The unclipped record at that low threshold: nothing.
  assert sig.prepare(x, 500, names, spec).saturated_leads == ()


def test_flat_and_saturated_limits(rng):
  fs, t = 250, 2500
  x = np.cumsum(rng.normal(scale=0.05, size=(t, 12)), axis=0)  # a wandering, busy signal
  x -= x.mean(axis=0)
  x[:, :3] = 1e-3 * rng.integers(0, 9, size=(t, 3))  # peak-to-peak < 10 µV: flat
  spec = exact_spec(fs, t)
  assert sig.prepare(x[:, 1:], fs, LEAD_NAMES[1:], spec).flat_leads == ("II", "III")
  assert skip_reason(sig.prepare, x, fs, LEAD_NAMES, spec) == "flat_leads"
  assert sig.prepare(x, fs, LEAD_NAMES, exact_spec(fs, t, max_flat_leads=3)).flat_leads == (
      "I", "II", "III")
  y = x.copy()
  y[:, :3] = rng.normal(size=(t, 3))
  for lead in (5, 8, 11):  # saturated at the low rail for 20% of the record
    y[:, lead] = np.maximum(y[:, lead], np.quantile(y[:, lead], 0.2))
  assert skip_reason(sig.prepare, y, fs, LEAD_NAMES, spec) == "saturated_leads"
  prepared = sig.prepare(y, fs, LEAD_NAMES, exact_spec(fs, t, max_saturated_leads=3))
  assert prepared.saturated_leads == ("aVF", "V3", "V6") and prepared.flat_leads == ()
  assert sig.prepare(y[:, :-1], fs, LEAD_NAMES[:-1], spec).saturated_leads == ("aVF", "V3")


def test_samples_on_the_rails_count_lead_by_lead(rng):
  """A lead is saturated by its own samples at its extremes, never by those of all leads
  together (the sum over leads is only a bound that lets a clean record skip the count)."""
  t = 1000
  minimum = round(0.05 * t)
  x = rng.normal(size=(t, 12))
  spread = x.copy()
  for lead in range(12):  # 12 x 40 samples at the low rails: 480 in all, 40 in any lead
    spread[rng.choice(t, minimum - 10, replace=False), lead] = -5.0
  assert sig.bad_leads(spread * 1000, np.ones(12, bool), 10.0, 0.05) == ((), ())
  for on_rail, expected in ((minimum - 1, ()), (minimum, ("V1",))):
    y = x.copy()
    y[rng.choice(t, on_rail, replace=False), LEAD_INDEX["V1"]] = 5.0
    assert sig.bad_leads(y * 1000, np.ones(12, bool), 10.0, 0.05) == ((), expected)
    alone = np.zeros(12, bool)
    alone[LEAD_INDEX["V1"]] = True
    assert sig.bad_leads(y * 1000, alone, 10.0, 0.05) == ((), expected)


def test_real_ptbxl_records_give_no_false_flat_or_saturated_leads():
  """The default thresholds on 50 real 500 Hz records (no lead is flagged; the most samples any
  lead has at its own extreme in the shared slice is 1.3%, against the 5% threshold)."""
  spec = sig.SignalSpec()
  worst = 0.0
  for record in ptbxl_records("records500/*/*_hr.hea", 50):
    x, fields = read_ptbxl(record)
    prepared = sig.prepare(x, fields["fs"], fields["sig_name"], spec)
    assert prepared.flat_leads == () and prepared.saturated_leads == (), record
    uv = np.rint(x * 1000)
    worst = max(worst, max(np.mean(uv == uv.min(0), 0).max(), np.mean(uv == uv.max(0), 0).max()))
  assert worst < spec.saturated_fraction / 2


# ------------------------------------------------------------------------------- resampling


def sines(t, freqs, amps, phases):
  return sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in zip(freqs, amps, phases))


@pytest.mark.parametrize("fs_in, fs_out, up, down", [
    (257, 500, 500, 257), (1000, 500, 1, 2), (500, 100, 1, 5), (100, 500, 5, 1), (250, 100, 2, 5),
    (97.65625, 100, 128, 125)])  # 97.65625 Hz = 3125/32: a rational rate, not an integer
def test_resampling_matches_the_analytic_signal_and_scipy(rng, fs_in, fs_out, up, down):
  nyquist = min(fs_in, fs_out) / 2
  freqs = rng.uniform(0.5, 0.75 * nyquist, size=4)
  amps = rng.uniform(0.2, 1.0, size=4)
  phases = rng.uniform(0, 2 * np.pi, size=4)
  duration = 10.0
  t_in = np.arange(round(duration * fs_in)) / fs_in
  x = np.stack([sines(t_in, freqs, amps, phases), -sines(t_in, freqs[::-1], amps, phases)], 1)
  y = sig.resample(x, fs_in, fs_out)
  assert y.shape == (-(-len(t_in) * up // down), 2)
  t_out = np.arange(y.shape[0]) / fs_out
  expected = np.stack([sines(t_out, freqs, amps, phases),
                       -sines(t_out, freqs[::-1], amps, phases)], 1)
  inner = slice(fs_out, -fs_out)  # 1 s from either edge, where the zero padding reaches
  error = np.abs(y[inner] - expected[inner]).max()
  assert error < 0.01 * amps.sum(), error  # below 1% of the peak amplitude
  np.testing.assert_array_equal(y, scipy.signal.resample_poly(x, up, down, axis=0))


def test_equal_rates_are_a_no_op_and_bad_rates_are_metadata(rng):
  x = rng.normal(size=(100, 3))
  assert sig.resample(x, 500.0, 500) is x
  for fs in (0, -250, float("nan"), float("inf")):
    assert skip_reason(sig.resample, x, fs, 500) == "missing_metadata"
  assert skip_reason(sig.prepare, x, float("nan"), ["I", "II", "V1"],
                     sig.SignalSpec()) == "missing_metadata"


def test_prepare_resamples_then_crops(rng):
  fs_in, n = 257, 2570 + 57  # 10.22 s
  x = rng.normal(size=(n, 12))
  prepared = sig.prepare(x, fs_in, LEAD_NAMES, sig.SignalSpec(sample_rate=500, duration_s=10))
  expected = scipy.signal.resample_poly(x, 500, 257, axis=0)[:5000]
  assert prepared.ecg.shape == (5000, 12)
  np.testing.assert_array_equal(prepared.ecg, np.rint(expected * 1000))


# ---------------------------------------------------------------------------------- filters


def amplitude(x, fs, freq):
  """Amplitude of the `freq` component, from an FFT over a whole number of its periods."""
  spectrum = np.fft.rfft(x) / len(x) * 2
  return np.abs(spectrum[round(freq * len(x) / fs)])


def test_high_pass_removes_baseline_wander_and_keeps_the_tone(rng):
  fs, seconds = 250, 60
  t = np.arange(fs * seconds) / fs
  wander = 1.5 * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 6))
  tone = 0.8 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 6))
  y = sig.bandpass((wander + tone)[:, None], fs, 0.5, None)[:, 0]
  middle = slice(10 * fs, 50 * fs)  # 40 s: 4 periods of the wander, away from the edges
  assert amplitude(wander[middle], fs, 0.1) == pytest.approx(1.5, rel=1e-3)
  # Order-3 Butterworth at 0.5 Hz, run forwards and backwards: (0.1/0.5)^6 = 1/15625 at
  # 0.1 Hz. Asked of it here: at least 1000x weaker.
  assert amplitude(y[middle], fs, 0.1) < 1.5 / 1000
  assert amplitude(y[middle], fs, 10) == pytest.approx(0.8, rel=1e-3)
  np.testing.assert_allclose(y[middle], tone[middle], atol=0.005)
  # Through prepare(): the spec's (low, None) is a high-pass.
  prepared = sig.prepare(np.stack([wander + tone] * 2, 1), fs, ["I", "V1"],
                         sig.SignalSpec(sample_rate=fs, duration_s=seconds,
                                        bandpass_hz=(0.5, None)))
  np.testing.assert_allclose(prepared.ecg[middle, 0] / 1000, tone[middle], atol=0.006)


def test_filters_are_zero_phase(rng):
  fs = 500
  x = rng.normal(size=(20 * fs, 1))
  lags = np.arange(-50, 51)

  def peak_lag(y):
    xc = [np.dot(x[100:-100, 0], y[100 + k:len(y) - 100 + k, 0]) for k in lags]
    return lags[int(np.argmax(xc))]

  for low, high in [(0.5, 40), (0.5, None), (None, 40), (5.0, 15.0)]:
    assert peak_lag(sig.bandpass(x, fs, low, high)) == 0, (low, high)
  # The same filter run forwards only (causal) lags: the check can tell the difference.
  sos = scipy.signal.butter(3, (5.0, 15.0), "bandpass", fs=fs, output="sos")
  assert peak_lag(scipy.signal.sosfilt(sos, x, axis=0)) > 5


def test_band_pass_stop_bands_and_nyquist(rng):
  fs, seconds = 500, 20
  t = np.arange(fs * seconds) / fs
  x = (np.sin(2 * np.pi * 10 * t) + np.sin(2 * np.pi * 100 * t) + np.sin(2 * np.pi * 0.1 * t))
  y = sig.bandpass(x[:, None], fs, 0.5, 40)[:, 0]
  middle = slice(5 * fs, 15 * fs)
  assert amplitude(y[middle], fs, 10) == pytest.approx(1, rel=0.01)
  assert amplitude(y[middle], fs, 100) < 0.02  # (40/100)^6 ~ 0.004
  assert amplitude(y[middle], fs, 0.1) < 0.01
  # A high edge at or above Nyquist has nothing to remove: it is the high-pass alone.
  np.testing.assert_array_equal(sig.bandpass(x[:, None], fs, 0.5, 250),
                                sig.bandpass(x[:, None], fs, 0.5, None))
  untouched = x[:, None]
  assert sig.bandpass(untouched, fs, None, None) is untouched


# ------------------------------------------------------------------------------ crop and pad


def test_crop_from_the_start_and_from_the_centre(rng):
  fs = 100
  x = rng.normal(size=(1201, 12))
  start = sig.prepare(x, fs, LEAD_NAMES, sig.SignalSpec(sample_rate=fs, duration_s=10))
  np.testing.assert_array_equal(start.ecg, np.rint(x[:1000] * 1000))
  assert start.padded_samples == 0
  center = sig.prepare(x, fs, LEAD_NAMES,
                       sig.SignalSpec(sample_rate=fs, duration_s=10, crop="center"))
  np.testing.assert_array_equal(center.ecg, np.rint(x[100:1100] * 1000))
  with pytest.raises(ValueError):
    sig.SignalSpec(crop="end")


def test_short_records_are_skipped_or_padded(rng):
  fs = 100
  spec = sig.SignalSpec(sample_rate=fs, duration_s=10, min_duration_s=8)
  assert skip_reason(sig.prepare, rng.normal(size=(799, 12)), fs, LEAD_NAMES,
                     spec) == "wrong_duration"
  x = rng.normal(size=(800, 12))
  prepared = sig.prepare(x[:, :6], fs, LEAD_NAMES[:6], spec)
  assert prepared.padded_samples == 200 and prepared.ecg.shape == (1000, 12)
  np.testing.assert_array_equal(prepared.ecg[:800, :6], np.rint(x[:, :6] * 1000))
  assert not prepared.ecg[800:].any() and not prepared.ecg[:, 6:].any()


def test_default_minimum_is_99_percent_of_the_duration(rng):
  spec = sig.SignalSpec(sample_rate=100, duration_s=10)
  assert spec.min_duration_s is None and spec.min_samples == 990
  assert sig.prepare(rng.normal(size=(990, 2)), 100, ["I", "II"], spec).padded_samples == 10
  assert skip_reason(sig.prepare, rng.normal(size=(989, 2)), 100, ["I", "II"],
                     spec) == "wrong_duration"
  assert sig.SignalSpec(sample_rate=500, duration_s=10).min_samples == 4950
  # judged after resampling: 2545 samples at 257 Hz (9.903 s) give ceil(2545 * 500 / 257) =
  # 4952 samples at 500 Hz, long enough; 2544 give 4950, the least that is
  spec = sig.SignalSpec(sample_rate=500)
  assert sig.prepare(rng.normal(size=(2545, 2)), 257, ["I", "II"], spec).padded_samples == 48
  assert sig.prepare(rng.normal(size=(2544, 2)), 257, ["I", "II"], spec).padded_samples == 50
  assert skip_reason(sig.prepare, rng.normal(size=(2543, 2)), 257, ["I", "II"],
                     spec) == "wrong_duration"


@pytest.mark.parametrize("n, stride, starts", [
    (1000, 1000, [0]), (700, 1000, [0]), (2000, 1000, [0, 1000]),
    (2500, 1000, [0, 1000, 1500]),  # the tail gets a window aligned to the end
    (1500, 250, [0, 250, 500]), (1600, 400, [0, 400, 600]), (1001, 1, [0, 1])])
def test_window_starts_cover_every_sample(n, stride, starts):
  assert sig.window_starts(n, 1000, stride) == starts
  covered = np.zeros(n, bool)
  for start in starts:
    covered[start:start + 1000] = True
  assert covered.all()


def test_longer_records_as_windows_or_cropped_as_a_build_crops(rng):
  fs = 100
  spec = sig.SignalSpec(sample_rate=fs, duration_s=10)
  x = rng.normal(size=(2500, 12))
  windows = sig.prepare(x, fs, LEAD_NAMES, spec, sig.Length(long="window"))
  assert windows.ecg.shape == (3, 1000, 12) and windows.padded_samples == 0
  for window, start in zip(windows.ecg, (0, 1000, 1500)):
    np.testing.assert_array_equal(window, np.rint(x[start:start + 1000] * 1000))
  assert windows.fit() == {"windows": 3, "padded_samples": 0, "note": (
      "25.00 s: 3 windows of 10 s, 10 s apart (the last aligned to the end), averaged")}
  overlap = sig.prepare(x[:1500], fs, LEAD_NAMES, spec,
                        sig.Length(long="window", window_stride_s=2.5))
  assert overlap.note == "15.00 s: 3 windows of 10 s, 2.5 s apart, averaged"
  np.testing.assert_array_equal(overlap.ecg[1], np.rint(x[250:1250] * 1000))
  # long="crop" is the build's own crop, as one window.
  for crop in ("start", "center"):
    crop_spec = sig.SignalSpec(sample_rate=fs, duration_s=10, crop=crop)
    cropped = sig.prepare(x, fs, LEAD_NAMES, crop_spec, sig.Length())
    np.testing.assert_array_equal(cropped.ecg, sig.prepare(x, fs, LEAD_NAMES, crop_spec).ecg[None])
    assert cropped.note == f"25.00 s: cropped to 10 s from the {crop}"
  exact = sig.prepare(x[:1000], fs, LEAD_NAMES, spec, sig.Length(long="window"))
  assert exact.fit() == {"windows": 1, "padded_samples": 0, "note": ""}


def test_shorter_records_padded_or_rejected(rng):
  fs = 100
  spec = sig.SignalSpec(sample_rate=fs, duration_s=10, min_duration_s=8)
  x = rng.normal(size=(900, 12))
  padded = sig.prepare(x, fs, LEAD_NAMES, spec, sig.Length(long="window", short="pad"))
  assert padded.fit() == {"windows": 1, "padded_samples": 100,
                          "note": "9.00 s: zero-padded by 1.00 s"}
  np.testing.assert_array_equal(padded.ecg[0], sig.prepare(x, fs, LEAD_NAMES, spec).ecg)
  with pytest.raises(SkipRecord, match=r"9.00 s < 10.00 s \(short='reject'\)") as e:
    sig.prepare(x, fs, LEAD_NAMES, spec, sig.Length(short="reject"))
  assert e.value.reason == "wrong_duration"
  # Padding keeps the build's minimum.
  assert skip_reason(sig.prepare, x[:799], fs, LEAD_NAMES, spec, sig.Length()) == "wrong_duration"


def test_length_options_are_checked():
  with pytest.raises(ValueError, match="long must be one of"):
    sig.Length(long="slide")
  with pytest.raises(ValueError, match="short must be one of"):
    sig.Length(short="drop")
  with pytest.raises(ValueError, match="window_stride_s needs long='window'"):
    sig.Length(window_stride_s=5)
  with pytest.raises(ValueError, match="must be positive"):
    sig.Length(long="window", window_stride_s=0)


def test_records_too_short_for_the_filter_are_wrong_duration(rng):
  spec = sig.SignalSpec(sample_rate=100, duration_s=10, bandpass_hz=(0.5, 40))
  for n in (0, 1, 5, 20):
    assert skip_reason(sig.prepare, rng.normal(size=(n, 2)), 100, ["I", "II"],
                       spec) == "wrong_duration"


# ------------------------------------------------------------------------------ quantization


def test_quantization_rounds_to_the_nearest_microvolt_and_counts_clipping(rng):
  x = rng.uniform(-5, 5, size=(500, 12))
  big = rng.choice(x.size, size=17, replace=False)
  x.flat[big] = rng.choice([-1, 1], size=17) * rng.uniform(32.8, 80, size=17)
  x.flat[0], x.flat[1], x.flat[2] = 32.767, -32.767, -32.7684  # on and just past the edges
  uv, clipped = sig.quantize_uv(x)
  assert uv.dtype == np.int16 and clipped == 18
  expected = np.floor(x * 1000 + 0.5)  # round half up: no random draw sits on a half
  inside = np.abs(expected) <= 32767
  np.testing.assert_array_equal(uv[inside], expected[inside])
  np.testing.assert_array_equal(uv[~inside], np.sign(expected[~inside]) * 32767)
  assert np.abs(uv - x * 1000)[inside].max() <= 0.5
  prepared = sig.prepare(x, 50, LEAD_NAMES, exact_spec(50, 500))
  assert prepared.clipped == 18
  np.testing.assert_array_equal(prepared.ecg, uv)
  # Preparation works lead by lead (Fortran order); what it returns is in C order, as the
  # contract's bytes are laid out, whatever the input's order.
  for record in (x, np.asfortranarray(x)):
    ecg = sig.prepare(record, 50, LEAD_NAMES, exact_spec(50, 500)).ecg
    assert ecg.flags.c_contiguous
    np.testing.assert_array_equal(ecg, uv)


# ----------------------------------------------------------------------------- real records


@pytest.mark.parametrize("pattern, fs", [("records500/00000/*_hr.hea", 500),
                                         ("records100/00000/*_lr.hea", 100)])
def test_prepare_reproduces_real_ptbxl_records(rng, pattern, fs):
  for record in ptbxl_records(pattern, 3):
    x, fields = read_ptbxl(record)
    assert fields["fs"] == fs and fields["sig_len"] == 10 * fs
    order = rng.permutation(12)
    names = [fields["sig_name"][i] for i in order]
    assert "AVR" in names  # PTB-XL's own spelling
    prepared = sig.prepare(x[:, order], fs, names, sig.SignalSpec(sample_rate=fs))
    assert prepared.lead_mask.all() and prepared.padded_samples == prepared.clipped == 0
    assert prepared.ecg.flags.c_contiguous
    # PTB-XL's header order is the canonical one
    assert [sig.canonical_lead_name(n) for n in fields["sig_name"]] == list(LEAD_NAMES)
    assert np.abs(prepared.ecg - x * 1000).max() <= 0.5


def test_spec_from_json_values():
  spec = sig.SignalSpec(sample_rate=250, bandpass_hz=[0.5, None])  # as json.loads gives it
  assert spec.bandpass_hz == (0.5, None) and spec.num_samples == 2500
  hash(spec)
  with pytest.raises(ValueError):
    sig.SignalSpec(bandpass_hz=[0.5])
  with pytest.raises(ValueError):
    sig.SignalSpec(sample_rate=0)
