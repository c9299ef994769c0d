"""The data contract: text fields read back as str, report cleaning, and a synthetic corpus
opened by name keeps the build name its custom size and seed always had."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax.config_defaults import default_config
from ecgclip_jax.data import contract, skips, sources


@pytest.mark.parametrize("value", [
    b"rec-001", np.bytes_(b"rec-001"), np.array(b"rec-001"), np.array("rec-001"), "rec-001",
    np.str_("rec-001"),
])
def test_text_of_every_form_a_text_field_comes_back_in(value):
  out = contract.text(value)
  assert out == "rec-001" and type(out) is str


def test_text_decodes_utf8():
  report = "Ölçüm: sinüs ritmi, QRS 90 ms – 正常"
  encoded = report.encode("utf-8")
  for value in (encoded, np.bytes_(encoded), np.array(encoded), np.array([encoded])[0]):
    assert contract.text(value) == report
  with pytest.raises(UnicodeDecodeError):
    contract.text(b"Sinus \xff rhythm")


def test_clean_report():
  assert contract.clean_report(" Sinus\trhythm.\n\n  Normal  ECG ") == "Sinus rhythm. Normal ECG"
  assert contract.clean_report("Ölçüm  ok".encode()) == "Ölçüm ok"
  for bad in (b"Sinus \xff rhythm", "lost \ufffd here", "lost \udcff here"):
    with pytest.raises(skips.SkipRecord) as e:
      contract.clean_report(bad)
    assert e.value.reason == "undecodable_report"


def test_features_and_metadata():
  label_sets = {"labels": ["NORM", "MI"], "labels_super": ["CD"]}
  features = contract.features(200, label_sets)
  assert list(features) == ["ecg", "lead_mask", "report", "labels", "labels_super",
                            "patient_id", "record_id", "age", "sex"]
  assert features["ecg"].shape == (200, 12) and features["ecg"].np_dtype == np.int16
  assert features["labels_super"].shape == (1,)
  metadata = contract.metadata(100, label_sets, extra=1)
  assert metadata["label_names"] == ["NORM", "MI"] and metadata["label_sets"] == label_sets
  assert metadata["lead_names"][:3] == ["I", "II", "III"] and metadata["lead_names"][-1] == "V6"
  assert (metadata["sample_rate"], metadata["ecg_units"], metadata["extra"]) == (
      100, "microvolt", 1)


def test_a_custom_synthetic_corpus_opened_by_name_keeps_its_build_name(tfds_data_dir):
  data = default_config().data
  data.data_dir, data.num_patients = tfds_data_dir, 40
  builder = sources.open_dataset(data).builder
  assert builder.info.full_name == "synthetic_ecg_reports/100hz_p40_s0/1.1.0"
  assert (builder.builder_config.num_patients, builder.builder_config.seed) == (40, 0)
  assert builder.data_dir.startswith(f"{tfds_data_dir}/synthetic_ecg_reports/100hz_p40_s0/")


def test_a_synthetic_corpus_is_built_once(tmp_path, capsys):
  data = default_config().data
  data.data_dir, data.num_patients, data.corpus_seed = str(tmp_path), 3, 1
  first = sources.open_dataset(data)
  assert (f"Building synthetic_ecg_reports/100hz_p3_s1/1.1.0 in {first.builder.data_dir} ..."
          in capsys.readouterr().out)
  again = sources.open_dataset(data)
  assert "Building" not in capsys.readouterr().out
  assert again.builder.info.full_name == "synthetic_ecg_reports/100hz_p3_s1/1.1.0"
  record_ids = [contract.text(r["record_id"]) for r in again.source("train")]
  assert record_ids and all(i.startswith("s1-") for i in record_ids)


def test_a_build_by_another_builder_version_is_named_and_not_read(tmp_path, capsys):
  """Each builder version has its own folder (another storage format): a build of another
  version is left alone, and both the rebuild and the not-built problem name it."""
  data = default_config().data
  data.data_dir, data.num_patients, data.corpus_seed = str(tmp_path), 3, 1
  current = pathlib.Path(sources.open_dataset(data).builder.data_dir)
  old = current.with_name("1.0.0")
  current.rename(old)  # as if built by the 1.0.0 builder
  capsys.readouterr()
  rebuilt = sources.open_dataset(data).builder
  version = str(rebuilt.version)
  assert version != "1.0.0" and rebuilt.data_dir == str(current)
  assert (f"Building synthetic_ecg_reports/100hz_p3_s1/{version} in {current} (this builder "
          f"reads version {version}; the build of version 1.0.0 there has another format, "
          f"which it does not read) ..." in capsys.readouterr().out)
  assert old.is_dir() and list(old.glob("*.array_record-*"))

  ptbxl = default_config().data
  ptbxl.name, ptbxl.data_dir = "ptbxl", str(tmp_path)
  assert "1.0.0" not in sources.dataset_problem(ptbxl)
  ptbxl_version = tfds.builder_cls("ptbxl").VERSION  # registered by dataset_problem
  (tmp_path / "ptbxl" / "100hz" / "1.0.0").mkdir(parents=True)
  assert sources.dataset_problem(ptbxl).startswith(
      f"dataset ptbxl/100hz is not built in {tmp_path} (this builder reads version "
      f"{ptbxl_version}; "
      f"the build of version 1.0.0 there has another format, which it does not read): set "
      f"data.manual_dir")


def test_no_module_of_the_package_imports_a_builder():
  """Builders depend on the package, never the reverse: datasets are opened by name."""
  import ast
  import pathlib
  package = pathlib.Path(contract.__file__).parents[1]
  importers = []
  for path in sorted(package.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(name.split(".")[0] == "tfds_builders" for name in names):
        importers.append(f"{path.relative_to(package.parent)}:{node.lineno}")
  assert not importers
