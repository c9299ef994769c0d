"""Progress lines: quiet for quick work, rate and ETA for long work."""

from ecgclip_jax import progress


def test_long_work_prints_rate_and_eta_and_quick_work_prints_nothing(monkeypatch, capsys):
  now = [100.0]
  monkeypatch.setattr(progress.time, "time", lambda: now[0])
  waited, device_done_at = [], [0.0]

  def wait():  # the device finishes the work queued so far
    waited.append(now[0])
    now[0] = max(now[0], device_done_at[0])

  meter = progress.Progress("embedding test", 1000, every_s=10, after_s=5, wait=wait)
  for _ in range(10):  # 100 records queued every 2 s
    now[0] += 2
    meter.update(100)
  device_done_at[0] = 130.0  # the device runs 10 s behind the host at the end
  meter.done()
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["embedding test: 500/1,000 records, 50.0 records/s, ETA 0:00:10",
                   "embedding test: 1,000 records in 30.0 s (33.3 records/s)"]
  assert waited == [110.0, 120.0]  # device work is waited for only when a line is printed

  quick = progress.Progress("embedding 3 ECGs", 3)
  quick.update(3)
  quick.done()
  assert capsys.readouterr().out == ""
  assert progress.format_eta(3725) == "1:02:05"
