"""Scores a pre-trained model on its dataset's evaluation split: zero-shot AUROC/PRAUC per
label and retrieval recall, with PR/ROC curves and an embedding map; once, or for every
checkpoint as training writes it (`watch`). The evaluate command and the end of training
run it; the model's shape always comes from the checkpoint being scored.

Writes `WORKDIR/eval/<step>/metrics.json` (and lists the figures beside it under
"figures").
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from ecgclip_jax import api, checkpoint, inference, parallel, storage
from ecgclip_jax.data import sources
from ecgclip_jax.evaluators import retrieval, zero_shot
from ecgclip_jax.interpret import curves, embedding_map


def embed_split(model: inference.Model, dataset: sources.Dataset, split: str
                ) -> dict[str, np.ndarray]:
  """ECG and report embeddings and labels of every record of `split`."""
  return model.embed_source(dataset.source(split), ("ecg_emb", "text_emb"),
                            progress=f"embedding {split}")


def run_evaluation(model: inference.Model, workdir: str,
                   eval_config: ml_collections.ConfigDict | None = None,
                   map_options: embedding_map.MapOptions = embedding_map.MapOptions()) -> dict:
  """Scores `model` (its weights of step `model.step`) on `eval_config.split` (default: the
  model's own `eval` settings); writes and prints the results, and (process 0) draws the
  figures."""
  start = time.time()
  config = model.config
  eval_config = eval_config or config.eval
  dataset = sources.open_dataset(config.data)
  step = model.step
  split = embed_split(model, dataset, eval_config.split)
  results = {"step": step, "split": eval_config.split, "num_examples": len(split["labels"])}
  # '' for corpora without labels (e.g. MIMIC-IV-ECG): retrieval only
  prompts = (zero_shot.load_prompts(eval_config.prompts, dataset.label_names)
             if eval_config.prompts else {})
  zero_shot_scores = None
  if prompts:
    zero_shot_scores = zero_shot.prompt_scores(split["ecg_emb"], prompts, dataset.label_names,
                                               model.embed_text)
    results["zero_shot"] = zero_shot.evaluate(*zero_shot_scores, split["labels"],
                                              dataset.label_names)
  # Retrieval pairs each ECG with its own report: records kept for their labels only (a
  # blank report) have none to find.
  reported = dataset.report_mask(eval_config.split)
  results["retrieval"] = retrieval.evaluate(split["ecg_emb"][reported],
                                            split["text_emb"][reported])
  results["retrieval_examples"] = int(reported.sum())
  out_dir = epath.Path(workdir) / "eval" / str(step)
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["figures"] = write_figures(str(out_dir), f"step {step} {eval_config.split}", split,
                                       dataset.label_names, zero_shot_scores, map_options)
  results["seconds"] = round(time.time() - start, 1)
  if jax.process_index() == 0:
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(format_table(results), flush=True)
    print(f"wrote metrics.json and {len(results['figures'])} figures to {out_dir}", flush=True)
  return results


def write_figures(out_dir: str, title: str, split: dict[str, np.ndarray],
                  label_names: list[str], zero_shot_scores: tuple[np.ndarray, list[int]] | None,
                  map_options: embedding_map.MapOptions) -> dict[str, str]:
  """Zero-shot PR/ROC curves per prompted label (`zero_shot.prompt_scores`' scores and
  columns, if any) and the embedding map of the split's ECGs, written to `out_dir`; returns
  file -> caption."""
  figures = {}
  if zero_shot_scores is not None:
    scores, columns = zero_shot_scores
    figures |= curves.write_curves(out_dir, "zero_shot", split["labels"][:, columns], scores,
                                   [label_names[c] for c in columns],
                                   title=f"{title}, zero-shot")
  figures |= embedding_map.write_map(out_dir, split["ecg_emb"], split["labels"], label_names,
                                     map_options, title=title)
  return figures


def format_table(results: dict) -> str:
  lines = [f"Evaluation at step {results['step']} on {results['split']} "
           f"({results['num_examples']} ECGs)"]
  if "zero_shot" in results:
    zs = results["zero_shot"]
    lines.append(f"{'label':<34}{'n+':>6}{'AUROC':>8}{'PRAUC':>8}")
    for name, m in zs["per_label"].items():
      lines.append(f"{name:<34}{m['positives']:>6}{m['auroc']:>8.3f}{m['prauc']:>8.3f}")
    for name, m in zs["undefined"].items():
      lines.append(f"{name:<34}{m['positives']:>6}{'n/a':>8}{'n/a':>8}  (one class only)")
    macro = zs["macro"]
    if macro["auroc"] is not None:
      lines.append(f"{'macro (zero-shot)':<34}{'':>6}{macro['auroc']:>8.3f}"
                   f"{macro['prauc']:>8.3f}")
  if results["retrieval_examples"] != results["num_examples"]:
    lines.append(f"retrieval over the {results['retrieval_examples']} ECGs with a report")
  for direction, recalls in results["retrieval"].items():
    lines.append(f"retrieval {direction:<24}" +
                 "  ".join(f"{k} {v:.3f}" for k, v in recalls.items()))
  return "\n".join(lines)


def evaluate_checkpoint(workdir: str, step: int | None = None,
                        config: ml_collections.ConfigDict | None = None,
                        map_options: embedding_map.MapOptions = embedding_map.MapOptions()
                        ) -> dict:
  """Scores checkpoint `step` (default: the latest) of `workdir`. The model is the one the
  checkpoint stores; `config`, if given, sets only the evaluation side (`eval`, `mesh`)."""
  model = api.load_checkpoint(workdir, step, **api.evaluation_side(config))
  return run_evaluation(model, workdir, config.eval if config else None, map_options)


def watch(workdir: str, config: ml_collections.ConfigDict | None = None,
          poll_seconds: float = 60, idle_timeout: float = 3 * 3600,
          map_options: embedding_map.MapOptions = embedding_map.MapOptions()) -> list[int]:
  """Evaluates each checkpoint as it lands, as a job beside training (pods run it on its own
  hosts): one `eval/<step>/` per step, steps already evaluated are skipped, so a restarted
  watcher picks up where it stopped. Returns once the run's final step (`total_steps` of
  `config`, or of the newest checkpoint's stored config) is evaluated, or when no new
  checkpoint has landed for `idle_timeout` seconds. Checkpoints of one structure share the
  compiled passes."""
  directory = checkpoint.checkpoint_dir(workdir)
  evaluated, last_news, model, manager = [], time.time(), None, None
  print(f"watching {directory} (every {poll_seconds:g} s; stops after the run's final step "
        f"or {idle_timeout:g} s without a new checkpoint)", flush=True)
  while True:
    storage.forget_listings(directory)
    # What is on the disk is read by process 0 and shared: hosts could see it differently.
    if manager is None and parallel.from_process_zero(epath.Path(directory).is_dir()):
      manager = checkpoint.make_manager(workdir, read_only=True)
    if manager is not None:
      manager.reload()
      steps = parallel.from_process_zero(sorted(manager.all_steps()))
      done = parallel.from_process_zero(
          [s for s in steps if (epath.Path(workdir) / "eval" / str(s) / "metrics.json").exists()])
      for step in steps:
        if step in done:
          continue
        model = api.load_checkpoint(workdir, step, like=model, **api.evaluation_side(config))
        run_evaluation(model, workdir, config.eval if config else None, map_options)
        evaluated.append(step)
        last_news = time.time()
      if steps:
        final = (config or checkpoint.restore_config(manager, steps[-1])).total_steps
        if final in steps:
          return evaluated
    if parallel.from_process_zero(time.time() - last_news > idle_timeout):
      print(f"no new checkpoint for {idle_timeout:g} s: stopping", flush=True)
      return evaluated
    time.sleep(poll_seconds)
