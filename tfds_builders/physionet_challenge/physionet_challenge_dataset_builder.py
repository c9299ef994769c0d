"""TFDS builder for the PhysioNet/Computing in Cardiology Challenge 2020-2021 training data:
12-lead ECGs from eight sources, each a `.hea` WFDB header (with `# Age`, `# Sex` and
`# Dx:` SNOMED-CT codes among its comments) and a MATLAB v4 `.mat` holding `val`.

Build one source at a time from its folder as downloaded (https://physionet.org/content/
challenge-2021/, `training/<folder>/`, usually split into g1/, g2/, ...; every *.hea below
manual_dir is a record):

  python -m tfds_builders.physionet_challenge --config georgia \\
      --manual_dir /path/to/training/georgia --data_dir D

It runs the stock `tfds build` (array_record by default; every `tfds build` flag works, e.g.
`--beam_pipeline_options=direct_num_workers=8,direct_running_mode=multi_processing`). The
build writes `build_report.json` beside the dataset: records seen, kept, skipped by reason,
and `unknown_dx_codes` (see Labels). A JSON `--config` may set `source` and `signal` (a
`SignalSpec`), e.g. `'{"name": "cpsc2018_8s", "source": "cpsc2018",
"signal": {"min_duration_s": 8}}'`.

Configs (one per source; challenge folder, records in the 2021 release, native format):
  cpsc2018              cpsc_2018              6,877  500 Hz, 6-60 s
  cpsc_extra            cpsc_2018_extra        3,453  500 Hz, 6-60 s
  st_petersburg_incart  st_petersburg_incart      74  257 Hz, 30 min
  ptb                   ptb                      516  1000 Hz, longer than 10 s
  ptbxl                 ptb-xl                21,837  500 Hz, 10 s
  georgia               georgia               10,344  500 Hz, 10 s
  chapman_shaoxing      chapman_shaoxing      10,247  500 Hz, 10 s
  ningbo                ningbo                34,905  500 Hz, 10 s
  chapman_ningbo        (ecg-arrhythmia 1.0.0: WFDBRecords/, Chapman and Ningbo as PhysioNet
                        publishes them outside the challenge; MERL's Chapman split) 500 Hz, 10 s
  cpsc2018_5s           cpsc2018 with its 6-10 s records kept, zero-padded (MERL's ICBEB split)
Every config writes 10 s at 500 Hz (5000 x 12 int16 µV, lead order I, II, III, aVR, aVL,
aVF, V1-V6), resampled by the shared signal code (polyphase, anti-aliased).

Duration policy: every example is 10 s of recorded signal. Longer records are cropped from
the start, except St Petersburg INCART's 30-min Holter-style records, cropped to their
central 10 s (away from the hook-up at the start; their Dx codes describe the whole
recording, so no window is sure to show a labelled event). Records shorter than 10 s (CPSC
and CPSC-Extra have some from 6 s) are skipped as `wrong_duration`, not zero-padded: a
padded tail would mark those sources' short records for a contrastive model and skew
per-record normalization. A JSON config with `"signal": {"min_duration_s": 8}` keeps them,
zero-padded.

Labels: `labels` is multi-hot over the SNOMED-CT codes of snomed_ct.csv (shipped here): the
challenge's 133 mapped codes, its dx_mapping_scored.csv and dx_mapping_unscored.csv of 2021
(names as there, with typos and double spaces fixed); label names are the code strings,
`info.metadata["snomed_ct"]` gives each code's abbreviation and name. `labels_scored` is
multi-hot over the 2021 challenge's 26 scored classes, named by abbreviation, where the
challenge's equivalent pairs are one class: RBBB = CRBBB 713427006 + RBBB 59118001, LBBB =
CLBBB 733534002 + LBBB 164909002, PAC = PAC 284470004 + SVPB 63593006, PVC = PVC 427172004 +
VPB 17338001 (`info.metadata["scored_classes"]` lists each class's codes). Codes outside
the table count for no label; they are tallied over every header with a parsable Dx line,
printed after the build and written to build_report.json as `unknown_dx_codes`.

Report: the challenge data has no free text, so `report` is "" (`require_report=False`).
Age: `# Age` in years; NaN, Unknown or outside 0-120 -> -1. Sex: `# Sex` Male/M -> 1,
Female/F -> 0, anything else -> -1.

Split: the challenge gives no patient ids, so each record is its own patient
(patient_id = record_id = the file name, e.g. E07500): `hash_split(record_id, salt=source)`
80/10/10 train/validation/test. Caveat: three sources do have repeat patients, so their
splits are not patient-disjoint: PTB (several recordings per subject), PTB-XL (21,837 records
of 18,885 patients; the `ptbxl` builder has its official patient-wise folds) and INCART (74
recordings cut from 32 Holter records).

Skips (counted in build_report.json): a header without a parsable `# Dx:` line ->
missing_metadata (before any signal is read); the same file name in two subfolders ->
duplicate_record_id (the first path in sorted order is kept); missing or truncated .mat,
malformed header, header/data disagreement -> missing_file / unreadable_signal /
header_data_mismatch (shared readers); no standard lead, flat or saturated leads, too short
-> unsupported_format / flat_leads / saturated_leads / wrong_duration (shared signal code).
A folder without any .hea stops the build with one line (`CorpusError`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import pathlib
import re
from typing import NamedTuple

import tensorflow_datasets as tfds
from etils import epath

from ecgclip_jax import storage
from ecgclip_jax.data import contract
from ecgclip_jax.data import readers
from ecgclip_jax.data import signal as signal_lib
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import ecg_builder

MAX_AGE = 120
HEADER_READS = 32  # headers the index pass reads at once, so that a bucket's requests overlap


class Source(NamedTuple):
  """One of the challenge's training sources."""

  title: str
  folder: str  # its folder as downloaded (training/<source> for the challenge's sources)
  native: str  # sampling rate and durations as published
  crop: str  # SignalSpec.crop for records longer than 10 s


SOURCES = {
    "cpsc2018": Source("China Physiological Signal Challenge 2018", "training/cpsc_2018",
                       "500 Hz, 6-60 s", "start"),
    "cpsc_extra": Source("CPSC 2018 unused data", "training/cpsc_2018_extra", "500 Hz, 6-60 s",
                         "start"),
    "st_petersburg_incart": Source("St Petersburg INCART 12-lead Arrhythmia Database",
                                   "training/st_petersburg_incart", "257 Hz, 30 min", "center"),
    "ptb": Source("PTB Diagnostic ECG Database", "training/ptb", "1000 Hz, longer than 10 s",
                  "start"),
    "ptbxl": Source("PTB-XL", "training/ptb-xl", "500 Hz, 10 s", "start"),
    "georgia": Source("Georgia 12-lead ECG Challenge Database", "training/georgia",
                      "500 Hz, 10 s", "start"),
    "chapman_shaoxing": Source("Chapman University / Shaoxing People's Hospital",
                               "training/chapman_shaoxing", "500 Hz, 10 s", "start"),
    "ningbo": Source("Ningbo First Hospital", "training/ningbo", "500 Hz, 10 s", "start"),
    # Chapman and Ningbo as PhysioNet publishes them outside the challenge (ecg-arrhythmia
    # 1.0.0, the release MERL's Chapman split names): WFDBRecords/NN/NNN/JSnnnnn.{hea,mat},
    # the same header and .mat format, `#Dx:` with SNOMED-CT codes.
    "chapman_ningbo": Source("Chapman-Shaoxing-Ningbo 12-lead ECG database (PhysioNet "
                             "ecg-arrhythmia 1.0.0)", "WFDBRecords", "500 Hz, 10 s", "start"),
}


class Code(NamedTuple):
  """One row of snomed_ct.csv."""

  code: str
  abbreviation: str
  name: str
  scored_class: str  # the 2021 scored class it counts for, "" when unscored


def read_codes(path: str | pathlib.Path) -> tuple[Code, ...]:
  with open(path, newline="", encoding="utf-8") as f:
    return tuple(Code(**row) for row in csv.DictReader(f))


CODES = read_codes(pathlib.Path(__file__).with_name("snomed_ct.csv"))
LABEL_SETS = {
    "labels": [c.code for c in CODES],
    "labels_scored": list(dict.fromkeys(c.scored_class for c in CODES if c.scored_class)),
}
_KNOWN = frozenset(LABEL_SETS["labels"])
_SCORED_CLASS = {c.code: c.scored_class for c in CODES if c.scored_class}
_SEX = {"male": 1, "m": 1, "female": 0, "f": 0}
_CODE = re.compile(r"[0-9]+")


def header_fields(text: str) -> dict[str, str]:
  """The `# Key: value` comment lines of a challenge header (key casefolded; first wins).
  CPSC writes `#Age: 53`, the others `# Age: 53`."""
  fields = {}
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("#") and ":" in line:
      key, value = line[1:].split(":", 1)
      fields.setdefault(key.strip().casefold(), value.strip())
  return fields


def dx_codes(value: str | None) -> tuple[str, ...]:
  """`164889003,59118001` -> its codes in order, once each. ValueError when the line is
  missing, empty or holds anything but comma-separated integers."""
  if value is None:
    raise ValueError("no '# Dx:' line")
  codes = [code.strip() for code in value.split(",")]
  if not all(_CODE.fullmatch(code) for code in codes):
    raise ValueError(f"'# Dx: {value[:80]}' is not a comma-separated list of SNOMED-CT codes")
  return tuple(dict.fromkeys(codes))


def age_of(value: str | None) -> int:
  try:
    age = float(value)
  except (TypeError, ValueError):  # absent, "Unknown"
    return contract.UNKNOWN
  return int(round(age)) if 0 <= age <= MAX_AGE else contract.UNKNOWN  # NaN fails both


def sex_of(value: str | None) -> int:
  return _SEX.get((value or "").strip().casefold(), contract.UNKNOWN)


def code_labels(codes) -> dict:
  """A record's Dx codes -> its `labels` and `labels_scored` vectors (unknown codes: none)."""
  return {
      "labels": ecg_builder.multi_hot(codes, LABEL_SETS["labels"]),
      "labels_scored": ecg_builder.multi_hot(
          [_SCORED_CLASS[c] for c in codes if c in _SCORED_CLASS], LABEL_SETS["labels_scored"]),
  }


def read_record(task: ecg_builder.RecordTask) -> ecg_builder.RawRecord:
  """One challenge record: its .mat signal through its header, and the header's labels, age
  and sex parsed by `list_records` (module-level, so Beam workers unpickle it by reference)."""
  return ecg_builder.RawRecord(
      signal=readers.read_wfdb(task.field("path")),
      labels=code_labels(task.field("dx", ())),
      age=task.field("age", contract.UNKNOWN),
      sex=task.field("sex", contract.UNKNOWN))


@dataclasses.dataclass(eq=False, kw_only=True)
class ChallengeConfig(ecg_builder.EcgConfig):
  """`EcgConfig` plus the source its manual_dir holds (default: the config's name), which
  also salts the split."""

  source: str = ""
  require_report: bool = False

  def __post_init__(self):
    super().__post_init__()
    self.source = self.source or self.name
    if self.source not in SOURCES:
      raise ValueError(f"source must be one of {sorted(SOURCES)}, got {self.source!r}")


def _config(name: str, source: Source) -> ChallengeConfig:
  crop = "central" if source.crop == "center" else "first"
  return ChallengeConfig(
      name=name, description=f"{source.title} ({source.folder}, {source.native}): "
      f"the {crop} 10 s at 500 Hz.", signal=signal_lib.SignalSpec(crop=source.crop))


class Builder(ecg_builder.EcgBuilder):
  """PhysioNet/CinC Challenge 2020-2021: 12-lead ECGs with SNOMED-CT diagnosis codes."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = dict(contract.RELEASE_NOTES)
  BUILDER_CONFIGS = [_config(name, source) for name, source in SOURCES.items()] + [
      ChallengeConfig(
          name="cpsc2018_5s", source="cpsc2018",
          description="CPSC 2018 with its records of 5 to 10 s kept, zero-padded to 10 s (the "
          "cpsc2018 config skips them): MERL's ICBEB split reads the first 5 s of every record.",
          signal=signal_lib.SignalSpec(min_duration_s=5))]
  DEFAULT_CONFIG_NAME = "georgia"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the challenge's training data from https://physionet.org/content/challenge-2021/
  (e.g. `wget -r -N -c -np https://physionet.org/files/challenge-2021/1.0.3/training/georgia/`)
  and pass one source's folder (training/georgia, training/cpsc_2018, ...) as --manual_dir.
  """

  def label_sets(self) -> dict[str, list[str]]:
    return {name: list(vocabulary) for name, vocabulary in LABEL_SETS.items()}

  def extra_metadata(self) -> dict:
    scored = collections.defaultdict(list)
    for c in CODES:
      if c.scored_class:
        scored[c.scored_class].append(c.code)
    return {
        "snomed_ct": {c.code: {"abbreviation": c.abbreviation, "name": c.name} for c in CODES},
        "scored_classes": dict(scored),
        "source": self.builder_config.source,
    }

  def list_records(self, manual_dir: epath.Path):
    """Every *.hea below manual_dir; its comments give labels, age and sex."""
    source = self.builder_config.source
    headers = sorted(epath.Path(folder) / name
                     for folder, _, names in storage.walk(str(manual_dir))
                     for name in names if name.endswith(".hea"))
    if not headers:
      raise CorpusError(f"{manual_dir}: no .hea headers in this folder or below; expected one "
                        f"source's folder as downloaded, e.g. {SOURCES[source].folder}/")
    with concurrent.futures.ThreadPoolExecutor(HEADER_READS) as pool:
      texts = list(pool.map(lambda header: header.read_bytes().decode("latin-1"), headers))
    self._unknown_codes = collections.Counter()
    tasks, skipped = [], []
    for header, text in zip(headers, texts):
      record_id = header.stem
      fields = header_fields(text)
      try:
        codes = dx_codes(fields.get("dx"))
      except ValueError as e:
        skipped.append((record_id, "missing_metadata", f"{header}: {e}"))
        continue
      self._unknown_codes.update(c for c in codes if c not in _KNOWN)
      tasks.append(ecg_builder.RecordTask(
          record_id=record_id, patient_id=record_id,
          split=ecg_builder.hash_split(record_id, salt=source),
          source=(("path", str(header)), ("dx", codes), ("age", age_of(fields.get("age"))),
                  ("sex", sex_of(fields.get("sex"))))))
    return tasks, skipped

  def record_reader(self):
    return read_record

  def extra_report(self) -> dict:
    return {"unknown_dx_codes": dict(self._unknown_codes.most_common())}
