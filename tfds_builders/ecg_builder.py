"""What every ECG dataset builder shares: the build loop that writes the data contract
(`ecgclip_jax.data.contract`; see docs/architecture.md) and skips bad records with a reason,
the build report, and Apache Beam when asked for.

A builder subclasses `EcgBuilder` and says only what is particular to its corpus:
  * `label_sets()`: feature name -> label names (`labels` is the dataset's own vocabulary;
    further sets such as PTB-XL's superclasses become `labels_<set>` features);
  * `list_records(manual_dir)`: the cheap index pass (CSV files, directory listings) giving
    one `RecordTask` per record with its split, plus index-level skips (id, reason, detail);
  * `record_reader()`: a picklable function `RecordTask -> RawRecord` that reads one record.
Reading, signal preparation and skipping run here, record by record: in this process for a
plain build, or on Beam workers when the build gets `--beam_pipeline_options` (DirectRunner
with several workers here; Dataflow, Flink or Spark at scale). Either way the build writes
`build_report.json` beside the dataset and prints its summary. A split whose records are all
skipped is not written (TFDS cannot write an empty split): the report lists it under
`omitted_splits`; a build where every record is skipped stops with a `CorpusError`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ecgclip_jax.data import contract
from ecgclip_jax.data import signal as signal_lib
from ecgclip_jax.data import skips
from ecgclip_jax.data.readers import RawSignal
from ecgclip_jax.data.skips import CorpusError, SkipRecord
from tfds_builders import memory

INDEX_SECTION = "index"  # report section for records dropped before their split is read


@dataclasses.dataclass(eq=False, kw_only=True)
class EcgConfig(tfds.core.BuilderConfig):
  """A builder config: the prepared signal's format and the rules that reject a record."""

  signal: signal_lib.SignalSpec = dataclasses.field(default_factory=signal_lib.SignalSpec)
  require_report: bool = True

  def __post_init__(self):
    if isinstance(self.signal, dict):  # from `tfds build --config '{"signal": {...}}'`
      self.signal = signal_lib.SignalSpec(**self.signal)


@dataclasses.dataclass(frozen=True)
class RecordTask:
  """One record to read: ids, split, and the builder's own plain-valued `source` fields."""

  record_id: str
  patient_id: str
  split: str
  source: tuple = ()  # (key, value) pairs, hashable and picklable; see `field`

  def field(self, key: str, default=None):
    return dict(self.source).get(key, default)


@dataclasses.dataclass
class RawRecord:
  signal: RawSignal
  report: str | bytes = ""
  labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per label set
  age: int = contract.UNKNOWN
  sex: int = contract.UNKNOWN


def hash_split(patient_id: str, salt: str,
               fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
  """A patient's split from a hash of its id: deterministic, patient-disjoint by
  construction, computed record by record (no global pass), stable when records are added."""
  digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  # min(): u can round to 1.0, and the last edge can round to just below it.
  splits = contract.SPLITS
  return splits[min(int(np.searchsorted(edges, u, side="right")), len(splits) - 1)]


def multi_hot(names: Iterable[str], vocabulary: list[str]) -> np.ndarray:
  """A record's few names looked up in the list itself: cheaper, record by record, than
  building an index of the whole vocabulary (6 vocabularies, 174 labels a PTB-XL record)."""
  out = np.zeros(len(vocabulary), np.bool_)
  for name in names:
    if name in vocabulary:
      out[vocabulary.index(name)] = True
  return out


def _int_or_unknown(value) -> np.int32:
  """Age / sex as int32, with None and NaN (a missing CSV cell) as UNKNOWN."""
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return np.int32(contract.UNKNOWN)
  return np.int32(value)


def prepare_example(task: RecordTask, reader: Callable[[RecordTask], RawRecord],
                    spec: signal_lib.SignalSpec, label_sets: dict[str, list[str]],
                    require_report: bool):
  """(record_id, example) for a usable record, or (record_id, reason, detail) for a skip."""
  memory.keep_freed_memory()  # here, so that Beam's worker processes get it too
  try:
    raw = reader(task)
    report = contract.clean_report(raw.report)
    if require_report and not report:
      raise SkipRecord("empty_report", "no report text")
    prepared = signal_lib.prepare(raw.signal.signal_mv, raw.signal.fs, raw.signal.lead_names,
                                  spec)
  except SkipRecord as e:
    return task.record_id, e.reason, e.detail
  except Exception as e:  # a reader's unforeseen failure costs this record, not the build
    return task.record_id, "unreadable_signal", f"{type(e).__name__}: {e}"
  labels = {name: np.asarray(raw.labels.get(name, np.zeros(len(names))), np.bool_)
            for name, names in label_sets.items()}
  return task.record_id, {
      "ecg": prepared.ecg,
      "lead_mask": prepared.lead_mask,
      "report": report,
      **labels,
      "patient_id": task.patient_id,
      "record_id": task.record_id,
      "age": _int_or_unknown(raw.age),
      "sex": _int_or_unknown(raw.sex),
  }


def _is_skip(result) -> bool:
  return len(result) == 3


def _write_section(path: str, seen: int, skipped: list) -> None:
  epath.Path(path).write_text(json.dumps(skips.summarize(seen, [tuple(s) for s in skipped])))


def _first_kept(tasks: list[RecordTask], process) -> list:
  """Results of `tasks` in order up to and including the first kept example (all of them
  when every record is skipped): TFDS cannot write a split without examples."""
  done = []
  for task in tasks:
    done.append(process(task))
    if not _is_skip(done[-1]):
      break
  return done


def drop_duplicates(tasks: list[RecordTask]) -> tuple[list[RecordTask], list[tuple]]:
  """Keeps the first task of each record id; the others are skips."""
  seen, kept, dropped = set(), [], []
  for task in tasks:
    if task.record_id in seen:
      dropped.append((task.record_id, "duplicate_record_id",
                      str(task.field("path", f"split {task.split}"))))
    else:
      seen.add(task.record_id)
      kept.append(task)
  return kept, dropped


class EcgBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class: the contract's features, skip-and-count generation, optional Beam."""

  BUILDER_CONFIGS: list[EcgConfig]

  def label_sets(self) -> dict[str, list[str]]:
    raise NotImplementedError

  def extra_metadata(self) -> dict:
    return {}

  def extra_report(self) -> dict:
    """Corpus facts found while building (e.g. codes outside the vocabulary), added to
    build_report.json and shown in the summary; called after generation."""
    return {}

  def list_records(self, manual_dir: epath.Path) -> tuple[list[RecordTask], list[tuple]]:
    raise NotImplementedError

  def record_reader(self) -> Callable[[RecordTask], RawRecord]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.signal
    return tfds.core.DatasetInfo(
        builder=self,
        description=(type(self).__doc__ or self.name).strip().splitlines()[0],
        features=contract.features(spec.num_samples, self.label_sets()),
        metadata=contract.metadata(spec.sample_rate, self.label_sets(),
                                   signal_spec=dataclasses.asdict(spec),
                                   **self.extra_metadata()),
    )

  def _manual_dir(self, dl_manager) -> epath.Path:
    manual_dir = epath.Path(dl_manager._manual_dir)  # pylint: disable=protected-access
    if not manual_dir.is_dir():
      raise CorpusError(f"{manual_dir}: no such folder; pass --manual_dir (tfds build) or "
                        f"manual_dir= pointing at the untouched download. "
                        f"{' '.join(self.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
    return manual_dir

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    tasks, index_skips = self.list_records(manual_dir)
    tasks, duplicates = drop_duplicates(tasks)
    index_skips = list(index_skips) + duplicates
    if not tasks:
      raise CorpusError(f"{manual_dir}: no usable records found (expected {self.name}'s "
                        f"download; {len(index_skips)} index entries were skipped)")
    _write_section(f"{self.data_dir}/skips-{INDEX_SECTION}.json", len(index_skips),
                   index_skips)
    by_split = collections.defaultdict(list)
    for task in tasks:
      by_split[task.split].append(task)
    process = functools.partial(
        prepare_example, reader=self.record_reader(), spec=self.builder_config.signal,
        label_sets=self.label_sets(), require_report=self.builder_config.require_report)
    generators, skipped = {}, list(index_skips)
    for split in contract.SPLITS:
      if not by_split[split]:
        continue
      done = _first_kept(by_split[split], process)
      if all(map(_is_skip, done)):  # every record skipped: reported, split not written
        _write_section(f"{self.data_dir}/skips-{split}.json", len(done), done)
        skipped += done
        continue
      generators[split] = self._generate_examples(split, by_split[split], process, done)
    if not generators:
      counts = collections.Counter(reason for _, reason, _ in skipped)
      raise CorpusError(f"{manual_dir}: every one of the {sum(counts.values())} records was "
                        f"skipped ({', '.join(f'{n} {r}' for r, n in sorted(counts.items()))}); "
                        f"nothing to write")
    return generators

  def _generate_examples(self, split, tasks, process, done=()):
    """Examples of `tasks`, whose first `len(done)` results are already in `done`."""
    section = f"{self.data_dir}/skips-{split}.json"
    if self._use_beam:
      return _beam_examples(split, tasks, process, section, done)
    return _local_examples(tasks, process, section, done)

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = (download_config.beam_options is not None
                      or download_config.beam_runner is not None)
    with memory.existing_objects_frozen():
      super()._download_and_prepare(dl_manager, download_config)
    sections = {}
    for path in sorted(epath.Path(self.data_dir).glob("skips-*.json")):
      sections[path.stem.removeprefix("skips-")] = json.loads(path.read_text())
      path.unlink()
    report = skips.combine(sections)
    report["omitted_splits"] = sorted(name for name, section in sections.items()
                                      if name != INDEX_SECTION and section["kept"] == 0)
    extra = self.extra_report()
    report.update(extra)
    skips.write_report(report, self.data_dir)
    lines = [f"{self.info.full_name}: {skips.format_summary(report)}"]
    lines += [f"  {key}: {_brief(value)}" for key, value in extra.items()]
    lines.append(f"  report: {skips.REPORT_NAME} beside the dataset")
    print("\n".join(lines), flush=True)


def _brief(value) -> str:
  """A report value in one line: counts as 'N kinds, M in all, e.g. a (5), b (2)'."""
  if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
    top = sorted(value.items(), key=lambda kv: -kv[1])[:5]
    return (f"{len(value)} kinds, {sum(value.values())} in all"
            + (", e.g. " + ", ".join(f"{k} ({n})" for k, n in top) if top else ""))
  return json.dumps(value)[:200]


def _local_examples(tasks, process, section, done=()):
  skipped, seen = [], 0
  try:
    for result in itertools.chain(done, map(process, tasks[len(done):])):
      seen += 1
      if _is_skip(result):
        skipped.append(result)
      else:
        yield result
  finally:  # also when TFDS stops early (`max_examples_per_split`): the records seen so far
    _write_section(section, seen, skipped)


def _beam_examples(split, tasks, process, section, done=()):
  """The same per-record work as `_local_examples`, spread over Beam workers."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  done_skips = [r for r in done if _is_skip(r)]
  done_examples = [r for r in done if not _is_skip(r)]

  def expand(pipeline):
    results = (pipeline
               | f"{split}/tasks" >> beam.Create(tasks[len(done):])
               | f"{split}/spread" >> beam.Reshuffle()
               | f"{split}/prepare" >> beam.Map(process))
    _ = (results
         | f"{split}/skips" >> beam.Filter(_is_skip)
         | f"{split}/collect" >> beam.combiners.ToList()
         | f"{split}/report" >> beam.Map(
             lambda s: _write_section(section, len(tasks), done_skips + list(s))))
    examples = results | f"{split}/examples" >> beam.Filter(lambda r: not _is_skip(r))
    first = pipeline | f"{split}/first" >> beam.Create(done_examples)
    return (examples, first) | f"{split}/all" >> beam.Flatten()

  return beam.ptransform_fn(expand)()
