"""Saliency job: which parts of an ECG drive a class score, drawn on the clinical layout and,
on the synthetic corpus, scored against where the generator put each finding.

    python -m ecgclip_jax.interpret.explain --workdir workdirs/demo \\
        --classes st_elevation_anterior,left_bundle_branch_block --out results/saliency_demo

The model and its config come from the checkpoint (`--step`, or the latest). For each class,
the split's records carrying it (up to --max_records, in split order) are scored by the
target (`zero_shot`: the cosine with the class's averaged prompt embeddings; `linear_probe`:
the logit of a probe fitted on the training split's frozen features) and attributed by each
of --methods. The --num_plots highest-scoring records are drawn per method, as
OUT/<class>_<method>_<record_id>.png. On the synthetic corpus the share of |attribution|
inside the finding's annotated region is compared with the region's share of the record
(see `localization`): printed as a table and written to OUT/localization.json, with each
class's mean score once its regions are set to the reference (`--baseline`): what the model
has left without them, whatever a map shows. `--control normal_sinus_rhythm` adds the same
ratio for that label's saliency on the same records, the level any score's saliency reaches
there; `--versus LABEL` explains score(class) - score(LABEL). One process, sharded over
its local devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Iterable, Iterator

import numpy as np
from absl import flags

from ecgclip_jax import cli, parallel, probe, train_state
from ecgclip_jax.data import normalize, sources, synthetic
from ecgclip_jax.evaluate import Embedder
from ecgclip_jax.evaluators import linear_probe, zero_shot
from ecgclip_jax.interpret import curves, ecg_plot, localization, saliency
from ecgclip_jax.models import hf_import

TARGETS = ("zero_shot", "linear_probe")


@dataclasses.dataclass
class Example:
  record_id: str
  ecg_uv: np.ndarray  # int16 [T, 12]
  lead_mask: np.ndarray  # bool [12]
  labels: np.ndarray  # [num labels]
  annotations: tuple[synthetic.Annotation, ...] | None  # None: the corpus has none


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def stored_examples(source) -> Iterator[Example]:
  """Every record of `source`, read as it is needed (no annotations)."""
  for i in range(len(source)):
    r = source[i]
    yield Example(_text(r["record_id"]), r["ecg"], r["lead_mask"], r["labels"], None)


def synthetic_examples(dataset: sources.Dataset, split: str) -> list[Example]:
  """The split's records regenerated with their annotations: the stored corpus keeps none,
  and the generator is deterministic in the builder config. A corpus built by an earlier
  generator version stores other waveforms for the same records and labels; then the
  regenerated records are explained (with a note), as only their annotations are exact."""
  from tfds_builders.synthetic_ecg_reports import synthetic_ecg_reports_dataset_builder as lib
  c = dataset.builder.builder_config
  splits = lib.patient_splits(c.num_patients, c.seed)
  print(f"regenerating {dataset.builder.info.full_name} ({split}) with its annotations",
        flush=True)
  records = {r.record_id: r for r in synthetic.iter_corpus(c.num_patients, c.sample_rate,
                                                           c.duration_s, c.seed)
             if splits[r.patient_id] == split}
  stored = list(stored_examples(dataset.source(split)))
  if ({e.record_id for e in stored} != set(records)
      or any(not np.array_equal(e.labels, records[e.record_id].labels) for e in stored)):
    raise ValueError(f"the stored {split} split of {dataset.builder.info.full_name} has other "
                     "records or labels than the generator makes: rebuild the corpus")
  differ = sum(not np.array_equal(e.ecg_uv, records[e.record_id].ecg_uv) for e in stored)
  if differ:
    print(f"note: {differ} of {len(stored)} stored ECGs differ from the generator's (built "
          "by another version of ecgclip_jax.data.synthetic); explaining the regenerated "
          "ones, whose annotations are exact", flush=True)
  return [Example(e.record_id, records[e.record_id].ecg_uv, e.lead_mask, e.labels,
                  records[e.record_id].annotations) for e in stored]


def select(examples: Iterable[Example], columns: dict[str, int],
           max_records: int) -> dict[str, list[Example]]:
  """Per class, the first `max_records` examples carrying it (one pass, stopping early)."""
  out = {name: [] for name in columns}
  for e in examples:
    for name, column in columns.items():
      if e.labels[column] and len(out[name]) < max_records:
        out[name].append(e)
    if all(len(chosen) == max_records for chosen in out.values()):
      break
  return out


def make_targets(kind: str, run: probe.Run, dataset: sources.Dataset, classes: list[str],
                 prompts_file: str) -> dict[str, saliency.Target]:
  """Class -> target: zero-shot class embeddings, or a probe fitted on the frozen features
  of the training split (early-stopped on the validation split)."""
  names = dataset.label_names
  tokenizer = hf_import.load_tokenizer(train_state.text_encoder_dir(run.config))
  embedder = Embedder(run.trainer, run.mesh, tokenizer)
  if kind == "zero_shot":
    prompts = zero_shot.load_prompts(prompts_file, names)
    missing = [c for c in classes if c not in prompts]
    if missing:
      raise ValueError(f"prompt file {prompts_file} has no prompts for {missing}")
    embeddings = zero_shot.class_embeddings(
        {c: prompts[c] for c in classes}, functools.partial(embedder.embed_texts, run.weights))
    return {c: saliency.zero_shot_target(c, e) for c, e in zip(classes, embeddings)}
  start = time.time()
  train = embedder.ecg_features(run.weights, dataset.source(run.config.data.train_split))
  val = embedder.ecg_features(run.weights, dataset.source("validation"))
  fitted = linear_probe.fit_linear_probe(train["features"], train["labels"], val["features"],
                                         val["labels"], linear_probe.LinearProbeConfig())
  print(f"fitted the linear probe on {len(train['labels'])} records in "
        f"{time.time() - start:.1f} s", flush=True)
  return {c: saliency.probe_target(c, fitted, names.index(c)) for c in classes}


def _padded_batches(x: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """`x` in batches of one shape (the last padded by repeating its final record), so one
  compilation serves them all; with each batch's number of real records."""
  for i in range(0, len(x), batch_size):
    part = x[i:i + batch_size]
    yield np.pad(part, ((0, batch_size - len(part)), (0, 0), (0, 0)), mode="edge"), len(part)


def scores(attributor: saliency.Attributor, weights, target: saliency.Target, x: np.ndarray,
           batch_size: int) -> np.ndarray:
  """The target's scores [N] of `x` [N, T, 12]."""
  return np.concatenate([attributor.scores(weights, target, batch)[:n]
                         for batch, n in _padded_batches(x, batch_size)])


def attribute(attributor: saliency.Attributor, weights, target: saliency.Target,
              x: np.ndarray, method: str, batch_size: int) -> np.ndarray:
  """Attributions [N, T, 12] of `x` [N, T, 12]."""
  return np.concatenate([attributor(weights, target, batch, method)[:n]
                         for batch, n in _padded_batches(x, batch_size)])


def _localize(examples: list[Example], maps: np.ndarray, masks: np.ndarray) -> list:
  rows = [localization.localize(e.record_id, m, mask)
          for e, m, mask in zip(examples, maps, masks)]
  return [r for r in rows if r is not None]


def run_explain(run: probe.Run, out_dir: str, *, classes: list[str], split: str,
                target_kind: str = "zero_shot", versus: str = "", control: str = "",
                methods=saliency.METHODS,
                config: saliency.SaliencyConfig = saliency.SaliencyConfig(),
                batch_size: int = 16, max_records: int = 100, num_plots: int = 2,
                prompts: str = "", dpi: float = ecg_plot.DPI) -> dict:
  """Attributions of every class by every method; writes the PNGs and localization.json and
  returns the localization summaries by (class, method) (empty off the synthetic corpus).

  `versus`: explain score(class) - score(versus) instead, so that what every class's score
  is sensitive to cancels. `control`: also attribute that class's score on the same records
  and report its ratio in the same regions (`control_ratio`): the concentration any target
  shows there, e.g. where the model's gradients peak on every QRS complex.
  """
  if target_kind not in TARGETS:
    raise ValueError(f"unknown target {target_kind!r}; choose from {TARGETS}")
  unknown = sorted(set(methods) - set(saliency.METHODS))
  if unknown:
    raise ValueError(f"unknown saliency method(s) {unknown}; choose from {saliency.METHODS}")
  dataset = sources.open_dataset(run.config.data)
  needed = list(dict.fromkeys([*classes, *(name for name in (versus, control) if name)]))
  missing = [c for c in needed if c not in dataset.label_names]
  if missing:
    raise ValueError(f"{dataset.builder.info.full_name} has no label(s) {missing}; "
                     f"available: {dataset.label_names}")
  parallel.check_batch_size(batch_size, run.mesh)
  sample_rate = float(dataset.builder.info.metadata["sample_rate"])
  attributor = saliency.Attributor(run.trainer, config, sample_rate,
                                   parallel.batch_sharding(run.mesh))
  targets = make_targets(target_kind, run, dataset, needed, prompts or run.config.eval.prompts)
  annotated = dataset.builder.name == sources.SYNTHETIC
  chosen = select(synthetic_examples(dataset, split) if annotated
                  else stored_examples(dataset.source(split)),
                  {c: dataset.label_names.index(c) for c in classes}, max_records)
  os.makedirs(out_dir, exist_ok=True)

  results, per_record, deletion = {}, [], []
  for name in classes:
    target = saliency.contrast(targets[name], targets[versus]) if versus else targets[name]
    examples = chosen[name]
    if not examples:
      print(f"{name}: no record in {split} carries it", flush=True)
      continue
    x = np.stack([normalize.normalize_ecg(e.ecg_uv, e.lead_mask, run.config.data.normalization)
                  for e in examples])
    score = scores(attributor, run.weights, target, x, batch_size)
    if annotated:
      masks = np.stack([localization.region_mask(e.annotations, name, len(xi))
                        for e, xi in zip(examples, x)])
      reference = saliency.baseline(x, config, sample_rate)
      deleted = scores(attributor, run.weights, target, np.where(masks, reference, x),
                       batch_size)
      deletion.append({"finding": name, "n": len(x), "score_mean": float(score.mean()),
                       "region_deleted_score_mean": float(deleted.mean())})
      print(f"{name}: mean score {score.mean():+.3f}, {deleted.mean():+.3f} with its "
            f"annotated regions set to the {config.baseline} reference", flush=True)
    for method in methods:
      start = time.time()
      maps = attribute(attributor, run.weights, target, x, method, batch_size)
      for i in np.argsort(-score, kind="stable")[:num_plots]:
        e = examples[i]
        fig = ecg_plot.plot_ecg(
            e.ecg_uv / 1000, sample_rate, saliency=maps[i],
            title=f"{e.record_id} · {target.name} · {target_kind} score {score[i]:+.3f} · "
                  f"{method}")
        curves.save_png(fig, out_dir, f"{name}_{method}_{e.record_id}.png", dpi)
      if annotated:
        rows = _localize(examples, maps, masks)
        results[name, method] = localization.summarize(rows)
        per_record += [{"finding": name, "method": method, **dataclasses.asdict(r),
                        "ratio": r.ratio, "evidence_ratio": r.evidence_ratio} for r in rows]
        if control:
          control_maps = attribute(attributor, run.weights, targets[control], x, method,
                                   batch_size)
          level = localization.summarize(_localize(examples, control_maps, masks))
          results[name, method] |= {"control_ratio": level.get("ratio_mean"),
                                    "control_evidence_ratio": level.get("evidence_ratio_mean")}
      print(f"{name} {method}: {len(examples)} records, mean score {score.mean():+.3f}, "
            f"{time.time() - start:.1f} s", flush=True)

  if results:
    print(localization.format_table(results), flush=True)
    with open(os.path.join(out_dir, "localization.json"), "w", encoding="utf-8") as f:
      json.dump({"run": run.name, "split": split, "target": target_kind, "versus": versus,
                 "control": control, "saliency": dataclasses.asdict(config),
                 "summary": [{"finding": c, "method": m, **s} for (c, m), s in results.items()],
                 "deletion": deletion, "records": per_record}, f, indent=2)
  print(f"wrote {out_dir}", flush=True)
  return results


def main():
  workdir = flags.DEFINE_string("workdir", None, "Pre-training workdir holding checkpoints/.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  classes = flags.DEFINE_list("classes", None, "Labels whose score to explain.")
  out = flags.DEFINE_string("out", None, "Output folder for PNGs and localization.json.")
  split = flags.DEFINE_string("split", "test", "Split whose records to explain.")
  target = flags.DEFINE_enum("target", "zero_shot", TARGETS, "Score to explain.")
  versus = flags.DEFINE_string("versus", "", "Explain score(class) - score(this label).")
  control = flags.DEFINE_string(
      "control", "", "Also score this label's saliency in each finding's regions.")
  methods = flags.DEFINE_list("methods", list(saliency.METHODS), f"Any of {saliency.METHODS}.")
  defaults = saliency.SaliencyConfig()
  steps = flags.DEFINE_integer("steps", defaults.steps, "Integrated gradients: path points.")
  base = flags.DEFINE_enum("baseline", defaults.baseline, saliency.BASELINES,
                           "Integrated gradients' path start; what occlusion fills in.")
  blur_s = flags.DEFINE_float("blur_s", defaults.blur_s, "'blur' baseline: sigma in seconds.")
  chunk = flags.DEFINE_integer("chunk", defaults.chunk,
                               "Path points or occluded copies evaluated together.")
  occlusion_s = flags.DEFINE_float("occlusion_s", defaults.occlusion_s,
                                   "Occlusion: window in seconds, one lead at a time.")
  occlusion_stride_s = flags.DEFINE_float("occlusion_stride_s", defaults.occlusion_stride_s,
                                          "Occlusion: window step in seconds.")
  batch_size = flags.DEFINE_integer("batch_size", 16, "Records attributed together.")
  max_records = flags.DEFINE_integer("max_records", 100, "Records per class (split order).")
  num_plots = flags.DEFINE_integer("num_plots", 2, "PNGs per class and method (top scores).")
  prompts = flags.DEFINE_string("prompts", "", "Zero-shot prompts (default: the run's).")
  dpi = flags.DEFINE_float("dpi", ecg_plot.DPI, "PNG resolution (254: 10 pixels per mm).")
  flags.mark_flags_as_required(["workdir", "classes", "out"])

  def job():
    run = probe.load_run(workdir.value, step.value, "pretrained", None)
    run_explain(run, out.value, classes=classes.value, split=split.value,
                target_kind=target.value, versus=versus.value, control=control.value,
                methods=methods.value,
                config=saliency.SaliencyConfig(steps.value, base.value, blur_s.value,
                                               chunk.value, occlusion_s.value,
                                               occlusion_stride_s.value),
                batch_size=batch_size.value, max_records=max_records.value,
                num_plots=num_plots.value, prompts=prompts.value, dpi=dpi.value)

  cli.run(job)


if __name__ == "__main__":
  main()
