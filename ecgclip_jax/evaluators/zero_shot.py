"""Zero-shot classification: cosine similarity between ECG and label-prompt embeddings."""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from ecgclip_jax.evaluators import metrics


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_prompt_file(path: str) -> str:
  """A relative path is looked up in the current directory, then in the project checkout."""
  for candidate in (path, os.path.join(PROJECT_ROOT, path)):
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"prompt file not found: {path} (a JSON object: label -> list of prompts)")


def load_prompts(path: str, label_names: list[str]) -> dict[str, list[str]]:
  """Reads `{label: [prompt, ...]}`; every label named must exist in the dataset."""
  with open(resolve_prompt_file(path), encoding="utf-8") as f:
    prompts = json.load(f)
  unknown = sorted(set(prompts) - set(label_names))
  if unknown:
    raise ValueError(f"prompt file {path} names labels the dataset does not have: {unknown}")
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


def evaluate(ecg_emb: np.ndarray, labels: np.ndarray, label_names: list[str],
             prompts: dict[str, list[str]],
             embed_texts: Callable[[list[str]], np.ndarray]) -> dict:
  names = list(prompts)
  scores = ecg_emb @ class_embeddings(prompts, embed_texts).T
  columns = [label_names.index(name) for name in names]
  result = metrics.per_label_ranking_metrics(labels[:, columns], scores, names)
  result["labels_without_prompts"] = [n for n in label_names if n not in prompts]
  return result
