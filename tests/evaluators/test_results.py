"""Results rows, CSV round trip, markdown tables and the one-screen summary."""

import json

import numpy as np
import pytest

from ecgclip_jax.evaluators import metrics, results


def _metrics(seed=0, n=120):
  rng = np.random.default_rng(seed)
  labels = rng.random((n, 3)) < 0.3
  labels[:, 2] = False
  labels[0, 2] = True  # one positive: too few for min_positives=2
  scores = rng.normal(size=(n, 3)) + labels
  return metrics.task_metrics(labels, scores, ["afib", "lbbb", "rare"], min_positives=2,
                              n_bootstrap=30, seed=seed)


def _rows(run="pretrained step 600"):
  rows = []
  for method, fraction in (("linear_probe", 0.01), ("linear_probe", 1.0), ("zero_shot", 1.0)):
    rows += results.rows_from_metrics(_metrics(seed=int(fraction * 100)), run, method,
                                      fraction, seeds=3 if method != "zero_shot" else 1)
  return rows


def test_rows_from_metrics():
  m = _metrics()
  rows = results.rows_from_metrics(m, "random init", "finetune", 0.1, seeds=3)
  assert [r["task"] for r in rows] == ["macro", "afib", "lbbb", "rare"]
  assert all(set(r) == set(results.FIELDS) for r in rows)
  macro, afib, rare = rows[0], rows[1], rows[3]
  assert macro["prauc"] == m["macro"]["prauc"]
  assert [macro["prauc_lo"], macro["prauc_hi"]] == m["macro"]["prauc_ci"]
  assert macro["n"] == 120 and macro["positives"] is None
  assert afib["auroc_hi"] == m["tasks"]["afib"]["auroc_ci"][1]
  assert (afib["run"], afib["method"], afib["fraction"], afib["seeds"]) == (
      "random init", "finetune", 0.1, 3)
  assert rare["status"] == "too_few_positives" and rare["positives"] == 1
  assert rare["prauc"] is None and rare["prevalence"] == pytest.approx(1 / 120)


def test_csv_round_trip_and_meta(tmp_path):
  rows = _rows()
  meta = {"task_set": "ptbxl_superdiagnostic", "checkpoint": "workdirs/demo step 600",
          "seeds": 3, "n_bootstrap": 30}
  results.write_results(str(tmp_path / "out"), rows, meta)
  assert results.read_results(str(tmp_path / "out" / "results.csv")) == rows
  assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta


def test_markdown_has_headers_macro_rows_and_cis(tmp_path):
  rows = _rows()
  results.write_results(str(tmp_path), rows, {"task_set": "ptbxl_superdiagnostic",
                                              "checkpoint": "ckpt", "seeds": 3,
                                              "n_bootstrap": 30})
  text = (tmp_path / "results.md").read_text()
  assert "- task_set: ptbxl_superdiagnostic" in text and "- n_bootstrap: 30" in text
  assert "## linear_probe: PRAUC" in text and "## zero_shot: AUROC" in text
  assert "| task | n | pos. | 1% | 100% |" in text
  macro = next(r for r in rows if r["task"] == "macro" and r["fraction"] == 0.01)
  cell = f"**{macro['prauc']:.3f} [{macro['prauc_lo']:.3f}, {macro['prauc_hi']:.3f}]**"
  assert f"| **macro** | 120 |  | {cell} |" in text
  assert "| rare | 120 | 1 | n/a (1 pos. of 120) | n/a (1 pos. of 120) |" in text
  # Zero-shot comes first, as the method without training.
  assert text.index("## zero_shot") < text.index("## linear_probe")
  results.write_results(str(tmp_path), rows, {"task_set": {"name": "ptbxl_form", "tasks": None}})
  text = (tmp_path / "results.md").read_text()
  assert text.startswith("# ptbxl_form\n\n- task_set: ptbxl_form\n")


def test_summary_has_one_line_per_method_and_fraction():
  rows = _rows()
  summary = results.format_summary(rows)
  lines = summary.splitlines()
  assert len(lines) == 4 and "macro PRAUC" in lines[0]
  probe_1 = next(r for r in rows if r["task"] == "macro" and r["fraction"] == 0.01)
  cell = f"{probe_1['prauc']:.3f} [{probe_1['prauc_lo']:.3f}, {probe_1['prauc_hi']:.3f}]"
  assert any(line.split()[3:6] == ["linear_probe", "1%", "2"] and cell in line
             for line in lines)


def test_macro_of_no_scored_task_is_not_applicable():
  m = metrics.task_metrics(np.zeros((10, 1), bool), np.zeros((10, 1)), ["none"], n_bootstrap=5)
  rows = results.rows_from_metrics(m, "r", "linear_probe", 1.0, seeds=1)
  assert [r["status"] for r in rows] == ["too_few_positives"] * 2
  assert results.format_cell(rows[0]) == "n/a"
