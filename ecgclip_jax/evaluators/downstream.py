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

import collections.abc
import dataclasses
import hashlib
import json
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from ecgclip_jax import api, caches, inference
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.evaluators import (finetune, fractions, linear_probe, metrics, results, tasks,
                                   zero_shot)
from ecgclip_jax.interpret import curves, embedding_map
from ecgclip_jax.models import build

METHODS = ("linear_probe", "finetune", "zero_shot")


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


def open_task_data(task_set: tasks.TaskSet, config: ml_collections.ConfigDict,
                   data_dir: str, manual_dir: str):
  """The task set's dataset, checked against the model's input length."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.name, data.builder_config = task_set.dataset, task_set.builder_config
  data.num_patients, data.corpus_seed = task_set.num_patients, task_set.corpus_seed
  data.data_dir = data_dir or config.data.data_dir
  data.manual_dir = manual_dir
  try:
    dataset = sources.open_dataset(data)
  except ValueError as e:
    if "data.num_samples" in str(e):
      raise ValueError(f"task set {task_set.name}: {e} (the model was trained on records of "
                       f"{config.data.num_samples} samples; use a builder config of that "
                       f"rate and duration)") from None
    raise
  return dataset


def embed_cached(model: inference.Model, source, label_feature: str, cache_dir: str,
                 name: str, key: str, progress: str) -> dict[str, np.ndarray]:
  """Frozen-encoder features, unit embeddings and labels of every record of `source`,
  computed once and reused while `key` (run, dataset, split, tasks) is unchanged."""
  cached = caches.load_cache(cache_dir, name, key)
  if cached is not None:
    return cached
  start = time.time()
  out = model.embed_source(source, ("features", "ecg_emb"), label_feature, progress=progress)
  note = caches.save_cache(cache_dir, name, key, out)
  print(f"  embedded {len(source)} records in {time.time() - start:.1f} s ({note})", flush=True)
  return out


def prepare_splits(task_set: tasks.TaskSet, dataset: sources.Dataset, run: Run,
                   cache_dir: str) -> tuple[list[str], dict[str, SplitData]]:
  """Task names, and per split role its source, features, labels and known-mask."""
  full_name = dataset.builder.info.full_name
  table = None
  if task_set.task_file:
    table = tasks.load_task_file(task_set.task_file, task_set.task_spec)
    for line, problem in table.problems[:10]:
      print(f"  task file line {line}: {problem}", flush=True)
    if len(table.problems) > 10:
      print(f"  ... {len(table.problems)} task-file problems in all", flush=True)
    available = list(table.task_names)
  else:
    label_sets = dataset.builder.info.metadata.get("label_sets", {"labels": dataset.label_names})
    if task_set.label_feature not in label_sets:
      raise ValueError(f"{full_name} has no label set {task_set.label_feature!r}; "
                       f"available: {sorted(label_sets)}")
    available = list(label_sets[task_set.label_feature])
  columns, names = task_set.select(available)
  fingerprint = hashlib.sha256(json.dumps(dataclasses.asdict(task_set), sort_keys=True,
                                          default=str).encode())
  if table is not None:  # an edited task file must not meet features cached for the old one
    fingerprint.update(epath.Path(task_set.task_file).read_bytes())
  splits = {}
  for role, split in task_set.splits.items():
    source = dataset.source(split)
    if table is not None:
      record_ids = [source[i]["record_id"] for i in range(len(source))]
      indices, labels, known = tasks.join_task_table(table, record_ids, split=split)
      source = pipeline.Subset(source, indices)  # task-file rows matched to records
    print(f"{role}: {full_name} split {split!r}, {len(source)} records", flush=True)
    key = f"{run.identity}|{full_name}|{split}|{fingerprint.hexdigest()[:16]}"
    out = embed_cached(run.model, source,
                       task_set.label_feature if table is None else "labels",
                       cache_dir, f"{role}.npz", key,
                       progress=f"embedding {role} ({split})")
    if table is None:
      labels = out["labels"]
      known = np.ones_like(labels, dtype=bool)
    splits[role] = SplitData(source, labels[:, columns].astype(bool),
                             known[:, columns].astype(bool), out["features"], out["ecg_emb"])
  return names, splits


# ------------------------------------------------------------------------------- methods


def zero_shot_rows(run: Run, prompts_file: str, names: list[str],
                   test: SplitData, task_set: tasks.TaskSet,
                   n_bootstrap: int) -> tuple[list[dict], np.ndarray, list[int]]:
  """Cosine scores against averaged label prompts; tasks without prompts are left out.
  Returns the rows, the scores and the task columns they score."""
  prompts = zero_shot.load_prompts(prompts_file, names)
  scores, columns = zero_shot.prompt_scores(test.ecg_emb, prompts, names, run.model.embed_text)
  m = metrics.task_metrics(test.labels[:, columns], scores, list(prompts),
                           known=test.known[:, columns], min_positives=task_set.min_positives,
                           n_bootstrap=n_bootstrap, seed=0)
  return results.rows_from_metrics(m, run.name, "zero_shot", 1.0, 1), scores, columns


def supervised_scores(method: str, run: Run, names: list[str], splits: dict[str, SplitData],
                      fraction: float, seed: int, probe_config, finetune_config):
  """Test-set scores of one method trained on one label fraction drawn with `seed`."""
  train, val, test = splits["train"], splits["validation"], splits["test"]
  indices = fractions.sample_fraction(train.labels, fraction, seed, known=train.known)
  if method == "linear_probe":
    probe = linear_probe.fit_linear_probe(
        train.features[indices], train.labels[indices], val.features, val.labels,
        dataclasses.replace(probe_config, seed=seed), train_known=train.known[indices],
        val_known=val.known)
    return probe.predict(test.features), len(indices)
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
  return tuned.predict(test.source), len(indices)


def write_figures(out_dir: str, run: Run, names: list[str], test: SplitData,
                  scored: list[tuple[str, float, list[int], np.ndarray]],
                  map_options: embedding_map.MapOptions) -> dict[str, str]:
  """PR/ROC curves of each (method, fraction, task columns, test scores) in `scored` and the
  embedding map of the test ECGs, written to `out_dir`; returns file -> caption."""
  figures = {}
  for method, fraction, columns, scores in scored:
    figures |= curves.write_curves(
        out_dir, f"{method}_{fraction * 100:g}pct", test.labels[:, columns], scores,
        [names[c] for c in columns], known=test.known[:, columns],
        title=f"{run.name}, {method} {results.format_fraction(fraction)}")
  figures |= embedding_map.write_map(out_dir, test.ecg_emb, test.labels, names, map_options,
                                     known=test.known, title=f"{run.name}, test split")
  return figures


def run_probe(run: Run, task_set: tasks.TaskSet, out_dir: str, *, methods, label_fractions,
              seeds: int, n_bootstrap: int, prompts: str, data_dir: str = "",
              manual_dir: str = "", probe_config=None, finetune_config=None,
              map_options: embedding_map.MapOptions = embedding_map.MapOptions(),
              cache_dir: str = "") -> list[dict]:
  """Every method x label fraction x seed on the task set; writes and returns result rows.
  Features are cached in `cache_dir` (default OUT/cache; see caches.cache_folder)."""
  start = time.time()
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
  dataset = open_task_data(task_set, run.config, data_dir, manual_dir)
  names, splits = prepare_splits(task_set, dataset, run,
                                 cache_dir or str(epath.Path(out_dir) / "cache"))
  probe_config = probe_config or linear_probe.LinearProbeConfig()
  finetune_config = finetune_config or finetune.FinetuneConfig()
  rows, scored = [], []  # scored: (method, fraction, task columns, test scores) for the curves
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
      scores = []
      for seed in range(seeds):
        t = time.time()
        test_scores, n_train = supervised_scores(method, run, names, splits, fraction, seed,
                                                 probe_config, finetune_config)
        scores.append(test_scores)
        print(f"{method} {fraction:.0%} seed {seed}: {n_train} training records, "
              f"{time.time() - t:.1f} s", flush=True)
      m = metrics.task_metrics(splits["test"].labels, np.stack(scores), names,
                               known=splits["test"].known, min_positives=task_set.min_positives,
                               n_bootstrap=n_bootstrap, seed=0)
      new_rows = results.rows_from_metrics(m, run.name, method, fraction, seeds)
      macro = next(r for r in new_rows if r["task"] == results.MACRO)
      print(f"{method} {results.format_fraction(fraction)}: macro PRAUC "
            f"{results.format_cell(macro, 'prauc')}, AUROC {results.format_cell(macro, 'auroc')}",
            flush=True)
      rows += new_rows
      scored.append((method, fraction, list(range(len(names))), np.stack(scores)))
  meta = {"run": run.name, "identity": run.identity, "task_set": dataclasses.asdict(task_set),
          "dataset": dataset.builder.info.full_name, "methods": list(methods),
          "fractions": list(label_fractions), "seeds": seeds, "n_bootstrap": n_bootstrap,
          "splits": {role: len(s.source) for role, s in splits.items()},
          "linear_probe": dataclasses.asdict(probe_config),
          "finetune": dataclasses.asdict(finetune_config),
          "seconds": round(time.time() - start, 1)}
  if jax.process_index() == 0:
    meta["figures"] = write_figures(out_dir, run, names, splits["test"], scored, map_options)
    results.write_results(out_dir, rows, meta)
    print(results.format_summary(rows), flush=True)
    print(f"wrote {epath.Path(out_dir) / 'results.csv'}, results.md and "
          f"{len(meta['figures'])} figures", flush=True)
  return rows
