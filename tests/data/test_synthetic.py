"""The synthetic corpus: its waveforms must show, when measured, what its labels claim.

Every property is measured from the signal with small, independent DSP (R peaks from slope
energy, QRS bounds from spatial velocity, P onset from lead II, ST level at J + 20 ms), never
read from the generator's fiducials; the fiducials (annotations) are checked against the
measurements instead.
"""

import re

import numpy as np
import pytest
from scipy import signal

from ecgclip_jax.data import contract, synthetic, synthetic_reports
from ecgclip_jax.data.leads import LEAD_INDEX, LEAD_NAMES

L = {name: i for i, name in enumerate(synthetic.LABEL_NAMES)}
STE = ("st_elevation_inferior", "st_elevation_anterior", "st_elevation_lateral")
CLEAN_FS, NOISY_FS = 250, 100


# ----------------------------------------------------------------------------- measurements


def velocity(ecg, fs):
  """Spatial velocity (mV/s): how fast the 12-lead vector moves."""
  return np.r_[0, np.linalg.norm(np.diff(ecg, axis=0), axis=1)] * fs


def r_peaks(ecg, fs):
  """QRS complexes: peaks of the 120 ms moving energy of the band-passed slope, with
  Pan-Tompkins' T-wave rule (within 360 ms of a beat, a peak needs half its energy)."""
  x = signal.sosfiltfilt(signal.butter(2, [0.5, 30], "bandpass", fs=fs, output="sos"), ecg, axis=0)
  k = int(0.12 * fs)
  energy = np.convolve((np.diff(x, axis=0) ** 2).sum(1), np.ones(k) / k, mode="same")
  candidates, props = signal.find_peaks(energy, distance=int(0.25 * fs), height=0)
  h = props["peak_heights"]
  threshold = 0.3 * np.median(np.sort(h)[-max(1, int(len(ecg) / fs / 2)):])  # QRSs at >= 40 bpm
  peaks = []
  for p, height in zip(candidates, h):
    t_wave_like = peaks and p - peaks[-1] < 0.36 * fs and height < 0.5 * energy[peaks[-1]]
    if height > threshold and not t_wave_like:
      peaks.append(p)
  if len(peaks) > 2 and energy[peaks[0]] < 0.5 * np.median(energy[peaks[1:]]):
    peaks.pop(0)  # the T wave of a beat before the record began
  v, w = velocity(ecg, fs), int(0.08 * fs)  # snap to the steepest point; skip cut-off beats
  return np.array([p - w + np.argmax(v[p - w:p + w]) for p in peaks if w <= p <= len(v) - w])


def heart_rate(ecg, fs):
  r = r_peaks(ecg, fs)
  return 60 * (len(r) - 1) / ((r[-1] - r[0]) / fs)


def rr_irregularity(ecg, fs):
  """RMS of successive RR differences over mean RR."""
  rr = np.diff(r_peaks(ecg, fs)) / fs
  return np.sqrt(np.mean(np.diff(rr) ** 2)) / rr.mean()


def _walk(active, i, step, gap):
  while (active[i + 1:i + 1 + gap] if step > 0 else active[max(i - gap, 0):i]).any():
    i += step
  return i


def qrs_bounds(ecg, fs, r):
  """QRS onset and offset around peak `r`: where spatial velocity settles below 3 mV/s."""
  active, gap = velocity(ecg, fs) > 3.0, max(1, int(0.012 * fs))
  return _walk(active, r, -1, gap), _walk(active, r, 1, gap)


def inner_beats(ecg, fs):
  """R peaks far enough from the edges to measure P, QRS and ST around them."""
  margin = int(0.6 * fs)
  return [r for r in r_peaks(ecg, fs) if margin <= r < len(ecg) - margin]


def qrs_ms(ecg, fs):
  widths = [np.subtract(*qrs_bounds(ecg, fs, r)[::-1]) for r in inner_beats(ecg, fs)]
  return np.median(widths) / fs * 1e3


def pr_ms(ecg, fs):
  """P onset (back from the P peak of lead II to 10% of it) to QRS onset; needs a slow rate."""
  x, out = ecg[:, LEAD_INDEX["II"]], []
  for r in inner_beats(ecg, fs):
    onset, _ = qrs_bounds(ecg, fs, r)
    seg = x[onset - int(0.4 * fs):onset - int(0.02 * fs)]
    seg = np.abs(seg - np.median(seg))
    i = np.argmax(seg)
    peak = seg[i]
    while i > 0 and seg[i] > 0.1 * peak:
      i -= 1
    out.append((len(seg) - i) / fs * 1e3 + 20)
  return np.median(out)


def _per_beat(ecg, fs, fn):
  out = []
  for r in inner_beats(ecg, fs):
    onset, offset = qrs_bounds(ecg, fs, r)
    baseline = np.median(ecg[onset - int(0.012 * fs):onset - int(0.002 * fs) + 1], axis=0)
    out.append(fn(ecg - baseline, onset, offset))
  return np.median(out, axis=0)


def qrs_extremes(ecg, fs):
  """[2, 12] median per-lead QRS maximum and minimum, from the PR-segment baseline."""
  return _per_beat(ecg, fs, lambda x, on, off: np.stack([x[on:off + 1].max(0),
                                                         x[on:off + 1].min(0)]))


def st_levels(ecg, fs):
  """[12] median ST level at J + 20 ms (J + 40 would meet the T wave at fast rates)."""
  return _per_beat(ecg, fs, lambda x, on, off: x[off + int(0.02 * fs)])


# ----------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def noisy():
  return synthetic.generate_corpus(120, NOISY_FS, 10.0, seed=0)


@pytest.fixture(scope="module")
def cohort():
  """Many patients, half-second records: for label and report statistics."""
  return synthetic.generate_corpus(600, 100, 0.5, seed=2)


@pytest.fixture(scope="module")
def clean_all():
  return synthetic.generate_corpus(140, CLEAN_FS, 6.0, seed=1, noise=False)


@pytest.fixture(scope="module")
def clean(clean_all):
  """Noise-free, without AF (f-waves move every baseline) and without PVCs (medians over the
  few beats of a short record would mix in ectopic ones); both have tests of their own."""
  return [r for r in clean_all
          if not has(r, "atrial_fibrillation", "premature_ventricular_complexes")]


def has(record, *names):
  return any(record.labels[L[n]] for n in names)


def clean_of(names, sample_rate=CLEAN_FS, duration_s=6.0, seed=7):
  """Noise-free records, one per label-name tuple."""
  return synthetic.synthesize(np.stack([synthetic.labels_of(*n) for n in names]),
                              sample_rate, duration_s, seed=seed, noise=False)


# ----------------------------------------------------------------------------- contract


def test_records_follow_the_data_contract(noisy):
  r = noisy[0]
  assert r.ecg.shape == (10 * NOISY_FS, 12) and r.ecg.dtype == np.float32
  assert r.labels.shape == (13,) and r.labels.dtype == bool
  assert r.ecg_uv.dtype == np.int16
  microvolts = np.rint(r.ecg.astype(np.float64) * 1000)
  np.testing.assert_array_equal(r.ecg_uv, np.clip(microvolts, -32768, 32767))
  assert len({x.record_id for x in noisy}) == len(noisy)
  per_patient = np.unique([x.patient_id for x in noisy], return_counts=True)[1]
  assert len(per_patient) == 120 and per_patient.min() >= 1 and per_patient.max() <= 4
  assert all(18 <= x.age <= 100 and x.sex in (0, 1) and x.report for x in noisy)


def test_same_seed_same_bits_other_seed_other_corpus():
  a, b = (synthetic.generate_corpus(6, 100, 3.0, seed=3) for _ in range(2))
  c = synthetic.generate_corpus(6, 100, 3.0, seed=4)
  assert [x.record_id for x in a] == [x.record_id for x in b]
  for x, y in zip(a, b):
    assert np.array_equal(x.ecg, y.ecg) and x.report == y.report
    assert x.annotations == y.annotations and np.array_equal(x.labels, y.labels)
  assert not np.array_equal(a[0].ecg, c[0].ecg)
  assert [x.report for x in a] != [x.report for x in c]


def test_limb_leads_obey_einthoven_and_goldberger(noisy):
  e = np.stack([r.ecg for r in noisy[:40]]).astype(np.float64)
  lead = {name: e[..., i] for i, name in enumerate(LEAD_NAMES)}
  for derived, value in (("III", lead["II"] - lead["I"]), ("aVR", -(lead["I"] + lead["II"]) / 2),
                         ("aVL", lead["I"] - lead["II"] / 2), ("aVF", lead["II"] - lead["I"] / 2)):
    np.testing.assert_allclose(lead[derived], value, atol=1e-5)


def test_labels_are_clinically_plausible(cohort):
  labels = np.stack([r.labels for r in cohort])
  assert all(not synthetic.label_violations(row) for row in labels)
  assert (labels[:, :4].sum(1) == 1).all()
  normal = labels[:, L["normal_sinus_rhythm"]] & (labels.sum(1) == 1)
  assert 0.3 <= normal.mean() <= 0.45
  assert (labels.mean(0) > 0.01).all()  # every finding is represented
  # Chronic findings persist from one record of a patient to the next.
  same_patient = np.array([a.patient_id == b.patient_id for a, b in zip(cohort, cohort[1:])])
  for name in ("left_bundle_branch_block", "left_ventricular_hypertrophy"):
    before, after = labels[:-1, L[name]] & same_patient, labels[1:, L[name]]
    assert after[before].mean() > 0.7


def test_synthesize_refuses_implausible_labels():
  with pytest.raises(ValueError, match="AF has no PR"):
    synthetic.synthesize(synthetic.labels_of("atrial_fibrillation", "first_degree_av_block"), 100)
  with pytest.raises(ValueError, match="exactly one rhythm"):
    synthetic.synthesize(synthetic.labels_of("left_bundle_branch_block"), 100)


# ----------------------------------------------------------------------------- rhythm


@pytest.mark.parametrize("name, low, high", [("normal_sinus_rhythm", 60, 100),
                                              ("sinus_bradycardia", 0, 60),
                                              ("sinus_tachycardia", 100, 250)])
def test_measured_rate_matches_the_rhythm(noisy, clean, name, low, high):
  """Without PVCs: the simple detector's energy rules can drop an early ectopic beat."""
  for records, fs, needed in ((clean, CLEAN_FS, 1.0), (noisy, NOISY_FS, 0.9)):
    rates = np.array([heart_rate(r.ecg, fs) for r in records
                      if has(r, name) and not has(r, "premature_ventricular_complexes")])
    assert len(rates) >= 5
    assert np.mean((rates > low) & (rates < high)) >= needed, (name, fs, np.sort(rates))


def test_af_is_irregularly_irregular_and_sinus_is_not(noisy):
  no_pvc = [r for r in noisy if not has(r, "premature_ventricular_complexes")]
  measure = lambda fibrillating: np.array([rr_irregularity(r.ecg, NOISY_FS) for r in no_pvc
                                           if has(r, "atrial_fibrillation") == fibrillating])
  af, sinus = measure(True), measure(False)
  assert len(af) >= 5 and np.mean(af > 0.08) >= 0.95
  assert np.mean(sinus < 0.06) >= 0.95


def test_af_has_fibrillatory_waves_instead_of_p_waves():
  """Before each QRS, lead II repeats beat after beat in sinus rhythm (P waves are locked to
  the QRS) and not in AF; with the average QRS-T taken out, AF's V1 oscillates at 4-9 Hz."""
  fs = CLEAN_FS
  records = clean_of([("atrial_fibrillation",)] * 8 + [("normal_sinus_rhythm",)] * 6, duration_s=10)
  before = np.arange(-int(0.25 * fs), -int(0.1 * fs))  # the P wave, clear of the last T
  lead_in, lead_out = int(0.1 * fs), int(0.45 * fs)
  slow = 0
  for r in records:
    peaks = inner_beats(r.ecg, fs)
    ii = np.stack([r.ecg[p + before, LEAD_INDEX["II"]] for p in peaks]).astype(np.float64)
    ii -= ii.mean(1, keepdims=True)
    ii /= np.linalg.norm(ii, axis=1, keepdims=True)
    locked = (np.sum(ii @ ii.T) - len(ii)) / (len(ii) * (len(ii) - 1))  # mean correlation
    if not has(r, "atrial_fibrillation"):
      assert locked > 0.9
      continue
    assert locked < 0.75
    if heart_rate(r.ecg, fs) > 120:  # faster, the QRS-T residue outweighs the f-waves
      continue
    slow += 1
    v1 = r.ecg[:, LEAD_INDEX["V1"]].astype(np.float64)
    beat = np.mean([v1[p - lead_in:p + lead_out] for p in peaks], axis=0)
    rest = v1.copy()
    for p, following in zip(peaks, peaks[1:] + [len(v1) + lead_in]):
      n = min(lead_in + lead_out, following - p)  # up to the next beat's QRS
      rest[p - lead_in:p - lead_in + n] -= beat[:n]
    rest = signal.detrend(rest[peaks[0] - lead_in:peaks[-1] + lead_out])
    freqs, power = signal.periodogram(rest, fs)
    assert 4 <= freqs[np.argmax(power)] <= 9, r.report
  assert slow >= 3


def test_pvcs_are_premature_wide_and_followed_by_a_compensatory_pause():
  fs = CLEAN_FS
  for r in clean_of([("normal_sinus_rhythm", "premature_ventricular_complexes")] * 6,
                    duration_s=10):
    bounds = np.array([qrs_bounds(r.ecg, fs, p) for p in r_peaks(r.ecg, fs)])
    wide = np.diff(bounds, axis=1)[:, 0] / fs >= 0.12
    rr = np.diff(bounds[:, 0]) / fs  # onset to onset: a wide beat's peak comes late
    ectopic = [k for k in np.flatnonzero(wide) if 0 < k < len(rr)]
    assert ectopic, r.report
    sinus = [rr[k] for k in range(len(rr)) if not wide[k] and not wide[k + 1]]
    around = np.array([rr[k - 1] + rr[k] for k in ectopic])
    basic = np.median(sinus) if sinus else np.median(around) / 2  # bigeminy: no N-N interval
    for k in ectopic:
      assert rr[k - 1] < 0.8 * basic < rr[k], r.report  # premature, then a pause
    np.testing.assert_allclose(around, 2 * basic, rtol=0.1)  # compensatory


# ----------------------------------------------------------------------------- conduction


def test_qrs_is_wide_exactly_in_bundle_branch_block(clean):
  for r in clean:
    if not has(r, *STE):
      bbb = has(r, "left_bundle_branch_block", "right_bundle_branch_block")
      assert (qrs_ms(r.ecg, CLEAN_FS) >= 120) == bbb, r.report


def test_bundle_branch_block_morphology():
  fs = CLEAN_FS
  leads = lambda *names: [LEAD_INDEX[n] for n in names]
  for r in clean_of([("normal_sinus_rhythm", "left_bundle_branch_block")] * 4):
    high, low = qrs_extremes(r.ecg, fs)
    assert (-low[leads("V1")] > 3 * high[leads("V1")]).all()  # deep QS / rS in V1
    assert (high[leads("V6")] > -3 * low[leads("V6")]).all()  # broad monophasic R in V6
    st = st_levels(r.ecg, fs)
    assert st[LEAD_INDEX["V1"]] > 0 > st[LEAD_INDEX["V6"]]  # discordant ST
  for r in clean_of([("normal_sinus_rhythm", "right_bundle_branch_block")] * 4):
    beat = r_peaks(r.ecg, fs)[2]
    onset, offset = qrs_bounds(r.ecg, fs, beat)
    v1 = r.ecg[onset:offset + 1, LEAD_INDEX["V1"]] - r.ecg[onset, LEAD_INDEX["V1"]]
    maxima = signal.find_peaks(v1, prominence=0.02)[0]
    assert len(maxima) >= 2 and v1[maxima[-1]] > v1[maxima[0]], r.report  # rSR'
    late = r.ecg[(onset + offset) // 2:offset, leads("I", "V6")] - r.ecg[onset, leads("I", "V6")]
    assert (late.min(0) < -0.03).all()  # late S in I and V6


def test_first_degree_av_block_prolongs_pr():
  slow = [("sinus_bradycardia",), ("sinus_bradycardia", "right_bundle_branch_block"),
          ("sinus_bradycardia", "left_ventricular_hypertrophy"),
          ("sinus_bradycardia", "low_qrs_voltage")]
  records = clean_of(slow * 3 + [n + ("first_degree_av_block",) for n in slow] * 3)
  for r in records:
    pr = pr_ms(r.ecg, CLEAN_FS)
    assert (pr > 200 if has(r, "first_degree_av_block") else 110 <= pr <= 200), (pr, r.report)


# ----------------------------------------------------------------------------- voltage and ST


def test_voltage_criteria(clean):
  v1, v5, v6 = (LEAD_INDEX[n] for n in ("V1", "V5", "V6"))
  for r in clean:
    if has(r, *STE):
      continue
    high, low = qrs_extremes(r.ecg, CLEAN_FS)
    p2p = high - low
    low_voltage = (p2p[:6] < 0.5).all() and (p2p[6:] < 1.0).all()
    assert low_voltage == has(r, "low_qrs_voltage"), (p2p.round(2), r.report)
    sokolow = -low[v1] + max(high[v5], high[v6])
    if not has(r, "left_bundle_branch_block"):
      assert (sokolow > 3.5) == has(r, "left_ventricular_hypertrophy"), (sokolow, r.report)


TERRITORY = {"st_elevation_inferior": ("II", "III", "aVF"),
             "st_elevation_anterior": ("V1", "V2", "V3", "V4"),
             "st_elevation_lateral": ("I", "aVL", "V5", "V6")}


def test_st_elevation_sits_in_its_territory(clean):
  sets = [("st_elevation_inferior",), ("st_elevation_anterior",), ("st_elevation_lateral",),
          ("st_elevation_anterior", "st_elevation_lateral")]
  extras = [(), ("left_ventricular_hypertrophy",), ("right_bundle_branch_block",),
            ("low_qrs_voltage",)]
  records = clean_of([("normal_sinus_rhythm",) + s + e for s in sets for e in extras])
  for r in records:
    st = st_levels(r.ecg, CLEAN_FS)
    inside = [LEAD_INDEX[lead] for name, leads in TERRITORY.items() if has(r, name) for lead in leads]
    for i in inside:
      need = 0.2 if LEAD_NAMES[i] in ("V2", "V3") else 0.1
      assert st[i] >= need, (LEAD_NAMES[i], st.round(2), r.report)
    assert st[inside].mean() > np.delete(st, inside).mean() + 0.1
    if has(r, "st_elevation_inferior"):
      assert st[LEAD_INDEX["aVL"]] < 0  # reciprocal depression
  for r in clean:
    if not has(r, "left_bundle_branch_block", *STE):
      assert st_levels(r.ecg, CLEAN_FS).max() < 0.1, r.report


# ----------------------------------------------------------------------------- annotations


def test_annotations_locate_beats_and_findings(clean_all):
  for r in clean_all:
    qrs = [(a.start, a.end) for a in r.annotations if a.name == "qrs"]
    for peak in inner_beats(r.ecg, CLEAN_FS):
      assert any(start <= peak <= end for start, end in qrs), (peak, r.report)
    named = {a.name for a in r.annotations}
    assert named - set(synthetic.FIDUCIAL_NAMES) == {n for n in synthetic.LABEL_NAMES if has(r, n)}
    for a in r.annotations:
      assert 0 <= a.start < a.end <= len(r.ecg) and set(a.leads) <= set(LEAD_NAMES)
      if a.name in TERRITORY:
        assert a.leads == TERRITORY[a.name]
    assert ("p_wave" in named) != has(r, "atrial_fibrillation")


@pytest.mark.parametrize("finding", STE)
def test_st_elevation_annotations_hold_the_whole_injury_current(finding):
  """Saliency is scored against these regions, so they must hold all of the finding: the
  same patients drawn with and without the injury current differ (almost) only inside the
  annotated spans of the territory's leads, and the spans are not padded far beyond it."""
  seed = int(np.random.default_rng().integers(1 << 16))
  with_it = np.stack([synthetic.labels_of("normal_sinus_rhythm", finding)] * 4)
  without = np.stack([synthetic.labels_of("normal_sinus_rhythm")] * 4)
  pairs = zip(synthetic.synthesize(with_it, CLEAN_FS, 6.0, seed=seed, noise=False),
              synthetic.synthesize(without, CLEAN_FS, 6.0, seed=seed, noise=False))
  territory = [LEAD_INDEX[lead] for lead in TERRITORY[finding]]
  for r, clean_twin in pairs:
    injury = np.abs(r.ecg - clean_twin.ecg)[:, territory]
    region = [(a.start, a.end) for a in r.annotations if a.name == finding]
    inside = np.zeros(len(injury), bool)
    for start, end in region:
      inside[start:end] = True
    assert injury[inside].sum() > 0.98 * injury.sum(), seed
    for start, end in region:
      if 0 < start and end < len(injury):  # a span cut by the record's ends holds a part
        peak = injury[start:end].max(0)
        assert peak.min() > 0.05, seed  # every span shows elevation in every territory lead
        assert (injury[[start, end - 1]] < 0.2 * peak).all(), seed  # and ends where it fades


# ----------------------------------------------------------------------------- noise and reports


def test_noise_has_wander_mains_and_muscle_components():
  labels = np.stack([synthetic.labels_of("normal_sinus_rhythm")] * 8)
  noisy = synthetic.synthesize(labels, 500, 10.0, seed=5)
  clean = synthetic.synthesize(labels, 500, 10.0, seed=5, noise=False)
  hum = []
  for a, b in zip(noisy, clean):
    freqs, power = signal.periodogram((a.ecg - b.ecg).astype(np.float64), 500, axis=0)
    power = power.sum(1)  # over leads: hum differs from electrode to electrode
    band = lambda lo, hi: power[(freqs >= lo) & (freqs < hi)]
    assert band(0.05, 0.5).mean() > 100 * band(1, 15).mean()  # baseline wander
    assert 0.1 < band(25, 45).mean() / band(90, 140).mean() < 10  # broadband muscle noise
    line = band(40, 70).argmax()
    hum.append(band(40, 70)[line] > 20 * np.median(band(40, 70))
               and round(freqs[freqs >= 40][line]) in (50, 60))
  assert np.mean(hum) >= 0.75  # a mains line at 50 or 60 Hz


def test_reports_name_exactly_their_findings_in_varied_words(cohort):
  phrasings = {name: set() for name in synthetic.LABEL_NAMES}
  for r in cohort:
    for name in synthetic.LABEL_NAMES:
      assert synthetic_reports.mentions(r.report, name) == has(r, name), (name, r.report)
      for sentence in r.report.lower().split(". "):
        if synthetic_reports.mentions(sentence, name):
          phrasings[name].add(re.sub(r"\d+", "N", sentence))
    normal = r.labels.sum() == 1 and has(r, "normal_sinus_rhythm")
    if re.search(synthetic_reports.NORMAL_PATTERN, r.report, re.IGNORECASE):
      assert normal, r.report
  thin = {name: len(s) for name, s in phrasings.items() if len(s) < 4}
  assert not thin, thin


def test_reports_quote_the_measured_rate(clean_all):
  checked = 0
  for r in clean_all:
    if has(r, "premature_ventricular_complexes"):
      continue  # see test_measured_rate_matches_the_rhythm
    quoted = re.search(r"(?:rate|HR) (\d+)|\((\d+) bpm\)", r.report, re.IGNORECASE)
    if quoted:
      measured = heart_rate(r.ecg, CLEAN_FS)  # AF: fewer beats counted swing the mean more
      tolerance = 0.15 if has(r, "atrial_fibrillation") else 0.06
      quoted_rate = int(quoted.group(1) or quoted.group(2))
      assert abs(quoted_rate - measured) < tolerance * measured, r.report
      checked += 1
  assert checked >= 20  # the phrasing still quotes rates: the test checked something


def test_patient_splits_are_disjoint_deterministic_and_never_empty():
  splits = synthetic.patient_splits(1000, seed=0)
  assert splits == synthetic.patient_splits(1000, seed=0) != synthetic.patient_splits(1000, seed=1)
  assert set(splits) == {synthetic.patient_id(0, i) for i in range(1000)}
  share = {name: list(splits.values()).count(name) / 1000 for name in contract.SPLITS}
  assert share == {"train": 0.8, "validation": 0.1, "test": 0.1}
  assert set(synthetic.patient_splits(3, seed=0).values()) == set(contract.SPLITS)
  with pytest.raises(ValueError):
    synthetic.patient_splits(2, seed=0)
