"""Freezing and weight-decay policy, and the full train step under sharding."""

import jax
import numpy as np
import pytest

from ecgclip_jax import parallel, train_state


def _names(tree):
  return {train_state._path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


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
