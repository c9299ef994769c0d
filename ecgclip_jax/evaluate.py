"""Evaluation job: restore a checkpoint, embed the test split, score zero-shot and retrieval.

    python -m ecgclip_jax.evaluate --config configs/demo.py --workdir DIR [--step N]

Writes `DIR/eval/<step>/metrics.json` and prints a per-label table.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from ecgclip_jax import checkpoint, cli, parallel, train_state
from ecgclip_jax.config_defaults import validate_config
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.evaluators import retrieval, zero_shot
from ecgclip_jax.models import hf_import


def _gather(array: jax.Array) -> np.ndarray:
  """The whole global array on every host."""
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class Embedder:
  """Jitted, sharded embedding passes for one set of weights."""

  def __init__(self, trainer: train_state.Trainer, params, model_state, mesh, tokenizer):
    self.mesh, self.tokenizer, self.config = mesh, tokenizer, trainer.config
    self._weights = (params, model_state)
    self._ecg = jax.jit(trainer.embed_ecg)
    self._text = jax.jit(trainer.embed_text)

  def embed_split(self, source) -> dict[str, np.ndarray]:
    """ECG and report embeddings and labels of every record, each exactly once."""
    c = self.config
    per_process = parallel.check_batch_size(c.eval.batch_size, self.mesh)
    batches = pipeline.make_eval_batches(
        source, tokenizer=self.tokenizer, max_text_length=c.text.max_length,
        normalization=c.data.normalization, per_process_batch_size=per_process,
        process_index=jax.process_index(), process_count=jax.process_count())
    keep = ("ecg", "input_ids", "attention_mask", "labels", "mask", "index")
    parts = {"ecg_emb": [], "text_emb": [], "labels": [], "mask": [], "index": []}
    for local in batches:
      batch = parallel.global_batch({k: local[k] for k in keep}, self.mesh)
      parts["ecg_emb"].append(_gather(self._ecg(*self._weights, batch["ecg"])))
      parts["text_emb"].append(_gather(self._text(*self._weights, batch["input_ids"],
                                                  batch["attention_mask"])))
      for name in ("labels", "mask", "index"):
        parts[name].append(_gather(batch[name]))
    out = {name: np.concatenate(values) for name, values in parts.items()}
    real = out.pop("mask")
    out = {name: values[real] for name, values in out.items()}
    order = np.argsort(out.pop("index"))
    return {name: values[order] for name, values in out.items()}

  def embed_texts(self, texts: list[str]) -> np.ndarray:
    """Prompt embeddings; prompts are few, so they run unsharded."""
    tokens = self.tokenizer(texts, padding="max_length", truncation=True,
                            max_length=self.config.text.max_length, return_tensors="np")
    return np.asarray(self._text(*self._weights, tokens["input_ids"].astype(np.int32),
                                 tokens["attention_mask"].astype(np.int32)))


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, step: int,
                   trainer: train_state.Trainer, params, model_state, mesh) -> dict:
  """Scores one set of weights on `config.eval.split`; writes and prints the results."""
  start = time.time()
  dataset = sources.open_dataset(config.data)
  tokenizer = hf_import.load_tokenizer(train_state.text_encoder_dir(config))
  embedder = Embedder(trainer, params, model_state, mesh, tokenizer)
  split = embedder.embed_split(dataset.source(config.eval.split))
  results = {"step": step, "split": config.eval.split, "num_examples": len(split["labels"])}
  if config.eval.prompts:  # '' for corpora without labels (e.g. MIMIC-IV-ECG): retrieval only
    prompts = zero_shot.load_prompts(config.eval.prompts, dataset.label_names)
    results["zero_shot"] = zero_shot.evaluate(split["ecg_emb"], split["labels"],
                                              dataset.label_names, prompts, embedder.embed_texts)
  results["retrieval"] = retrieval.evaluate(split["ecg_emb"], split["text_emb"])
  results["seconds"] = round(time.time() - start, 1)
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval", str(step))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    print(format_table(results), flush=True)
    print(f"wrote {os.path.join(out_dir, 'metrics.json')}", flush=True)
  return results


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
  for direction, recalls in results["retrieval"].items():
    lines.append(f"retrieval {direction:<24}" +
                 "  ".join(f"{k} {v:.3f}" for k, v in recalls.items()))
  return "\n".join(lines)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict:
  validate_config(config)
  mesh = parallel.make_mesh(config.mesh)
  trainer = train_state.Trainer(config)
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = checkpoint.resolve_step(manager, step)
  state, _ = checkpoint.restore(manager, step, trainer.abstract_state(parallel.replicated(mesh)))
  print(f"restored checkpoint step {step} from {manager.directory}", flush=True)
  return run_evaluation(config, workdir, step, trainer, state.params, state.model_state, mesh)


def main():
  config, workdir = cli.define_config_and_workdir("Training workdir holding checkpoints/.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  cli.run(lambda: evaluate_checkpoint(config.value, workdir.value, step.value))


if __name__ == "__main__":
  main()
