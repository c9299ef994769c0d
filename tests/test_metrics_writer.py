"""The run's logs on resume: later JSON-lines steps dropped, a torn last line survived,
TensorBoard told to purge the steps the run redoes."""

import json
import struct
import time

import pytest
from etils import epath
from tensorboardX.proto.event_pb2 import Event, SessionLog

from ecgclip_jax.metrics_writer import MetricWriter, read_jsonl_until


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


def _events(path):
  """The Event records of a TensorBoard event file (TFRecord framing: length, its CRC, the
  record, its CRC)."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    events.append(Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events


def test_a_resumed_run_marks_tensorboard_to_purge_the_steps_it_redoes(tmp_path):
  first = MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    first.write(step, {"loss": 1.0 / step})
  first.close()
  time.sleep(1.1)  # event files are named by the second they were opened in
  resumed = MetricWriter(str(tmp_path), first_step=2)  # killed after step 4, saved at 2
  for step in (3, 4):
    resumed.write(step, {"loss": 2.0 / step})
  resumed.close()
  older, newer = sorted((tmp_path / "tensorboard").iterdir())
  assert not any(e.HasField("session_log") for e in _events(older))
  # TensorBoard drops the older files' events from this step on when it meets the marker.
  marker = [e for e in _events(newer) if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in marker] == [(3, SessionLog.START)]
  assert [e.step for e in _events(newer) if e.summary.value] == [3, 4]
