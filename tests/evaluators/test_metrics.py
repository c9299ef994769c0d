"""Ranking metrics and retrieval recall against hand-computable cases."""

import numpy as np
import pytest

from ecgclip_jax.evaluators import metrics, retrieval


def test_auroc_and_prauc_hand_computed():
  # Label a: positives scored 0.9 and 0.4, negatives 0.8 and 0.1.
  # AUROC = P(pos > neg) over 4 pairs: (0.9>0.8, 0.9>0.1, 0.4<0.8, 0.4>0.1) = 3/4.
  # Ranking 0.9(+) 0.8(-) 0.4(+) 0.1(-): AP = (1/1 + 2/3) / 2 = 5/6.
  labels = np.array([[1], [0], [1], [0]], bool)
  scores = np.array([[0.9], [0.8], [0.4], [0.1]])
  out = metrics.per_label_ranking_metrics(labels, scores, ["a"])
  assert out["per_label"]["a"]["auroc"] == pytest.approx(0.75)
  assert out["per_label"]["a"]["prauc"] == pytest.approx(5 / 6)
  assert out["per_label"]["a"]["positives"] == 2
  assert out["per_label"]["a"]["prevalence"] == pytest.approx(0.5)


def test_labels_with_one_class_are_reported_not_averaged():
  labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]], bool)
  scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.3, 0.2], [0.8, 0.1, 0.3]])
  out = metrics.per_label_ranking_metrics(labels, scores, ["a", "none", "all"])
  assert list(out["per_label"]) == ["a"]
  assert out["undefined"] == {"none": {"n": 3, "positives": 0}, "all": {"n": 3, "positives": 3}}
  assert out["macro"]["auroc"] == pytest.approx(1.0)


def test_recall_at_k_hand_computed_with_random_tie_breaking():
  similarity = np.array([
      [0.9, 0.1, 0.2],   # partner strictly first
      [0.5, 0.4, 0.6],   # partner third
      [0.7, 0.7, 0.7],   # three-way tie: first with probability 1/3, top-2 with 2/3
  ])
  got = retrieval.recall_at_k(similarity, ks=(1, 2, 3))
  assert got["recall@1"] == pytest.approx((1 + 0 + 1 / 3) / 3)
  assert got["recall@2"] == pytest.approx((1 + 0 + 2 / 3) / 3)
  assert got["recall@3"] == pytest.approx(1.0)


def test_constant_embeddings_score_chance_not_perfect():
  out = retrieval.evaluate(np.ones((20, 4)) / 2, np.ones((20, 4)) / 2, ks=(1, 5))
  assert out["ecg_to_report"] == {"recall@1": pytest.approx(1 / 20), "recall@5": pytest.approx(5 / 20)}


def test_retrieval_is_perfect_for_identical_random_embeddings():
  rng = np.random.default_rng()
  emb = rng.normal(size=(50, 8))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  out = retrieval.evaluate(emb, emb)
  assert out["ecg_to_report"]["recall@1"] == 1.0 == out["report_to_ecg"]["recall@1"]
  shuffled = retrieval.evaluate(emb, emb[::-1])
  assert shuffled["ecg_to_report"]["recall@1"] < 0.2


def test_prompt_file_errors_name_the_problem(tmp_path):
  from ecgclip_jax.evaluators import zero_shot
  with pytest.raises(FileNotFoundError, match="prompt file not found"):
    zero_shot.load_prompts(str(tmp_path / "none.json"), ["a"])
  bad = tmp_path / "bad.json"
  bad.write_text('{"a": ["x"], "zz": ["y"]}')
  with pytest.raises(ValueError, match=r"does not have: \['zz'\]"):
    zero_shot.load_prompts(str(bad), ["a"])
  good = tmp_path / "good.json"
  good.write_text('{"a": ["first", "second"]}')
  assert zero_shot.load_prompts(str(good), ["a", "b"]) == {"a": ["first", "second"]}


def test_class_embeddings_average_prompts_then_renormalize():
  from ecgclip_jax.evaluators import zero_shot
  table = {"p": np.array([1.0, 0.0]), "q": np.array([0.0, 1.0]), "r": np.array([0.6, 0.8])}
  embed = lambda texts: np.stack([table[t] for t in texts])
  got = zero_shot.class_embeddings({"A": ["p", "q"], "B": ["r"]}, embed)
  np.testing.assert_allclose(got, [[2**-0.5, 2**-0.5], [0.6, 0.8]], rtol=1e-12)
