"""grain input pipelines: per-process shards, seeded shuffle, checkpointable state.

Sources are anything random-access with `len()` and `[i]` returning a record of
the data contract (a `tfds.data_source(...)` split, or a list of dicts in tests).
One `RecordTransform` turns a record into a model example for both train and
eval, so the two can never disagree on normalization or tokenization.
"""

import copy
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from ecgclip_jax.data.normalize import check_normalization, normalize_ecg


def tokenize_report(tokenizer, report, max_length: int) -> dict[str, np.ndarray]:
  """Returns `input_ids`, `attention_mask` int32 [max_length] for one report.

  `tokenizer` is a Hugging Face tokenizer built by the caller; only its batch
  call signature is used, so any text tower's tokenizer fits.
  """
  if isinstance(report, np.ndarray):
    report = report.item()
  text = report.decode("utf-8") if isinstance(report, bytes) else str(report)
  encoded = tokenizer(
      [text], padding="max_length", truncation=True, max_length=max_length,
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
               label_feature: str = "labels"):
    """`tokenizer` None: ECG-only examples (downstream jobs); `label_feature` picks one of
    the dataset's label sets (e.g. PTB-XL's `labels_superdiagnostic`) as `labels`."""
    check_normalization(normalization)  # Fail at build time, not in a worker.
    # A private copy: HF fast tokenizers keep padding/truncation as mutable
    # state, so a tokenizer shared with other code could change our lengths
    # or fail with "Already borrowed" when used from two threads at once.
    self.tokenizer = copy.deepcopy(tokenizer)
    self.max_text_length = max_text_length
    self.normalization = normalization
    self.label_feature = label_feature

  def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    lead_mask = np.asarray(record["lead_mask"], dtype=bool)
    example = {
        "ecg": normalize_ecg(record["ecg"], lead_mask, self.normalization),
        "lead_mask": lead_mask,
        "labels": np.asarray(record[self.label_feature], dtype=bool),
    }
    if self.tokenizer is not None:
      example.update(tokenize_report(self.tokenizer, record["report"], self.max_text_length))
    return example


# ----------------------------------------------------------------- training


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
) -> grain.DataLoaderIterator:
  """Returns an endless iterator of this process's training batches.

  Each process owns the contiguous shard `process_index` of `process_count`
  (equal sizes; the remainder N % process_count is dropped), shuffled with
  `seed` and reshuffled every epoch. The stream is infinite, so batches run
  across epoch boundaries. Batches are dicts of numpy: `ecg` float32 [b, T, 12],
  `lead_mask` bool [b, 12], `input_ids`/`attention_mask` int32 [b, L],
  `labels` bool [b, num_labels].

  Checkpoint with `iterator_state_to_json` / `restore_iterator_state`; a state
  restores only into an iterator built with the same source (by repr), sampler
  (length, shard, seed) and `worker_count` -- grain checks and raises.
  """
  if len(source) < process_count:
    raise ValueError(
        f"{len(source)} records cannot feed {process_count} processes."
    )
  if worker_count and not flags.FLAGS.is_parsed():
    # grain reads its absl flags when it starts worker processes; a plain
    # script (no absl.app.run) has not parsed them, so take the defaults.
    flags.FLAGS.mark_as_parsed()
  shard_options = grain.sharding.ShardOptions(
      shard_index=process_index, shard_count=process_count, drop_remainder=True
  )
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=shard_options,
      shuffle=True,
      num_epochs=None,
      seed=seed,
  )
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[
          RecordTransform(tokenizer, max_text_length, normalization),
          grain.transforms.Batch(per_process_batch_size, drop_remainder=True),
      ],
      worker_count=worker_count,
      shard_options=shard_options,
  )
  return iter(loader)


def iterator_state_to_json(iterator: grain.DataLoaderIterator) -> dict[str, Any]:
  """Returns the iterator position as a JSON-serialisable dict.

  grain hands its state out as UTF-8 JSON bytes; a dict stores directly in an
  Orbax JSON item next to the train state.
  """
  return json.loads(iterator.get_state().decode("utf-8"))


def restore_iterator_state(
    iterator: grain.DataLoaderIterator, state: dict[str, Any]
) -> None:
  """Moves `iterator` to `state` (from `iterator_state_to_json`)."""
  iterator.set_state(json.dumps(state).encode("utf-8"))


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
    label_feature: str = "labels",
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
  # As in training: reads fan out over grain's threads, the transform runs on
  # the consuming thread (the tokenizer is not safe to share across threads).
  reads = grain.MapDataset.range(num_slots).map(read).to_iter_dataset()
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
  return iter(order.map(read).to_iter_dataset().batch(per_process, drop_remainder=True))
