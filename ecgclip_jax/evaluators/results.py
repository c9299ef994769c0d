"""Downstream results as flat rows, one per (run, method, label fraction, task): written as
results.csv (for tools), results.md (for people) and meta.json, and read back by
`python -m ecgclip_jax.compare` to put several runs side by side."""

from __future__ import annotations

import collections
import csv
import io
import json

from etils import epath

FIELDS = ("run", "method", "fraction", "leads", "seeds", "task", "n", "positives", "prevalence",
          "prauc", "prauc_lo", "prauc_hi", "prauc_std", "auroc", "auroc_lo", "auroc_hi",
          "auroc_std", "n_bootstrap_used", "status")
INT_FIELDS = frozenset({"seeds", "n", "positives", "n_bootstrap_used"})
FLOAT_FIELDS = frozenset({"fraction", "prevalence", "prauc", "prauc_lo", "prauc_hi", "prauc_std",
                          "auroc", "auroc_lo", "auroc_hi", "auroc_std"})
MACRO = "macro"
METHOD_ORDER = ("zero_shot", "linear_probe", "linear_probe_max_test", "finetune")
# Methods whose epoch was picked on the test set: shown, labelled, never as a fair estimate.
TEST_SELECTED = {"linear_probe_max_test": "linear probe, epoch of best test macro AUROC "
                                          "(MERL's selection rule)"}
MISSING = "–"  # a cell with no result: that run did not run that method at that fraction
ALL_LEADS = "all"  # the `leads` of a row scored on every lead (and of results without one)


def rows_from_metrics(metrics: dict, run: str, method: str, fraction: float,
                      seeds: int) -> list[dict]:
  """`metrics.task_metrics` output as rows: the macro row (task "macro"), the scored tasks,
  then the tasks with too few positives (status "too_few_positives", metrics None)."""
  base = {"run": run, "method": method, "fraction": float(fraction), "leads": ALL_LEADS,
          "seeds": int(seeds)}
  rows = []
  for task, m in [(MACRO, {**metrics["macro"], "n": metrics["n"]}), *metrics["tasks"].items()]:
    row = {**base, "task": task, "n": m["n"], "positives": m.get("positives"),
           "prevalence": m.get("prevalence"), "n_bootstrap_used": m["n_bootstrap_used"],
           "status": "ok" if m["prauc"] is not None else "too_few_positives"}  # macro of none
    for key in ("prauc", "auroc"):
      ci = m[f"{key}_ci"] or (None, None)
      row.update({key: m[key], f"{key}_lo": ci[0], f"{key}_hi": ci[1],
                  f"{key}_std": m[f"{key}_std"]})
    rows.append(row)
  for task, m in metrics["too_few_positives"].items():
    prevalence = m["positives"] / m["n"] if m["n"] else None
    rows.append({**{f: None for f in FIELDS}, **base, "task": task, "n": m["n"],
                 "positives": m["positives"], "prevalence": prevalence,
                 "status": "too_few_positives"})
  return rows


def write_csv(path: epath.Path, rows: list[dict]) -> None:
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if row.get(k) is None else row[k] for k in FIELDS})
  path.write_text(text.getvalue(), encoding="utf-8")


def read_results(path: epath.PathLike) -> list[dict]:
  """results.csv back as rows with their types (empty cells: None)."""
  text = epath.Path(path).read_text(encoding="utf-8")
  rows = list(csv.DictReader(io.StringIO(text, newline="")))
  for row in rows:
    for key, value in row.items():
      if value == "":
        row[key] = None
      elif key in INT_FIELDS:
        row[key] = int(value)
      elif key in FLOAT_FIELDS:
        row[key] = float(value)
  return rows


def format_fraction(fraction: float) -> str:
  return f"{fraction * 100:g}%"


def format_cell(row: dict | None, metric: str = "prauc") -> str:
  """"0.812 [0.790, 0.830]"; the counts for an unscored task; "–" where nothing ran."""
  if row is None:
    return MISSING
  if row["status"] != "ok":
    return "n/a" if row["positives"] is None else f"n/a ({row['positives']} pos. of {row['n']})"
  if row[metric] is None:
    return MISSING
  ci = (f" [{row[f'{metric}_lo']:.3f}, {row[f'{metric}_hi']:.3f}]"
        if row[f"{metric}_lo"] is not None else "")
  return f"{row[metric]:.3f}{ci}"


def _ordered(values, order=()):
  """Distinct values in a known order first, the rest in order of first appearance."""
  seen = list(dict.fromkeys(values))
  return [v for v in order if v in seen] + [v for v in seen if v not in order]


def task_order(rows: list[dict]) -> list[str]:
  """The macro row first, then tasks in the order they first appear."""
  return _ordered((row["task"] for row in rows), (MACRO,))


def method_order(rows: list[dict]) -> list[str]:
  return _ordered((row["method"] for row in rows), METHOD_ORDER)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join(lines)


def leads_of(row: dict) -> str:
  return row.get("leads") or ALL_LEADS


def pivot_table(rows: list[dict], metric: str = "prauc", *, counts: bool = True) -> str:
  """Markdown: one line per (method, task), macro first and bold; one column per (run, lead
  set, fraction), runs and lead sets in order of appearance, fractions ascending; the run
  name is left out of the column labels when there is one run, the lead set when there is
  one, the method column when there is one method. `counts` adds the test examples and
  positives (from the first run with that task)."""
  runs, methods = _ordered(r["run"] for r in rows), method_order(rows)
  lead_sets = _ordered(leads_of(r) for r in rows)
  columns = sorted({(runs.index(r["run"]), lead_sets.index(leads_of(r)), r["fraction"])
                    for r in rows})
  by_key = {(r["method"], r["task"], r["run"], leads_of(r), r["fraction"]): r for r in rows}
  header = (["method"] if len(methods) > 1 else []) + ["task"] + (["n", "pos."] if counts else [])
  header += [" ".join(([runs[i]] if len(runs) > 1 else [])
                      + ([f"leads {lead_sets[j]}"] if len(lead_sets) > 1 else [])
                      + [format_fraction(f)]) for i, j, f in columns]
  body = []
  for method in methods:
    of_method = [r for r in rows if r["method"] == method]
    for task in task_order(of_method):
      first = next(r for r in of_method if r["task"] == task)
      cells = [format_cell(by_key.get((method, task, runs[i], lead_sets[j], f)), metric)
               for i, j, f in columns]
      name = task
      if task == MACRO:
        cells, name = [f"**{c}**" if c != MISSING else c for c in cells], f"**{MACRO}**"
      line = ([method] if len(methods) > 1 else []) + [name]
      if counts:
        line += [str(first["n"]), "" if first["positives"] is None else str(first["positives"])]
      body.append(line + cells)
  return markdown_table(header, body)


def format_markdown(rows: list[dict], meta: dict) -> str:
  """A header from `meta` (task set, dataset, run/checkpoint, seeds, n_bootstrap; a task set
  given as a dict is shown by its name), then a PRAUC and an AUROC table per method, then
  links to the figures in `meta["figures"]` (file beside results.md -> caption)."""
  describe = lambda value: value.get("name", value) if isinstance(value, dict) else value
  lines = [f"# {describe(meta.get('task_set', 'downstream evaluation'))}", ""]
  for key in ("task_set", "dataset", "run", "checkpoint", "seeds", "n_bootstrap"):
    if key in meta:
      lines.append(f"- {key}: {describe(meta[key])}")
  for role, counts in meta.get("split_files", {}).items():
    lines.append(f"- {role} split file {epath.Path(counts['file']).name}: {counts['found']} "
                 f"of {counts['rows']} records found, {counts['missing']} missing")
  lines += ["- cells: point estimate (mean over seeds) [95% bootstrap CI over test examples]; "
            "macro: mean over the scored tasks", ""]
  for method in method_order(rows):
    for metric in ("prauc", "auroc"):
      table = pivot_table([r for r in rows if r["method"] == method], metric)
      lines += [f"## {method}: {metric.upper()}", ""]
      if method in TEST_SELECTED:
        lines += [f"Selected on the TEST set ({TEST_SELECTED[method]}): optimistic, for "
                  "comparison with published numbers chosen this way only.", ""]
      lines += [table, ""]
  if meta.get("figures"):
    lines += ["## Figures", ""]
    lines += [f"- [{caption}]({name})" for name, caption in meta["figures"].items()] + [""]
  return "\n".join(lines)


def write_results(out_dir: str, rows: list[dict], meta: dict) -> None:
  """results.csv (every row), results.md (a table per method and metric) and meta.json."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(out / "results.csv", rows)
  (out / "results.md").write_text(format_markdown(rows, meta))
  (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def format_summary(rows: list[dict]) -> str:
  """Macro PRAUC and AUROC with CIs per run, method, lead set (a column when there are
  several) and fraction, one line each."""
  macro = [r for r in rows if r["task"] == MACRO]
  width = max([len(r["run"]) for r in macro] + [3])
  method_width = max([len(r["method"]) for r in macro] + [12])
  several = len({leads_of(r) for r in macro}) > 1
  leads_width = max([len(leads_of(r)) for r in macro] + [5])
  leads_cell = lambda text: f"{text:<{leads_width}}  " if several else ""
  lines = [f"{'run':<{width}}  {'method':<{method_width}}  {leads_cell('leads')}"
           f"{'labels':>6}  {'tasks':>5}  {'macro PRAUC':<22}  macro AUROC"]
  cell = lambda r: (r["run"], r["method"], leads_of(r), r["fraction"])
  for method in method_order(macro):
    for r in (r for r in macro if r["method"] == method):
      scored = sum(1 for t in rows if t["status"] == "ok" and t["task"] != MACRO
                   and cell(t) == cell(r))
      lines.append(f"{r['run']:<{width}}  {method:<{method_width}}  {leads_cell(leads_of(r))}"
                   f"{format_fraction(r['fraction']):>6}  {scored:>5}  "
                   f"{format_cell(r, 'prauc'):<22}  {format_cell(r, 'auroc')}")
  return "\n".join(lines)


# ----------------------------------------------------------------- several runs


def task_set_name(meta: dict) -> str:
  """The task set a results folder's meta.json names (a name, or the task set itself)."""
  task_set = meta.get("task_set", "")
  return task_set.get("name", "") if isinstance(task_set, dict) else str(task_set)


def load_runs(run_dirs: list[str]) -> list[dict]:
  """Every row of every folder, with `task_set` from the folder's meta.json and `run` made
  unique across the folders of one task set."""
  per_dir = []
  for run_dir in run_dirs:
    path = epath.Path(run_dir) / "results.csv"
    if not path.is_file():
      raise FileNotFoundError(f"no results.csv in {run_dir} (expected the output folder of "
                              "python -m ecgclip_jax.probe)")
    meta_path = epath.Path(run_dir) / "meta.json"
    task_set = task_set_name(json.loads(meta_path.read_text())) if meta_path.is_file() else ""
    per_dir.append([{**row, "task_set": task_set} for row in read_results(path)])
  folders_of = collections.defaultdict(set)
  for run_dir, rows in zip(run_dirs, per_dir):
    for row in rows:
      folders_of[row["task_set"], row["run"]].add(run_dir)
  merged = []
  for run_dir, rows in zip(run_dirs, per_dir):
    folder = epath.Path(run_dir).name
    for row in rows:
      if len(folders_of[row["task_set"], row["run"]]) > 1:
        row = {**row, "run": f"{folder}: {row['run']}"}
      merged.append(row)
  return merged


def published_rows(path: str) -> list[dict]:
  """A CSV of published macro figures (columns source, task_set, method, fraction, and prauc
  and/or auroc) as result rows, each source a run."""
  text = epath.Path(path).read_text(encoding="utf-8")
  rows = []
  for line, raw in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
    try:
      row = {**{f: None for f in FIELDS}, "run": raw["source"], "method": raw["method"],
             "fraction": float(raw["fraction"]), "task": MACRO, "status": "ok",
             "task_set": raw["task_set"]}
      row.update({m: float(raw[m]) for m in ("prauc", "auroc") if raw.get(m)})
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"published figures {path} line {line}: {e!r} (columns: task_set, "
                       "source, method, fraction, prauc and/or auroc)") from None
    rows.append(row)
  return rows


def comparison(run_dirs: list[str], metric: str = "prauc", per_task: bool = False,
               published: str = "") -> str:
  """The pivot table of several results folders, and of published figures for their task
  sets (`published`: see published_rows). Folders of several task sets give one table whose
  lines name the task set."""
  rows = load_runs(run_dirs)
  if published:
    task_sets = {r["task_set"] for r in rows}
    rows += [r for r in published_rows(published) if r["task_set"] in task_sets]
  if not per_task:
    rows = [r for r in rows if r["task"] == MACRO]
  if len({r["task_set"] for r in rows}) > 1:
    rows = [{**r, "task": f"{r['task_set']}: {r['task']}"} for r in rows]
  return (f"{metric.upper()} (95% bootstrap CI) of {len(run_dirs)} result folders\n\n"
          + pivot_table(rows, metric, counts=per_task))
