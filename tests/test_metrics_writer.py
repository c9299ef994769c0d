"""The run's JSON-lines logs on resume: later steps dropped, a torn last line survived."""

import json

import pytest
from etils import epath

from ecgclip_jax.metrics_writer import read_jsonl_until


def _lines(*steps):
  return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)


def test_resume_keeps_the_steps_up_to_the_checkpoint(tmp_path):
  path = epath.Path(tmp_path) / "metrics.jsonl"
  path.write_text(_lines(1, 2, 3, 4))
  assert read_jsonl_until(path, 2) == _lines(1, 2)
  assert path.read_text() == _lines(1, 2)
  assert read_jsonl_until(epath.Path(tmp_path) / "absent.jsonl", 2) == ""


@pytest.mark.parametrize("torn", ['{"step": 4, "lo', '{"step"', "{}", '"step 4"'])
def test_a_torn_last_line_is_dropped_with_a_notice(tmp_path, capsys, torn):
  """kill -9 during an append leaves part of a line (and no newline) at the end."""
  path = epath.Path(tmp_path) / "metrics.jsonl"
  path.write_text(_lines(1, 2, 3) + torn)
  assert read_jsonl_until(path, 3) == _lines(1, 2, 3)
  assert path.read_text() == _lines(1, 2, 3)
  notice = capsys.readouterr().out
  assert "dropped a half-written last line" in notice and notice.count("\n") == 1


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
  path = epath.Path(tmp_path) / "metrics.jsonl"
  path.write_text(_lines(1) + '{"step": 2, "lo\n' + _lines(3))
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON entry"):
    read_jsonl_until(path, 3)
  assert path.read_text() == _lines(1) + '{"step": 2, "lo\n' + _lines(3)  # left as it was
