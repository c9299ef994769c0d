"""Seeded synthetic 12-lead ECGs whose waveforms carry the findings their reports name.

A corpus with known ground truth lets the whole stack (builder, input pipeline, training,
zero-shot, saliency) run and be checked without licensed data; `Record.annotations` says
where each finding sits, so saliency maps can be scored against it.

Physics, kept simple: every wave (P, septal q, R, S, terminal R', ST plateau, T) is a
smooth pulse times a 3-D heart vector (x left, y inferior, z anterior). Limb leads project
it on the hexaxial lead vectors, so III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2 and
aVF = II - I / 2 hold exactly; chest leads are gained projections plus local terms (injury
currents, fibrillatory waves) that a single dipole cannot express. Beats follow a rhythm
(sinus with respiratory variability, irregularly irregular AF, premature ventricular beats
with compensatory pauses). Noise is made per electrode (RA, LA, LL, V1-V6) and differenced
into leads, so the limb-lead identities survive it.

Everything is vectorized over records and rendered in fixed-size chunks, each chunk with
its own seeded stream: same arguments, bit-identical output, whatever the machine.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple

import numpy as np
from scipy import signal

from ecgclip_jax.data import contract
from ecgclip_jax.data import synthetic_reports
from ecgclip_jax.data.leads import LEAD_INDEX, LEAD_NAMES, NUM_LEADS

LABEL_NAMES = (
    "normal_sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "atrial_fibrillation",
    "first_degree_av_block", "left_bundle_branch_block", "right_bundle_branch_block",
    "left_ventricular_hypertrophy", "st_elevation_inferior", "st_elevation_anterior",
    "st_elevation_lateral", "premature_ventricular_complexes", "low_qrs_voltage",
)
NUM_LABELS = len(LABEL_NAMES)
RHYTHM_LABELS = LABEL_NAMES[:4]
FIDUCIAL_NAMES = ("p_wave", "qrs", "t_wave")  # annotation names besides the labels
_L = {name: i for i, name in enumerate(LABEL_NAMES)}
_CHUNK = 128  # records rendered together; fixed, because each chunk draws its own noise
_PRE_S, _POST_S = 0.42, 0.72  # beat template window around QRS onset


class Annotation(NamedTuple):
  """Where a finding (a LABEL_NAMES entry) or a fiducial (FIDUCIAL_NAMES) lies."""

  name: str
  start: int  # first sample
  end: int  # one past the last sample
  leads: tuple[str, ...]  # where it shows


@dataclasses.dataclass(frozen=True)
class Record:
  """One ECG with its report, its labels and where each finding lies."""

  ecg: np.ndarray  # [T, 12] float32 millivolts, LEAD_NAMES order
  labels: np.ndarray  # [NUM_LABELS] bool
  report: str
  patient_id: str
  record_id: str
  age: int
  sex: int  # 0 female, 1 male
  sample_rate: int
  annotations: tuple[Annotation, ...]  # sorted by start

  @property
  def ecg_uv(self) -> np.ndarray:
    """The data-contract form: int16 microvolts."""
    return to_microvolts(self.ecg)


def patient_id(seed: int, index: int) -> str:
  """Id of the `index`-th patient (0-based) of the corpus drawn with `seed`."""
  return f"s{seed}-p{index:06d}"


def patient_splits(num_patients: int, seed: int) -> dict[str, str]:
  """Patient id -> split of the corpus drawn with `seed`: a seeded shuffle of the patients
  cut 80/10/10, so no patient is in two splits and even a tiny corpus has at least one
  patient in each."""
  splits = contract.SPLITS
  if num_patients < len(splits):
    raise ValueError(f"Need at least {len(splits)} patients for {splits}, got {num_patients}.")
  order = np.random.default_rng([seed, 5]).permutation(num_patients)
  held_out = max(1, round(0.1 * num_patients))
  split = np.full(num_patients, "train", dtype=object)
  split[order[:held_out]] = "validation"
  split[order[held_out:2 * held_out]] = "test"
  return {patient_id(seed, i): name for i, name in enumerate(split)}


def to_microvolts(ecg_mv: np.ndarray) -> np.ndarray:
  """Millivolts to int16 microvolts (1000 per mV), clipped to the int16 range."""
  return np.clip(np.rint(np.asarray(ecg_mv, np.float64) * 1000), -32768, 32767).astype(np.int16)


def label_violations(labels: np.ndarray) -> list[str]:
  """Clinical exclusivity rules a label vector breaks (empty when plausible)."""
  has = lambda name: bool(labels[_L[name]])
  rules = [
      (sum(has(r) for r in RHYTHM_LABELS) != 1, "exactly one rhythm"),
      (has("atrial_fibrillation") and has("first_degree_av_block"), "AF has no PR interval"),
      (has("left_bundle_branch_block") and has("right_bundle_branch_block"), "LBBB and RBBB"),
      (has("left_bundle_branch_block") and has("left_ventricular_hypertrophy"),
       "LVH is not called in LBBB"),
      (has("left_bundle_branch_block") and any(has(n) for n in LABEL_NAMES if "st_elev" in n),
       "ST elevation is not called in LBBB"),
      (has("low_qrs_voltage") and has("left_ventricular_hypertrophy"), "low voltage and LVH"),
      (has("st_elevation_inferior")
       and (has("st_elevation_anterior") or has("st_elevation_lateral")),
       "inferior ST elevation only alone"),
  ]
  return [why for broken, why in rules if broken]


# ----------------------------------------------------------------------------- geometry


def _lead_vectors() -> np.ndarray:
  """[3, 12] heart vector to lead voltage."""
  lead_i, lead_ii = np.array([1.0, 0, 0]), np.array([0.5, np.sqrt(3) / 2, 0])
  limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2,
          lead_i - lead_ii / 2, lead_ii - lead_i / 2]
  angle = np.deg2rad([115, 95, 75, 55, 30, 5])  # transverse plane, from left toward anterior
  gain = np.array([1.1, 1.6, 1.6, 1.5, 1.25, 1.0])  # chest electrodes sit closer to the heart
  tilt = np.array([0, 0, 0.1, 0.1, 0.15, 0.15])
  chest = gain[:, None] * np.stack([np.cos(angle), tilt, np.sin(angle)], axis=1)
  return np.concatenate([np.stack(limb), chest]).T


def _electrode_to_leads() -> np.ndarray:
  """[9, 12] electrode potentials (RA, LA, LL, V1..V6) to leads (Wilson terminal for V)."""
  e = np.eye(9)
  ra, la, ll = e[:3]
  limb = [la - ra, ll - ra, ll - la, ra - (la + ll) / 2, la - (ra + ll) / 2, ll - (ra + la) / 2]
  chest = [e[3 + k] - (ra + la + ll) / 3 for k in range(6)]
  return np.stack(limb + chest, axis=1)


_VECTOR_TO_LEADS = _lead_vectors()
_ELECTRODE_TO_LEADS = _electrode_to_leads()


def _chest(v1, v2, v3, v4, v5, v6) -> np.ndarray:
  """[..., 12] local chest-lead terms (limb leads zero) from per-lead arrays."""
  v = np.stack(np.broadcast_arrays(v1, v2, v3, v4, v5, v6), axis=-1)
  return np.concatenate([np.zeros(v.shape[:-1] + (6,)), v], axis=-1)


def _unit(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# Waves of a beat; beat kinds: 0 conducted (supraventricular), 1 premature ventricular.
_P_RA, _P_LA, _Q, _R1, _R2, _S, _X, _ST, _T = range(9)
_NUM_WAVES = 9
_NORMAL, _LBBB, _RBBB = range(3)
# Q, R1, R2, S: (center, sigma) as fractions of LV activation time, and heart vectors (mV).
_QRS_TIMING = np.array([
    [[.16, .065], [.42, .10], [.56, .09], [.80, .08]],  # septum left-to-right, then LV
    [[.15, .07], [.35, .10], [.62, .10], [.82, .07]],  # LBBB: slow, notched, leftward
    [[.16, .065], [.42, .10], [.56, .09], [.80, .08]],  # RBBB: normal LV, then wave _X
])
_QRS_VECTORS = np.array([
    [[-.10, .03, .14], [.55, .65, .35], [.55, .55, -.45], [-.08, -.10, -.40]],
    [[.12, .02, -.21], [.75, .25, -.55], [.70, .15, -.65], [.25, -.05, -.45]],
    [[-.10, .03, .14], [.55, .65, .35], [.55, .55, -.45], [-.04, -.05, -.20]],
])
_T_DIRECTION = _unit([[.5, .55, .5], [-.7, -.2, .6], [.83, .55, .05]])
_RBBB_TERMINAL = _unit([-.55, -.05, .75])  # late right-anterior activation: R' in V1
_LVH_FORCES = _unit([.8, 0, -.45])  # thick LV wall: larger leftward-posterior forces
_LV_MAIN = _unit(_QRS_VECTORS[_NORMAL, 1] + _QRS_VECTORS[_NORMAL, 2])
_LBBB_MAIN = _unit(_QRS_VECTORS[_LBBB, 1] + _QRS_VECTORS[_LBBB, 2])
_CANONICAL_AXIS_DEG = 47.5  # frontal angle of the normal R1 + R2
# Minimum ST elevation (mV) the calibrated injury current gives in each territory lead.
_STE_LEADS = {
    "st_elevation_inferior": {"II": .12, "III": .12, "aVF": .12},
    "st_elevation_anterior": {"V1": .12, "V2": .23, "V3": .23, "V4": .12},
    "st_elevation_lateral": {"I": .12, "aVL": .12, "V5": .12, "V6": .12},
}
_EXTENT_OF = {  # which part of each conducted beat shows a finding, for annotations
    "first_degree_av_block": "pr", "left_bundle_branch_block": "qrs",
    "right_bundle_branch_block": "qrs", "left_ventricular_hypertrophy": "qrs",
    "low_qrs_voltage": "qrs", **{name: "st" for name in _STE_LEADS},
}
_LEADS_OF = {  # where each label shows, for annotations
    "atrial_fibrillation": ("II", "III", "aVF", "V1", "V2"),
    "left_bundle_branch_block": ("I", "aVL", "V1", "V2", "V5", "V6"),
    "right_bundle_branch_block": ("I", "V1", "V2", "V6"),
    "left_ventricular_hypertrophy": ("I", "aVL", "V1", "V2", "V5", "V6"),
    **{name: tuple(leads) for name, leads in _STE_LEADS.items()},
}


# ----------------------------------------------------------------------------- cohort


@dataclasses.dataclass(frozen=True)
class _Cohort:
  """Who the records belong to and what they show; arrays over records."""

  patient_ids: list[str]
  record_ids: list[str]
  prior: np.ndarray  # index of the patient's previous record, -1 for the first
  age: np.ndarray
  sex: np.ndarray
  labels: np.ndarray  # [n, NUM_LABELS] bool
  amplitude: np.ndarray  # patient traits from here on
  axis_deg: np.ndarray  # frontal QRS axis
  rotation_deg: np.ndarray  # transverse-plane rotation (shifts the R-wave transition)
  qtc_ms: np.ndarray
  pvc_focus: np.ndarray  # [n, 2, 3] heart vectors of this patient's ectopic beats


def _sample_cohort(num_patients: int, seed: int) -> _Cohort:
  """Patients with 1-4 records each; chronic findings persist across their records."""
  rng = np.random.default_rng([seed, 0])
  visits = rng.integers(1, 5, num_patients)
  pat = np.repeat(np.arange(num_patients), visits)
  n = pat.size
  visit = np.arange(n) - np.repeat(np.cumsum(visits) - visits, visits)
  male = rng.random(num_patients) < 0.5
  age0 = np.clip(rng.normal(60, 16, num_patients), 18, 90)
  age = np.floor(age0[pat] + visit * rng.uniform(0.2, 2.0, num_patients)[pat]).astype(int)
  risk = (age0 / 60) ** 1.5

  def chronic(prevalence, persistence):
    return (rng.random(num_patients) < prevalence * risk)[pat] & (rng.random(n) < persistence)

  lbbb = chronic(0.06, 0.95)
  rbbb = chronic(0.08, 0.95) & ~lbbb
  low = chronic(0.04, 0.9)
  lvh = chronic(np.where(male, 0.18, 0.12), 0.9) & ~lbbb & ~low
  af = chronic(0.08, 0.75) | (rng.random(n) < 0.02)
  avb = chronic(0.1, 0.85) & ~af
  pvc = rng.random(n) < np.where((rng.random(num_patients) < 0.12)[pat], 0.6, 0.08)
  tone = 0.6 * rng.normal(size=num_patients)[pat] + 0.8 * rng.normal(size=n)  # resting rate
  acute = (rng.random(n) < 0.1) & ~lbbb
  territory = rng.choice(4, n, p=[0.4, 0.35, 0.1, 0.15])  # inf, ant, lat, anterolateral

  labels = np.zeros((n, NUM_LABELS), bool)
  labels[:, _L["atrial_fibrillation"]] = af
  labels[:, _L["sinus_bradycardia"]] = ~af & (tone < -1.3)
  labels[:, _L["sinus_tachycardia"]] = ~af & (tone > 1.3)
  labels[:, _L["normal_sinus_rhythm"]] = ~af & (np.abs(tone) <= 1.3)
  for name, value in (("first_degree_av_block", avb), ("left_bundle_branch_block", lbbb),
                      ("right_bundle_branch_block", rbbb), ("left_ventricular_hypertrophy", lvh),
                      ("premature_ventricular_complexes", pvc), ("low_qrs_voltage", low),
                      ("st_elevation_inferior", acute & (territory == 0)),
                      ("st_elevation_anterior", acute & ((territory == 1) | (territory == 3))),
                      ("st_elevation_lateral", acute & ((territory == 2) | (territory == 3)))):
    labels[:, _L[name]] = value

  traits = _sample_traits(rng, num_patients, male)
  pids = [patient_id(seed, p) for p in range(num_patients)]
  return _Cohort(
      patient_ids=[pids[p] for p in pat],
      record_ids=[f"{pids[p]}-r{v}" for p, v in zip(pat, visit)],
      prior=np.where(visit > 0, np.arange(n) - 1, -1),
      age=age, sex=male[pat].astype(int), labels=labels,
      **{k: v[pat] for k, v in traits.items()},
  )


def _sample_traits(rng: np.random.Generator, n: int, male: np.ndarray) -> dict[str, np.ndarray]:
  """Per-patient build: voltage, axis, heart rotation, QTc, ectopic focus."""
  right_ventricular = rng.random(n) < 0.5  # outflow-tract vs left-ventricular ectopy
  focus = np.where(right_ventricular[:, None], [[.2, .85, -.45]], [[-.6, .3, .75]])
  first = _unit(focus + rng.normal(0, 0.3, (n, 3)))
  aside = _unit(np.cross(first, rng.normal(size=(n, 3))))
  turn = rng.uniform(0.7, 1.6, (n, 1))  # the ectopic wavefront swings 40-90 degrees
  return dict(
      amplitude=np.exp(rng.normal(0, 0.15, n)) * np.where(male, 1.05, 0.92),
      axis_deg=np.clip(rng.normal(50, 20, n), -25, 88),
      rotation_deg=np.clip(rng.normal(0, 12, n), -25, 25),
      qtc_ms=np.clip(rng.normal(np.where(male, 400, 415), 12), 370, 450),
      pvc_focus=np.stack([first, first * np.cos(turn) + aside * np.sin(turn)], 1),
  )


def _cohort_for_labels(labels: np.ndarray, seed: int) -> _Cohort:
  """One anonymous patient per requested label vector."""
  rng = np.random.default_rng([seed, 0])
  n = len(labels)
  male = rng.random(n) < 0.5
  return _Cohort(
      patient_ids=[f"s{seed}-x{i:06d}" for i in range(n)],
      record_ids=[f"s{seed}-x{i:06d}-r0" for i in range(n)],
      prior=np.full(n, -1), age=rng.integers(25, 85, n), sex=male.astype(int),
      labels=labels.astype(bool), **_sample_traits(rng, n, male),
  )


# ----------------------------------------------------------------------------- waves


@dataclasses.dataclass
class _Waves:
  """Wave parameters, arrays [n, 2 beat kinds, 9 waves] (weight adds 12 leads)."""

  center: np.ndarray  # ms after QRS onset
  sigma: np.ndarray  # ms, rising edge
  fall: np.ndarray  # ms, falling edge
  flat: np.ndarray  # ms, half-width of a flat top (the ST plateau)
  weight: np.ndarray  # mV at the top of the wave, per lead

  @classmethod
  def empty(cls, n: int) -> _Waves:
    shape = (n, 2, _NUM_WAVES)
    return cls(np.zeros(shape), np.ones(shape), np.ones(shape), np.zeros(shape),
               np.zeros(shape + (NUM_LEADS,)))

  def trace(self, kind: int, waves: slice, until_ms) -> np.ndarray:
    """[n, 200, 12] the noise-free sum of `waves` at 1 ms steps from QRS onset to `until_ms`."""
    t = np.arange(0.0, 200.0)
    edges = (self.center, self.sigma, self.fall, self.flat)
    shape = _profile(t, *(a[:, kind, waves, None] for a in edges))
    out = np.swapaxes(shape, 1, 2) @ self.weight[:, kind, waves]
    return out * (t < np.asarray(until_ms)[:, None])[..., None]


def _profile(t, center, rise, fall, flat):
  """Gaussian pulse, optionally with a flat top and a slower fall; peak 1."""
  d = t - center
  return np.exp(-0.5 * (np.maximum(np.abs(d) - flat, 0) / np.where(d < 0, rise, fall)) ** 2)


def _rotation(axis_deg, rotation_deg) -> np.ndarray:
  """[n, 3, 3] turns the canonical heart to the patient's frontal axis and rotation."""
  a = np.deg2rad(axis_deg - _CANONICAL_AXIS_DEG)
  b = np.deg2rad(rotation_deg)
  zero, one = np.zeros_like(a), np.ones_like(a)
  frontal = np.stack([np.stack([np.cos(a), -np.sin(a), zero], -1),
                      np.stack([np.sin(a), np.cos(a), zero], -1),
                      np.stack([zero, zero, one], -1)], -2)
  transverse = np.stack([np.stack([np.cos(b), zero, -np.sin(b)], -1),
                         np.stack([zero, one, zero], -1),
                         np.stack([np.sin(b), zero, np.cos(b)], -1)], -2)
  return frontal @ transverse


def _fixed(v) -> np.ndarray:
  """Heart vectors [..., 3] to leads, for anatomical sources that do not turn with the heart."""
  return np.asarray(v) @ _VECTOR_TO_LEADS


def _conducted_beat(w: _Waves, rng, cohort: _Cohort, labels, intervals) -> np.ndarray:
  """Fills beat kind 0 (P, QRS by conduction pathway, secondary ST, T); returns LVH strain."""
  n = len(labels)
  u = lambda lo, hi: rng.uniform(lo, hi, n)
  has = lambda name: labels[:, _L[name]]
  af, lbbb, rbbb, lvh = (has(k) for k in (
      "atrial_fibrillation", "left_bundle_branch_block", "right_bundle_branch_block",
      "left_ventricular_hypertrophy"))
  qrs_ms, lv_ms, pr_ms, jt_ms = intervals
  conduction = np.select([lbbb, rbbb], [_LBBB, _RBBB], _NORMAL)
  gain = cohort.amplitude
  axis = cohort.axis_deg + rng.normal(0, 3, n)
  axis = np.where(lbbb, _CANONICAL_AXIS_DEG + 0.5 * (axis - _CANONICAL_AXIS_DEG), axis)  # -20..35
  rot = _rotation(axis, cohort.rotation_deg)
  project = lambda v: np.einsum("nij,n...j,il->n...l", rot, v, _VECTOR_TO_LEADS)

  # P: right then left atrium; none in AF.
  p_sigma, p_amp = u(13, 17), u(0.08, 0.13) * gain * ~af
  w.center[:, 0, _P_RA] = -pr_ms + 2.45 * p_sigma
  w.center[:, 0, _P_LA] = w.center[:, 0, _P_RA] + 24
  w.sigma[:, 0, [_P_RA, _P_LA]] = p_sigma[:, None]
  w.weight[:, 0, _P_RA] = _fixed(p_amp[:, None] * [.25, .8, .45])
  w.weight[:, 0, _P_LA] = _fixed(p_amp[:, None] * [.75, .45, -.1])
  # QRS: septum, LV (thicker in LVH), and in RBBB a late right-anterior R'.
  timing = _QRS_TIMING[conduction]
  w.center[:, 0, _Q:_S + 1] = timing[..., 0] * lv_ms[:, None]
  w.sigma[:, 0, _Q:_S + 1] = timing[..., 1] * lv_ms[:, None]
  qrs_gain = gain * u(0.85, 1.25)
  w.weight[:, 0, _Q:_S + 1] = project(_QRS_VECTORS[conduction] * qrs_gain[:, None, None])
  w.weight[:, 0, _R2] += project(_LVH_FORCES * (lvh * gain * u(1.8, 2.8))[:, None])
  w.sigma[:, 0, _X] = 0.1 * qrs_ms
  w.center[:, 0, _X] = qrs_ms - 2.45 * w.sigma[:, 0, _X]
  w.weight[:, 0, _X] = _fixed(_RBBB_TERMINAL * (rbbb * gain * u(0.7, 1.1))[:, None])  # RV: right
  # T concordant with the QRS, discordant after LBBB, inverted by LVH strain; ST likewise.
  strain = lvh & (rng.random(n) < 0.6)
  t_dir = np.where(strain[:, None], -_LV_MAIN, _T_DIRECTION[conduction])
  w.sigma[:, 0, _T] = 0.09 * (jt_ms + 95)
  w.center[:, 0, _T] = qrs_ms + jt_ms - 2.45 * w.sigma[:, 0, _T]
  t_amp = gain * u(0.25, 0.5) * np.select([lbbb, strain], [1.2, 2], 1)
  w.weight[:, 0, _T] = project(t_dir * t_amp[:, None])
  w.weight[:, 0, _ST] = (project(-0.12 * _LBBB_MAIN * (lbbb * gain)[:, None])
                         + project(-0.05 * _LV_MAIN * strain[:, None])
                         + strain[:, None] * _chest(.04, .05, 0, -.05, -.08, -.08))
  return strain


def _ectopic_beat(w: _Waves, rng, cohort: _Cohort, pvc_ms) -> None:
  """Fills beat kind 1: wide and bizarre from the patient's focus, no P, ST-T opposite."""
  n = len(pvc_ms)
  waves = [_Q, _R1, _R2, _S]
  w.center[:, 1, waves] = [.18, .40, .64, .86] * pvc_ms[:, None]
  w.sigma[:, 1, waves] = [.08, .12, .12, .06] * pvc_ms[:, None]
  first, second = cohort.pvc_focus[:, 0], cohort.pvc_focus[:, 1]
  w.weight[:, 1, waves] = _fixed(np.stack([0.3 * first, first, second, -0.3 * second], 1))
  main = _unit(first + second)
  w.center[:, 1, _T], w.sigma[:, 1, _T] = pvc_ms + rng.uniform(130, 170, n), 45
  w.weight[:, 1, _T] = _fixed(-main * rng.uniform(0.35, 0.55, (n, 1)))
  w.weight[:, 1, _ST] = _fixed(-0.15 * main)


def _place_plateaus(w: _Waves, qrs_ms) -> None:
  """ST segment: up at the J point, flat to the T peak, then down with the T wave."""
  w.fall[:] = w.sigma
  for kind, j_ms in enumerate(qrs_ms.T):
    t_peak = w.center[:, kind, _T]
    w.center[:, kind, _ST] = (j_ms + t_peak) / 2
    w.flat[:, kind, _ST] = np.maximum((t_peak - j_ms) / 2 - 5, 0)
    w.sigma[:, kind, _ST] = 10
    w.fall[:, kind, _ST] = w.sigma[:, kind, _T]


def _calibrate(w: _Waves, fwave_weight, rng, labels, qrs_ms) -> None:
  """Scales `w` and `fwave_weight` in place so measurable criteria fall on the side the labels
  say, measured on the noise-free beat at 1 ms steps over the QRS (ST included, as a machine
  measuring it would):

  - RBBB: R' in V1 half again as tall as the initial r.
  - low voltage: every limb lead's QRS peak-to-peak < 0.5 mV, every chest lead's < 1.0 mV;
    the whole record is damped, as by an effusion. LVH: Sokolow-Lyon S(V1) + max R(V5, V6)
    > 3.5 mV. Everyone else stays clear of both, with margin for beat-to-beat variation.
  - ST elevation: the injury current reaches `_STE_LEADS` minima on top of secondary changes.
  - PVCs: 1.1-1.6 times the size of the patient's own conducted complexes.
  """
  has = lambda name: labels[:, _L[name]]
  v1, v5, v6 = (LEAD_INDEX[k] for k in ("V1", "V5", "V6"))
  n = len(labels)
  r_v1 = w.trace(0, slice(_Q, _S + 1), qrs_ms[:, 0])[:, :, v1].max(1)
  w.weight[:, 0, _X] *= np.where(has("right_bundle_branch_block"), np.maximum(
      1, 1.5 * r_v1 / np.maximum(w.weight[:, 0, _X, v1], 1e-3)), 1)[:, None]

  qrs = w.trace(0, slice(_Q, _ST + 1), qrs_ms[:, 0])
  p2p = qrs.max(1) - qrs.min(1)
  limb, chest = p2p[:, :6].max(1), p2p[:, 6:].max(1)
  sokolow = (-np.minimum(qrs[:, :, v1].min(1), 0)
             + np.maximum(qrs[:, :, v5].max(1), qrs[:, :, v6].max(1)))
  low = has("low_qrs_voltage")
  scale = np.select(
      [has("left_ventricular_hypertrophy"), low],
      [rng.uniform(3.9, 5.5, n) / sokolow,
       np.minimum(rng.uniform(0.25, 0.42, n) / limb, rng.uniform(0.5, 0.85, n) / chest)],
      np.minimum(np.maximum(1, np.maximum(0.65 / limb, 1.2 / chest)), 3.1 / sokolow))
  w.weight[:, 0, _Q:_X + 1] *= scale[:, None, None]
  damp = np.where(low, scale, 1)
  w.weight[:, 0, [_P_RA, _P_LA, _ST, _T]] *= damp[:, None, None]
  fwave_weight *= damp[:, None]

  w.weight[:, 0, _ST] += _injury(rng, labels, w.weight[:, 0, _ST])
  size = lambda k: np.linalg.norm(w.trace(k, slice(_Q, _ST + 1), qrs_ms[:, k]), axis=2).max(1)
  w.weight[:, 1] *= (rng.uniform(1.1, 1.6, n) * size(0) / size(1))[:, None, None]


def _injury(rng: np.random.Generator, labels: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """[n, 12] ST shift of an acute injury current; on top of `secondary` ST-T changes it
  meets the `_STE_LEADS` minima."""
  n = len(labels)
  u = lambda lo, hi: rng.uniform(lo, hi, n)
  limb_only = np.r_[np.ones(6), np.zeros(6)]  # chest leads see the injury up close: _chest
  frontal = lambda deg, mv: _fixed(mv[:, None] * np.stack(
      [np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg)), 0 * deg], 1)) * limb_only
  zero = np.zeros(n)
  shapes = {
      "st_elevation_inferior": (frontal(u(95, 110), u(.12, .35))
                                + _chest(-u(0, .08), -u(0, .08), 0, 0, 0, 0)),
      "st_elevation_anterior": _chest(u(.1, .22), u(.22, .45), u(.22, .45), u(.12, .3),
                                      u(0, .08), zero),
      "st_elevation_lateral": (frontal(u(-40, -20), u(.12, .3))
                               + _chest(0, 0, 0, u(0, .06), u(.12, .28), u(.12, .28))),
  }
  total = np.zeros((n, NUM_LEADS))
  for name, shift in shapes.items():
    leads = [LEAD_INDEX[lead] for lead in _STE_LEADS[name]]
    need = np.array(list(_STE_LEADS[name].values()))
    scale = np.maximum(1, ((need - secondary[:, leads]) / np.maximum(shift[:, leads], 1e-3)).max(1))
    total += labels[:, _L[name], None] * scale[:, None] * shift
  return total


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything needed to render records; arrays over records, sliced per chunk."""

  waves: _Waves
  qrs_ms: np.ndarray  # [n, 2] per beat kind
  beat_time: np.ndarray  # [n, B] s of QRS onset; nan where unused
  beat_kind: np.ndarray  # [n, B]
  beat_gain: np.ndarray  # [n, B] respiratory amplitude modulation
  fwave: np.ndarray  # [n, 5] base Hz, modulation depth Hz, modulation Hz, phase, AM phase
  fwave_weight: np.ndarray  # [n, 12] mV
  rate_bpm: np.ndarray
  pr_ms: np.ndarray
  pvc_count: np.ndarray
  lvh_strain: np.ndarray

  def take(self, sl: slice) -> _Plan:
    part = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    part["waves"] = _Waves(**{f.name: getattr(self.waves, f.name)[sl]
                              for f in dataclasses.fields(_Waves)})
    return _Plan(**{k: v if k == "waves" else v[sl] for k, v in part.items()})


def _sample_plan(cohort: _Cohort, duration_s: float, seed: int) -> _Plan:
  """Rates, intervals, wave shapes and beat times for every record."""
  rng = np.random.default_rng([seed, 1])
  labels = cohort.labels
  n = len(labels)
  has = lambda name: labels[:, _L[name]]
  u = lambda lo, hi: rng.uniform(lo, hi, n)
  af = has("atrial_fibrillation")
  bbb = has("left_bundle_branch_block") | has("right_bundle_branch_block")

  af_rate = np.choose(rng.choice(3, n, p=[0.1, 0.5, 0.4]), [u(48, 58), u(62, 98), u(104, 150)])
  rate = np.select([has("sinus_bradycardia"), has("sinus_tachycardia"), af],
                   [u(40, 57), u(103, 150), af_rate], u(62, 98))
  rr_s = 60 / rate
  qrs_ms = np.where(bbb, u(135, 170), u(82, 104))
  lv_ms = np.where(has("right_bundle_branch_block"), u(84, 98), qrs_ms)  # RBBB: LV on time
  pr_ms = np.where(has("first_degree_av_block"),  # shorter when fast, keeping P off the T
                   rng.uniform(225, np.clip(450 * rr_s + 60, 235, 320)),
                   np.maximum(u(130, 190) - 0.4 * np.maximum(rate - 90, 0), 120))
  jt_ms = cohort.qtc_ms * np.sqrt(rr_s) - 95  # Bazett; a wide QRS delays, not widens, the T
  pvc_ms = u(140, 180)

  waves = _Waves.empty(n)
  strain = _conducted_beat(waves, rng, cohort, labels, (qrs_ms, lv_ms, pr_ms, jt_ms))
  _ectopic_beat(waves, rng, cohort, pvc_ms)
  _place_plateaus(waves, np.stack([qrs_ms, pvc_ms], 1))
  fwave_weight = (af * u(0.05, 0.15))[:, None] * (  # biggest in V1, then the inferior leads
      _fixed([.15, .55, 0]) + _chest(1, .6, .35, .2, .12, .08))
  _calibrate(waves, fwave_weight, rng, labels, np.stack([qrs_ms, pvc_ms], 1))

  beat_time, beat_kind, beat_gain = _sample_beats(
      rng, rr_s, (qrs_ms + jt_ms) / 1000, af, has("premature_ventricular_complexes"), duration_s)
  qrs_end = beat_time + np.where(beat_kind == 1, pvc_ms[:, None], qrs_ms[:, None]) / 1000
  visible = (beat_time >= 0) & (qrs_end < duration_s)  # whole complexes, as a machine counts
  n_visible = visible.sum(1)
  span = np.where(visible, beat_time, -np.inf).max(1) - np.where(visible, beat_time, np.inf).min(1)
  measured = 60 * (n_visible - 1) / np.where(n_visible > 1, span, 1)
  waves.weight = waves.weight.astype(np.float32)
  return _Plan(
      waves=waves, qrs_ms=np.stack([qrs_ms, pvc_ms], 1), beat_time=beat_time,
      beat_kind=beat_kind, beat_gain=beat_gain,
      fwave=np.stack([u(4.8, 7.5), u(0.2, 0.7), u(0.1, 0.5), u(0, 2 * np.pi), u(0, 2 * np.pi)], 1),
      fwave_weight=fwave_weight,
      rate_bpm=np.rint(np.where(n_visible > 1, measured, rate)).astype(int),
      pr_ms=np.rint(pr_ms).astype(int), pvc_count=(visible & (beat_kind == 1)).sum(1),
      lvh_strain=strain,
  )


# ----------------------------------------------------------------------------- beats


def _sample_beats(rng, rr_s, qt_s, af, pvc, duration_s):
  """QRS onset times [n, B] (nan = unused), kinds (1 = PVC) and per-beat amplitude."""
  n = len(rr_s)
  slots = int(np.ceil((duration_s + _PRE_S + _POST_S + 1.5) / 0.28)) + 1
  k = np.arange(slots)
  resp_hz, resp_phase = rng.uniform(0.15, 0.35, (n, 1)), rng.uniform(0, 2 * np.pi, (n, 1))
  sinus = rr_s[:, None] * (1 + rng.uniform(0.01, 0.04, (n, 1)) * np.sin(
      2 * np.pi * resp_hz * k * rr_s[:, None] + resp_phase) + 0.008 * rng.normal(size=(n, slots)))
  spread = rng.uniform(0.16, 0.3, (n, 1))  # AF: irregularly irregular, refractory floor
  lognormal = np.exp(spread * rng.normal(size=(n, slots)) - spread ** 2 / 2)
  fib = np.maximum(rr_s[:, None] * lognormal, 0.28)
  rr = np.where(af[:, None], fib, sinus)
  t = -_POST_S - rng.uniform(0, 1, (n, 1)) * rr_s[:, None] + np.cumsum(rr, 1) - rr[:, :1]

  # PVCs replace a beat, come early at a fixed coupling and leave the next beat in place,
  # so the pause after them is compensatory. At least one falls well inside the record.
  rows = np.arange(n)
  ectopic = pvc[:, None] & (rng.random((n, slots)) < rng.uniform(0.05, 0.25, (n, 1)))
  ectopic[:, 0] = False
  ectopic[:, 1:] &= ~ectopic[:, :-1]  # no couplets
  inside = (t > 1.5) & (t < duration_s - 1.5)
  fallback = (t > 0.5) & (t < duration_s - 0.3)
  forced = 1 + np.argmax((rng.random((n, slots)) + 2 * inside + fallback)[:, 1:-1], 1)
  ectopic[rows, forced - 1] &= ~pvc
  ectopic[rows, forced + 1] &= ~pvc
  ectopic[rows, forced] |= pvc
  coupling = rng.uniform(0.55, 0.7, (n, 1)) * rr_s[:, None]  # seconds, but not on the T wave
  coupling = np.minimum(np.maximum(coupling, qt_s[:, None] + 0.02), 0.8 * rr_s[:, None])
  previous = np.concatenate([t[:, :1], t[:, :-1]], 1)
  t = np.where(ectopic, previous + np.minimum(coupling, 0.8 * (t - previous)), t)
  t = np.where((t > -_POST_S) & (t < duration_s + _PRE_S), t, np.nan)
  gain = 1 + rng.uniform(0.01, 0.03, (n, 1)) * np.sin(2 * np.pi * resp_hz * t + resp_phase)
  return t, ectopic.astype(np.int8), np.nan_to_num(gain + 0.005 * rng.normal(size=(n, slots)))


# ----------------------------------------------------------------------------- rendering


def _render(plan: _Plan, sample_rate: int, num_samples: int, rng, noise: bool) -> np.ndarray:
  """[n, T, 12] float32 mV for one chunk of records."""
  n = len(plan.beat_time)
  pre = int(np.ceil(_PRE_S * sample_rate))
  width = pre + int(np.ceil(_POST_S * sample_rate)) + 1
  tau = (np.arange(width) - pre) * 1000.0 / sample_rate
  w = plan.waves
  edges = (w.center, w.sigma, w.fall, w.flat)
  shape = _profile(tau, *(a[..., None] for a in edges)).astype(np.float32)
  template = np.swapaxes(shape, 2, 3) @ w.weight  # [n, kind, W, 12]

  out = np.zeros((n, num_samples + 2 * width, NUM_LEADS), np.float32)
  rows = np.arange(n)[:, None]
  used = ~np.isnan(plan.beat_time)
  onset = np.rint(np.nan_to_num(plan.beat_time) * sample_rate).astype(int) - pre + width
  onset = np.clip(onset, 0, num_samples + width)
  gain = (used * plan.beat_gain).astype(np.float32)
  for j in np.flatnonzero(used.any(0)):
    out[rows, onset[:, j, None] + np.arange(width)] += (
        template[rows[:, 0], plan.beat_kind[:, j]] * gain[:, j, None, None])
  ecg = np.ascontiguousarray(out[:, width:width + num_samples])

  t = np.arange(num_samples, dtype=np.float32) / sample_rate
  af = np.flatnonzero(plan.fwave_weight.any(1))
  f0, depth, mod_hz, phase, am_phase = plan.fwave[af, :, None].astype(np.float32).swapaxes(0, 1)
  fib = (1 + 0.3 * np.sin(2 * np.pi * 0.2 * t + am_phase)) * np.sin(
      2 * np.pi * f0 * t - depth / mod_hz * np.cos(2 * np.pi * mod_hz * t + phase))
  ecg[af] += fib[:, :, None] * plan.fwave_weight[af, None, :].astype(np.float32)
  if noise:
    ecg += _electrode_noise(rng, n, t, sample_rate) @ _ELECTRODE_TO_LEADS.astype(np.float32)
  return ecg


def _electrode_noise(rng, n: int, t: np.ndarray, sample_rate: int) -> np.ndarray:
  """[n, T, 9] float32 mV: baseline wander (<0.5 Hz), mains hum, bursts of EMG, per electrode."""
  u = lambda lo, hi, shape: rng.uniform(lo, hi, shape).astype(np.float32)
  normal = lambda shape: rng.standard_normal(shape, dtype=np.float32)
  wander = np.sin(2 * np.pi * u(0.05, 0.45, (n, 1, 3)) * t[:, None] + u(0, 2 * np.pi, (n, 1, 3)))
  level = np.exp(rng.normal(np.log(0.06), 0.6, (n, 1, 1))).astype(np.float32)
  e = wander @ (level * normal((n, 3, 9)))
  mains = np.where(rng.random((n, 1)) < 0.5, 50, 60).astype(np.float32)
  hum = np.sin(2 * np.pi * mains * t + u(0, 2 * np.pi, (n, 1)))
  hum *= mains < 0.45 * sample_rate  # an anti-aliased recorder removes what it cannot sample
  hum_level = np.exp(rng.normal(np.log(0.01), 0.6, (n, 1, 1))).astype(np.float32)
  e += hum[:, :, None] * (hum_level * normal((n, 1, 9)))
  sos = signal.butter(2, [20, min(150, 0.45 * sample_rate)], "bandpass", fs=sample_rate,
                      output="sos")
  emg = signal.sosfilt(sos.astype(np.float32), normal((n, t.size, 9)), axis=1)
  swell = np.sin(2 * np.pi * u(0.05, 0.3, (n, 1)) * t + u(0, 2 * np.pi, (n, 1)))
  burst = 0.5 + 2 * np.clip(swell, 0, 1) ** 4
  emg_level = np.exp(rng.normal(np.log(0.012), 0.6, (n, 1, 1))) * np.r_[np.ones(3), np.full(6, 0.6)]
  return e + emg * burst[:, :, None] * emg_level.astype(np.float32)


def _annotations(plan: _Plan, i: int, labels: np.ndarray, sample_rate: int, num_samples: int):
  """Fiducials of every beat and the extent of every finding of record `i`."""
  every = tuple(LEAD_NAMES)
  found = [name for name, on in zip(LABEL_NAMES, labels) if on]
  out = [Annotation(name, 0, num_samples, _LEADS_OF.get(name, every))
         for name in found if name in RHYTHM_LABELS]
  used = ~np.isnan(plan.beat_time[i])
  onset, kind = plan.beat_time[i][used] * 1000, plan.beat_kind[i][used]
  w = plan.waves

  def span(wave):
    """Where `wave`'s pulse is above 5% of its top (flat top and slower fall included)."""
    center, flat = w.center[i][kind][:, wave], w.flat[i][kind][:, wave]
    return (center - flat - 2.45 * w.sigma[i][kind][:, wave],
            center + flat + 2.45 * w.fall[i][kind][:, wave])

  p_onset = span(_P_RA)[0]
  extents = {  # (start, end) in ms after each QRS onset
      "qrs": (0, plan.qrs_ms[i][kind]),
      "t_wave": span(_T),
      "p_wave": (p_onset, span(_P_LA)[1]),
      "pr": (p_onset, 0),
      "st": span(_ST),  # the injury current: from its rise into the J point to its fall
  }
  to_sample = lambda ms: np.clip(np.rint((onset + ms) * sample_rate / 1000),
                                 0, num_samples).astype(int)
  conducted, ectopic = kind == 0, kind == 1
  wanted = [("qrs", "qrs", used[used]), ("t_wave", "t_wave", used[used]),
            ("premature_ventricular_complexes", "qrs", ectopic)]
  if "atrial_fibrillation" not in found:
    wanted.append(("p_wave", "p_wave", conducted))
  wanted += [(name, _EXTENT_OF[name], conducted) for name in found if name in _EXTENT_OF]
  for name, extent, beats in wanted:
    lo, hi = (to_sample(ms) for ms in extents[extent])
    out += [Annotation(name, int(a), int(b), _LEADS_OF.get(name, every))
            for a, b in zip(lo[beats], hi[beats]) if a < b]
  return tuple(sorted(out, key=lambda a: (a.start, a.name)))


# ----------------------------------------------------------------------------- public API


def _records(cohort: _Cohort, sample_rate: int, duration_s: float, seed: int,
             noise: bool) -> Iterator[Record]:
  if sample_rate < 50 or duration_s <= 0:
    raise ValueError(
        f"Need sample_rate >= 50 Hz and duration_s > 0, got {sample_rate}, {duration_s}.")
  num_samples = int(round(sample_rate * duration_s))
  plan = _sample_plan(cohort, duration_s, seed)
  text_rng = np.random.default_rng([seed, 2])
  reports = []
  for i, row in enumerate(cohort.labels):
    findings = frozenset(name for name, on in zip(LABEL_NAMES, row) if on)
    prior = cohort.prior[i]
    prior_findings = None if prior < 0 else frozenset(
        name for name, on in zip(LABEL_NAMES, cohort.labels[prior]) if on)
    facts = synthetic_reports.Facts(int(plan.rate_bpm[i]), int(plan.pr_ms[i]),
                                    int(plan.pvc_count[i]), bool(plan.lvh_strain[i]),
                                    prior_findings)
    reports.append(synthetic_reports.make_report(findings, facts, text_rng))
  for start in range(0, len(reports), _CHUNK):
    part = plan.take(slice(start, start + _CHUNK))
    ecg = _render(part, sample_rate, num_samples, np.random.default_rng([seed, 3, start]), noise)
    for j in range(len(ecg)):
      i = start + j
      yield Record(
          ecg=ecg[j], labels=cohort.labels[i].copy(), report=reports[i],
          patient_id=cohort.patient_ids[i], record_id=cohort.record_ids[i],
          age=int(cohort.age[i]), sex=int(cohort.sex[i]), sample_rate=sample_rate,
          annotations=_annotations(part, j, cohort.labels[i], sample_rate, num_samples),
      )


def iter_corpus(num_patients: int, sample_rate: int, duration_s: float = 10.0, seed: int = 0,
                *, noise: bool = True) -> Iterator[Record]:
  """Records of `num_patients` patients (1-4 each), rendered a chunk at a time."""
  return _records(_sample_cohort(num_patients, seed), sample_rate, duration_s, seed, noise)


def generate_corpus(num_patients: int, sample_rate: int, duration_s: float = 10.0, seed: int = 0,
                    *, noise: bool = True) -> list[Record]:
  """All records of `iter_corpus` in a list."""
  return list(iter_corpus(num_patients, sample_rate, duration_s, seed, noise=noise))


def synthesize(labels: np.ndarray, sample_rate: int, duration_s: float = 10.0, seed: int = 0,
               *, noise: bool = True) -> list[Record]:
  """One record per row of `labels` [n, NUM_LABELS], e.g. to probe a single finding."""
  labels = np.atleast_2d(np.asarray(labels, bool))
  if labels.shape[1] != NUM_LABELS:
    raise ValueError(f"labels must be [n, {NUM_LABELS}], got {labels.shape}.")
  for row in labels:
    if broken := label_violations(row):
      names = [LABEL_NAMES[k] for k in np.flatnonzero(row)]
      raise ValueError(f"Implausible labels {names}: {broken}.")
  return list(_records(_cohort_for_labels(labels, seed), sample_rate, duration_s, seed, noise))


def labels_of(*names: str) -> np.ndarray:
  """A label vector from names, e.g. `labels_of("atrial_fibrillation", "low_qrs_voltage")`."""
  out = np.zeros(NUM_LABELS, bool)
  out[[_L[name] for name in names]] = True
  return out
