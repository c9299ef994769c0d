"""Clear errors before anything expensive starts: every problem a user can fix is found
before data is read or anything compiles, and reported together, one line each."""

import json
import math
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ecgclip_jax import preflight, training
from ecgclip_jax.config_defaults import config_problems, default_config
from ecgclip_jax.models import hf_import
from conftest import ROOT


def test_config_problems_are_one_line_each_and_all_reported():
  c = default_config()
  with c.unlocked():  # a config file that replaces whole sections bypasses the type checks
    optim = c.optim.to_dict()
    optim["learning_rat"] = optim.pop("learning_rate")  # misspelt, and so a missing key
    c.optim = optim
    c.data = dict(c.data.to_dict(), num_samples="1000")
  problems = config_problems(c)
  assert "unknown config key 'optim.learning_rat' (did you mean 'optim.learning_rate'?)" in problems
  assert any(p.startswith("config is missing key 'optim.learning_rate'") for p in problems)
  assert "data.num_samples='1000' has type str; expected int" in problems
  assert all("\n" not in p for p in problems)


@pytest.mark.parametrize("key,value,message", [
    ("model.loss", "softmax", "model.loss='softmax'; choose one of"),
    ("nonfinite.policy", "ignore", "nonfinite.policy='ignore'; choose one of ('skip', 'stop')"),
    ("text.max_length", 0, "text.max_length must be positive, got 0"),
    ("grad_accum_steps", -1, "grad_accum_steps must be positive, got -1"),
    ("model.uma_weight", -1.0, "model.uma_weight must be >= 0, got -1.0"),
    ("model.uma_dropout", 1.0, "model.uma_dropout must be in [0, 1), got 1.0"),
])
def test_values_out_of_range(key, value, message):
  c = default_config()
  section, name = key.rsplit(".", 1) if "." in key else (None, key)
  setattr(c[section] if section else c, name, value)
  assert any(p.startswith(message) for p in config_problems(c))


def test_every_choice_is_checked_together_against_its_owning_module():
  """Each bad choice is one line naming the allowed values, which come from the module that
  uses them (a new pooling or norm there is accepted here without a second list)."""
  from ecgclip_jax.data import normalize
  from ecgclip_jax.models import bert, resnet1d
  c = default_config()
  c.ecg.arch, c.ecg.pooling, c.ecg.norm = "resnet50", "max", "layer"
  c.text.pooling, c.data.normalization = "last", "robust"
  problems = config_problems(c)
  assert problems == [
      f"data.normalization='robust'; choose one of {normalize.NORMALIZATION_METHODS}",
      f"text.pooling='last'; choose one of {bert.POOLING_METHODS}",
      f"ecg.arch='resnet50'; choose one of {tuple(resnet1d.STAGE_DEPTHS)}",
      f"ecg.pooling='max'; choose one of {resnet1d.POOLINGS}",
      f"ecg.norm='layer'; choose one of {resnet1d.NORMS}",
  ]
  assert "eval_split" not in default_config().data  # a dead key, gone


def mutate_all(c, tmp_path):
  """Four independent problems in one config."""
  blocker = tmp_path / "file"
  blocker.write_text("")
  c.text.max_length = 4096
  c.data.name = "ptbxl"
  c.data.data_dir = str(tmp_path / "empty_tfds")
  return str(blocker / "run")


def test_every_problem_of_a_run_is_reported_together_before_any_work(tiny_config, tmp_path):
  workdir = mutate_all(tiny_config, tmp_path)
  with pytest.raises(preflight.PreflightError) as error:
    training.train_and_evaluate(tiny_config, workdir)
  problems = error.value.problems
  assert len(problems) == 3, problems
  assert problems[0].startswith(f"workdir {workdir!r} is not writable")
  assert problems[1].startswith("dataset ptbxl/100hz is not built in ")
  assert problems[2].startswith("text.max_length=4096 exceeds the text encoder's position "
                                "table (512 positions")
  assert str(error.value).startswith("3 problems:\n  workdir")


@pytest.mark.parametrize("mutate,message", [
    (lambda c, _: setattr(c, "batch_size", 12),
     "global batch size 12 is not divisible by the data-parallel size 8"),
    (lambda c, _: setattr(c.text, "encoder_dir", "/nonexistent/bert"),
     "text encoder folder not found: /nonexistent/bert"),
    (lambda c, _: setattr(c.data, "name", "no_such_corpus"),
     "unknown dataset 'no_such_corpus': no package tfds_builders/no_such_corpus"),
    (lambda c, p: (setattr(c.data, "name", "ptbxl"), setattr(c.data, "data_dir", str(p)),
                   setattr(c.data, "manual_dir", str(p / "missing_download"))),
     "data.manual_dir '.*missing_download' \\(the ptbxl/100hz download\\) does not exist"),
])
def test_each_run_problem_stops_the_run_before_any_work(tiny_config, tmp_path, mutate, message):
  mutate(tiny_config, tmp_path)
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_pickled_text_encoder_is_refused_with_the_conversion_command(tiny_text_encoder_dir,
                                                                        tmp_path):
  folder = tmp_path / "bert"
  shutil.copytree(tiny_text_encoder_dir, folder)
  (folder / "pytorch_model.bin").write_bytes(b"\x80\x02 not read")
  [problem] = hf_import.encoder_problems(folder, need_weights=True, max_length=24)
  assert problem.startswith(f"{folder / 'pytorch_model.bin'} is a pickled checkpoint")
  assert f"AutoModel.from_pretrained('{folder}').save_pretrained('{folder}', " in problem
  # Random text-tower init needs no weights at all.
  assert hf_import.encoder_problems(folder, need_weights=False, max_length=24) == []


def test_a_disk_too_small_for_one_checkpoint_is_reported(tmp_path):
  free = shutil.disk_usage(tmp_path).free
  rows = math.ceil(free / 4 / 1024) + 1  # float32 rows of 1024: just more than the free space
  huge = {"w": jax.ShapeDtypeStruct((rows, 1024), jnp.float32)}
  with pytest.raises(preflight.PreflightError, match=r"has [\d,]+ MiB free, but a checkpoint "
                     r"needs about [\d,]+ MiB"):
    preflight.check_disk_space(str(tmp_path), huge)
  preflight.check_disk_space(str(tmp_path), {"w": jax.ShapeDtypeStruct((10, 10), jnp.float32)})


def test_the_command_line_prints_one_line_per_problem_and_no_traceback(run_args, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  out = subprocess.run(
      [sys.executable, "-m", "ecgclip_jax.train", f"--workdir={blocker / 'run'}", *run_args,
       "--config.text.max_length=4096"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert lines[-3] == "error: 2 problems:"
  assert lines[-2] == f"  workdir '{blocker / 'run'}' is not writable: Not a directory"
  assert lines[-1].startswith("  text.max_length=4096 exceeds")


def test_a_training_log_shows_no_report_text_and_no_patient_id(tiny_config, tmp_path, capfd):
  """What a run prints, from start to the final evaluation, names no patient and quotes no
  report (the tiny corpus's ids and reports are searched for in the output)."""
  from ecgclip_jax.data import sources
  training.train_and_evaluate(tiny_config, str(tmp_path))
  out = "".join(capfd.readouterr())
  dataset = sources.open_dataset(tiny_config.data)
  for split in ("train", "test"):
    for record in dataset.source(split):
      assert record["patient_id"].decode() not in out
      assert record["report"].decode()[:40] not in out
  assert json.loads(open(tmp_path / "eval" / "4" / "metrics.json").read())["step"] == 4


def test_a_stored_config_is_laid_over_todays_defaults():
  """A checkpoint written before a key was added or removed still restores and validates."""
  from ecgclip_jax.config_defaults import from_stored, validate_config
  stored = default_config().to_dict()
  stored["data"]["eval_split"] = "test"  # removed since
  del stored["nonfinite"]  # added since
  stored["data"]["num_samples"] = 500
  config = from_stored(stored)
  validate_config(config)
  assert config.data.num_samples == 500 and "eval_split" not in config.data
  assert config.nonfinite.to_dict() == default_config().nonfinite.to_dict()


def test_a_cloud_path_whose_client_is_missing_is_named_in_one_line(monkeypatch):
  from ecgclip_jax import storage
  assert storage.client_problem(["workdirs/x", "gs://bucket/x"]) is None  # the gcs extra
  monkeypatch.setitem(storage.CLIENTS, "gs", (("gcsfs", "gcsfs"),
                                              ("no_such_client_module", "no-such-client")))
  assert storage.client_problem(["workdirs/x", "gs://bucket/x"]) == (
      "gs:// paths need no-such-client, not installed here: pip install 'ecgclip_jax[gcs]'")
  assert storage.client_problem(["workdirs/x", ""]) is None
  assert "s3:// paths are not supported" in storage.client_problem(["s3://bucket/x"])
