"""Fine-tuning on a tiny source with a planted, learnable label: learning, exact prediction
order, use of the given encoder weights, sharded = single-device steps, determinism.

Compilation dominates the run time, so the tests share one trained model and one set of
compiled steps (the module caches them per structure and mesh).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn import metrics

from ecgclip_jax import parallel
from ecgclip_jax.data import pipeline
from ecgclip_jax.data.normalize import normalize_ecg
from ecgclip_jax.evaluators import finetune
from ecgclip_jax.evaluators.finetune import FinetuneConfig
from ecgclip_jax.models import resnet1d

LENGTH, NUM_TASKS = 128, 2
ECG_CONFIG = resnet1d.ResNet1DConfig(width_multiplier=0.125, num_samples=LENGTH)
LEAD_GROUPS = (slice(0, 6), slice(6, 12))  # task j: sharp pulses (not a sine) in group j
CONFIG = FinetuneConfig(learning_rate=3e-3, batch_size=16, max_epochs=5, eval_batch_size=16)


def make_source(n: int, seed: int) -> tuple[list[dict], np.ndarray]:
  """Records whose labels survive per-lead z-scoring: a lead group carries either sharp
  pulses (label 1) or a sine (label 0), at a random rate and phase, over noise. The labels
  also come separately, as from a task file."""
  rng = np.random.default_rng(seed)
  labels = rng.random((n, NUM_TASKS)) < 0.5
  t = np.arange(LENGTH)
  records = []
  for i in range(n):
    ecg = rng.normal(0, 100, size=(LENGTH, 12))
    for j, leads in enumerate(LEAD_GROUPS):
      phase = (t / rng.uniform(12, 32) + rng.random()) % 1
      wave = 1500 * (phase < 0.08) if labels[i, j] else 1000 * np.sin(2 * np.pi * phase)
      ecg[:, leads] += wave[:, None]
    lead_mask = np.ones(12, bool)
    lead_mask[rng.integers(12)] = False  # a missing lead, as in real corpora
    records.append({"ecg": (ecg * lead_mask).astype(np.int16), "lead_mask": lead_mask,
                    "labels": labels[i]})
  return records, labels


@pytest.fixture(scope="module")
def data():
  return (*make_source(128, seed=0), *make_source(48, seed=1))


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh({"data": -1})


def run(data, mesh, config=CONFIG, init=None):
  train, train_labels, val, val_labels = data
  lines = []
  model = finetune.finetune(ECG_CONFIG, init, NUM_TASKS, train, np.arange(len(train)),
                            train_labels, val, val_labels, mesh, config, progress=lines.append)
  return model, lines


@pytest.fixture(scope="module")
def trained(data, mesh):
  return run(data, mesh)


@jax.jit
def _reference_logits(params, batch_stats, ecg):
  """A plain forward on one device, for one record: no mesh, no padding."""
  graphdef = finetune.classifier_graphdef(ECG_CONFIG, NUM_TASKS)
  return nnx.merge(graphdef, params, batch_stats)(ecg[None], train=False)[0]


def reference_logits(params, batch_stats, source):
  params, batch_stats = jax.device_get((params, batch_stats))
  return np.stack([_reference_logits(params, batch_stats,
                                     normalize_ecg(r["ecg"], r["lead_mask"], "zscore"))
                   for r in source])


def test_training_learns_the_planted_label(data, trained):
  model, lines = trained
  h = model.history
  assert len(lines) == len(h["val_loss"]) == h["epochs"] == CONFIG.max_epochs
  assert lines[0].startswith(f"fine-tune epoch 1/{CONFIG.max_epochs} step 8: train loss") and "val loss" in lines[0]
  assert h["train_loss"][-1] < 0.3 * h["train_loss"][0]
  assert h["best_val_loss"] == min(h["val_loss"]) < 0.5
  _, _, val, val_labels = data
  scores = model.predict(val)
  for j in range(NUM_TASKS):
    assert metrics.roc_auc_score(val_labels[:, j], scores[:, j]) > 0.9


def test_keeps_the_best_validation_weights(data, trained):
  model, _ = trained
  _, _, val, val_labels = data
  val_loss = finetune.masked_bce(model.predict(val), val_labels, np.ones_like(val_labels))
  assert float(val_loss) == pytest.approx(model.history["best_val_loss"], rel=1e-6)


def test_predict_returns_every_record_once_in_order(data, trained):
  """13 records over a global eval batch of 16 on 8 devices: 3 padded slots."""
  model, _ = trained
  source = data[2][:13]
  scores = model.predict(source)
  assert scores.shape == (13, NUM_TASKS)
  np.testing.assert_allclose(
      scores, reference_logits(model.params, model.batch_stats, source), rtol=1e-4, atol=1e-4)


def test_starts_from_the_given_encoder_weights(data, mesh):
  """max_epochs=0 returns the initial weights: the given encoder (BatchNorm statistics
  included) and a fresh head."""
  donor = resnet1d.ResNet1D(ECG_CONFIG, rngs=nnx.Rngs(42))
  params = nnx.to_pure_dict(nnx.state(donor, nnx.Param))
  rng = np.random.default_rng(0)
  batch_stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 2, x.shape), x.dtype),
                             nnx.to_pure_dict(nnx.state(donor, nnx.BatchStat)))
  init = {"params": params, "batch_stats": batch_stats}
  model, lines = run(data, mesh, dataclasses.replace(CONFIG, max_epochs=0), init)
  assert lines == [] and model.history["best_step"] == 0
  for given, loaded in ((params, model.params["encoder"]),
                        (batch_stats, model.batch_stats["encoder"])):
    jax.tree.map(np.testing.assert_array_equal, given, jax.device_get(loaded))
  source = data[2][:5]
  expected = reference_logits({"encoder": params, "head": model.params["head"]},
                              {"encoder": batch_stats}, source)
  np.testing.assert_allclose(model.predict(source), expected, rtol=1e-4, atol=1e-4)
  # A random encoder from the same seed predicts differently: the init was used.
  random_init, _ = run(data, mesh, dataclasses.replace(CONFIG, max_epochs=0))
  assert np.abs(random_init.predict(source) - expected).max() > 1e-2


def test_wrong_encoder_structure_is_refused():
  other = nnx.eval_shape(lambda: resnet1d.ResNet1D(resnet1d.ResNet1DConfig(width_multiplier=0.25),
                                                   rngs=nnx.Rngs(0)))
  init = {"params": nnx.to_pure_dict(nnx.state(other, nnx.Param)),
          "batch_stats": nnx.to_pure_dict(nnx.state(other, nnx.BatchStat))}
  encoder = nnx.eval_shape(lambda: resnet1d.ResNet1D(ECG_CONFIG, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="shape"):
    finetune.load_encoder(encoder, init)
  partial = {"params": nnx.to_pure_dict(nnx.state(encoder, nnx.Param)),
             "batch_stats": nnx.to_pure_dict(nnx.state(encoder, nnx.BatchStat))}
  del partial["params"]["stem_conv"]
  with pytest.raises(ValueError, match="does not cover"):
    finetune.load_encoder(encoder, partial)


def test_sharded_step_equals_single_device_step(mesh):
  """BatchNorm statistics, loss and gradients are the global batch's, sharded or not. Each
  device's shard is shifted differently, so per-device statistics would differ. SGD with
  rate 1 makes the parameter change the gradient itself (Adam's first step would only show
  its sign)."""
  one = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  graphdef = finetune.classifier_graphdef(ECG_CONFIG, NUM_TASKS)
  state = finetune.init_state(ECG_CONFIG, NUM_TASKS, None, 0, optax.sgd(1.0))
  rng = np.random.default_rng(0)
  batch = {"ecg": (rng.normal(size=(16, LENGTH, 12)) + np.repeat(np.arange(8), 2)[:, None, None]
                   ).astype(np.float32),
           "labels": rng.random((16, NUM_TASKS)) < 0.5, "known": rng.random((16, NUM_TASKS)) < 0.8}
  results = []
  for m in (mesh, one):
    steps = finetune.Steps(graphdef, optax.sgd(1.0), m)
    new_state, loss = steps.train_step(jax.device_put(state, parallel.replicated(m)),
                                       parallel.global_batch(batch, m))
    results.append(jax.device_get((loss, new_state.params, new_state.batch_stats)))
  (loss8, params8, stats8), (loss1, params1, stats1) = results
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  # Within 1e-5 of each array's largest entry: summation order differs between the two.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  jax.tree.map(close, stats8, stats1)
  before = jax.device_get(state.params)
  jax.tree.map(lambda a, b, p: close(a - p, b - p), params8, params1, before)
  grad_norm = np.sqrt(sum(np.sum((a - p) ** 2) for a, p in zip(jax.tree.leaves(params1),
                                                               jax.tree.leaves(before))))
  assert grad_norm > 1e-2  # the step did move the weights


def test_deterministic_given_the_seed(data, mesh):
  short = dataclasses.replace(CONFIG, max_epochs=1)
  first, _ = run(data, mesh, short)
  again, _ = run(data, mesh, short)
  other, _ = run(data, mesh, dataclasses.replace(short, seed=1))
  val = data[2]
  np.testing.assert_array_equal(again.predict(val), first.predict(val))
  assert not np.allclose(other.predict(val), first.predict(val), atol=1e-3)


def test_epoch_batches_read_only_the_chosen_records(data):
  """Each epoch: only `indices`, each at most once, remainder dropped, labels aligned, a new
  order; with 2 processes, global batch i holds the same records as with 1."""
  train, train_labels = data[0], data[1]
  indices = np.arange(3, 128, 3)  # 42 records: 2 global batches of 16, 10 dropped
  columns = {"labels": train_labels, "row": np.arange(len(train))}

  def epoch(e, p=0, count=1):
    return list(pipeline.make_ecg_epoch_batches(
        train, indices, columns=columns, normalization="zscore", global_batch_size=16, seed=0,
        epoch=e, process_index=p, process_count=count))

  orders = []
  for e in range(2):
    batches = epoch(e)
    assert [b["ecg"].shape for b in batches] == [(16, LENGTH, 12)] * 2
    rows = np.concatenate([b["row"] for b in batches])
    assert len(set(rows)) == 32 and set(rows) <= set(indices)
    for b in batches:
      np.testing.assert_array_equal(b["labels"], train_labels[b["row"]])
      expected = [normalize_ecg(train[r]["ecg"], train[r]["lead_mask"], "zscore") for r in b["row"]]
      np.testing.assert_array_equal(b["ecg"], np.stack(expected))
    orders.append(rows)
  assert not np.array_equal(orders[0], orders[1])
  halves = [epoch(0, p, 2) for p in range(2)]
  for i, whole in enumerate(epoch(0)):
    split = np.concatenate([halves[p][i]["row"] for p in range(2)])
    assert len(split) == 16 and set(split) == set(whole["row"])


def test_batch_shrinks_to_a_small_training_subset(mesh):
  assert finetune.fit_batch_size(64, 1000, mesh) == 64
  assert finetune.fit_batch_size(64, 20, mesh) == 16  # the most that splits over 8 devices
  with pytest.raises(ValueError, match="cannot fill one batch"):
    finetune.fit_batch_size(64, 5, mesh)
