"""Evaluation job: restore a checkpoint, embed the test split, score zero-shot and retrieval.

    python -m ecgclip_jax.evaluate --config configs/demo.py --workdir DIR [--step N]
    python -m ecgclip_jax.evaluate --config configs/demo.py --workdir DIR --watch

Writes `DIR/eval/<step>/metrics.json` and prints a per-label table; with --watch, for every
checkpoint as training writes it. Beside metrics.json (which lists them under "figures"):
zero-shot PR and ROC curves per label and a t-SNE map of the test ECG embeddings
(--embedding_map umap|none, --map_max_points).
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from jax.experimental import multihost_utils

from ecgclip_jax import checkpoint, cli, parallel, train_state
from ecgclip_jax.config_defaults import validate_config
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.evaluators import retrieval, zero_shot
from ecgclip_jax.interpret import curves, embedding_map
from ecgclip_jax.models import hf_import


def _gather(array: jax.Array) -> np.ndarray:
  """The whole global array on every host."""
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def run_over_split(source, outputs, mesh, *, batch_size: int, normalization: str,
                   tokenizer=None, max_text_length: int = 0,
                   label_feature: str = "labels") -> dict[str, np.ndarray]:
  """`outputs` (name -> jitted fn(global batch)) and the labels of every record of `source`,
  each exactly once (padding masked), in source order, on every host."""
  batches = pipeline.make_eval_batches(
      source, tokenizer=tokenizer, max_text_length=max_text_length,
      normalization=normalization,
      per_process_batch_size=parallel.check_batch_size(batch_size, mesh),
      process_index=jax.process_index(), process_count=jax.process_count(),
      label_feature=label_feature)
  parts = {name: [] for name in (*outputs, "labels", "mask", "index")}
  for local in batches:  # outputs stay on device: the host never waits inside the loop
    batch = parallel.global_batch({k: v for k, v in local.items() if k != "lead_mask"}, mesh)
    for name, fn in outputs.items():
      parts[name].append(fn(batch))
    for name in ("labels", "mask", "index"):
      parts[name].append(batch[name])
  out = {name: _gather(jnp.concatenate(values)) for name, values in parts.items()}
  real = out.pop("mask")
  out = {name: values[real] for name, values in out.items()}
  order = np.argsort(out.pop("index"))
  return {name: values[order] for name, values in out.items()}


class Embedder:
  """Jitted, sharded passes over a split; built once per model and mesh, the weights
  `(params, model_state)` are an argument, so new checkpoints reuse the compilations."""

  def __init__(self, trainer: train_state.Trainer, mesh, tokenizer=None):
    self.mesh, self.tokenizer, self.config = mesh, tokenizer, trainer.config
    self._ecg = jax.jit(trainer.embed_ecg)
    self._text = jax.jit(trainer.embed_text)
    self._features = jax.jit(trainer.ecg_features)

  def _pass(self, source, outputs, label_feature: str = "labels",
            with_text: bool = False) -> dict[str, np.ndarray]:
    c = self.config
    return run_over_split(source, outputs, self.mesh, batch_size=c.eval.batch_size,
                          normalization=c.data.normalization,
                          tokenizer=self.tokenizer if with_text else None,
                          max_text_length=c.text.max_length, label_feature=label_feature)

  def embed_split(self, weights, source,
                  outputs=("ecg_emb", "text_emb")) -> dict[str, np.ndarray]:
    """ECG and/or report embeddings, and labels: zero-shot, retrieval, predict."""
    passes = {"ecg_emb": lambda b: self._ecg(*weights, b["ecg"]),
              "text_emb": lambda b: self._text(*weights, b["input_ids"], b["attention_mask"])}
    return self._pass(source, {name: passes[name] for name in outputs},
                      with_text="text_emb" in outputs)

  def ecg_features(self, weights, source, label_feature: str = "labels") -> dict[str, np.ndarray]:
    """Pooled ECG-tower features (linear probes), unit embeddings (zero-shot) and the
    `label_feature` labels."""
    return self._pass(source, {
        "features": lambda b: self._features(*weights, b["ecg"]),
        "ecg_emb": lambda b: self._ecg(*weights, b["ecg"]),
    }, label_feature)

  def embed_texts(self, weights, texts: list[str]) -> np.ndarray:
    """Prompt embeddings; prompts are few, so they run unsharded."""
    tokens = self.tokenizer(texts, padding="max_length", truncation=True,
                            max_length=self.config.text.max_length, return_tensors="np")
    return np.asarray(self._text(*weights, tokens["input_ids"].astype(np.int32),
                                 tokens["attention_mask"].astype(np.int32)))


def make_embedder(config: ml_collections.ConfigDict, trainer: train_state.Trainer, mesh):
  """The evaluation dataset and an `Embedder` with the config's tokenizer."""
  tokenizer = hf_import.load_tokenizer(train_state.text_encoder_dir(config))
  return sources.open_dataset(config.data), Embedder(trainer, mesh, tokenizer)


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, step: int,
                   embedder: Embedder, dataset: sources.Dataset, weights,
                   map_options: embedding_map.MapOptions = embedding_map.MapOptions()) -> dict:
  """Scores one set of weights on `config.eval.split`; writes and prints the results, and
  (process 0) draws the figures."""
  start = time.time()
  split = embedder.embed_split(weights, dataset.source(config.eval.split))
  results = {"step": step, "split": config.eval.split, "num_examples": len(split["labels"])}
  # '' for corpora without labels (e.g. MIMIC-IV-ECG): retrieval only
  prompts = (zero_shot.load_prompts(config.eval.prompts, dataset.label_names)
             if config.eval.prompts else {})
  zero_shot_scores = None
  if prompts:
    zero_shot_scores = zero_shot.prompt_scores(
        split["ecg_emb"], prompts, dataset.label_names,
        functools.partial(embedder.embed_texts, weights))
    results["zero_shot"] = zero_shot.evaluate(*zero_shot_scores, split["labels"],
                                              dataset.label_names)
  results["retrieval"] = retrieval.evaluate(split["ecg_emb"], split["text_emb"])
  out_dir = epath.Path(workdir) / "eval" / str(step)
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["figures"] = write_figures(str(out_dir), f"step {step} {config.eval.split}", split,
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
  for direction, recalls in results["retrieval"].items():
    lines.append(f"retrieval {direction:<24}" +
                 "  ".join(f"{k} {v:.3f}" for k, v in recalls.items()))
  return "\n".join(lines)


def restore_weights(manager, step: int, trainer: train_state.Trainer, mesh):
  """`(params, model_state)` of checkpoint `step`, replicated over the mesh."""
  state = checkpoint.restore(manager, step, trainer.abstract_state(parallel.replicated(mesh)))
  print(f"restored checkpoint step {step} from {manager.directory}", flush=True)
  return state.params, state.model_state


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        map_options: embedding_map.MapOptions = embedding_map.MapOptions()
                        ) -> dict:
  validate_config(config)
  mesh = parallel.make_mesh(config.mesh)
  trainer = train_state.Trainer(config)
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = checkpoint.resolve_step(manager, step)
  dataset, embedder = make_embedder(config, trainer, mesh)
  return run_evaluation(config, workdir, step, embedder, dataset,
                        restore_weights(manager, step, trainer, mesh), map_options)


def watch(config: ml_collections.ConfigDict, workdir: str, poll_seconds: float = 60,
          idle_timeout: float = 3 * 3600,
          map_options: embedding_map.MapOptions = embedding_map.MapOptions()) -> list[int]:
  """Evaluates each checkpoint as it lands, as a job beside training (pods run it on its own
  hosts): one `eval/<step>/` per step, steps already evaluated are skipped, so a restarted
  watcher picks up where it stopped. Returns once `config.total_steps` is evaluated, or when
  no new checkpoint has landed for `idle_timeout` seconds."""
  validate_config(config)
  mesh = parallel.make_mesh(config.mesh)
  trainer = train_state.Trainer(config)
  dataset, embedder = make_embedder(config, trainer, mesh)
  directory = checkpoint.checkpoint_dir(workdir)
  evaluated, last_news = [], time.time()
  print(f"watching {directory} (every {poll_seconds:g} s; stops after step "
        f"{config.total_steps} or {idle_timeout:g} s without a new checkpoint)", flush=True)
  manager = None
  while True:
    if manager is None and os.path.isdir(directory):
      manager = checkpoint.make_manager(workdir, read_only=True)
    if manager is not None:
      manager.reload()
      for step in sorted(manager.all_steps()):
        if os.path.exists(os.path.join(workdir, "eval", str(step), "metrics.json")):
          continue
        run_evaluation(config, workdir, step, embedder, dataset,
                       restore_weights(manager, step, trainer, mesh), map_options)
        evaluated.append(step)
        last_news = time.time()
      if config.total_steps in manager.all_steps():
        return evaluated
    if time.time() - last_news > idle_timeout:
      print(f"no new checkpoint for {idle_timeout:g} s: stopping", flush=True)
      return evaluated
    time.sleep(poll_seconds)


def main():
  config, workdir = cli.define_config_and_workdir("Training workdir holding checkpoints/.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  watch_flag = flags.DEFINE_bool(
      "watch", False, "Evaluate every checkpoint as it lands, until the final step.")
  poll = flags.DEFINE_float("poll_seconds", 60, "With --watch: seconds between looks.")
  idle = flags.DEFINE_float("idle_timeout", 3 * 3600,
                            "With --watch: stop after this many seconds without a checkpoint.")
  map_options = embedding_map.define_flags()
  cli.run(lambda: (watch(config.value, workdir.value, poll.value, idle.value, map_options())
                   if watch_flag.value else
                   evaluate_checkpoint(config.value, workdir.value, step.value, map_options())))


if __name__ == "__main__":
  main()
