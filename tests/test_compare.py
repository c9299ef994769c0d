"""The comparison CLI: several runs' results.csv joined into one markdown table."""

import os
import subprocess
import sys

from ecgclip_jax import compare
from ecgclip_jax.evaluators import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(run, method, fraction, task, prauc, status="ok"):
  row = {f: None for f in results.FIELDS}
  row.update(run=run, method=method, fraction=fraction, seeds=1, task=task, n=100,
             positives=None if task == "macro" else 10, status=status)
  if status == "ok":
    row.update(prauc=prauc, prauc_lo=prauc - 0.05, prauc_hi=prauc + 0.05, auroc=prauc + 0.1,
               auroc_lo=prauc + 0.05, auroc_hi=prauc + 0.15)
  return row


def _run_dirs(tmp_path):
  pretrained = [_row("pretrained", "linear_probe", f, t, p)
                for f, t, p in ((0.01, "macro", 0.6), (0.01, "afib", 0.7),
                                (0.1, "macro", 0.8), (0.1, "afib", 0.9))]
  pretrained.append(_row("pretrained", "zero_shot", 1.0, "macro", 0.5))
  random_init = [_row("random init", "linear_probe", 1.0, "macro", 0.4),
                 _row("random init", "linear_probe", 1.0, "afib", 0.3),
                 _row("random init", "linear_probe", 1.0, "rare", None, "too_few_positives")]
  dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  results.write_results(dirs[0], pretrained, {"task_set": "t"})
  results.write_results(dirs[1], random_init, {"task_set": "t"})
  return dirs


def test_joins_runs_into_run_by_fraction_columns(tmp_path, capsys):
  dirs = _run_dirs(tmp_path)
  out = tmp_path / "comparison.md"
  compare.main([*dirs, "--out", str(out)])
  printed = capsys.readouterr().out
  table = out.read_text()
  assert table.strip() in printed
  assert ("| method | task | pretrained 1% | pretrained 10% | pretrained 100% | random init 100% |"
          in table)
  assert ("| linear_probe | **macro** | **0.600 [0.550, 0.650]** | **0.800 [0.750, 0.850]** | – "
          "| **0.400 [0.350, 0.450]** |") in table
  assert "| zero_shot | **macro** | – | – | **0.500 [0.450, 0.550]** | – |" in table
  assert "afib" not in table  # macro only without --per_task
  assert table.index("zero_shot") < table.index("linear_probe")


def test_per_task_and_auroc(tmp_path, capsys):
  dirs = _run_dirs(tmp_path)
  compare.main([*dirs, "--per_task", "--metric", "auroc"])
  table = capsys.readouterr().out
  assert "| method | task | n | pos. | pretrained 1% |" in table
  afib = "| linear_probe | afib | 100 | 10 | 0.800 [0.750, 0.850] | 1.000 [0.950, 1.050] | – |"
  assert afib in table
  assert "| linear_probe | rare | 100 | 10 | – | – | – | n/a (10 pos. of 100) |" in table
  lines = table.splitlines()
  macro_line = next(i for i, l in enumerate(lines) if "linear_probe | **macro**" in l)
  assert macro_line < next(i for i, l in enumerate(lines) if "linear_probe | afib" in l)


def test_same_run_name_in_two_folders_is_told_apart(tmp_path, capsys):
  for name in ("first", "second"):
    results.write_results(str(tmp_path / name),
                          [_row("pretrained", "linear_probe", 1.0, "macro", 0.5)], {})
  compare.main([str(tmp_path / "first"), str(tmp_path / "second")])
  assert "| task | first: pretrained 100% | second: pretrained 100% |" in capsys.readouterr().out


def test_folder_without_results_is_one_error_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "ecgclip_jax.compare", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert result.stderr.strip() == (f"error: no results.csv in {tmp_path} (expected the output "
                                   "folder of python -m ecgclip_jax.probe)")


def test_several_task_sets_and_published_figures_in_one_table(tmp_path, capsys):
  """Folders of two MERL task sets, and MERL's published figures for those two only."""
  dirs = []
  for name, value in (("merl_ptbxl_super", 0.7), ("merl_ptbxl_form", 0.6)):
    rows = [_row("ours", method, 0.01, "macro", value)
            for method in ("linear_probe", "linear_probe_max_test")]
    dirs.append(str(tmp_path / name))
    results.write_results(dirs[-1], rows, {"task_set": {"name": name}})
  published = os.path.join(REPO, "configs", "published", "merl_linear_probe.csv")
  compare.main([*dirs, "--metric", "auroc", "--published", published])
  table = capsys.readouterr().out
  merl = "MERL R18, published (Table 1)"
  assert f"| method | task | ours 1% | {merl} 1% | {merl} 10% | {merl} 100% |" in table
  assert ("| linear_probe_max_test | merl_ptbxl_super: macro | 0.800 [0.750, 0.850] | 0.824 "
          "| 0.863 | 0.887 |") in table
  assert ("| linear_probe | merl_ptbxl_form: macro | 0.700 [0.650, 0.750] | – | – | – |"
          in table)
  assert "icbeb" not in table and "rhythm" not in table  # only the folders' task sets
