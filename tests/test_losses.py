"""The contrastive loss is a function of the whole global batch, however it is sharded."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ecgclip_jax import losses, parallel


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_loss(ecg, text, scale):
  """Independent float64 numpy implementation of symmetric CLIP cross-entropy."""
  logits = scale * ecg.astype(np.float64) @ text.astype(np.float64).T
  def xent(l):
    l = l - l.max(axis=1, keepdims=True)
    return -(np.diag(l) - np.log(np.exp(l).sum(axis=1))).mean()
  return 0.5 * (xent(logits) + xent(logits.T))


def test_clip_loss_matches_float64_reference():
  rng = np.random.default_rng()
  ecg, text = _unit(rng.normal(size=(2, 24, 8))).astype(np.float32)
  scale = np.float32(rng.uniform(5, 50))
  got = losses.clip_loss(jnp.asarray(ecg), jnp.asarray(text), jnp.asarray(scale))
  np.testing.assert_allclose(got, _reference_loss(ecg, text, scale), rtol=1e-5)


def test_perfectly_aligned_pairs_have_lower_loss_than_shuffled():
  rng = np.random.default_rng()
  emb = jnp.asarray(_unit(rng.normal(size=(16, 32))), jnp.float32)
  aligned = losses.clip_loss(emb, emb, 20.0)
  shuffled = losses.clip_loss(emb, emb[::-1], 20.0)
  assert aligned < shuffled


def test_sharded_loss_and_gradients_equal_single_device():
  """On 8 simulated devices, batch-sharded inputs give the single-device loss and gradients
  (float32; tolerance 1e-6 absolute / 1e-5 relative, the reduction order differs)."""
  assert jax.device_count() == 8
  rng = np.random.default_rng()
  ecg, text = rng.normal(size=(2, 64, 16)).astype(np.float32)
  scale = np.float32(14.3)

  def loss(ecg, text, scale):  # normalization inside so the gradients are non-trivial
    return losses.clip_loss(ecg / jnp.linalg.norm(ecg, axis=-1, keepdims=True),
                            text / jnp.linalg.norm(text, axis=-1, keepdims=True), scale)

  value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single = jax.jit(value_and_grad)(*jax.device_put((ecg, text, scale), one_device))

  mesh = parallel.make_mesh({"data": -1})
  rows = NamedSharding(mesh, PartitionSpec("data"))
  sharded_inputs = (jax.device_put(ecg, rows), jax.device_put(text, rows), scale)
  sharded = jax.jit(value_and_grad)(*sharded_inputs)
  assert sharded[1][0].sharding.spec == PartitionSpec("data")  # gradients stay batch-sharded

  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-6)
  for g_sharded, g_single in zip(sharded[1], single[1]):
    np.testing.assert_allclose(g_sharded, g_single, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(single[0], _reference_loss(
      _unit(ecg), _unit(text), scale), rtol=1e-5)
