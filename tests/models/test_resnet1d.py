"""1-D ResNet in MERL's layout: depths, widths, strides, pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecgclip_jax.models.resnet1d import ResNet1D, ResNet1DConfig, group_norm_groups
from ecgclip_jax.remat_benchmark import residual_bytes, train_forward


def _conv_kernels(model):
  return {"/".join(map(str, path)): v.shape
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if path[-1] == "kernel"}


@pytest.mark.parametrize("arch,depths", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_layout_matches_merl(arch, depths):
  model = ResNet1D(ResNet1DConfig(arch=arch, width_multiplier=0.25), rngs=nnx.Rngs(0))
  assert tuple(len(stage) for stage in model.stages) == depths
  kernels = _conv_kernels(model)
  assert kernels["stem_conv/kernel"] == (7, 12, 16)  # k=7 stem, 64 x 0.25 wide
  assert model.stem_conv.strides == 2
  assert [model.stages[s][0].conv1.strides for s in range(4)] == [1, 2, 2, 2]
  assert [model.stages[s][-1].conv2.out_features for s in range(4)] == [16, 32, 64, 128]


def test_full_width_resnet18_parameter_count():
  """64->512 widths: the conv/BN parameters of a 12-lead 1-D ResNet-18 (k=3 blocks)."""
  model = ResNet1D(ResNet1DConfig(arch="resnet18"), rngs=nnx.Rngs(0))
  widths, count, in_w = (64, 128, 256, 512), 7 * 12 * 64 + 2 * 64, 64
  for s, w in enumerate(widths):
    for b in range(2):
      count += 3 * in_w * w + 3 * w * w + 4 * w
      if b == 0 and (s > 0):
        count += in_w * w + 2 * w
      in_w = w
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == count


@pytest.mark.parametrize("pooling", ["avg", "attention"])
def test_output_shape_and_batch_independence_in_eval(pooling):
  config = ResNet1DConfig(width_multiplier=0.125, pooling=pooling, num_samples=500)
  model = ResNet1D(config, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng().normal(size=(3, 500, 12)), jnp.float32)
  out = model(x, train=False)
  assert out.shape == (3, config.feature_dim) == (3, 64)
  # In eval mode BatchNorm uses running statistics: each row is independent of the others.
  np.testing.assert_allclose(model(x[:1], train=False), out[:1], rtol=1e-5, atol=1e-6)


def test_train_mode_uses_batch_statistics_and_updates_running_stats():
  model = ResNet1D(ResNet1DConfig(width_multiplier=0.125), rngs=nnx.Rngs(0))
  before = np.asarray(model.stem_norm.mean[...]).copy()
  x = jnp.asarray(np.random.default_rng().normal(3.0, 2.0, size=(4, 200, 12)), jnp.float32)
  out = model(x, train=True)
  assert not np.allclose(before, model.stem_norm.mean[...])
  assert not np.allclose(model(x[:1], train=True), out[:1], atol=1e-4)


def test_attention_pooling_rejects_other_lengths():
  model = ResNet1D(ResNet1DConfig(width_multiplier=0.125, pooling="attention", num_samples=500),
                   rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_samples"):
    model(jnp.ones((1, 1000, 12)))


def test_unknown_arch_is_a_clear_error():
  with pytest.raises(ValueError, match="resnet50"):
    ResNet1D(ResNet1DConfig(arch="resnet50"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("features,groups", [(512, 32), (64, 32), (16, 16), (8, 8), (154, 22),
                                             (19, 19)])
def test_group_norm_groups_divide_the_channels(features, groups):
  assert group_norm_groups(features) == groups


def test_group_norm_keeps_no_statistics_and_normalizes_each_example_alone():
  model = ResNet1D(ResNet1DConfig(width_multiplier=0.125, norm="group"), rngs=nnx.Rngs(0))
  assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, (nnx.GroupNorm, nnx.BatchNorm))]
  assert len(norms) == 20 and all(isinstance(m, nnx.GroupNorm) for m in norms)
  assert {m.num_groups for m in norms} == {8, 16, 32}  # widths 8, 16, 32, 64
  x = jnp.asarray(np.random.default_rng().normal(3.0, 2.0, size=(4, 200, 12)), jnp.float32)
  out = model(x, train=True)
  # Unlike BatchNorm (test above), a row's output does not depend on the rest of the batch,
  # and training and evaluation compute the same function.
  np.testing.assert_allclose(model(x[:1], train=True), out[:1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model(x, train=False), out, rtol=1e-5, atol=1e-6)


def test_unknown_norm_is_a_clear_error():
  with pytest.raises(ValueError, match="layer"):
    ResNet1D(ResNet1DConfig(norm="layer"), rngs=nnx.Rngs(0))


def _saved_for_backward(remat: bool):
  """(parameter tree structure, bytes of jax.vjp's residuals) of a training pass over a
  4000-sample record; shapes only."""
  model = nnx.eval_shape(lambda: ResNet1D(ResNet1DConfig(width_multiplier=0.125, remat=remat),
                                          rngs=nnx.Rngs(0)))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params = nnx.to_pure_dict(params)
  return jax.tree.structure(params), residual_bytes(
      train_forward(graphdef), params, nnx.to_pure_dict(stats),
      jax.ShapeDtypeStruct((4, 4000, 12), jnp.float32))


def test_remat_keeps_fewer_residuals_for_the_backward_pass():
  """Rematerialized residual blocks leave the backward pass a fraction of the saved
  activations (measured 3.7 vs 19.8 MiB), with the same parameters. That they compute the
  same loss, gradients and BatchNorm statistics is checked on the train step (the
  accumulation tests in tests/test_train_state.py). XLA:CPU does not keep the saving in
  compiled memory (see remat_benchmark)."""
  plain_tree, plain = _saved_for_backward(False)
  remat_tree, rematted = _saved_for_backward(True)
  assert remat_tree == plain_tree
  assert rematted < 0.5 * plain, (rematted, plain)
