"""The saliency-in-region arithmetic on hand-built annotations."""

import numpy as np
import pytest

from ecgclip_jax.data.leads import LEAD_INDEX
from ecgclip_jax.data.synthetic import Annotation
from ecgclip_jax.interpret import localization

T = 200
ANNOTATIONS = (
    Annotation("qrs", 0, T, ("I", "II")),  # another name: ignored
    Annotation("st_elevation_anterior", 10, 30, ("V1", "V2", "V3", "V4")),
    Annotation("st_elevation_anterior", 20, 40, ("V1", "V2", "V3", "V4")),  # overlaps
    Annotation("st_elevation_anterior", 100, 110, ("V2",)),
)


def test_region_mask_is_the_union_of_spans_times_leads():
  mask = localization.region_mask(ANNOTATIONS, "st_elevation_anterior", T)
  v = [LEAD_INDEX[n] for n in ("V1", "V2", "V3", "V4")]
  assert mask[10:40][:, v].all() and mask[100:110, LEAD_INDEX["V2"]].all()
  assert mask.sum() == 30 * 4 + 10  # the overlap counted once
  assert not mask[:, LEAD_INDEX["I"]].any() and not mask[40:100].any()


def test_all_mass_inside_gives_one_over_the_area_share():
  rng = np.random.default_rng(0)
  mask = localization.region_mask(ANNOTATIONS, "st_elevation_anterior", T)
  saliency = np.where(mask, rng.normal(size=mask.shape), 0)
  r = localization.localize("r", saliency, mask)
  assert r.area_share == pytest.approx(130 / (T * 12))
  assert r.mass_share == pytest.approx(1.0)
  assert r.ratio == pytest.approx(T * 12 / 130)


def test_even_and_random_maps_and_signs():
  rng = np.random.default_rng(1)
  mask = localization.region_mask(ANNOTATIONS, "st_elevation_anterior", T)
  signs = rng.choice([-1.0, 1.0], size=mask.shape)
  assert localization.localize("r", 3 * signs, mask).ratio == pytest.approx(1.0)
  saliency = rng.normal(size=mask.shape)
  inside = sum(abs(saliency[t, k]) for t in range(T) for k in range(12) if mask[t, k])
  r = localization.localize("r", saliency, mask)
  assert r.mass_share == pytest.approx(inside / np.abs(saliency).sum())
  assert localization.localize("r", np.zeros(mask.shape), mask) is None
  assert localization.localize("r", saliency, np.zeros_like(mask)) is None


def test_evidence_counts_only_what_raises_the_score():
  rng = np.random.default_rng()
  mask = localization.region_mask(ANNOTATIONS, "st_elevation_anterior", T)
  saliency = rng.normal(size=mask.shape)
  positive = np.maximum(saliency, 0)
  r = localization.localize("r", saliency, mask)
  assert r.evidence_share == pytest.approx(positive[mask].sum() / positive.sum())
  # evidence inside, counter-evidence outside: all of the evidence, half of the mass inside
  split = np.where(mask, 1.0, -mask.sum() / (~mask).sum())
  r = localization.localize("r", split, mask)
  assert r.evidence_ratio == pytest.approx(1 / r.area_share)
  assert r.mass_share == pytest.approx(0.5)
  assert localization.localize("r", -np.abs(saliency), mask).evidence_ratio is None


def test_summary_and_table():
  rows = [localization.Localization("a", 0.5, 0.1), localization.Localization("b", 0.05, 0.1),
          localization.Localization("c", 0.3, 0.1)]
  s = localization.summarize(rows)
  assert s["evidence_ratio_mean"] is None  # no row has positive evidence
  assert s["n"] == 3 and s["ratio_mean"] == pytest.approx(8.5 / 3)
  assert s["ratio_median"] == pytest.approx(3.0) and s["above_1"] == pytest.approx(2 / 3)
  assert s["mass_share"] == pytest.approx(0.85 / 3) and s["area_share"] == pytest.approx(0.1)
  table = localization.format_table({("lbbb", "grad_x_input"): s,
                                     ("rbbb", "grad_x_input"): localization.summarize([])})
  assert "2.83" in table and "3.00" in table and "no annotated records" in table
  assert "control" not in table
  s |= {"control_ratio": 1.25, "control_evidence_ratio": 0.75}
  table = localization.format_table({("lbbb", "grad_x_input"): s})
  assert table.splitlines()[0].split()[-2:] == ["control", "evidence"]
  assert table.split()[-3:] == ["-", "1.25", "0.75"]
  with_evidence = localization.summarize(
      [localization.Localization("a", 0.5, 0.1, 0.4), localization.Localization("b", 0.5, 0.1)])
  assert with_evidence["evidence_ratio_mean"] == pytest.approx(4.0)  # over rows that have it
