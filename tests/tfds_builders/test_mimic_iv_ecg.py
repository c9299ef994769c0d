"""The MIMIC-IV-ECG builder on a fake download in the exact layout, with planted faults:
every fault skipped under its reason, every valid record kept, reports and signals equal to
independent references (the CSV, `wfdb.rdsamp`), patient-disjoint splits, Beam == local."""

from __future__ import annotations

import collections
import csv
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
import wfdb

from ecgclip_jax.data import skips
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import ecg_builder
from tfds_builders import mimic_iv_ecg

from mimic_fixture import write_mimic_fixture  # beside this file


def _build(config: str, manual_dir, data_dir, beam: bool = False):
  download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  if beam:
    from apache_beam.options.pipeline_options import PipelineOptions
    download_config.beam_options = PipelineOptions(
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  builder = mimic_iv_ecg.Builder(config=config, data_dir=str(data_dir),
                                 file_format="array_record")
  builder.download_and_prepare(download_config=download_config)
  return builder, skips.read_report(builder.data_dir)


def _examples(builder) -> dict[str, dict[str, dict]]:
  """split -> record_id -> example."""
  return {split: {ex["record_id"].decode(): ex for ex in builder.as_data_source(split)}
          for split in builder.info.splits}


def _read_csv_rows(path) -> list[dict]:
  """Rows as the bytes on disk decode, non-UTF-8 bytes kept as lone surrogates."""
  with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
    return list(csv.DictReader(f))


def _merl_reference(fields: list[str]) -> str:
  """The documented cleaning, written plainly: per field collapse whitespace and strip the
  decorations, join the non-empty ones with '. ', MERL's EKG -> ECG, lower-case, final '.'."""
  parts = [re.sub(r"^[\s*=-]+|[\s*=.-]+$", "", re.sub(r"\s+", " ", f)) for f in fields]
  text = ". ".join(p for p in parts if p).replace("EKG", "ECG").replace("ekg", "ecg")
  return text.lower() + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_mimic_fixture(tmp_path_factory.mktemp("mimic"), num_records=200, seed=0)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
  builder, report = _build("100hz", corpus.root, tmp_path_factory.mktemp("tfds"))
  return builder, report, _examples(builder)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return write_mimic_fixture(tmp_path_factory.mktemp("mimic_small"), num_records=24, seed=1)


@pytest.fixture(scope="module")
def built_500hz(small, tmp_path_factory):
  builder, report = _build("500hz", small.root, tmp_path_factory.mktemp("tfds500"))
  return builder, report, _examples(builder)


def test_every_record_is_kept_or_skipped_under_its_reason(corpus, built):
  _, report, examples = built
  assert report["seen"] == corpus.num_rows
  assert report["kept"] + report["skipped"] == report["seen"]
  assert report["kept"] == sum(map(len, examples.values())) == len(corpus.kept)
  assert report["skipped_by_reason"] == dict(collections.Counter(corpus.skips.values()))
  skipped = {}  # every reason has fewer than FIRST_IDS_KEPT records, so first_ids is all of them
  for section in report["splits"].values():
    for reason, entry in section["reasons"].items():
      skipped.update((record_id, reason) for record_id in entry["first_ids"])
  assert skipped == corpus.skips
  kept = {record_id for split in examples.values() for record_id in split}
  assert kept == corpus.kept  # no valid record lost, the borderline ones included
  assert {corpus.planted[name] for name in ("few_nan", "two_flat_leads", "four_words")} <= kept


def test_examples_follow_the_contract(corpus, built):
  builder, _, examples = built
  subject = {row["study_id"]: row["subject_id"]
             for row in _read_csv_rows(corpus.root / "record_list.csv")}
  for split in examples.values():
    for record_id, ex in split.items():
      assert ex["ecg"].shape == (1000, 12) and ex["ecg"].dtype == np.int16
      assert ex["lead_mask"].all()
      assert ex["labels"].shape == (0,)
      assert ex["patient_id"].decode() == subject[record_id]
      assert (ex["age"], ex["sex"]) == (-1, -1)
  assert builder.info.metadata["label_names"] == []
  assert builder.info.metadata["sample_rate"] == 100


def test_reports_are_the_merl_cleaned_join_of_the_csv(corpus, built):
  _, _, examples = built
  rows = {row["study_id"]: row for row in _read_csv_rows(corpus.root / "machine_measurements.csv")}
  for split in examples.values():
    for record_id, ex in split.items():
      fields = [rows[record_id][f"report_{i}"] for i in range(18)]
      assert ex["report"].decode() == _merl_reference(fields), record_id
  undecodable = [i for i, row in rows.items()
                 if re.search("[\udc80-\udcff]", " ".join(row.values()))]
  assert undecodable == [corpus.planted["not_utf8"]]


def test_clean_reports_options():
  fields = pd.DataFrame({"report_0": [" Sinus  rhythm. ", None, "***"],
                         "report_1": [None, "Normal EKG", None],
                         "report_2": ["--- Warning: Data quality ---", "", None]}, dtype=object)
  assert mimic_iv_ecg.clean_reports(fields).tolist() == [
      "sinus rhythm. warning: data quality.", "normal ecg.", ""]
  assert mimic_iv_ecg.clean_reports(fields, lowercase=False).tolist() == [
      "Sinus rhythm. Warning: Data quality.", "Normal ECG.", ""]


def test_splits_are_by_patient_hash(built):
  _, _, examples = built
  splits_of = collections.defaultdict(set)
  for split, records in examples.items():
    for ex in records.values():
      patient = ex["patient_id"].decode()
      splits_of[patient].add(split)
      assert split == ecg_builder.hash_split(patient, "mimic_iv_ecg")
  assert set(examples) == {"train", "validation", "test"}


def test_500hz_signal_equals_wfdb_in_canonical_lead_order(small, built_500hz):
  _, _, examples = built_500hz
  paths = {row["study_id"]: row["path"] for row in _read_csv_rows(small.root / "record_list.csv")}
  plain = sorted(small.kept - set(small.planted.values()))[:5]
  assert len(plain) == 5
  by_id = {record_id: ex for split in examples.values() for record_id, ex in split.items()}
  for record_id in plain:
    signal, fields = wfdb.rdsamp(str(small.root / paths[record_id]))
    assert fields["sig_name"][4:6] == ["aVF", "aVL"]  # MIMIC's order
    expected = signal[:, [fields["sig_name"].index(lead) for lead in LEAD_NAMES]] * 1000
    ecg = by_id[record_id]["ecg"]
    assert ecg.shape == (5000, 12)
    np.testing.assert_allclose(ecg, expected, atol=0.5)
    assert np.abs(ecg[:, 4].astype(int) - ecg[:, 5]).max() > 50  # aVL != aVF: order matters


def test_beam_build_equals_local_build(small, built_500hz, tmp_path):
  _, local_report, local = built_500hz
  builder, beam_report = _build("500hz", small.root, tmp_path, beam=True)
  beam = _examples(builder)
  assert beam_report == local_report
  assert {s: set(r) for s, r in beam.items()} == {s: set(r) for s, r in local.items()}
  for split, records in local.items():
    for record_id, ex in records.items():
      for key, value in ex.items():
        np.testing.assert_array_equal(beam[split][record_id][key], value, err_msg=key)


@pytest.mark.parametrize("missing", ["record_list.csv", "machine_measurements.csv", "files"])
def test_incomplete_download_is_a_corpus_error(small, tmp_path, missing):
  manual_dir = tmp_path / "download"
  manual_dir.mkdir()
  for name in ("record_list.csv", "machine_measurements.csv"):
    if name != missing:
      shutil.copy(small.root / name, manual_dir / name)
  if missing != "files":
    (manual_dir / "files").mkdir()
  with pytest.raises(CorpusError, match=re.escape(str(manual_dir / missing))):
    _build("100hz", manual_dir, tmp_path / "tfds")
