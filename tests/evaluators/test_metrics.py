"""Ranking metrics and retrieval recall against hand-computable cases."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

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


# --- task_metrics: per-task PRAUC/AUROC, seed averaging, bootstrap CIs -------------------------

def _random_task_data(n, num_tasks=3, num_seeds=1, seed=0, signal=1.0):
  rng = np.random.default_rng(seed)
  labels = rng.random((n, num_tasks)) < 0.3
  scores = rng.normal(size=(num_seeds, n, num_tasks)) + signal * labels
  return labels, scores


def test_task_metrics_hand_computed_and_counts():
  # Same ranking as above: AUROC 3/4, AP 5/6; a second task ranked perfectly.
  labels = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], bool)
  scores = np.array([[0.9, 0.8], [0.8, 0.7], [0.4, 0.2], [0.1, 0.1]])
  out = metrics.task_metrics(labels, scores, ["a", "b"], n_bootstrap=0)
  assert out["tasks"]["a"]["auroc"] == pytest.approx(0.75)
  assert out["tasks"]["a"]["prauc"] == pytest.approx(5 / 6)
  assert out["tasks"]["b"]["auroc"] == out["tasks"]["b"]["prauc"] == 1.0
  assert out["tasks"]["a"]["prauc_std"] == 0.0  # one seed
  assert out["tasks"]["a"]["prauc_ci"] is None  # no resamples asked for
  assert out["macro"]["prauc"] == pytest.approx((5 / 6 + 1) / 2)
  assert out["macro"]["num_tasks"] == 2
  assert (out["n"], out["num_seeds"]) == (4, 1)


def test_task_metrics_equal_sklearn_on_random_data():
  labels, scores = _random_task_data(300, num_tasks=4, seed=1)
  out = metrics.task_metrics(labels, scores[0], list("abcd"), n_bootstrap=0)
  for j, name in enumerate("abcd"):
    assert out["tasks"][name]["prauc"] == skm.average_precision_score(labels[:, j], scores[0, :, j])
    assert out["tasks"][name]["auroc"] == skm.roc_auc_score(labels[:, j], scores[0, :, j])


def test_seed_average_and_spread():
  labels = np.array([[1], [0], [1], [0]], bool)
  seed_a = np.array([[0.9], [0.8], [0.4], [0.1]])  # AUROC 3/4
  seed_b = np.array([[0.9], [0.1], [0.8], [0.4]])  # AUROC 1
  out = metrics.task_metrics(labels, np.stack([seed_a, seed_b]), ["a"], n_bootstrap=0)
  assert out["tasks"]["a"]["auroc"] == pytest.approx(0.875)
  assert out["tasks"]["a"]["auroc_std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
  assert out["macro"]["auroc_std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
  assert out["num_seeds"] == 2


def test_resampled_metrics_equal_sklearn_on_explicit_resamples_with_ties():
  from sklearn import metrics as skm
  rng = np.random.default_rng(3)
  for trial in range(16):
    n = int(rng.integers(2, 40))
    y = rng.random(n) < 0.4
    # Every other trial has heavily tied scores (few distinct values).
    s = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)
    counts = next(metrics.bootstrap_counts(n, 10, seed=trial))
    prauc, auroc = metrics.resampled_ranking_metrics(y, s, counts)
    for b in range(10):
      idx = np.repeat(np.arange(n), counts[:, b])
      if y[idx].all() or not y[idx].any():
        assert np.isnan(prauc[b]) and np.isnan(auroc[b])
        continue
      assert prauc[b] == pytest.approx(skm.average_precision_score(y[idx], s[idx]), abs=1e-12)
      assert auroc[b] == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_bootstrap_ci_is_the_documented_procedure():
  """Same resamples for every task and seed, metric averaged over seeds, percentile interval,
  macro over resamples valid for every task: recomputed here with sklearn by brute force."""
  from sklearn import metrics as skm
  labels, scores = _random_task_data(40, num_tasks=2, num_seeds=2, seed=4)
  labels[:, 1] = False
  labels[:2, 1] = True  # a rare task: some resamples have no positive
  out = metrics.task_metrics(labels, scores, ["a", "b"], n_bootstrap=50, seed=7)
  counts = next(metrics.bootstrap_counts(40, 50, seed=7))
  per_task = np.full((2, 50), np.nan)
  for b in range(50):
    idx = np.repeat(np.arange(40), counts[:, b])
    for j in range(2):
      if labels[idx, j].any() and not labels[idx, j].all():
        per_task[j, b] = np.mean([skm.average_precision_score(labels[idx, j], scores[s, idx, j])
                                  for s in range(2)])
  for j, name in enumerate("ab"):
    valid = per_task[j][~np.isnan(per_task[j])]
    assert out["tasks"][name]["n_bootstrap_used"] == len(valid)
    assert out["tasks"][name]["prauc_ci"] == pytest.approx(np.percentile(valid, [2.5, 97.5]))
  assert out["tasks"]["b"]["n_bootstrap_used"] < 50 == out["tasks"]["a"]["n_bootstrap_used"]
  both = ~np.isnan(per_task).any(axis=0)
  assert out["macro"]["n_bootstrap_used"] == both.sum()
  assert out["macro"]["prauc_ci"] == pytest.approx(
      np.percentile(per_task[:, both].mean(axis=0), [2.5, 97.5]))


def test_bootstrap_is_seeded_contains_the_estimate_and_narrows_with_n():
  labels, scores = _random_task_data(400, seed=5)
  first = metrics.task_metrics(labels, scores, list("abc"), n_bootstrap=200, seed=1)
  again = metrics.task_metrics(labels, scores, list("abc"), n_bootstrap=200, seed=1)
  other = metrics.task_metrics(labels, scores, list("abc"), n_bootstrap=200, seed=2)
  assert first == again
  assert first["tasks"]["a"]["prauc_ci"] != other["tasks"]["a"]["prauc_ci"]
  for entry in [*first["tasks"].values(), first["macro"]]:
    for key in ("prauc", "auroc"):
      lo, hi = entry[f"{key}_ci"]
      assert lo < entry[key] < hi
  big_labels, big_scores = _random_task_data(4000, seed=5)
  big = metrics.task_metrics(big_labels, big_scores, list("abc"), n_bootstrap=200, seed=1)
  width = lambda m: m["macro"]["auroc_ci"][1] - m["macro"]["auroc_ci"][0]
  assert width(big) < width(first) / 2  # ~1/sqrt(10) in theory
  json.dumps(first)  # plain Python types throughout


def test_too_few_positives_reported_and_left_out_of_macro():
  labels, scores = _random_task_data(60, num_tasks=3, seed=6)
  labels[:, 1] = False
  labels[:2, 1] = True  # 2 positives
  labels[:, 2] = True
  labels[0, 2] = False  # 1 negative
  out = metrics.task_metrics(labels, scores, ["a", "b", "c"], min_positives=3, n_bootstrap=20)
  assert out["too_few_positives"] == {"b": {"n": 60, "positives": 2},
                                      "c": {"n": 60, "positives": 59}}
  assert list(out["tasks"]) == ["a"]
  assert out["macro"]["prauc"] == out["tasks"]["a"]["prauc"]
  assert out["macro"]["num_tasks"] == 1
  lenient = metrics.task_metrics(labels, scores, ["a", "b", "c"], min_positives=1, n_bootstrap=20)
  assert out["macro"]["prauc"] != lenient["macro"]["prauc"]
  assert lenient["macro"]["prauc"] == pytest.approx(
      np.mean([lenient["tasks"][t]["prauc"] for t in "abc"]))
  nothing = metrics.task_metrics(labels[:, 1:], scores[..., 1:], ["b", "c"], min_positives=3)
  assert nothing["macro"]["prauc"] is None and nothing["macro"]["num_tasks"] == 0


def test_known_mask_leaves_examples_out_of_that_task_only():
  labels, scores = _random_task_data(200, num_tasks=2, seed=8)
  known = np.ones_like(labels)
  known[::3, 0] = False
  # Scores of the unknown examples made adversarial: they must not count.
  scores[0, ::3, 0] = np.where(labels[::3, 0], -10.0, 10.0)
  out = metrics.task_metrics(labels, scores, ["a", "b"], known=known, n_bootstrap=20)
  rows = known[:, 0]
  assert out["tasks"]["a"]["n"] == rows.sum()
  assert out["tasks"]["a"]["prauc"] == pytest.approx(
      skm.average_precision_score(labels[rows, 0], scores[0, rows, 0]))
  assert out["tasks"]["a"]["auroc"] == pytest.approx(
      skm.roc_auc_score(labels[rows, 0], scores[0, rows, 0]))
  assert out["tasks"]["a"]["auroc"] > 0.7
  assert out["tasks"]["b"]["n"] == 200


def test_bad_inputs_name_the_problem():
  labels, scores = _random_task_data(10)
  with pytest.raises(ValueError, match="scores must be"):
    metrics.task_metrics(labels, scores[0, :, :2], list("abc"))
  with pytest.raises(ValueError, match="3 label columns"):
    metrics.task_metrics(labels, scores, list("ab"))
  with pytest.raises(ValueError, match="NaN"):
    metrics.task_metrics(labels, np.full_like(scores, np.nan), list("abc"))
