"""Why a record was left out of a build, and the report that counts them.

A long build never stops on one bad record: the record is skipped with a reason from
`REASONS`, and the build writes `build_report.json` beside the dataset (counts per reason,
the first ids per reason in id order, totals) so that kept + skipped = seen can be checked.
A problem with the corpus itself (wrong folder, missing CSV, no records) is a `CorpusError`:
it stops the build at once with one line naming the path and what was expected.
"""

from __future__ import annotations

import collections
import json
import pathlib

REASONS = {
    "missing_file": "signal or header file not found",
    "unreadable_signal": "signal file unreadable or truncated",
    "header_data_mismatch": "header disagrees with the data (length, leads, rate)",
    "unsupported_format": "signal format, units or lead layout not supported",
    "too_many_nonfinite": "more NaN/Inf samples than the repair cap",
    "flat_leads": "more flat leads than allowed",
    "saturated_leads": "more saturated (clipped) leads than allowed",
    "wrong_duration": "shorter than the configured minimum duration",
    "empty_report": "empty report where reports are required",
    "undecodable_report": "report not decodable as text",
    "duplicate_record_id": "record id seen before (the first one is kept)",
    "missing_metadata": "a required field (patient id, sampling rate, ...) is missing",
}
FIRST_IDS_KEPT = 20
REPORT_NAME = "build_report.json"


class SkipRecord(Exception):
  """Raised while preparing one record: the build skips it and counts `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    if reason not in REASONS:
      raise ValueError(f"unknown skip reason {reason!r}; known: {sorted(REASONS)}")
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


class CorpusError(ValueError):
  """The corpus as a whole is unusable (wrong folder, missing index file, no records)."""


def summarize(seen: int, skips: list[tuple[str, str, str]]) -> dict:
  """One split's report from the number of records seen and its (id, reason, detail) skips."""
  by_reason = collections.defaultdict(list)
  for record_id, reason, detail in skips:
    if reason not in REASONS:
      raise ValueError(f"unknown skip reason {reason!r} for {record_id!r}; known: "
                       f"{sorted(REASONS)}")
    by_reason[reason].append((record_id, detail))
  reasons = {}
  for reason, items in sorted(by_reason.items()):
    items.sort()
    reasons[reason] = {
        "count": len(items),
        "description": REASONS[reason],
        "first_ids": [record_id for record_id, _ in items[:FIRST_IDS_KEPT]],
        "first_details": [detail for _, detail in items[:FIRST_IDS_KEPT]],
    }
  return {"seen": seen, "kept": seen - len(skips), "skipped": len(skips), "reasons": reasons}


def combine(splits: dict[str, dict]) -> dict:
  """The whole build's report: totals and per-reason counts over splits, and each split."""
  totals = {key: sum(s[key] for s in splits.values()) for key in ("seen", "kept", "skipped")}
  counts = collections.Counter()
  for split in splits.values():
    counts.update({reason: r["count"] for reason, r in split["reasons"].items()})
  return {**totals, "skipped_by_reason": dict(sorted(counts.items())), "splits": splits}


def write_report(report: dict, directory: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(directory) / REPORT_NAME
  path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
  return path


def read_report(directory: str | pathlib.Path) -> dict:
  return json.loads((pathlib.Path(directory) / REPORT_NAME).read_text())


def format_summary(report: dict) -> str:
  """A few lines for the console: totals, then one line per skip reason with example ids."""
  lines = [f"{report['seen']} records seen: {report['kept']} kept, {report['skipped']} skipped"]
  first_ids = collections.defaultdict(list)
  for split in report["splits"].values():
    for reason, r in split["reasons"].items():
      first_ids[reason] += r["first_ids"]
  for reason, count in report["skipped_by_reason"].items():
    examples = ", ".join(sorted(first_ids[reason])[:3])
    lines.append(f"  {count:>7} {reason} ({REASONS[reason]}), e.g. {examples}")
  if report.get("omitted_splits"):
    lines.append(f"  every record skipped, split not written: "
                 f"{', '.join(report['omitted_splits'])}")
  return "\n".join(lines)
