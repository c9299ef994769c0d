"""TFDS builder for the synthetic ECG-report corpus of `ecgclip_jax.data.synthetic`.

Build (array_record: the one format that needs no TensorFlow):

  python -m tfds_builders.synthetic_ecg_reports --config 100hz --data_dir /tmp/x

It runs the stock `tfds build` command, so every `tfds build` flag works (`--config` also
takes a JSON of `SyntheticConfig` fields), and defaults to `--file_format=array_record`. The
`tfds` console script itself cannot start without TensorFlow in tfds 4.9.x (it imports a
TensorFlow-only converter at start-up). From Python, the trainer opens it by name like any
other corpus (`tfds.builder("synthetic_ecg_reports", config="100hz", num_patients=40, ...)`,
see `Builder`) and builds it when missing; `prepare(config, data_dir)` does the same for a
config name or a `SyntheticConfig`. Reading is `builder.as_data_source(split)`.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ecgclip_jax.data import contract
from ecgclip_jax.data import synthetic
from ecgclip_jax.data.leads import NUM_LEADS

LABEL_NAMES = synthetic.LABEL_NAMES


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Corpus size and signal format; the seed fixes every patient, waveform and report."""

  sample_rate: int
  num_patients: int
  duration_s: float = 10.0
  seed: int = 0


def custom_config(sample_rate: int, num_patients: int, seed: int = 0,
                  duration_s: float = 10.0) -> SyntheticConfig:
  """A config whose name spells out its arguments, so builds of different corpora never mix."""
  name = f"{sample_rate}hz_p{num_patients}_s{seed}"
  if duration_s != 10:
    name += f"_{duration_s:g}s"
  return SyntheticConfig(name=name, sample_rate=sample_rate, num_patients=num_patients,
                         seed=seed, duration_s=duration_s)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic 12-lead ECGs with machine-style reports and multi-hot findings."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = dict(contract.RELEASE_NOTES)
  BUILDER_CONFIGS = [
      SyntheticConfig(name="500hz", description="10 s at 500 Hz, 1500 patients (~3800 records).",
                      sample_rate=500, num_patients=1500),
      SyntheticConfig(name="100hz", description="10 s at 100 Hz, 1500 patients (~3800 records).",
                      sample_rate=100, num_patients=1500),
  ]
  DEFAULT_CONFIG_NAME = "100hz"

  def __init__(self, *, config: str | SyntheticConfig | None = None, num_patients: int = 0,
               corpus_seed: int = 0, **kwargs):
    """`num_patients` (0: the config's own) or a `corpus_seed` other than 0 make the
    `custom_config` of that size and seed from `config`'s rate and duration ("100hz" with
    40 patients is "100hz_p40_s0"), so that `tfds.builder("synthetic_ecg_reports",
    config=..., num_patients=..., corpus_seed=...)` opens any corpus by name."""
    if isinstance(config, str) and config not in self.builder_configs:
      raise ValueError(f"{self.name} has no config {config!r}; "
                       f"available: {sorted(self.builder_configs)}")
    if num_patients or corpus_seed:
      base = (config if isinstance(config, SyntheticConfig)
              else self.builder_configs[config or self.DEFAULT_CONFIG_NAME])
      config = custom_config(base.sample_rate, num_patients or base.num_patients,
                             seed=corpus_seed, duration_s=base.duration_s)
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    num_samples = round(self.builder_config.sample_rate * self.builder_config.duration_s)
    label_sets = {"labels": list(LABEL_NAMES)}
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=contract.features(num_samples, label_sets),
        metadata=contract.metadata(self.builder_config.sample_rate, label_sets),
    )

  def _split_generators(self, dl_manager):
    """One generator per split, all fed by one rendering of the corpus: a record goes to its
    split's queue, and each split's generator renders on only while its queue is empty. TFDS
    writes the splits one after another, so the first renders the whole corpus and the
    others' records wait in memory (as int16) for their turn."""
    del dl_manager  # nothing to download
    c = self.builder_config
    records = synthetic.iter_corpus(c.num_patients, c.sample_rate, c.duration_s, c.seed)
    splits = synthetic.patient_splits(c.num_patients, c.seed)
    queues = {name: collections.deque() for name in contract.SPLITS}
    return {name: self._generate_examples(split=name, records=records, splits=splits,
                                          queues=queues)
            for name in contract.SPLITS}

  def _generate_examples(self, split: str, records, splits: dict[str, str],
                         queues: dict[str, collections.deque]):
    queue = queues[split]
    while True:
      while queue:
        yield queue.popleft()
      record = next(records, None)
      if record is None:
        return
      queues[splits[record.patient_id]].append((record.record_id, {
          "ecg": record.ecg_uv,
          "lead_mask": np.ones(NUM_LEADS, np.bool_),
          "report": record.report,
          "labels": record.labels,
          "patient_id": record.patient_id,
          "record_id": record.record_id,
          "age": np.int32(record.age),
          "sex": np.int32(record.sex),
      }))


def prepare(config: str | SyntheticConfig, data_dir: str | None = None) -> Builder:
  """The built dataset for `config` (a name or a `SyntheticConfig`) under `data_dir`
  (None: $TFDS_DATA_DIR or ~/tensorflow_datasets), building it first if it is missing."""
  builder = Builder(config=config, data_dir=data_dir or None, file_format="array_record")
  if not builder.is_prepared():
    print(f"Building {builder.info.full_name} in {builder.data_dir} ...", flush=True)
    builder.download_and_prepare()
  return builder
