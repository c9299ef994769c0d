"""Freezing and weight-decay policy, and the full train step under sharding."""

import collections
import copy
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from ecgclip_jax import losses, parallel, train_state
from ecgclip_jax.config_defaults import default_config
from ecgclip_jax.models import build
from test_losses import _reference_uma


def _names(tree):
  return {build.path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("top,expect_trainable_layers,embeddings", [
    (0, set(), False), (1, {"1"}, False), (2, {"0", "1"}, False), (-1, {"0", "1"}, True)])
def test_text_freezing_policy(tiny_config, top, expect_trainable_layers, embeddings):
  tiny_config.text.trainable_top_layers = top
  mask = _names(train_state.Trainer(tiny_config).mask)
  text = {n: m for n, m in mask.items() if n.startswith("text_encoder/")}
  layers = {n.split("/")[2] for n, m in text.items() if m and "/layers/" in n}
  assert layers == expect_trainable_layers
  assert all(m == embeddings for n, m in text.items() if "/embeddings/" in n)
  others = [m for n, m in mask.items() if not n.startswith("text_encoder/")]
  assert others and all(others)  # ECG tower, both projections, the logit scale


def test_no_weight_decay_on_norms_biases_or_logit_scale(tiny_config):
  params = train_state.Trainer(tiny_config).abstract_state().params
  decay = _names(train_state.decay_mask(params))
  for name, decays in decay.items():
    is_matrix = name.endswith(("kernel", "embedding"))
    assert decays == is_matrix, name
  assert decay["logit_scale"] is False
  assert any(n.endswith("norm/scale") for n in decay)


def _random_batch(config, rng, n):
  ids = rng.integers(1000, 2000, size=(n, config.text.max_length)).astype(np.int32)
  lengths = rng.integers(3, config.text.max_length, size=n)
  mask = (np.arange(config.text.max_length)[None] < lengths[:, None]).astype(np.int32)
  return {"ecg": rng.normal(size=(n, config.data.num_samples, 12)).astype(np.float32),
          "input_ids": ids * mask, "attention_mask": mask}


def test_train_step_on_8_devices_equals_one_device(tiny_config):
  """Same new parameters, BatchNorm statistics and loss whether the global batch of 16 runs
  on one device or split over 8 (float32; tolerance rtol 1e-4 / atol 1e-6: only the
  reduction order differs). BatchNorm must use global, not per-device, batch statistics."""
  trainer = train_state.Trainer(tiny_config)
  state = trainer.init(jax.random.key(0), load_pretrained_text=False)
  batch = _random_batch(tiny_config, np.random.default_rng(), tiny_config.batch_size)

  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single_state, single_metrics = jax.jit(trainer.train_step)(
      jax.device_put(state, one), jax.device_put(batch, one))

  mesh = parallel.make_mesh({"data": -1})
  sharded_state, sharded_metrics = jax.jit(trainer.train_step)(
      jax.device_put(state, parallel.replicated(mesh)), parallel.global_batch(batch, mesh))

  np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(sharded_metrics["grad_norm"], single_metrics["grad_norm"], rtol=1e-4)
  for tree in ("params", "model_state"):
    for a, b in zip(jax.tree.leaves(getattr(sharded_state, tree)),
                    jax.tree.leaves(getattr(single_state, tree))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_step_moves_trainable_parameters_only(tiny_config):
  tiny_config.text.trainable_top_layers = 1
  trainer = train_state.Trainer(tiny_config)
  state = trainer.init(jax.random.key(0), load_pretrained_text=False)
  batch = _random_batch(tiny_config, np.random.default_rng(), tiny_config.batch_size)
  before = _names(jax.tree.map(np.asarray, state.params))
  # warmup_steps=1 gives step 0 a zero learning rate: take two steps.
  for _ in range(2):
    state, _ = jax.jit(trainer.train_step)(state, batch)
  after, mask = _names(state.params), _names(trainer.mask)
  for name, trainable in mask.items():
    changed = not np.array_equal(before[name], np.asarray(after[name]))
    assert changed == trainable, name
  assert int(state.step) == 2


# ---------------------------------------------------------------------------------------
# Loss choice, bfloat16 compute and gradient accumulation, on one small GroupNorm model with
# a frozen text tower: no BatchNorm statistics and no dropout, so train-mode embeddings are
# a function of each example alone. Initialized once per module (eager init is slow).
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tiny_text_encoder_dir):
  config = default_config()
  config.text.encoder_dir = tiny_text_encoder_dir
  config.text.pretrained = False
  config.text.max_length = 16
  config.text.trainable_top_layers = 0
  config.ecg.width_multiplier = 0.125
  config.ecg.norm = "group"
  config.data.num_samples = 128
  config.model.embed_dim = 16
  config.batch_size = 32
  state = train_state.Trainer(config).init(jax.random.key(0), load_pretrained_text=False)
  return config, state


def test_microbatches_split_every_devices_rows_evenly(small):
  """`[32, ...]` on 8 devices -> 4 microbatches of rows j, j+4, ...: each spread over all 8
  devices and built without communication; merging restores the batch and its sharding."""
  config = copy.deepcopy(small[0])  # a Trainer reads its config when tracing: one each
  config.grad_accum_steps = 4
  mesh = parallel.make_mesh({"data": -1})
  trainer = train_state.Trainer(config, mesh)
  rows = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
  batch = parallel.global_batch({"x": rows}, mesh)
  split = jax.jit(trainer.microbatches)
  micro = split(batch)["x"]
  assert micro.shape == (4, 8, 3)
  assert micro.sharding.spec == PartitionSpec(None, ("data",))
  for j in range(4):
    np.testing.assert_array_equal(micro[j], rows[j::4])
  hlo = split.lower(batch).compile().as_text()
  assert not re.search(r"all-to-all|all-gather|collective-permute|all-reduce", hlo)
  merged = jax.jit(trainer.merge_microbatches)({"x": micro})["x"]
  np.testing.assert_array_equal(merged, rows)
  assert merged.sharding.spec == PartitionSpec(("data",))


def test_batch_must_split_into_microbatches_over_the_devices(small):
  config = copy.deepcopy(small[0])
  config.grad_accum_steps = 8  # 32 rows: 4 a device, not 8
  with pytest.raises(ValueError, match="divisible by 64"):
    train_state.Trainer(config, parallel.make_mesh({"data": -1}))


def _equations(jaxpr, primitive: str) -> list:
  """Every `primitive` equation of `jaxpr`, nested jaxprs (scan, remat, jit) included."""
  found = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == primitive]
  for sub in jax.extend.core.subjaxprs(jaxpr):
    found += _equations(sub, primitive)
  return found


def test_accumulated_gradients_equal_full_batch_gradients_for_the_softmax_loss(small):
  """GradCache over 4 microbatches (with remat) gives the full batch's CLIP loss and
  gradients, on 8 devices with batch-sharded inputs. float32; loss rtol 1e-6; each gradient
  leaf within 1e-5 of its largest magnitude (measured: at most 3.4e-6)."""
  config, state = small
  accumulate = copy.deepcopy(config)
  accumulate.grad_accum_steps = 4
  accumulate.ecg.remat = True
  mesh = parallel.make_mesh({"data": -1})
  full = train_state.Trainer(config, mesh)
  accumulated = train_state.Trainer(accumulate, mesh)
  assert accumulated.model(state.params, state.model_state).ecg_encoder.config.remat
  state = jax.device_put(state, parallel.replicated(mesh))
  batch = parallel.global_batch(_random_batch(config, np.random.default_rng(), 32), mesh)
  jaxpr = jax.make_jaxpr(accumulated.loss_and_grads)(state, batch).jaxpr
  loops = [eqn.params["length"] for eqn in _equations(jaxpr, "scan")]
  assert loops.count(4) == 2  # (a) embeds and (c) pulls back, microbatch by microbatch
  loss, grads, model_state = jax.jit(full.loss_and_grads)(state, batch)
  loss_k, grads_k, _ = jax.jit(accumulated.loss_and_grads)(state, batch)
  assert model_state == {}  # GroupNorm: nothing depends on how the batch is split
  np.testing.assert_allclose(loss_k, loss, rtol=1e-6)
  assert jax.tree.structure(grads_k) == jax.tree.structure(grads)
  for got, want in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads)):
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_step_on_precomputed_text_features_equals_the_step_on_tokens(small):
  """With the text tower frozen, the step on its pooled features (text.precompute_features:
  computed once, in other batches) gives the step on tokens: the same loss, gradient norm
  and new parameters (float32; rtol 1e-5 / atol 1e-6). And no tokens are needed."""
  config, state = small
  trainer = train_state.Trainer(copy.deepcopy(config))
  assert train_state.precomputes_text_features(config) and not trainer.text_trains
  batch = _random_batch(config, np.random.default_rng(), 32)
  features = jax.jit(trainer.model_def.text_features)
  halves = [features(state.params, state.model_state, batch["input_ids"][rows],
                     batch["attention_mask"][rows]) for rows in (slice(0, 20), slice(20, 32))]
  step = jax.jit(trainer.train_step)
  on_tokens, tokens_metrics = step(state, batch)
  on_features, features_metrics = step(state, {"ecg": batch["ecg"],
                                               "text_features": jnp.concatenate(halves)})
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(features_metrics[name], tokens_metrics[name], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(on_features.params), jax.tree.leaves(on_tokens.params)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("top,precompute,expected", [
    (0, True, True), (0, False, False), (1, True, False), (-1, True, False)])
def test_text_features_are_precomputed_only_for_a_frozen_tower(small, top, precompute,
                                                               expected):
  config = copy.deepcopy(small[0])
  config.text.trainable_top_layers = top
  config.text.precompute_features = precompute
  assert train_state.precomputes_text_features(config) == expected


def test_bfloat16_computes_in_bfloat16_on_float32_parameters(small):
  """model.dtype="bfloat16": every convolution (forward and backward) and the text tower's
  matmuls run in bfloat16, while parameters, optimizer state and gradients stay float32
  and the projections and logits are float32 matmuls. The loss is within 2% of float32's
  on random inputs (measured: at most 0.2%)."""
  config, state = small
  bf16_config = copy.deepcopy(config)
  bf16_config.model.dtype = "bfloat16"
  fp32, bf16 = train_state.Trainer(config), train_state.Trainer(bf16_config)
  abstract = bf16.abstract_state()
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  floats = [x.dtype for x in jax.tree.leaves((abstract.params, abstract.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and set(floats) == {np.dtype(np.float32)}

  batch = _random_batch(config, np.random.default_rng(), 32)
  jaxpr = jax.make_jaxpr(bf16.loss_and_grads)(state, batch).jaxpr
  half, single = (jnp.dtype(jnp.bfloat16),) * 2, (jnp.dtype(jnp.float32),) * 2
  operand_dtypes = lambda primitive: [tuple(v.aval.dtype for v in eqn.invars)
                                      for eqn in _equations(jaxpr, primitive)]
  convs = operand_dtypes("conv_general_dilated")
  assert len(convs) > 20 and set(convs) == {half}
  dots = collections.Counter(operand_dtypes("dot_general"))
  assert set(dots) == {half, single}
  assert dots[half] >= 12  # 2 BERT layers x (query, key, value, out, ffn_in, ffn_out)
  loss, grads, _ = jax.eval_shape(bf16.loss_and_grads, state, batch)
  assert {x.dtype for x in jax.tree.leaves((loss, grads))} == {np.dtype(np.float32)}

  both = jax.jit(lambda s, b: [t.loss_and_grads(s, b)[0] for t in (fp32, bf16)])(state, batch)
  np.testing.assert_allclose(both[1], both[0], rtol=2e-2)


def test_siglip_trains_a_logit_bias_that_softmax_configs_lack(small):
  """loss="siglip" adds a float32 scalar `logit_bias` (from model.siglip_bias_init); the step
  computes the sigmoid loss with it and reports it, and its gradient matches float64 numpy
  (rtol 1e-5; measured 1e-7). "clip" has no such parameter."""
  config, state = small
  siglip = copy.deepcopy(config)
  siglip.model.loss = "siglip"
  siglip.model.siglip_bias_init = -8.0
  mesh = parallel.make_mesh({"data": -1})
  trainer = train_state.Trainer(siglip, mesh)
  assert "logit_bias" not in train_state.Trainer(config).abstract_state().params
  init_bias = jax.jit(lambda: trainer.init(jax.random.key(0), False).params["logit_bias"])()
  assert init_bias.dtype == jnp.float32 and init_bias.shape == () and init_bias == -8.0
  # The small state plus the bias (loss_and_grads reads no optimizer state).
  state = state.replace(params={**state.params, "logit_bias": init_bias})
  batch = parallel.global_batch(_random_batch(config, np.random.default_rng(), 32), mesh)

  def run(state, batch):
    loss, grads, _ = trainer.loss_and_grads(state, batch)
    # Train- and eval-mode embeddings agree here (GroupNorm, no dropout).
    ecg = trainer.model_def.embed_ecg(state.params, state.model_state, batch["ecg"])
    text = trainer.model_def.embed_text(state.params, state.model_state, batch["input_ids"],
                              batch["attention_mask"])
    return loss, grads["logit_bias"], ecg, text

  loss, bias_grad, ecg, text = jax.jit(run)(state, batch)
  scale = np.exp(np.float64(state.params["logit_scale"]))
  logits = scale * np.float64(ecg) @ np.float64(text).T - 8.0
  signs = 2 * np.eye(32) - 1
  np.testing.assert_allclose(loss, np.logaddexp(0, -signs * logits).sum() / 32, rtol=1e-5)
  sigmoid = 1 / (1 + np.exp(signs * logits))
  np.testing.assert_allclose(bias_grad, (-signs * sigmoid).sum() / 32, rtol=1e-5)
  metrics = jax.eval_shape(trainer.train_step, trainer.abstract_state(), batch)[1]
  assert metrics["logit_bias"].shape == ()


def test_accumulation_with_batch_norm_uses_each_microbatchs_statistics(small):
  """With BatchNorm, k=2 accumulation (with remat) equals the loss of the whole batch
  embedded as two microbatches one after the other, each normalized with its own
  statistics, written directly with the model (no remat; rows j, j+2, ...) and
  differentiated in one piece; the running statistics are those of the two updates in turn.
  float32: loss and statistics rtol 1e-5, each gradient leaf within 1e-5 of its largest
  magnitude."""
  plain = copy.deepcopy(small[0])
  plain.ecg.norm = "batch"
  accumulate = copy.deepcopy(plain)
  accumulate.grad_accum_steps = 2
  accumulate.ecg.remat = True
  reference_model, trainer = train_state.Trainer(plain), train_state.Trainer(accumulate)
  state = trainer.init(jax.random.key(0), load_pretrained_text=False)
  batch = _random_batch(plain, np.random.default_rng(), 32)
  trainable, frozen = train_state.partition(state.params, trainer.mask)

  def reference(trainable):
    model = reference_model.model(train_state.combine(trainable, frozen), state.model_state)
    ecg, text = zip(*[(model.encode_ecg(batch["ecg"][j::2], train=True),
                       model.encode_text(batch["input_ids"][j::2], batch["attention_mask"][j::2]))
                      for j in range(2)])
    loss = losses.clip_loss(jnp.concatenate(ecg), jnp.concatenate(text), model.scale())
    return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  (want_loss, want_stats), want_grads = jax.jit(jax.value_and_grad(reference, has_aux=True))(
      trainable)
  loss, grads, stats = jax.jit(trainer.loss_and_grads)(state, batch)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(want_stats), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_fixed_temperature_is_a_constant_not_a_parameter(small):
  """model.learn_logit_scale=False (MERL's fixed 0.07): no `logit_scale` parameter, and the
  model built from the abstract weights scales by 1 / 0.07 outside any trace (it once held a
  tracer leaked from ModelDef's abstract build, and the training step failed)."""
  config = copy.deepcopy(small[0])
  config.model.learn_logit_scale = False
  model_def = build.ModelDef(config)
  params, model_state = model_def.abstract_weights
  assert "logit_scale" not in params
  np.testing.assert_allclose(model_def.model(params, model_state).scale(), 1 / 0.07, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# MERL's uni-modal alignment (model.uma_weight), on the small model with attention pooling,
# so the views' time-averaged features differ from the pooled ones the embedding reads.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uma_small(small):
  config = copy.deepcopy(small[0])
  config.ecg.pooling = "attention"
  config.model.uma_weight = 0.5
  config.model.uma_dropout = 0.25
  config.optim.warmup_steps = 0  # the first step moves the parameters
  trainer = train_state.Trainer(config)
  return trainer, trainer.init(jax.random.key(0), load_pretrained_text=False)


def test_uma_views_are_dropout_after_two_heads_on_the_time_averaged_features(uma_small):
  """Each view is MERL's `dropout(linear(avgpool(features)))`: the last stage averaged over
  time through its own head (float64 numpy from the head's kernel and bias), then inverted
  dropout: each entry is 0 or that value / (1 - p) (float32: rtol 1e-5, atol 1e-5 of the
  largest magnitude), about p of them 0, a mask
  of its own. The embedding is still the attention-pooled one. The same key draws the same
  views (a resumed step), another key other masks."""
  trainer, state = uma_small
  p = trainer.config.model.uma_dropout
  ecg = _random_batch(trainer.config, np.random.default_rng(), 32)["ecg"]

  @jax.jit
  def run(key):
    model = trainer.model(state.params, state.model_state)
    return (model.encode_ecg_with_views(ecg, train_state.uma_rngs(key)),
            model.encode_ecg(ecg, train=True),
            model.ecg_encoder.feature_map(ecg, train=True))

  (emb, *views), plain_emb, features = run(jax.random.key(1))
  np.testing.assert_allclose(emb, plain_emb, rtol=1e-6, atol=1e-7)
  mean = np.float64(features).mean(axis=1)
  masks = []
  for view, head in zip(views, state.params["uma_heads"].values(), strict=True):
    undropped = mean @ np.float64(head["kernel"]) + np.float64(head["bias"])
    kept = np.asarray(view) != 0
    np.testing.assert_allclose(np.asarray(view)[kept], undropped[kept] / (1 - p), rtol=1e-5,
                               atol=1e-5 * np.abs(undropped).max())
    assert 0.15 < 1 - kept.mean() < 0.35  # 512 entries: p = 0.25 within 10 binomial sds
    masks.append(kept)
  assert (masks[0] != masks[1]).any()
  again, _, _ = run(jax.random.key(1))
  other, _, _ = run(jax.random.key(2))
  for view, same, different in zip(views, again[1:], other[1:]):
    np.testing.assert_array_equal(view, same)
    assert ((np.asarray(view) != 0) != (np.asarray(different) != 0)).any()


def test_uma_weight_zero_is_the_clip_loss_and_a_positive_weight_adds_the_uma_term(small,
                                                                                   uma_small):
  """uma_weight=0 builds no UMA heads and its step's loss is the plain CLIP loss. With
  uma_weight=0.5 a step runs and its loss is CLIP plus 0.5 x the float64 UMA reference of
  the views drawn from that step's dropout key (rtol 1e-5), not the CLIP loss alone, and
  the first update moves both heads."""
  trainer, state = uma_small
  config, plain_state = small
  assert "uma_heads" not in plain_state.params and "uma_heads" in state.params
  batch = _random_batch(config, np.random.default_rng(), 32)
  plain = train_state.Trainer(config)

  def clip_of(trainer, state):
    model = trainer.model(state.params, state.model_state)
    return losses.clip_loss(model.encode_ecg(batch["ecg"], train=True),
                            model.encode_text(batch["input_ids"], batch["attention_mask"]),
                            model.scale())

  plain_loss, clip = jax.jit(lambda: (plain.loss_and_grads(plain_state, batch)[0],
                                      clip_of(plain, plain_state)))()
  np.testing.assert_allclose(plain_loss, clip, rtol=1e-6)

  @jax.jit
  def uma_step():
    key = train_state.step_dropout_key(state.rng, state.step)
    views = trainer.model(state.params, state.model_state).encode_ecg_with_views(
        batch["ecg"], train_state.uma_rngs(key))[1:]
    return trainer.train_step(state, batch), views, clip_of(trainer, state)

  (new_state, metrics), views, clip = uma_step()
  uma = _reference_uma(*(np.asarray(v) for v in views))[0]
  np.testing.assert_allclose(metrics["loss"], clip + 0.5 * uma, rtol=1e-5)
  assert uma > 0.1 and bool(metrics["finite"])
  for before, after in zip(jax.tree.leaves(state.params["uma_heads"]),
                           jax.tree.leaves(new_state.params["uma_heads"])):
    assert not np.array_equal(before, after)


# ---------------------------------------------------------------------------------------
# MERL's optimizer: cosine with restarts, no gradient clipping.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [0, 3])
def test_restart_schedule_is_pytorchs_cosine_annealing_warm_restarts(warmup):
  """optim.restart_every_steps=T: after the warmup (linear from 0), PyTorch's
  CosineAnnealingWarmRestarts(T_0=T, T_mult=1, eta_min=factor x peak), written here from its
  documented formula in float64 (rtol 1e-6)."""
  config = default_config()
  config.total_steps, config.optim.warmup_steps = 40, warmup
  config.optim.learning_rate, config.optim.end_learning_rate_factor = 1e-3, 1e-5
  config.optim.restart_every_steps = 10
  schedule = train_state.learning_rate_schedule(config)
  steps = np.arange(warmup, 40)
  t_cur = (steps - warmup) % 10
  want = 1e-8 + (1e-3 - 1e-8) * (1 + np.cos(np.pi * t_cur / 10)) / 2
  np.testing.assert_allclose([schedule(s) for s in steps], want, rtol=1e-6)
  np.testing.assert_allclose([schedule(s) for s in range(warmup)],
                             1e-3 * np.arange(warmup) / max(warmup, 1), rtol=1e-6)


@pytest.mark.parametrize("clip,want_norm", [(1.0, 1.0), (0.0, 100.0)])
def test_clip_grad_norm_zero_turns_clipping_off(clip, want_norm):
  """Adam's first moment after one update is (1 - b1) x the gradient the clipping passed on:
  norm 100 unclipped (optim.clip_grad_norm=0, as MERL trains), 1 clipped."""
  config = default_config()
  config.optim.clip_grad_norm = clip
  tx = train_state.make_optimizer(config)
  params = {"kernel": jnp.zeros((10, 10))}
  _, opt_state = tx.update({"kernel": jnp.full((10, 10), 10.0)}, tx.init(params), params)
  is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  np.testing.assert_allclose(np.linalg.norm(adam.mu["kernel"]),
                             (1 - config.optim.b1) * want_norm, rtol=1e-6)
