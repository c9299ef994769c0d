"""Opens a dataset's array_record splits as random-access sources (no TensorFlow).

`data.name` names a builder package under tfds_builders/, opened by name through the TFDS
registry (the package is imported only to register it; see docs/architecture.md). The
synthetic corpus needs no download, so it is built here when missing; a real corpus is
built here from `data.manual_dir` (its untouched download) when that is set, or else must
already have been built into `data.data_dir` by its own command.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from ecgclip_jax import storage
from ecgclip_jax.data import contract, pipeline, signal
from ecgclip_jax.progress import Progress

SYNTHETIC = "synthetic_ecg_reports"


@dataclasses.dataclass
class Dataset:
  builder: tfds.core.DatasetBuilder

  @property
  def label_names(self) -> list[str]:
    return list(self.builder.info.metadata["label_names"])

  @property
  def num_samples(self) -> int:
    return self.builder.info.features["ecg"].shape[0]

  @property
  def signal_spec(self) -> signal.SignalSpec:
    """How this build prepared its records (rate, length, crop, filter, rejection rules):
    what a new recording must go through to look like the training data (predict)."""
    metadata = self.builder.info.metadata
    if "signal_spec" in metadata:  # written by every EcgBuilder
      return signal.SignalSpec(**metadata["signal_spec"])
    rate = metadata["sample_rate"]  # the synthetic corpus: generated at its rate, unfiltered
    return signal.SignalSpec(sample_rate=rate, duration_s=self.num_samples / rate)

  def source(self, split: str):
    splits = self.builder.info.splits
    if split not in splits:
      raise ValueError(f"{self.builder.info.full_name} has no split {split!r}; "
                       f"available: {sorted(splits)}")
    return self.builder.as_data_source(split=split)

  def contrastive_source(self, split: str):
    """`(records, left_out)`: the split's records that have a report (`with_reports`), and how
    many had none."""
    return with_reports(self.source(split), self.report_mask(split))

  def report_mask(self, split: str) -> np.ndarray:
    """Which records of the split have a report. A build that skipped every record without
    one (an EcgBuilder config's `require_report`: MIMIC-IV-ECG, a manifest by default) is
    not read for it, which would cost a pass over the whole split at every start."""
    source = self.source(split)
    if getattr(self.builder.builder_config, "require_report", False):
      return np.ones(len(source), bool)
    return report_mask(source)


def report_mask(source: Sequence[dict[str, Any]]) -> np.ndarray:
  """Which records of `source` have a report (not blank). Reads every record once (PTB-XL
  at 500 Hz: about 1 ms a record from a local disk)."""
  has_report = np.zeros(len(source), bool)
  progress = Progress("finding the records that have a report", len(source))
  for i, record in enumerate(source):
    has_report[i] = bool(contract.text(record["report"]).strip())
    progress.update(1)
  progress.done()
  return has_report


def with_reports(source: Sequence[dict[str, Any]], has_report: np.ndarray | None = None
                 ) -> tuple[Sequence[dict[str, Any]], int]:
  """`(records, left_out)`: the records of `source` that have a report (`has_report`, default
  `report_mask(source)`), and how many had none. Contrastive training pairs each ECG with its
  report, while a build may keep records without one for their labels (PTB-XL's blank
  reports, the challenge's label-only corpus, a manifest built with require_report=False):
  one build then serves pre-training and evaluation."""
  has_report = report_mask(source) if has_report is None else has_report
  if not has_report.any():
    raise ValueError(f"none of the {len(source):,} training records has a report: contrastive "
                     f"training needs reports (a label-only dataset serves evaluation and "
                     f"probes)")
  if has_report.all():
    return source, 0
  return pipeline.Subset(source, np.flatnonzero(has_report)), int((~has_report).sum())


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The (maybe unbuilt) builder of the configured dataset, found by name in the TFDS
  registry: cheap, reads no records. The synthetic corpus takes its size and seed as
  builder arguments (a custom config such as `100hz_p40_s0`)."""
  try:
    importlib.import_module(f"tfds_builders.{data_config.name}")  # registers the builder
  except ModuleNotFoundError:
    raise ValueError(f"unknown dataset {data_config.name!r}: no package tfds_builders/"
                     f"{data_config.name}") from None
  corpus = {}
  if data_config.name == SYNTHETIC:
    corpus = dict(num_patients=data_config.num_patients, corpus_seed=data_config.corpus_seed)
  return tfds.builder(data_config.name, config=data_config.builder_config,
                      data_dir=data_config.data_dir or None, file_format="array_record",
                      **corpus)


def _other_builds(builder: tfds.core.DatasetBuilder) -> str:
  """A note on builds of this dataset by other versions of its builder (each version has its
  own folder, data_dir/NAME/CONFIG/VERSION, and a builder reads only its own), or ''."""
  others = [str(v) for v in tfds.core.utils.version.list_all_versions(
      os.path.dirname(builder.data_dir)) if v != builder.version]
  if not others:
    return ""
  return (f" (this builder reads version {builder.version}; the build of version "
          f"{', '.join(others)} there has another format, which it does not read)")


def dataset_problem(data_config: ml_collections.ConfigDict) -> str | None:
  """Why the configured dataset can be neither opened nor built here, or None. The synthetic
  corpus can always be built; a real one must be built already or have its download."""
  if data_config.name == SYNTHETIC:
    return None
  try:
    builder = _builder(data_config)
  except ValueError as e:  # also tfds: an unknown builder config
    return str(e)
  name = f"{data_config.name}/{data_config.builder_config}"
  if builder.is_prepared():
    return None
  if not data_config.manual_dir:
    return (f"dataset {name} is not built in {builder.data_dir_root}{_other_builds(builder)}: "
            f"set data.manual_dir to the download to build it on first use, or build it with "
            f"`python -m tfds_builders.{data_config.name} --config {data_config.builder_config} "
            f"--manual_dir DOWNLOAD --data_dir {builder.data_dir_root}`")
  if not epath.Path(data_config.manual_dir).is_dir():
    return f"data.manual_dir {data_config.manual_dir!r} (the {name} download) does not exist"
  return None


def _prepared_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  if problem := dataset_problem(data_config):
    raise FileNotFoundError(problem)
  builder = _builder(data_config)
  if builder.is_prepared():
    return builder
  if data_config.name == SYNTHETIC:  # generated here: nothing to download
    download_config = None
    print(f"Building {builder.info.full_name} in {builder.data_dir}{_other_builds(builder)} ...",
          flush=True)
  else:
    download_config = tfds.download.DownloadConfig(manual_dir=data_config.manual_dir)
    print(f"Building {data_config.name}/{data_config.builder_config} from "
          f"{data_config.manual_dir} into {builder.data_dir_root}{_other_builds(builder)} ...",
          flush=True)
  with storage.local_data_dir(str(builder.data_dir_root)) as local_dir:
    local_config = ml_collections.ConfigDict(data_config.to_dict())
    local_config.data_dir = local_dir
    _builder(local_config).download_and_prepare(download_config=download_config)
  return _builder(data_config)


def _built_by_process_zero(
    open_or_build: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """In a multi-process run only process 0 builds a missing dataset (into the shared
  data_dir); the others wait for it and then open the finished build."""
  if jax.process_count() == 1:
    return open_or_build()
  builder = open_or_build() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("ecgclip_jax dataset built")
  return builder or open_or_build()


def open_dataset(data_config: ml_collections.ConfigDict, *, any_length: bool = False) -> Dataset:
  """The dataset named by the config, checked against the config's record length (not with
  `any_length`: a probe's task data, whose records the model embeds as windows)."""
  dataset = Dataset(_built_by_process_zero(lambda: _prepared_builder(data_config)))
  if not any_length and dataset.num_samples != data_config.num_samples:
    raise ValueError(
        f"{dataset.builder.info.full_name} has records of {dataset.num_samples} samples, "
        f"but data.num_samples={data_config.num_samples}: set it to match")
  return dataset
