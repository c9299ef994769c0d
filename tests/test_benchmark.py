"""The benchmark: it runs on synthetic inputs without the data stack, its figures agree with
each other, and its analytic FLOP count agrees with XLA's own count of the same programs.
Speed itself is never asserted."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ecgclip_jax import benchmarking
from ecgclip_jax.models import bert as bert_lib
from ecgclip_jax.models import build, resnet1d
from train_runs import env_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_STACK = {"grain", "tensorflow_datasets", "tensorflow", "transformers", "torch",
              "tensorboardX", "orbax.checkpoint"}


def _overrides(text_dir):
  return [f"--config.text.encoder_dir={text_dir}", "--config.text.pretrained=False",
          "--config.batch_size=8", "--config.data.num_samples=400",
          "--config.text.max_length=16", "--config.ecg.width_multiplier=0.125",
          "--config.model.embed_dim=16"]


def test_benchmark_command_on_synthetic_inputs(tiny_text_encoder_dir, tmp_path):
  out = tmp_path / "bench.json"
  argv = ["benchmark", "--config", os.path.join(REPO, "configs", "demo.py"), "--steps", "2",
          "--json", str(out), *_overrides(tiny_text_encoder_dir)]
  program = textwrap.dedent(f"""
      import json, sys
      sys.argv = {argv!r}
      from ecgclip_jax import benchmark
      try:
        benchmark.main()
      except SystemExit as e:
        assert not e.code, e.code
      print("LOADED", json.dumps(sorted(m for m in {sorted(DATA_STACK)!r} if m in sys.modules)))
      """)
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=tmp_path, env=env_with(), timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  loaded = json.loads(result.stdout.split("LOADED", 1)[1])
  assert loaded == [], f"synthetic inputs must not import {loaded}"
  for words in ("compile", "examples/s per chip", "FLOPs per chip per step", "MFU",
                "memory per chip", "parts alone"):
    assert words in result.stdout, result.stdout

  figures = json.loads(out.read_text())
  step = figures["step"]
  assert step["devices"] == 1 and step["step_ms_min"] <= step["step_ms_median"]
  assert step["examples_per_s_per_chip"] == pytest.approx(8 / (step["step_ms_median"] / 1e3))
  assert figures["mfu"] == pytest.approx(
      step["xla_flops_per_chip"] / (step["step_ms_median"] / 1e3) / figures["peak_flops_per_chip"])
  assert figures["peak_source"] == "measured 2048^3 matmul"  # a CPU has no published peak
  # XLA also counts the element-wise work (norms, activations, softmax, the optimizer) that
  # the analytic count of convolutions and matmuls leaves out: more, but not much more.
  assert 1.0 < step["xla_flops_per_chip"] / step["analytic_flops_per_chip"] < 1.5
  assert set(figures["parts_ms"]) == {"ecg tower", "text tower", "loss"}
  assert all(ms > 0 for ms in figures["parts_ms"].values())
  assert step["memory_bytes"]["temp"] > 0


def _xla_flops(fn, *args) -> float:
  return benchmarking._flops(jax.jit(fn).lower(*args).compile())


@pytest.mark.parametrize("arch,width,samples", [("resnet18", 0.5, 1000), ("resnet34", 0.25, 5000)])
def test_analytic_convolution_flops_match_xla(tiny_config, arch, width, samples):
  """The ECG tower's forward pass: XLA's count of the compiled program against the analytic
  count of its convolutions (the rest, BatchNorm/ReLU/adds, is a few FLOPs per activation)."""
  config = tiny_config.copy_and_resolve_references()
  config.ecg.arch, config.ecg.width_multiplier, config.data.num_samples = arch, width, samples
  config.batch_size = 4
  tower = resnet1d.ResNet1D(build.ecg_encoder_config(config), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(tower)
  ecg = jnp.zeros((4, samples, 12))
  xla = _xla_flops(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, ecg)
  stem, rest = benchmarking._conv_forward_flops(config)
  assert 1.0 < xla / (stem + rest) < 1.06


def test_analytic_text_flops_match_xla(tiny_config):
  """Forward of every text layer (frozen tower run in the step: forward only) against XLA's
  count; with its features precomputed (the default for a frozen tower) the step has none."""
  config = tiny_config.copy_and_resolve_references()
  config.text.trainable_top_layers, config.batch_size, config.text.max_length = 0, 4, 64
  assert benchmarking.analytic_flops(config)["text"] == 0
  config.text.precompute_features = False
  text = bert_lib.BertConfig.from_hf_dir(build.text_encoder_dir(config))
  encoder = bert_lib.BertEncoder(text, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(encoder)
  ids = jnp.ones((4, 64), jnp.int32)
  xla = _xla_flops(lambda s, i: nnx.merge(graphdef, s)(i, jnp.ones_like(i), dropout_rngs=None),
                   state, ids)
  assert 1.0 < xla / benchmarking.analytic_flops(config)["text"] < 1.3
