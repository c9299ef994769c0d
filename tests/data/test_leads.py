"""Reduced lead sets: how users name them, and a restricted record against a record whose other
leads were never recorded (the build's own preparation, then every normalization)."""

import numpy as np
import pytest

from ecgclip_jax.data import leads, normalize
from ecgclip_jax.data import signal as sig
from ecgclip_jax.data.leads import LEAD_NAMES

LIMB = (0, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("text, name, indices", [
    ("I", "I", (0,)),
    ("I,II", "I,II", (0, 1)),
    ("ii, i", "I,II", (0, 1)),
    ("limb", "limb", LIMB),
    (" LIMB ", "limb", LIMB),
    ("all", "all", tuple(range(12))),
    ("12", "all", tuple(range(12))),
    ("avr,V6", "aVR,V6", (3, 11)),
    ("AVL, avf ,v1", "aVL,aVF,V1", (4, 5, 6)),
    (",".join(LEAD_NAMES), ",".join(LEAD_NAMES), tuple(range(12))),
])
def test_lead_sets_parse_to_canonical_indices(text, name, indices):
  assert leads.parse_lead_set(text) == (name, indices)


@pytest.mark.parametrize("text, bad", [
    ("I,X", "'X' is not a lead"), ("-aVR", "'-aVR' is not a lead"), ("", "'' is not a lead"),
    ("I,,II", "'' is not a lead"), ("V7", "'V7' is not a lead"),
    ("I,i", "'i' is named twice"), ("limb,I", "'limb' is not a lead")])
def test_an_unknown_or_repeated_lead_is_a_one_line_error(text, bad):
  with pytest.raises(ValueError) as error:
    leads.parse_lead_set(text)
  message = str(error.value)
  assert message.startswith(bad) and "\n" not in message and "limb" in message


def test_dropout_sets_parse_each_set_and_random():
  assert leads.parse_dropout_sets("I;I,II;limb;Random") == (
      ("I", (0,)), ("I,II", (0, 1)), ("limb", LIMB), ("random", None))
  with pytest.raises(ValueError, match="'II I' is not a lead"):
    leads.parse_dropout_sets("I;II I")


def raw_record(rng, n=5000):
  """10 s of 12 leads at 500 Hz in mV: a sine per lead plus noise, the later leads larger."""
  t = np.arange(n) / 500
  return (np.sin(2 * np.pi * rng.uniform(0.8, 2.0, 12) * t[:, None])
          + 0.1 * rng.standard_normal((n, 12))) * np.linspace(0.5, 2.0, 12)


@pytest.mark.parametrize("text", ["I", "I,II", "limb", "II,V2,V4"])
def test_a_restricted_record_is_a_record_built_without_the_other_leads(text):
  """The build prepares every lead alike (resampling 500 -> 100 Hz, band-pass, int16 µV);
  restricting the 12-lead build must give the same int16 samples and mask as building the
  kept leads alone, and so the same input under every normalization."""
  rng = np.random.default_rng(5)
  spec = sig.SignalSpec(sample_rate=100, bandpass_hz=(0.5, 40.0))
  raw = raw_record(rng)
  full = sig.prepare(raw, 500, LEAD_NAMES, spec)
  _, indices = leads.parse_lead_set(text)
  absent = sig.prepare(raw[:, indices], 500, [LEAD_NAMES[i] for i in indices], spec)
  ecg, mask = leads.restrict_leads(full.ecg, full.lead_mask, indices)
  assert ecg.dtype == np.int16 and mask.dtype == bool
  np.testing.assert_array_equal(mask, absent.lead_mask)
  np.testing.assert_array_equal(ecg, absent.ecg)
  for method in normalize.NORMALIZATION_METHODS:
    np.testing.assert_array_equal(normalize.normalize_ecg(ecg, mask, method),
                                  normalize.normalize_ecg(absent.ecg, absent.lead_mask, method))
  # Not vacuous: the kept leads' min-max scaling differs from the 12-lead record's.
  assert not np.array_equal(normalize.normalize_ecg(full.ecg, full.lead_mask, "minmax")[:, mask],
                            normalize.normalize_ecg(ecg, mask, "minmax")[:, mask])


def test_records_and_batches_restrict_alike_and_absent_leads_stay_absent():
  rng = np.random.default_rng(6)
  ecg = rng.integers(-2000, 2000, (3, 50, 12)).astype(np.int16)
  mask = np.ones((3, 12), bool)
  mask[1, 1] = False  # record 1 lacks lead II
  ecg[1, :, 1] = 0
  out, out_mask = leads.restrict_leads(ecg, mask, (0, 1, 6))
  assert out.dtype == np.int16 and out.shape == ecg.shape
  np.testing.assert_array_equal(out_mask[0], np.isin(np.arange(12), (0, 1, 6)))
  np.testing.assert_array_equal(out_mask[1], np.isin(np.arange(12), (0, 6)))
  np.testing.assert_array_equal(out[:, :, out_mask[0]], ecg[:, :, out_mask[0]])
  assert not out[:, :, ~out_mask[0]].any()

  record = {"ecg": ecg[1], "lead_mask": mask[1], "report": b"sinus rhythm"}
  restricted = leads.restrict_leads(record, None, (0, 1, 6))
  assert restricted["report"] == b"sinus rhythm" and record["lead_mask"].sum() == 11
  np.testing.assert_array_equal(restricted["ecg"], out[1])
  np.testing.assert_array_equal(restricted["lead_mask"], out_mask[1])
  with pytest.raises(ValueError, match="lead_mask=None"):
    leads.restrict_leads(record, mask[1], (0,))
