"""Which parts of an ECG drive a class score, drawn on the clinical layout and, on the
synthetic corpus, scored against where the generator put each finding (the explain command,
interpret/explain.py, is its shell).

For each class, the split's records carrying it (up to --max_records, in split order) are
scored by the
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
import json
import time
from typing import Iterable, Iterator

import numpy as np
from etils import epath

from ecgclip_jax import inference, parallel
from ecgclip_jax.data import contract, normalize, sources, synthetic
from ecgclip_jax.evaluators import linear_probe, zero_shot
from ecgclip_jax.interpret import curves, ecg_plot, localization, saliency
from ecgclip_jax.progress import Progress

TARGETS = ("zero_shot", "linear_probe")


@dataclasses.dataclass
class Example:
  record_id: str
  ecg_uv: np.ndarray  # int16 [T, 12]
  lead_mask: np.ndarray  # bool [12]
  labels: np.ndarray  # [num labels]
  annotations: tuple[synthetic.Annotation, ...] | None  # None: the corpus has none


def stored_examples(source) -> Iterator[Example]:
  """Every record of `source`, read as it is needed (no annotations)."""
  for i in range(len(source)):
    r = source[i]
    yield Example(contract.text(r["record_id"]), r["ecg"], r["lead_mask"], r["labels"], None)


def synthetic_examples(dataset: sources.Dataset, split: str) -> list[Example]:
  """The split's records regenerated with their annotations: the stored corpus keeps none,
  and the generator is deterministic in the builder config. A corpus built by an earlier
  generator version stores other waveforms for the same records and labels; then the
  regenerated records are explained (with a note), as only their annotations are exact."""
  c = dataset.builder.builder_config
  splits = synthetic.patient_splits(c.num_patients, c.seed)
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


def make_targets(kind: str, model: inference.Model, dataset: sources.Dataset,
                 classes: list[str], prompts_file: str) -> dict[str, saliency.Target]:
  """Class -> target: zero-shot class embeddings, or a probe fitted on the frozen features
  of the training split (early-stopped on the validation split)."""
  names = dataset.label_names
  if kind == "zero_shot":
    prompts = zero_shot.load_prompts(prompts_file, names)
    missing = [c for c in classes if c not in prompts]
    if missing:
      raise ValueError(f"prompt file {prompts_file} has no prompts for {missing}")
    embeddings = zero_shot.class_embeddings({c: prompts[c] for c in classes}, model.embed_text)
    return {c: saliency.zero_shot_target(c, e) for c, e in zip(classes, embeddings)}
  start = time.time()
  train, val = (model.embed_source(dataset.source(split), ("features",),
                                   progress=f"probe features ({split})")
                for split in (model.config.data.train_split, "validation"))
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
  meter = Progress(f"{target.name} {method}", len(x))
  maps = []
  for batch, n in _padded_batches(x, batch_size):
    maps.append(attributor(weights, target, batch, method)[:n])
    meter.update(n)
  meter.done()
  return np.concatenate(maps)


def _localize(examples: list[Example], maps: np.ndarray, masks: np.ndarray) -> list:
  rows = [localization.localize(e.record_id, m, mask)
          for e, m, mask in zip(examples, maps, masks)]
  return [r for r in rows if r is not None]


def run_explain(model: inference.Model, out_dir: str, *, classes: list[str], split: str,
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
  dataset = sources.open_dataset(model.config.data)
  needed = list(dict.fromkeys([*classes, *(name for name in (versus, control) if name)]))
  missing = [c for c in needed if c not in dataset.label_names]
  if missing:
    raise ValueError(f"{dataset.builder.info.full_name} has no label(s) {missing}; "
                     f"available: {dataset.label_names}")
  parallel.check_batch_size(batch_size, model.mesh)
  sample_rate = float(dataset.builder.info.metadata["sample_rate"])
  attributor = saliency.Attributor(model.model_def, config, sample_rate,
                                   parallel.batch_sharding(model.mesh))
  targets = make_targets(target_kind, model, dataset, needed,
                         prompts or model.config.eval.prompts)
  annotated = dataset.builder.name == sources.SYNTHETIC
  chosen = select(synthetic_examples(dataset, split) if annotated
                  else stored_examples(dataset.source(split)),
                  {c: dataset.label_names.index(c) for c in classes}, max_records)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)

  results, per_record, deletion = {}, [], []
  for name in classes:
    target = saliency.contrast(targets[name], targets[versus]) if versus else targets[name]
    examples = chosen[name]
    if not examples:
      print(f"{name}: no record in {split} carries it", flush=True)
      continue
    x = np.stack([normalize.normalize_ecg(e.ecg_uv, e.lead_mask, model.config.data.normalization)
                  for e in examples])
    score = scores(attributor, model.weights, target, x, batch_size)
    if annotated:
      masks = np.stack([localization.region_mask(e.annotations, name, len(xi))
                        for e, xi in zip(examples, x)])
      reference = saliency.baseline(x, config, sample_rate)
      deleted = scores(attributor, model.weights, target, np.where(masks, reference, x),
                       batch_size)
      deletion.append({"finding": name, "n": len(x), "score_mean": float(score.mean()),
                       "region_deleted_score_mean": float(deleted.mean())})
      print(f"{name}: mean score {score.mean():+.3f}, {deleted.mean():+.3f} with its "
            f"annotated regions set to the {config.baseline} reference", flush=True)
    for method in methods:
      start = time.time()
      maps = attribute(attributor, model.weights, target, x, method, batch_size)
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
          control_maps = attribute(attributor, model.weights, targets[control], x, method,
                                   batch_size)
          level = localization.summarize(_localize(examples, control_maps, masks))
          results[name, method] |= {"control_ratio": level.get("ratio_mean"),
                                    "control_evidence_ratio": level.get("evidence_ratio_mean")}
      print(f"{name} {method}: {len(examples)} records, mean score {score.mean():+.3f}, "
            f"{time.time() - start:.1f} s", flush=True)

  if results:
    print(localization.format_table(results), flush=True)
    (epath.Path(out_dir) / "localization.json").write_text(json.dumps(
        {"run": model.name, "split": split, "target": target_kind, "versus": versus,
         "control": control, "saliency": dataclasses.asdict(config),
         "summary": [{"finding": c, "method": m, **s} for (c, m), s in results.items()],
         "deletion": deletion, "records": per_record}, indent=2))
  print(f"wrote {out_dir}", flush=True)
  return results
