"""TFDS builder for the synthetic ECG-report corpus of `ecgclip_jax.data.synthetic`.

Build (array_record: the one format that needs no TensorFlow):

  python -m tfds_builders.synthetic_ecg_reports --config 100hz --data_dir /tmp/x

It runs the stock `tfds build` command, so every `tfds build` flag works (`--config` also
takes a JSON of `SyntheticConfig` fields), and defaults to `--file_format=array_record`. The
`tfds` console script itself cannot start without TensorFlow in tfds 4.9.x (it imports a
TensorFlow-only converter at start-up). From Python, the trainer calls
`prepare(config, data_dir)`; reading is `builder.as_data_source(split)`.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import tensorflow_datasets as tfds

from ecgclip_jax.data import synthetic
from ecgclip_jax.data.leads import NUM_LEADS
from tfds_builders import ecg_builder

LABEL_NAMES = synthetic.LABEL_NAMES
SPLITS = ecg_builder.SPLITS


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


def patient_splits(num_patients: int, seed: int) -> dict[str, str]:
  """Patient id -> split: a seeded shuffle of the patients cut 80/10/10, so no patient is in
  two splits and even a tiny corpus has at least one patient in each."""
  if num_patients < len(SPLITS):
    raise ValueError(f"Need at least {len(SPLITS)} patients for {SPLITS}, got {num_patients}.")
  order = np.random.default_rng([seed, 5]).permutation(num_patients)
  held_out = max(1, round(0.1 * num_patients))
  split = np.full(num_patients, "train", dtype=object)
  split[order[:held_out]] = "validation"
  split[order[held_out:2 * held_out]] = "test"
  return {synthetic.patient_id(seed, i): name for i, name in enumerate(split)}


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic 12-lead ECGs with machine-style reports and multi-hot findings."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="500hz", description="10 s at 500 Hz, 1500 patients (~3800 records).",
                      sample_rate=500, num_patients=1500),
      SyntheticConfig(name="100hz", description="10 s at 100 Hz, 1500 patients (~3800 records).",
                      sample_rate=100, num_patients=1500),
  ]
  DEFAULT_CONFIG_NAME = "100hz"

  def _info(self) -> tfds.core.DatasetInfo:
    num_samples = round(self.builder_config.sample_rate * self.builder_config.duration_s)
    label_sets = {"labels": list(LABEL_NAMES)}
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=ecg_builder.contract_features(num_samples, label_sets),
        metadata=ecg_builder.contract_metadata(self.builder_config.sample_rate, label_sets),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {name: self._generate_examples(name) for name in SPLITS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    splits = patient_splits(c.num_patients, c.seed)
    for record in synthetic.iter_corpus(c.num_patients, c.sample_rate, c.duration_s, c.seed):
      if splits[record.patient_id] == split:
        yield record.record_id, {
            "ecg": record.ecg_uv,
            "lead_mask": np.ones(NUM_LEADS, np.bool_),
            "report": record.report,
            "labels": record.labels,
            "patient_id": record.patient_id,
            "record_id": record.record_id,
            "age": np.int32(record.age),
            "sex": np.int32(record.sex),
        }


def prepare(config: str | SyntheticConfig, data_dir: str | None = None) -> Builder:
  """The built dataset for `config` (a name or a `SyntheticConfig`) under `data_dir`
  (None: $TFDS_DATA_DIR or ~/tensorflow_datasets), building it first if it is missing."""
  builder = Builder(config=config, data_dir=data_dir or None, file_format="array_record")
  if not builder.is_prepared():
    print(f"Building {builder.info.full_name} in {builder.data_dir} ...", flush=True)
    builder.download_and_prepare()
  return builder
