"""Skip reasons and the build report: counts add up, example ids are sorted and capped."""

import collections

import numpy as np
import pytest

from ecgclip_jax.data import skips


@pytest.fixture
def rng(request):
  return np.random.default_rng(list(request.node.nodeid.encode()))


def random_skips(rng, n):
  reasons = sorted(skips.REASONS)
  ids = rng.choice(100_000, size=n, replace=False)
  return [(f"r{i:06d}", reasons[rng.integers(len(reasons))], f"detail {i}") for i in ids]


def test_skip_record_carries_its_reason():
  e = skips.SkipRecord("wrong_duration", "3.00 s < 9.90 s")
  assert (e.reason, e.detail, str(e)) == ("wrong_duration", "3.00 s < 9.90 s",
                                          "wrong_duration: 3.00 s < 9.90 s")
  assert str(skips.SkipRecord("empty_report")) == "empty_report"
  with pytest.raises(ValueError, match="unknown skip reason"):
    skips.SkipRecord("bad_vibes")
  assert issubclass(skips.CorpusError, ValueError)


def test_summarize_counts_and_first_ids(rng):
  skipped = random_skips(rng, 300)
  many = [(f"m{i:04d}", "missing_file", f"d{i}") for i in rng.permutation(57)]
  report = skips.summarize(1000, skipped + many)
  assert (report["seen"], report["kept"], report["skipped"]) == (1000, 643, 357)
  expected = collections.defaultdict(list)
  for record_id, reason, detail in skipped + many:
    expected[reason].append((record_id, detail))
  assert list(report["reasons"]) == sorted(expected)
  for reason, items in expected.items():
    r = report["reasons"][reason]
    assert r["count"] == len(items) and r["description"] == skips.REASONS[reason]
    first = sorted(items)[:skips.FIRST_IDS_KEPT]
    assert r["first_ids"] == [i for i, _ in first]
    assert r["first_details"] == [d for _, d in first]  # each detail beside its id
  assert len(report["reasons"]["missing_file"]["first_ids"]) == skips.FIRST_IDS_KEPT
  assert sum(r["count"] for r in report["reasons"].values()) == report["skipped"]


def test_summarize_rejects_unknown_reasons():
  with pytest.raises(ValueError, match="bad_vibes"):
    skips.summarize(3, [("a", "bad_vibes", "")])


def test_combine_totals(rng):
  splits = {}
  for name, seen in [("index", 7), ("train", 500), ("validation", 60), ("test", 61)]:
    skipped = random_skips(rng, int(rng.integers(0, seen)))
    if name == "index":
      skipped = random_skips(rng, seen)  # the index section keeps nothing
    splits[name] = skips.summarize(seen, skipped)
  report = skips.combine(splits)
  assert report["seen"] == 7 + 500 + 60 + 61
  assert report["kept"] + report["skipped"] == report["seen"]
  assert report["kept"] == sum(s["kept"] for s in splits.values())
  counts = collections.Counter()
  for s in splits.values():
    for reason, r in s["reasons"].items():
      counts[reason] += r["count"]
  assert report["skipped_by_reason"] == dict(sorted(counts.items()))
  assert list(report["skipped_by_reason"]) == sorted(report["skipped_by_reason"])
  assert report["splits"] == splits
  assert skips.combine({}) == {"seen": 0, "kept": 0, "skipped": 0, "skipped_by_reason": {},
                               "splits": {}}


def test_report_file_round_trip(tmp_path):
  report = skips.combine({"train": skips.summarize(3, [("Ölçüm-1", "empty_report", "é")])})
  path = skips.write_report(report, tmp_path)
  assert path == tmp_path / skips.REPORT_NAME
  assert skips.read_report(tmp_path) == report
  assert "Ölçüm-1" in path.read_text(encoding="utf-8")


def test_format_summary_lines():
  report = skips.combine({
      "index": skips.summarize(2, [("z9", "duplicate_record_id", ""),
                                   ("a1", "missing_metadata", "no patient")]),
      "train": skips.summarize(10, [("t5", "wrong_duration", ""), ("t3", "wrong_duration", ""),
                                    ("t4", "wrong_duration", ""), ("t1", "wrong_duration", ""),
                                    ("t2", "missing_metadata", "")]),
      "test": skips.summarize(4, [("s0", "wrong_duration", "")]),
  })
  lines = skips.format_summary(report).splitlines()
  assert lines[0] == "16 records seen: 8 kept, 8 skipped"
  assert len(lines) == 4
  assert lines[1].split() == ["1", "duplicate_record_id", "(record", "id", "seen", "before",
                              "(the", "first", "one", "is", "kept)),", "e.g.", "z9"]
  assert lines[2].startswith("        2 missing_metadata (") and lines[2].endswith("e.g. a1, t2")
  assert lines[3].startswith("        5 wrong_duration (") and lines[3].endswith(
      "e.g. s0, t1, t3")
  report["omitted_splits"] = ["validation"]
  assert skips.format_summary(report).splitlines()[-1] == (
      "  every record skipped, split not written: validation")
