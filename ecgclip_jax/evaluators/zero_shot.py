"""Zero-shot classification: cosine similarity between ECG and label-prompt embeddings."""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
from etils import epath

from ecgclip_jax import paths
from ecgclip_jax.evaluators import metrics


def resolve_prompt_file(path: str) -> str:
  """A prompt file (a JSON object: label -> list of prompts) from here or the checkout."""
  return paths.resolve_file(path, os.getcwd(), "prompt file")


def load_prompts(path: str, label_names: list[str], *,
                 bank: bool = False) -> dict[str, list[str]]:
  """Reads `{label: [prompt, ...]}` (a lone string is one prompt, as in MERL's
  CKEPE_prompt.json). Every label named must exist in the dataset, unless the file is a
  `bank` of prompts for many task sets: then only the entries of `label_names` are kept."""
  prompts = json.loads(epath.Path(resolve_prompt_file(path)).read_text(encoding="utf-8"))
  prompts = {name: [texts] if isinstance(texts, str) else texts
             for name, texts in prompts.items()}
  unknown = sorted(set(prompts) - set(label_names))
  if unknown and not bank:
    raise ValueError(f"prompt file {path} names labels the dataset does not have: {unknown}")
  prompts = {name: texts for name, texts in prompts.items() if name in label_names}
  empty = sorted(name for name, texts in prompts.items() if not texts)
  if empty:
    raise ValueError(f"prompt file {path} has no prompt text for: {empty}")
  return prompts


def class_embeddings(prompts: dict[str, list[str]],
                     embed_texts: Callable[[list[str]], np.ndarray]) -> np.ndarray:
  """One unit vector per label: the renormalized mean of its prompts' embeddings."""
  rows = []
  for texts in prompts.values():
    mean = embed_texts(texts).mean(axis=0)
    rows.append(mean / np.linalg.norm(mean))
  return np.stack(rows)


def prompt_scores(ecg_emb: np.ndarray, prompts: dict[str, list[str]], label_names: list[str],
                  embed_texts: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, list[int]]:
  """Cosine scores [N, P] of each ECG against each prompted label, and the columns of those
  labels in `label_names`."""
  return (ecg_emb @ class_embeddings(prompts, embed_texts).T,
          [label_names.index(name) for name in prompts])


def evaluate(scores: np.ndarray, columns: list[int], labels: np.ndarray,
             label_names: list[str]) -> dict:
  """Per-label AUROC/PRAUC of `prompt_scores`' scores and columns."""
  scored = [label_names[c] for c in columns]
  result = metrics.per_label_ranking_metrics(labels[:, columns], scores, scored)
  result["labels_without_prompts"] = [n for n in label_names if n not in scored]
  return result
