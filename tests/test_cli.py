"""The command line: a user's mistake ends in one clear line, not a traceback."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(tmp_path, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "ecgclip_jax.train", "--config", "configs/demo.py",
       "--workdir", str(tmp_path / "run"), *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,message", [
    ("--config.optim.learning_rat=1",
     "error: unknown config key among --config.optim.learning_rat (did you mean 'learning_rate'?)"),
    ("--config.text.encoder_dir=/nonexistent", "error: text encoder folder not found: /nonexistent"),
])
def test_user_errors_print_one_line(tmp_path, override, message):
  result = _train(tmp_path, override)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(message)
