"""The PyTorch twin of the model (speed benchmark only): same parameters, same freezing, and
its train step trains. Skipped where torch is not installed (CI)."""

import math

import pytest

torch = pytest.importorskip("torch")

from ecgclip_jax import benchmarking, torch_reference, train_state  # noqa: E402


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
@pytest.mark.parametrize("top", [1, -1, 0])
def test_parameter_counts_match_the_jax_model(tiny_config, arch, top):
  tiny_config.ecg.arch = arch
  tiny_config.text.trainable_top_layers = top
  model, _ = torch_reference.build(tiny_config, torch_reference.load_text_config(tiny_config))
  assert torch_reference.parameter_counts(model) == benchmarking.jax_parameter_counts(
      train_state.Trainer(tiny_config))


@pytest.mark.parametrize("top,dtype", [(1, "float32"), (0, "float32"), (-1, "bfloat16")])
def test_steps_lower_the_loss_and_train_only_the_trainable(tiny_config, top, dtype):
  torch.set_num_threads(1)
  torch.manual_seed(0)
  c = tiny_config
  c.text.trainable_top_layers, c.model.dtype = top, dtype
  c.batch_size, c.data.num_samples, c.text.max_length = 8, 200, 16
  model, optimizer = torch_reference.build(c, torch_reference.load_text_config(c))
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  step = torch_reference.make_step(model, optimizer, c)
  batch = {name: torch.from_numpy(x) for name, x in benchmarking.synthetic_batch(c, seed=1).items()}
  losses = [step(batch).item() for _ in range(6)]
  assert all(math.isfinite(x) for x in losses)
  assert losses[-1] < losses[0] - 0.1, losses
  for name, p in model.named_parameters():
    assert torch.equal(p, before[name]) != p.requires_grad, name
  assert model.text_encoder.training == (top != 0)  # text dropout only where text trains



@pytest.mark.parametrize("top,frozen_dropout,first_dropout_layer,in_train_mode", [
    (1, True, -1, ["embeddings", "layer 0", "layer 1"]), (1, False, 1, ["layer 1"]),
    (-1, False, -1, ["embeddings", "layer 0", "layer 1"]), (0, True, -1, [])])
def test_text_dropout_where_the_jax_trainer_has_it(tiny_config, top, frozen_dropout,
                                                   first_dropout_layer, in_train_mode):
  """Frozen text layers run in eval mode unless text.frozen_layers_dropout (the JAX
  trainer's first_dropout_layer), and none drops out when no text layer trains."""
  tiny_config.text.trainable_top_layers = top
  tiny_config.text.frozen_layers_dropout = frozen_dropout
  assert train_state.Trainer(tiny_config).first_dropout_layer == first_dropout_layer
  model, _ = torch_reference.build(tiny_config, torch_reference.load_text_config(tiny_config))
  model.train()
  text = model.text_encoder
  modules = {"embeddings": text.embeddings} | {
      f"layer {i}": layer for i, layer in enumerate(text.encoder.layer)}
  assert [name for name, m in modules.items() if m.training] == in_train_mode
