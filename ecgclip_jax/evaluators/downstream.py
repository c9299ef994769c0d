"""Downstream evaluation: linear probes and fine-tuning at label fractions, zero-shot, with
bootstrap confidence intervals, for a pre-trained checkpoint or a random init (the probe
command, probe.py, is its shell).

A pre-trained run rebuilds its model from the config stored in its checkpoint (`--step`, or
the latest); a random-init baseline builds the same architecture from `--config` with fresh
weights, so every table can put them side by side (`python -m ecgclip_jax.compare`).
`--tasks` names a task set (configs/tasks/<name>.json, or a path). Frozen-encoder features
are computed once per split, sharded over all local devices, and cached under OUT/cache/
(or `--cache_dir`).
Writes OUT/results.csv, OUT/results.md and OUT/meta.json, and prints a one-screen summary;
beside them, PR and ROC curves per method and label fraction and a t-SNE map of the test ECG
embeddings (--embedding_map umap|none), listed in results.md.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import hashlib
import json
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from ecgclip_jax import api, caches, inference
from ecgclip_jax.data import leads, pipeline, signal, sources
from ecgclip_jax.evaluators import (finetune, fractions, linear_probe, metrics, results,
                                   split_files, tasks, zero_shot)
from ecgclip_jax.interpret import curves, embedding_map
from ecgclip_jax.models import build

METHODS = ("linear_probe", "finetune", "zero_shot")
# How a supervised fit picks its epoch: on the validation set (ours), or MERL's rule, the
# epoch with the best test macro AUROC (linear probes only; rows "linear_probe_max_test").
SELECTIONS = ("validation", "max_test")
ALL_LEADS = leads.parse_lead_set("all")


@dataclasses.dataclass
class Run:
  """What is being evaluated: a model (pre-trained, or freshly initialized) and whether its
  text tower is aligned (zero-shot needs it)."""

  model: inference.Model
  pretrained: bool

  @property
  def name(self) -> str:
    return f"pretrained ({self.model.name})" if self.pretrained else self.model.name

  @property
  def identity(self) -> str:  # keys the feature cache
    return self.model.identity

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.model.config


@dataclasses.dataclass
class SplitData:
  source: collections.abc.Sequence
  labels: np.ndarray  # bool [N, T]
  known: np.ndarray  # bool [N, T]
  features: np.ndarray  # [N, D] frozen-encoder features
  ecg_emb: np.ndarray  # [N, E] unit embeddings (zero-shot)


def load_run(workdir: str | None, step: int | None, init: str,
             config: ml_collections.ConfigDict | None) -> Run:
  """The pre-trained checkpoint in `workdir`, or fresh weights for `config` (init='random').
  A checkpoint's model comes from its stored config; `config` then sets only the evaluation
  side (eval batch size, mesh)."""
  if init == "random":
    if config is None:
      raise ValueError("--init random needs --config (the architecture to initialize)")
    return Run(api.initialize(config), pretrained=False)
  if init != "pretrained":
    raise ValueError(f"--init must be 'pretrained' or 'random', got {init!r}")
  if not workdir:
    raise ValueError("a pre-trained run needs --workdir (its checkpoints/ folder)")
  return Run(api.load_checkpoint(workdir, step, **api.evaluation_side(config)),
             pretrained=True)


def open_task_data(task_set: tasks.TaskSet, model: inference.Model, data_dir: str,
                   manual_dir: str) -> sources.Dataset:
  """The task set's dataset. Its records may be longer or shorter than the model's input
  when they are at the model's sample rate: `embed_cached` then embeds them as windows."""
  data = ml_collections.ConfigDict(model.config.data.to_dict())
  data.name, data.builder_config = task_set.dataset, task_set.builder_config
  data.num_patients, data.corpus_seed = task_set.num_patients, task_set.corpus_seed
  data.data_dir = data_dir or model.config.data.data_dir
  data.manual_dir = manual_dir
  dataset = sources.open_dataset(data, any_length=True)
  if dataset.num_samples == data.num_samples:
    return dataset
  # Windows: the rates must agree (the model's inputs open its training data, or its folder).
  rate, model_rate = dataset.signal_spec.sample_rate, model.inputs.signal_spec.sample_rate
  if rate != model_rate:
    raise ValueError(f"task set {task_set.name}: {dataset.builder.info.full_name} is sampled "
                     f"at {rate:g} Hz, but the model was trained at {model_rate:g} Hz; use a "
                     f"builder config of that rate")
  return dataset


def embed_cached(model: inference.Model, source, label_feature: str, cache_dir: str,
                 name: str, key: str, progress: str,
                 length: signal.Length = signal.Length(long="window")) -> dict[str, np.ndarray]:
  """Frozen-encoder features, unit embeddings and labels of every record of `source`,
  computed once and reused while `key` (run, dataset, split, tasks, length) is unchanged.
  Records of another length than the model's input are fit by `length` (embed_windows)."""
  cached = caches.load_cache(cache_dir, name, key)
  if cached is not None:
    return cached
  start = time.time()
  out = model.embed_windows(source, ("features", "ecg_emb"), label_feature, progress=progress,
                            length=length)
  note = caches.save_cache(cache_dir, name, key, out)
  print(f"  embedded {len(source)} records in {time.time() - start:.1f} s ({note})", flush=True)
  return out


@dataclasses.dataclass
class TaskRecords:
  """What a task set scores in its dataset, resolved once per probe (every lead set reuses
  it): per role, its split's name, its records, and their labels and known-mask over every
  available task (None: the records' own `label_feature`)."""
  names: list[str]  # the task set's tasks
  columns: list[int]  # their columns among the available tasks
  roles: dict[str, tuple[str, collections.abc.Sequence, np.ndarray | None, np.ndarray | None]]
  fingerprint: str  # the task set and its files: keys the feature caches
  split_counts: dict  # split files: records found and missing per role


def task_records(task_set: tasks.TaskSet, dataset: sources.Dataset) -> TaskRecords:
  """The task set's records and labels per role, from the dataset's label sets, a task file
  joined by record id, or split files matched across the whole build."""
  full_name = dataset.builder.info.full_name
  fingerprint = hashlib.sha256(json.dumps(dataclasses.asdict(task_set), sort_keys=True,
                                          default=str).encode())
  table, matches = None, {}
  if task_set.split_files:
    available = split_files.task_names(task_set.split_files)
    matches = split_files.match_splits(
        task_set.split_files, [dataset.source(split) for split in dataset.builder.info.splits])
    for role, match in matches.items():
      print(match.describe(role, full_name), flush=True)
      fingerprint.update(epath.Path(match.file).read_bytes())
  elif task_set.task_file:
    table = tasks.load_task_file(task_set.task_file, task_set.task_spec)
    for line, problem in table.problems[:10]:
      print(f"  task file line {line}: {problem}", flush=True)
    if len(table.problems) > 10:
      print(f"  ... {len(table.problems)} task-file problems in all", flush=True)
    available = list(table.task_names)
    # an edited task file must not meet features cached for the old one
    fingerprint.update(epath.Path(task_set.task_file).read_bytes())
  else:
    label_sets = dataset.builder.info.metadata.get("label_sets", {"labels": dataset.label_names})
    if task_set.label_feature not in label_sets:
      raise ValueError(f"{full_name} has no label set {task_set.label_feature!r}; "
                       f"available: {sorted(label_sets)}")
    available = list(label_sets[task_set.label_feature])
  columns, names = task_set.select(available)
  roles = {}
  for role, split in task_set.splits.items():
    labels = known = None
    if matches:
      split = f"{role} split file"
      source, labels, known = matches[role].records, matches[role].labels, matches[role].known
    else:
      source = dataset.source(split)
    if table is not None:
      record_ids = [source[i]["record_id"] for i in range(len(source))]
      indices, labels, known = tasks.join_task_table(table, record_ids, split=split)
      source = pipeline.Subset(source, indices)  # task-file rows matched to records
    if task_set.crop_samples:
      source = pipeline.Mapped(source, functools.partial(split_files.first_samples,
                                                         n=task_set.crop_samples))
    roles[role] = (split, source, labels, known)
  return TaskRecords(names, columns, roles, fingerprint.hexdigest()[:16],
                     {role: match.counts() for role, match in matches.items()})


def prepare_splits(task_set: tasks.TaskSet, dataset: sources.Dataset, run: Run,
                   cache_dir: str, length: signal.Length = signal.Length(long="window"),
                   lead_set: tuple[str, tuple[int, ...]] = ALL_LEADS,
                   records: TaskRecords | None = None
                   ) -> tuple[list[str], dict[str, SplitData], dict]:
  """Task names; per split role its source (restricted to `lead_set`, a
  leads.parse_lead_set result), features, labels and known-mask; and, for split files, the
  records each file names that were found and missing (split_files.SplitMatch). `records`:
  `task_records` already resolved (default: resolved here)."""
  records = records or task_records(task_set, dataset)
  full_name = dataset.builder.info.full_name
  lead_name, lead_indices = lead_set
  splits = {}
  for role, (split, source, labels, known) in records.roles.items():
    if lead_name != ALL_LEADS[0]:
      source = pipeline.Mapped(source, functools.partial(leads.restrict_leads, lead_mask=None,
                                                         indices=lead_indices))
    print(f"{role}: {full_name} {split!r}, {len(source)} records, leads {lead_name}",
          flush=True)
    key = f"{run.identity}|{full_name}|{split}|{records.fingerprint}|{length}|{lead_name}"
    out = embed_cached(run.model, source,
                       task_set.label_feature if labels is None else None, cache_dir,
                       f"{role}.npz" if lead_name == ALL_LEADS[0] else f"{role}_{lead_name}.npz",
                       key, progress=f"embedding {role} ({split})", length=length)
    if labels is None:
      labels = out["labels"]
      known = np.ones_like(labels, dtype=bool)
    splits[role] = SplitData(source, labels[:, records.columns].astype(bool),
                             known[:, records.columns].astype(bool), out["features"],
                             out["ecg_emb"])
  return records.names, splits, records.split_counts


# ------------------------------------------------------------------------------- methods


def zero_shot_rows(run: Run, prompts_file: str, names: list[str],
                   test: SplitData, task_set: tasks.TaskSet,
                   n_bootstrap: int) -> tuple[list[dict], np.ndarray, list[int]]:
  """Cosine scores against averaged label prompts; tasks without prompts are left out.
  Returns the rows, the scores and the task columns they score."""
  # A bank (MERL's CKEPE_prompt.json covers all its task sets): this set's tasks only.
  prompts = zero_shot.load_prompts(prompts_file, names, bank=True)
  if not prompts:
    raise ValueError(f"prompt file {prompts_file} has no prompt for any task of "
                     f"{task_set.name}: {names}")
  scores, columns = zero_shot.prompt_scores(test.ecg_emb, prompts, names, run.model.embed_text)
  m = metrics.task_metrics(test.labels[:, columns], scores, list(prompts),
                           known=test.known[:, columns], min_positives=task_set.min_positives,
                           n_bootstrap=n_bootstrap, seed=0)
  return results.rows_from_metrics(m, run.name, "zero_shot", 1.0, 1), scores, columns


def supervised_scores(method: str, run: Run, names: list[str], splits: dict[str, SplitData],
                      fraction: float, seed: int, probe_config, finetune_config,
                      selections=SELECTIONS[:1]) -> tuple[dict[str, np.ndarray], int]:
  """Test-set scores of one method trained on one label fraction drawn with `seed`, by
  result method (the linear probe's max_test selection is "linear_probe_max_test")."""
  train, val, test = splits["train"], splits["validation"], splits["test"]
  indices = fractions.sample_fraction(train.labels, fraction, seed, known=train.known)
  if method == "linear_probe":
    max_test = "max_test" in selections
    probe = linear_probe.fit_linear_probe(
        train.features[indices], train.labels[indices], val.features, val.labels,
        dataclasses.replace(probe_config, seed=seed), train_known=train.known[indices],
        val_known=val.known, test=(test.features, test.labels, test.known) if max_test else None)
    scores = {"linear_probe": probe.predict(test.features)} if "validation" in selections else {}
    if max_test:
      scores["linear_probe_max_test"] = probe.max_test_logits
    return scores, len(indices)
  init = None
  if run.pretrained:
    params, model_state = run.model.weights
    init = {"params": params["ecg_encoder"], "batch_stats": model_state.get("ecg_encoder", {})}
  tuned = finetune.finetune(
      build.ecg_encoder_config(run.config), init, len(names), train.source, indices,
      train.labels, val.source, val.labels, run.model.mesh,
      dataclasses.replace(finetune_config, seed=seed,
                          normalization=run.config.data.normalization),
      train_known=train.known, val_known=val.known,
      progress=lambda line: print(f"    {line}", flush=True))
  return {"finetune": tuned.predict(test.source)}, len(indices)


NO_MAP = embedding_map.MapOptions(method="none")


def write_figures(out_dir: str, run: Run, names: list[str], test: SplitData,
                  scored: list[tuple[str, float, list[int], np.ndarray]],
                  map_options: embedding_map.MapOptions,
                  lead_set: str = ALL_LEADS[0]) -> dict[str, str]:
  """PR/ROC curves of each (method, fraction, task columns, test scores) in `scored` and the
  embedding map of the test ECGs, written to `out_dir`; returns file -> caption. Curves of a
  reduced lead set carry its name."""
  figures = {}
  tag, title = ("", "") if lead_set == ALL_LEADS[0] else (f"_{lead_set}", f", leads {lead_set}")
  for method, fraction, columns, scores in scored:
    figures |= curves.write_curves(
        out_dir, f"{method}_{fraction * 100:g}pct{tag}", test.labels[:, columns], scores,
        [names[c] for c in columns], known=test.known[:, columns],
        title=f"{run.name}, {method} {results.format_fraction(fraction)}{title}")
  figures |= embedding_map.write_map(out_dir, test.ecg_emb, test.labels, names, map_options,
                                     known=test.known, title=f"{run.name}, test split{title}")
  return figures


def score_methods(run: Run, task_set: tasks.TaskSet, names: list[str],
                  splits: dict[str, SplitData], *, methods, label_fractions, seeds: int,
                  n_bootstrap: int, prompts: str, probe_config, finetune_config, selections
                  ) -> tuple[list[dict], list[tuple[str, float, list[int], np.ndarray]]]:
  """Every method x label fraction x seed on prepared splits: result rows, and (method,
  fraction, task columns, test scores) for the curves."""
  rows, scored = [], []
  for method in methods:
    if method == "zero_shot":
      if not prompts:
        print("zero_shot: skipped (no --prompts file)", flush=True)
      elif not run.pretrained:
        print("zero_shot: skipped (a random init has no aligned text tower)", flush=True)
      else:
        new_rows, scores, columns = zero_shot_rows(run, prompts, names,
                                                   splits["test"], task_set, n_bootstrap)
        rows += new_rows
        scored.append((method, 1.0, columns, scores))
      continue
    for fraction in label_fractions:
      scores = collections.defaultdict(list)  # result method -> test scores per seed
      for seed in range(seeds):
        t = time.time()
        seed_scores, n_train = supervised_scores(
            method, run, names, splits, fraction, seed, probe_config, finetune_config,
            selections)
        for name, test_scores in seed_scores.items():
          scores[name].append(test_scores)
        print(f"{method} {fraction:.0%} seed {seed}: {n_train} training records, "
              f"{time.time() - t:.1f} s", flush=True)
      for name, of_seeds in scores.items():
        m = metrics.task_metrics(splits["test"].labels, np.stack(of_seeds), names,
                                 known=splits["test"].known,
                                 min_positives=task_set.min_positives,
                                 n_bootstrap=n_bootstrap, seed=0)
        new_rows = results.rows_from_metrics(m, run.name, name, fraction, seeds)
        macro = next(r for r in new_rows if r["task"] == results.MACRO)
        print(f"{name} {results.format_fraction(fraction)}: macro PRAUC "
              f"{results.format_cell(macro, 'prauc')}, AUROC "
              f"{results.format_cell(macro, 'auroc')}", flush=True)
        rows += new_rows
        scored.append((name, fraction, list(range(len(names))), np.stack(of_seeds)))
  return rows, scored


def run_probe(run: Run, task_set: tasks.TaskSet, out_dir: str, *, methods, label_fractions,
              seeds: int, n_bootstrap: int, prompts: str, data_dir: str = "",
              manual_dir: str = "", probe_config=None, finetune_config=None,
              map_options: embedding_map.MapOptions = embedding_map.MapOptions(),
              cache_dir: str = "", selections=SELECTIONS[:1],
              length: signal.Length = signal.Length(long="window"),
              lead_sets=("all",)) -> list[dict]:
  """Every method x label fraction x seed on the task set, for each lead set; writes and
  returns result rows. Features are cached in `cache_dir` (default OUT/cache; see
  caches.cache_folder). `selections`: any of SELECTIONS, each reported as its own rows.
  `length`: how records of another length than the model's input are fit (linear probes
  and zero-shot only). `lead_sets`: leads.parse_lead_set texts ("all", "I", "I,II",
  "limb"); each is scored with the other leads absent from train, validation and test."""
  start = time.time()
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
  if not selections or set(selections) - set(SELECTIONS):
    raise ValueError(f"selection: one or more of {SELECTIONS}, got {list(selections)}")
  lead_sets = list(dict.fromkeys(leads.parse_lead_set(text) for text in lead_sets))
  if not lead_sets:
    raise ValueError("no lead set to score (e.g. --leads 'all;I;limb')")
  if "finetune" in methods and "validation" not in selections:
    print("finetune: selected on validation (max_test applies to linear probes only)",
          flush=True)
  dataset = open_task_data(task_set, run.model, data_dir, manual_dir)
  if "finetune" in methods and dataset.num_samples != run.config.data.num_samples:
    raise ValueError(f"fine-tuning reads records of the model's input length "
                     f"({run.config.data.num_samples} samples); {task_set.name}'s have "
                     f"{dataset.num_samples}: use linear_probe and zero_shot, which embed "
                     f"them as windows, or a builder config of that length")
  probe_config = probe_config or linear_probe.LinearProbeConfig()
  finetune_config = finetune_config or finetune.FinetuneConfig()
  records = task_records(task_set, dataset)  # once: every lead set scores the same records
  rows, figures = [], {}
  for lead_set in lead_sets:
    names, splits, split_counts = prepare_splits(
        task_set, dataset, run, cache_dir or str(epath.Path(out_dir) / "cache"), length,
        lead_set, records)
    new_rows, scored = score_methods(
        run, task_set, names, splits, methods=methods, label_fractions=label_fractions,
        seeds=seeds, n_bootstrap=n_bootstrap, prompts=prompts, probe_config=probe_config,
        finetune_config=finetune_config, selections=selections)
    rows += [{**row, "leads": lead_set[0]} for row in new_rows]
    if jax.process_index() == 0:
      figures |= write_figures(out_dir, run, names, splits["test"], scored,
                               map_options if lead_set == lead_sets[0] else NO_MAP,
                               lead_set[0])
  meta = {"run": run.name, "identity": run.identity, "task_set": dataclasses.asdict(task_set),
          "dataset": dataset.builder.info.full_name, "methods": list(methods),
          "fractions": list(label_fractions), "selections": list(selections),
          "lead_sets": [name for name, _ in lead_sets], "seeds": seeds,
          "n_bootstrap": n_bootstrap, "length": dataclasses.asdict(length),
          "splits": {role: len(s.source) for role, s in splits.items()},
          **({"split_files": split_counts} if split_counts else {}),
          "linear_probe": dataclasses.asdict(probe_config),
          "finetune": dataclasses.asdict(finetune_config),
          "seconds": round(time.time() - start, 1), "figures": figures}
  if jax.process_index() == 0:
    results.write_results(out_dir, rows, meta)
    print(results.format_summary(rows), flush=True)
    print(f"wrote {epath.Path(out_dir) / 'results.csv'}, results.md and "
          f"{len(figures)} figures", flush=True)
  return rows
