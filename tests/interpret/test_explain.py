"""The saliency job end to end on a tiny model: PNGs, localization against the regenerated
synthetic annotations, clear errors. (Restoring checkpoints is `api.load`'s, tested with
the Python API; fresh weights exercise every path here.)"""

import json

import numpy as np
import pytest
from PIL import Image

from ecgclip_jax import api
from ecgclip_jax.data import normalize, sources
from ecgclip_jax.interpret import ecg_plot, explanation, saliency

FINDINGS = ("premature_ventricular_complexes", "right_bundle_branch_block",
            "left_ventricular_hypertrophy", "first_degree_av_block", "left_bundle_branch_block")


def test_explain_a_tiny_model(tiny_config, tmp_path, capsys):
  model = api.initialize(tiny_config)
  dataset = sources.open_dataset(model.config.data)
  examples = explanation.synthetic_examples(dataset, "test")
  stored = dataset.source("test")
  assert [e.record_id for e in examples] == [stored[i]["record_id"].decode()
                                             for i in range(len(stored))]
  assert all(np.array_equal(e.ecg_uv, stored[i]["ecg"]) for i, e in enumerate(examples))
  names = dataset.label_names
  finding = next(f for f in FINDINGS if any(e.labels[names.index(f)] for e in examples))
  classes = ["normal_sinus_rhythm", finding]
  out = tmp_path / "saliency"

  results = explanation.run_explain(
      model, str(out), classes=classes, split="test", control="normal_sinus_rhythm",
      config=saliency.SaliencyConfig(steps=4, chunk=2, occlusion_s=1, occlusion_stride_s=0.5),
      batch_size=8, max_records=3, num_plots=1)
  printed = capsys.readouterr().out
  assert "note:" not in printed and "finding" in printed  # the table
  pngs = sorted(p.name for p in out.glob("*.png"))
  assert len(pngs) == 2 * len(saliency.METHODS)
  assert all(p.startswith(tuple(classes)) for p in pngs)
  assert Image.open(out / pngs[0]).size == ecg_plot.Layout().pixels()
  # A rhythm covers the whole record: the region is everything, the ratio exactly 1.
  for method in saliency.METHODS:
    rhythm = results["normal_sinus_rhythm", method]
    assert rhythm["n"] == 3 and rhythm["area_share"] == 1 and rhythm["ratio_mean"] == 1
    assert rhythm["control_ratio"] == 1
    assert rhythm["evidence_ratio_mean"] in (None, 1)  # None: no record had positive evidence
    s = results[finding, method]
    assert 0 < s["area_share"] < 1 and 0 <= s["mass_share"] <= 1
    assert s["ratio_mean"] <= 1 / s["area_share"] and s["control_ratio"] <= 1 / s["area_share"]
    assert s["control_ratio"] != s["ratio_mean"]  # another target's map
    assert s["control_evidence_ratio"] != s["evidence_ratio_mean"]
  written = json.loads((out / "localization.json").read_text())
  assert {(r["finding"], r["method"]) for r in written["summary"]} == set(results)
  # The rhythm's region is the whole record: deleting it leaves each lead's flat reference.
  deletion = {d["finding"]: d for d in written["deletion"]}
  assert set(deletion) == set(classes)
  assert deletion[finding]["n"] == min(3, sum(e.labels[names.index(finding)] for e in examples))
  target = explanation.make_targets("zero_shot", model, dataset, ["normal_sinus_rhythm"],
                                    model.config.eval.prompts)["normal_sinus_rhythm"]
  rhythm = [e for e in examples if e.labels[names.index("normal_sinus_rhythm")]][:3]
  x = np.stack([normalize.normalize_ecg(e.ecg_uv, e.lead_mask, model.config.data.normalization)
                for e in rhythm])
  flat = np.broadcast_to(np.median(x, axis=1, keepdims=True), x.shape)
  read = model.model_def.embed_ecg(*model.weights, flat) @ target.direction
  assert deletion["normal_sinus_rhythm"]["region_deleted_score_mean"] == pytest.approx(
      float(np.mean(read)), abs=1e-5)
  assert deletion["normal_sinus_rhythm"]["score_mean"] == pytest.approx(
      float(np.mean(model.model_def.embed_ecg(*model.weights, x) @ target.direction)), abs=1e-5)
  assert deletion[finding]["region_deleted_score_mean"] != deletion[finding]["score_mean"]
  assert len(written["records"]) == sum(s["n"] for s in results.values())
  for (finding_name, method), s in results.items():  # each record's evidence, averaged
    evidence = [r["evidence_ratio"] for r in written["records"]
                if (r["finding"], r["method"]) == (finding_name, method)
                and r["evidence_ratio"] is not None]
    assert s["evidence_ratio_mean"] == (pytest.approx(np.mean(evidence)) if evidence else None)

  with pytest.raises(ValueError, match="has no label.*st_elevation_posterior"):
    explanation.run_explain(model, str(out), classes=["st_elevation_posterior"], split="test")
