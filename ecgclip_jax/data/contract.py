"""The data contract: what every builder writes and every reader gets.

Every dataset (see docs/architecture.md) is a TFDS dataset whose records have these features:
  * `ecg`: int16 microvolts [T, 12], time-major, leads in the order I, II, III, aVR, aVL,
    aVF, V1..V6 (`leads.LEAD_NAMES`); a lead the recording lacks is all zeros. Stored as the
    array's raw bytes (`Encoding.BYTES`), not as a tf.train.Example int64 list: the same
    values read back, several times faster to write and to read;
  * `lead_mask`: bool [12], True where the lead was recorded;
  * `report`: the report text, whitespace collapsed (`clean_report`);
  * `labels`: bool multi-hot over the dataset's own vocabulary (`metadata["label_names"]`),
    and `labels_<set>` for each further label set (`metadata["label_sets"]`);
  * `patient_id`, `record_id`: text; `age`, `sex`: int32, sex 0 female, 1 male, and
    `UNKNOWN` (-1) where not recorded.
Records are split patient-disjointly into `SPLITS` (train, validation, test). Text features
read back as bytes; `text` is the one way to turn them into str.

Nothing here imports a builder: builders (tfds_builders/) import this module, and readers
open datasets by name through the TFDS registry.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from ecgclip_jax.data.leads import LEAD_NAMES, NUM_LEADS
from ecgclip_jax.data.skips import SkipRecord

if TYPE_CHECKING:  # imported where used, so that readers of `text` need no TFDS
  import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")
UNKNOWN = -1  # age / sex not recorded; sex is 0 female, 1 male
SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable bytes read with surrogateescape

# Every builder's version history: the contract's changes, which change what a build stores.
# A builder at version V stores the contract as of V, and reads only builds of V (TFDS keeps
# each version in its own folder, data_dir/NAME/CONFIG/V). A change of one builder's output
# adds that builder's own note above these (ptbxl 1.2.0), so the contract's next change takes a
# version above every builder's.
RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": ("`ecg` is stored as raw bytes (Encoding.BYTES) instead of an int64 list: the "
              "same decoded values, several times faster to build and to read. Rebuild from "
              "the source: this builder opens only 1.1.0 builds (a 1.0.0 build in the same "
              "data_dir is left as it is, unread; delete it once rebuilt)."),
}


def features(num_samples: int, label_sets: dict[str, list[str]]) -> tfds.features.FeaturesDict:
  """The contract's TFDS features for records of `num_samples` samples; `label_sets` maps
  each label feature (`labels`, `labels_<set>`) to its label names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.features.FeaturesDict({
      # Raw bytes: the int64 list TFDS would otherwise write costs most of a build's time.
      "ecg": tfds.features.Tensor(shape=(num_samples, NUM_LEADS), dtype=np.int16,
                                  encoding=tfds.features.Encoding.BYTES),
      "lead_mask": tfds.features.Tensor(shape=(NUM_LEADS,), dtype=np.bool_),
      "report": tfds.features.Text(),
      **{name: tfds.features.Tensor(shape=(len(names),), dtype=np.bool_)
         for name, names in label_sets.items()},
      "patient_id": tfds.features.Text(),
      "record_id": tfds.features.Text(),
      "age": tfds.features.Tensor(shape=(), dtype=np.int32),
      "sex": tfds.features.Tensor(shape=(), dtype=np.int32),
  })


def metadata(sample_rate: int, label_sets: dict[str, list[str]],
             **extra) -> tfds.core.MetadataDict:
  """The contract's dataset metadata: label names and sets, lead names, rate, units."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.MetadataDict(
      label_names=list(label_sets["labels"]),
      label_sets={name: list(names) for name, names in label_sets.items()},
      lead_names=list(LEAD_NAMES), sample_rate=sample_rate, ecg_units="microvolt", **extra)


def clean_report(report: str | bytes) -> str:
  """Report text with runs of whitespace collapsed; bytes must be UTF-8. Text that is not
  decodable is a `SkipRecord("undecodable_report")`."""
  if isinstance(report, bytes):
    try:
      report = report.decode("utf-8")
    except UnicodeDecodeError as e:
      raise SkipRecord("undecodable_report", str(e)) from None
  if "\ufffd" in report or SURROGATE.search(report):
    raise SkipRecord("undecodable_report", "bytes that are not text (decoding replaced them)")
  return " ".join(report.split())


def text(value) -> str:
  """A text feature as read back (bytes, numpy bytes_, a 0-d numpy array of either, or str)
  as str; bytes are UTF-8."""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):  # np.bytes_ too
    return value.decode("utf-8")
  return str(value)
