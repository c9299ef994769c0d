"""The canonical 12-lead order of the data contract, and the reduced lead sets of other devices.

Every builder writes `ecg[:, i]` for `LEAD_NAMES[i]`, so models, plots and saliency maps
can index leads by name without knowing which dataset a record came from.

A reduced lead set (lead I of a watch, I+II, the six limb leads of a handheld six-lead device)
is the 12-lead record with the other leads absent: zeros, False in `lead_mask`, exactly like a
lead the recording never had. `restrict_leads` is the one way to make it, for training's lead
dropout (pipeline.LeadDropout) and for evaluating a model on a lead set alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEAD_NAMES)
LEAD_INDEX = {name: i for i, name in enumerate(LEAD_NAMES)}
LEAD_GROUPS = {"limb": LEAD_NAMES[:6], "all": LEAD_NAMES, "12": LEAD_NAMES}
RANDOM_SET = "random"  # a lead dropout set: each lead kept with probability 1/2


def parse_lead_set(text: str) -> tuple[str, tuple[int, ...]]:
  """A lead set as a user writes it -> (its name, its lead indices in contract order).

  `text` is a group ("limb": I, II, III, aVR, aVL, aVF; "all" or "12") or a comma list of
  lead names in any case, spelt as the readers accept them ("i,ii", "AVR"). The name is the
  group's ("12" -> "all") or the canonical names in contract order ("ii, i" -> "I,II").
  """
  # Imported here: signal.py imports this module for the lead order.
  from ecgclip_jax.data.signal import canonical_lead_name  # pylint: disable=g-import-not-at-top
  group = text.strip().casefold()
  if group in LEAD_GROUPS:
    names = LEAD_GROUPS[group]
    return ("all" if names == LEAD_NAMES else group), tuple(LEAD_INDEX[n] for n in names)
  indices = set()
  for part in text.split(","):
    name = canonical_lead_name(part)
    if name is None or LEAD_INDEX[name] in indices:
      problem = "is named twice" if name else "is not a lead"
      raise ValueError(f"{part.strip()!r} {problem} in the lead set {text!r}; write "
                       f"{', '.join(LEAD_GROUPS)} or a comma list of {', '.join(LEAD_NAMES)}")
    indices.add(LEAD_INDEX[name])
  indices = tuple(sorted(indices))
  return ",".join(LEAD_NAMES[i] for i in indices), indices


def parse_dropout_sets(text: str) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
  """`data.lead_dropout_sets` ("I;I,II;limb;random") -> ((name, indices), ...), one entry per
  ";"-separated lead set (`parse_lead_set`); "random" has indices None (drawn per record)."""
  sets = []
  for part in text.split(";"):
    if part.strip().casefold() == RANDOM_SET:
      sets.append((RANDOM_SET, None))
    else:
      sets.append(parse_lead_set(part))
  return tuple(sets)


def restrict_leads(record_or_ecg, lead_mask, indices):
  """Keeps only the leads at `indices`: every other lead becomes zeros and False in the mask,
  as in a recording that lacks it (a kept lead the record lacks stays absent), so that
  normalization (normalize.py, whose min-max range spans the present leads) sees exactly a
  record of those leads.

  `record_or_ecg` is a data-contract record (`lead_mask` None: the record's own; returns a
  new record) or an ECG `[..., T, 12]` with its `lead_mask` `[..., 12]` (returns
  `(ecg, lead_mask)`, the ECG's dtype kept).
  """
  if isinstance(record_or_ecg, Mapping):
    if lead_mask is not None:
      raise ValueError("a record carries its own lead_mask: pass lead_mask=None")
    ecg, mask = restrict_leads(record_or_ecg["ecg"], record_or_ecg["lead_mask"], indices)
    return {**record_or_ecg, "ecg": ecg, "lead_mask": mask}
  ecg = np.asarray(record_or_ecg)
  if ecg.shape[-1] != NUM_LEADS:
    raise ValueError(f"expected an ECG [..., T, {NUM_LEADS}], got {ecg.shape}")
  keep = np.zeros(NUM_LEADS, bool)
  keep[list(indices)] = True
  mask = np.asarray(lead_mask, bool) & keep
  return np.where(mask[..., None, :], ecg, np.zeros((), ecg.dtype)), mask
