"""grain input pipelines: one global training stream read in parallel, and eval passes.

Sources are anything random-access with `len()` and `[i]` returning a record of
the data contract (a `tfds.data_source(...)` split, or a list of dicts in tests).
One `RecordTransform` turns a record into a model example for both train and
eval, so the two can never disagree on normalization or tokenization.
"""

import collections.abc
import copy
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from ecgclip_jax.data import contract, leads
from ecgclip_jax.data.normalize import check_normalization, normalize_ecg


def tokenize_report(tokenizer, report, max_length: int) -> dict[str, np.ndarray]:
  """Returns `input_ids`, `attention_mask` int32 [max_length] for one report.

  `tokenizer` is a Hugging Face tokenizer built by the caller; only its batch
  call signature is used, so any text tower's tokenizer fits.
  """
  encoded = tokenizer(
      [contract.text(report)], padding="max_length", truncation=True, max_length=max_length,
      return_tensors="np",
  )
  return {
      "input_ids": encoded["input_ids"][0].astype(np.int32),
      "attention_mask": encoded["attention_mask"][0].astype(np.int32),
  }


class RecordTransform(grain.transforms.Map):
  """Contract record -> example: normalized ECG, tokens, masks, labels.

  A `grain.transforms.Map` (and picklable, HF fast tokenizers included) so the
  DataLoader can ship it to worker processes.
  """

  def __init__(self, tokenizer, max_text_length: int, normalization: str,
               label_feature: str | None = "labels", with_record_id: bool = False):
    """`tokenizer` None: ECG-only examples (downstream jobs); `label_feature` picks one of
    the dataset's label sets (e.g. PTB-XL's `labels_superdiagnostic`) as `labels` (None:
    no labels, for recordings outside any dataset);
    `with_record_id` adds the host-only `record_id` (bytes) that training logs for a
    non-finite batch."""
    check_normalization(normalization)  # Fail at build time, not in a worker.
    # A private copy: HF fast tokenizers keep padding/truncation as mutable
    # state, so a tokenizer shared with other code could change our lengths
    # or fail with "Already borrowed" when used from two threads at once.
    self.tokenizer = copy.deepcopy(tokenizer)
    self.max_text_length = max_text_length
    self.normalization = normalization
    self.label_feature = label_feature
    self.with_record_id = with_record_id

  def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    lead_mask = np.asarray(record["lead_mask"], dtype=bool)
    example = {
        "ecg": normalize_ecg(record["ecg"], lead_mask, self.normalization),
        "lead_mask": lead_mask,
    }
    if self.label_feature is not None:
      example["labels"] = np.asarray(record[self.label_feature], dtype=bool)
    if self.tokenizer is not None:
      example.update(tokenize_report(self.tokenizer, record["report"], self.max_text_length))
    if "text_features" in record:
      example["text_features"] = np.asarray(record["text_features"], np.float32)
    if self.with_record_id:
      example["record_id"] = np.asarray(
          contract.text(record.get("record_id", b"")).encode("utf-8"), dtype=bytes)
    return example


def read_options(read_threads: int, per_process_batch_size: int) -> grain.ReadOptions:
  """Reads in the consuming thread (0), or `read_threads` threads a batch ahead. Not grain's
  default 16 threads and 500 records: on a local disk the threads only contend for the GIL,
  and grain polls its whole prefetch buffer on every record (179 ms of host time per demo
  batch of 64, against 68 ms in one thread)."""
  if read_threads <= 0:
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.ReadOptions(num_threads=read_threads,
                           prefetch_buffer_size=max(per_process_batch_size, read_threads))


# ----------------------------------------------------------------- training


class Subset(collections.abc.Sequence):
  """The records of `source` at `indices`, in that order."""

  def __init__(self, source: Sequence[dict[str, Any]], indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


class Mapped(collections.abc.Sequence):
  """The records of `source`, each through `fn` (a module-level function or a partial of
  one, so the source still pickles)."""

  def __init__(self, source: Sequence[dict[str, Any]], fn):
    self.source, self.fn = source, fn

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i):
    return self.fn(self.source[i])


def token_counts(source: Sequence[dict[str, Any]], tokenizer, max_length: int) -> np.ndarray:
  """Tokens of each record's report, special tokens included, at most `max_length`."""
  reports = [contract.text(record["report"]) for record in source]
  encoded = tokenizer(reports, truncation=True, max_length=max_length)["input_ids"]
  return np.array([len(ids) for ids in encoded], np.int64)


class WithTextFeatures:
  """A source whose record i also carries `text_features[i]`: the frozen text tower's pooled
  features of its report (text.precompute_features), which the train step reads in place of
  tokens."""

  def __init__(self, source: Sequence[dict[str, Any]], text_features: np.ndarray):
    if len(text_features) != len(source):
      raise ValueError(f"{len(text_features)} text features for {len(source)} records")
    self._source, self._text_features = source, text_features

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**self._source[index], "text_features": self._text_features[index]}


class LeadDropout(grain.transforms.RandomMap):
  """data.lead_dropout: with probability `rate` a training record keeps only one reduced lead
  set, drawn uniformly from `sets` (leads.parse_dropout_sets), so that one model serves the
  inputs of smaller devices; "random" keeps each lead with probability 1/2 (the random lead
  masking of Oh et al. 2022). It runs on the int16 record, before RecordTransform normalizes
  it, through leads.restrict_leads: a dropped lead is then exactly a lead the recording lacks,
  min-max range included (dropping normalized leads in the jitted step would leave the
  range of all 12). A draw that would leave no lead keeps the record whole. `rng` is the
  sampler's generator of the record's stream position, so the draw is the same in any
  process layout and after a resume."""

  def __init__(self, rate: float, sets: str):
    self.rate, self.sets = rate, leads.parse_dropout_sets(sets)

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() >= self.rate:
      return record
    _, indices = self.sets[rng.integers(len(self.sets))]
    if indices is None:
      indices = np.flatnonzero(rng.random(leads.NUM_LEADS) < 0.5)
    restricted = leads.restrict_leads(record, None, indices)
    return restricted if restricted["lead_mask"].any() else record


class GlobalBatchSampler:
  """Training order that does not depend on how many processes or grain workers read it.

  The run's records form one stream: epoch e is a seeded permutation of the N records, epochs
  back to back, and global batch k is stream positions [kB, (k+1)B). Process p fills rows
  [p*b, (p+1)*b) of every global batch, so within an epoch each record is read by exactly
  one process. grain's DataLoader gives process p, worker w the sampler index
  (j*W + w)*S + p for that worker's j-th record and batches each worker's records on its
  own, round robin over workers; `__getitem__` inverts that mapping. So 1 process or 64,
  0 workers or 8, see the same global batches, and the data position after k steps is k:
  a run resumes from its step in any process layout. Each record's `rng` (random transforms:
  LeadDropout) is keyed by the seed and its stream position, so it too is the same.
  """

  def __init__(self, num_records: int, per_process_batch_size: int, process_count: int,
               worker_count: int, seed: int, start_step: int = 0):
    self._n, self._b, self._s = num_records, per_process_batch_size, process_count
    self._w = max(worker_count, 1)
    self._seed, self._start_step = seed, start_step
    self._cached = (-1, np.empty(0, np.int64))  # (epoch, its permutation), swapped whole

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return (f"GlobalBatchSampler(num_records={self._n}, per_process_batch_size={self._b}, "
            f"process_count={self._s}, worker_count={self._w}, seed={self._seed}, "
            f"start_step={self._start_step})")

  def stream_position(self, index: int) -> int:
    process, local = index % self._s, index // self._s
    worker, j = local % self._w, local // self._w
    worker_batch, row = divmod(j, self._b)
    step = self._start_step + worker_batch * self._w + worker
    return (step * self._s + process) * self._b + row

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    position = self.stream_position(index)
    epoch, offset = divmod(position, self._n)
    cached_epoch, order = self._cached  # one read: grain's reader threads share this sampler
    if epoch != cached_epoch:  # reads move through the epochs in order
      order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      self._cached = (epoch, order)
    rng = np.random.Generator(np.random.Philox(key=[self._seed, position]))
    return grain.RecordMetadata(index=index, record_key=int(order[offset]), rng=rng)


def make_train_iterator(
    source: Sequence[dict[str, Any]],
    *,
    tokenizer,
    max_text_length: int,
    normalization: str,
    per_process_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    worker_count: int = 0,
    start_step: int = 0,
    read_threads: int = 0,
    lead_dropout: LeadDropout | None = None,
) -> grain.DataLoaderIterator:
  """Returns an endless iterator of this process's rows of global batches `start_step`,
  `start_step + 1`, ... (see GlobalBatchSampler). Batches are dicts of numpy: `ecg` float32
  [b, T, 12], `lead_mask` bool [b, 12], `input_ids`/`attention_mask` int32 [b, L] (not
  without a `tokenizer`), `text_features` float32 [b, H] (a `WithTextFeatures` source),
  `labels` bool [b, num_labels], and `record_id` bytes [b] (for the host's logs, not the
  device). `lead_dropout` reduces records' lead sets before they are normalized.
  """
  if len(source) < per_process_batch_size * process_count:
    raise ValueError(f"{len(source)} records cannot fill a global batch of "
                     f"{per_process_batch_size * process_count}")
  if worker_count and not flags.FLAGS.is_parsed():
    # grain reads its absl flags when it starts worker processes; a plain
    # script (no absl.app.run) has not parsed them, so take the defaults.
    flags.FLAGS.mark_as_parsed()
  sampler = GlobalBatchSampler(len(source), per_process_batch_size, process_count,
                               worker_count, seed, start_step)
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[
          *([lead_dropout] if lead_dropout is not None else []),
          RecordTransform(tokenizer, max_text_length, normalization, with_record_id=True),
          grain.transforms.Batch(per_process_batch_size, drop_remainder=True),
      ],
      worker_count=worker_count,
      shard_options=grain.sharding.ShardOptions(shard_index=process_index,
                                                shard_count=process_count),
      read_options=read_options(read_threads, per_process_batch_size),
  )
  return iter(loader)


# --------------------------------------------------------------- evaluation


def num_eval_batches(n: int, per_process_batch_size: int, process_count: int) -> int:
  """Batches every process yields for `n` examples (the same on all processes)."""
  return math.ceil(math.ceil(n / process_count) / per_process_batch_size)


def make_eval_batches(
    source: Sequence[dict[str, Any]],
    *,
    tokenizer,
    max_text_length: int,
    normalization: str,
    per_process_batch_size: int,
    process_index: int,
    process_count: int,
    label_feature: str | None = "labels",
    read_threads: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's evaluation batches, in source order, each once.

  Process p takes the contiguous slice [p*k, min((p+1)*k, N)) with
  k = ceil(N / process_count). Slots past the slice are filled with record 0 so
  shapes stay static, and every process yields `num_eval_batches(...)` batches
  so multi-host global batches line up (`tokenizer` None: no text). Batches are the
  training dict plus
  `mask` bool [b] (True = real example) and `index` int64 [b] (source index,
  -1 for padding).
  """
  n = len(source)
  per_process = math.ceil(n / process_count)
  start = min(process_index * per_process, n)
  stop = min(start + per_process, n)
  transform = RecordTransform(tokenizer, max_text_length, normalization, label_feature)

  def read(position: int) -> tuple[int, dict[str, Any]]:
    index = start + position
    return (index, source[index]) if index < stop else (-1, source[0])

  def to_example(item: tuple[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    index, record = item
    out = transform.map(record)
    out["mask"] = np.bool_(index >= 0)
    out["index"] = np.int64(index)
    return out

  num_slots = num_eval_batches(n, per_process_batch_size, process_count)
  num_slots *= per_process_batch_size
  # As in training: reads may fan out over grain's threads (`read_threads`), the transform
  # runs on the consuming thread (the tokenizer is not safe to share across threads).
  reads = grain.MapDataset.range(num_slots).map(read).to_iter_dataset(
      read_options(read_threads, per_process_batch_size))
  return iter(reads.map(to_example).batch(per_process_batch_size))


# ------------------------------------------- ECG-only (supervised downstream)


def make_ecg_epoch_batches(
    source: Sequence[dict[str, Any]],
    indices: Sequence[int],
    *,
    columns: Mapping[str, np.ndarray],
    normalization: str,
    global_batch_size: int,
    seed: int,
    epoch: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's batches for one epoch over `source[indices]`.

  Batches hold `ecg` float32 [b, T, 12] and, for each `columns` entry (an array
  aligned with source indices, e.g. labels read from a task file), the rows of
  the batch's records. The order is a grain shuffle of `indices` with `seed`,
  different every `epoch`; the last incomplete global batch is dropped. Process
  p takes every process_count-th record of that order, so global batch i holds
  the same records whatever the number of processes (b = global / processes).
  Records are read in the consuming thread (`read_options`).
  """
  check_normalization(normalization)
  if global_batch_size % process_count:
    raise ValueError(
        f"global batch {global_batch_size} does not split over {process_count} processes."
    )
  n = len(indices)
  used = n // global_batch_size * global_batch_size

  def read(index: int) -> dict[str, np.ndarray]:
    record = source[index]
    ecg = normalize_ecg(record["ecg"], record["lead_mask"], normalization)
    return {"ecg": ecg, **{name: column[index] for name, column in columns.items()}}

  order = grain.MapDataset.source(np.asarray(indices)).shuffle(seed=seed).repeat()
  order = order[epoch * n : epoch * n + used][process_index::process_count]
  per_process = global_batch_size // process_count
  return iter(order.map(read).to_iter_dataset(read_options(0, per_process))
              .batch(per_process, drop_remainder=True))
