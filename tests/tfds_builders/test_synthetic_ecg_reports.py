"""The synthetic ECG-report TFDS builder: builds without TensorFlow and reads back exactly."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax.data import contract, synthetic
from tfds_builders import synthetic_ecg_reports as ser

CONFIG = ser.custom_config(sample_rate=100, num_patients=12, seed=3, duration_s=2.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return ser.prepare(CONFIG, str(data_dir)), data_dir


def test_round_trip_matches_the_generator(built):
  builder, data_dir = built
  expected = {r.record_id: r for r in synthetic.generate_corpus(12, 100, 2.0, seed=3)}
  sources = builder.as_data_source()
  assert set(sources) == set(contract.SPLITS)
  seen, patients = set(), {}
  for split, source in sources.items():
    for example in source:
      record = expected[example["record_id"].decode()]
      assert example["ecg"].shape == (200, 12) and example["ecg"].dtype == np.int16
      np.testing.assert_array_equal(example["ecg"], record.ecg_uv)
      assert example["lead_mask"].dtype == np.bool_ and example["lead_mask"].all()
      np.testing.assert_array_equal(example["labels"], record.labels)
      assert example["report"].decode() == record.report
      assert (example["age"], example["sex"]) == (record.age, record.sex)
      seen.add(record.record_id)
      patients.setdefault(example["patient_id"].decode(), set()).add(split)
  assert seen == set(expected)  # split sizes add up to the corpus
  assert all(len(splits) == 1 for splits in patients.values())
  assert builder.info.metadata["label_names"] == list(synthetic.LABEL_NAMES)
  # Readable by name from the files alone, as the input pipeline does.
  by_name = tfds.data_source(f"synthetic_ecg_reports/{CONFIG.name}", data_dir=str(data_dir))
  assert sum(map(len, by_name.values())) == len(expected)
  assert "tensorflow" not in sys.modules



def test_the_signal_is_stored_as_its_raw_int16_bytes(built):
  """`ecg` is written as the array's bytes (Encoding.BYTES), not as a tf.train.Example int64
  list (which cost most of a build's time), and the stored bytes are the generator's int16
  samples exactly."""
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2
  builder, _ = built
  expected = {r.record_id: r.ecg_uv for r in synthetic.generate_corpus(12, 100, 2.0, seed=3)}
  stored = []
  for path in sorted(pathlib.Path(builder.data_dir).glob("*.array_record-*")):
    reader = array_record_module.ArrayRecordReader(str(path))
    for serialized in reader.read_all():
      feature = tf_example_pb2.Example.FromString(serialized).features.feature
      record_id = feature["record_id"].bytes_list.value[0].decode()
      assert feature["ecg"].WhichOneof("kind") == "bytes_list", record_id
      assert feature["ecg"].bytes_list.value == [expected[record_id].astype("<i2").tobytes()]
      stored.append(record_id)
    reader.close()
  assert sorted(stored) == sorted(expected)

def test_a_build_renders_the_corpus_once(built, tmp_path, monkeypatch):
  """One rendering feeds all three splits (each record rendered once), and the build equals
  the module's shared one."""
  rendered, iter_corpus = [], synthetic.iter_corpus

  def counted(*args, **kwargs):
    for record in iter_corpus(*args, **kwargs):
      rendered.append(record.record_id)
      yield record

  monkeypatch.setattr(synthetic, "iter_corpus", counted)
  sources = ser.prepare(CONFIG, str(tmp_path)).as_data_source()
  assert sorted(rendered) == sorted(r.record_id for r in iter_corpus(12, 100, 2.0, 3))
  expected = built[0].as_data_source()
  for split, source in expected.items():
    assert [ex["record_id"] for ex in sources[split]] == [ex["record_id"] for ex in source]
    for ours, theirs in zip(sources[split], source):
      assert ours.keys() == theirs.keys()
      for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_prepare_reuses_a_finished_build(built, capsys):
  builder, data_dir = built
  again = ser.prepare(CONFIG, str(data_dir))
  assert "Building" not in capsys.readouterr().out
  assert again.info.splits.total_num_examples == builder.info.splits.total_num_examples


def test_named_configs(tmp_path):
  configs = ser.Builder.builder_configs
  assert {name: (c.sample_rate, c.duration_s) for name, c in configs.items()} == {
      "500hz": (500, 10.0), "100hz": (100, 10.0)}
  assert ser.custom_config(250, 40, seed=2).name == "250hz_p40_s2"
  # By name through the registry, with the corpus size and seed as builder arguments.
  builder = tfds.builder("synthetic_ecg_reports", config="500hz", data_dir=str(tmp_path),
                         num_patients=40, corpus_seed=2)
  assert builder.builder_config.name == "500hz_p40_s2" == ser.custom_config(500, 40, 2).name
  assert (builder.builder_config.num_patients, builder.builder_config.seed) == (40, 2)
  assert tfds.builder("synthetic_ecg_reports", config="100hz", data_dir=str(tmp_path),
                      corpus_seed=1).builder_config.name == "100hz_p1500_s1"
  assert tfds.builder("synthetic_ecg_reports", config="100hz", data_dir=str(tmp_path),
                      num_patients=0, corpus_seed=0).builder_config.name == "100hz"
  with pytest.raises(ValueError, match="has no config '250hz'"):
    ser.Builder(config="250hz", num_patients=40, data_dir=str(tmp_path))


def test_module_entry_point_runs_tfds_build(tmp_path):
  """`python -m tfds_builders.synthetic_ecg_reports` is `tfds build`, minus TensorFlow."""
  config = '{"name": "100hz_p4_s0_1s", "sample_rate": 100, "num_patients": 4, "duration_s": 1}'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run([sys.executable, "-m", "tfds_builders.synthetic_ecg_reports", "--config", config,
                  "--data_dir", str(tmp_path)], check=True, capture_output=True, env=env,
                 cwd=pathlib.Path(__file__).parents[2])
  shards = list(tmp_path.glob("synthetic_ecg_reports/100hz_p4_s0_1s/1.1.0/*.array_record-*"))
  assert len(shards) == 3


def test_a_build_larger_than_the_memory_buffer_spills_to_disk_without_tensorflow(
    built, tmp_path, monkeypatch):
  """TFDS moves a split above its buffer (1 GB) into bucket files; with the buffer at 1 kB
  every split spills here, and the build must still equal the in-memory one."""
  from tensorflow_datasets.core import shuffle
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)
  spilled = ser.prepare(CONFIG, str(tmp_path)).as_data_source()
  in_memory = built[0].as_data_source()
  for split, source in in_memory.items():
    assert len(spilled[split]) == len(source) > 0
    expected = {ex["record_id"]: ex for ex in source}
    for example in spilled[split]:
      np.testing.assert_array_equal(example["ecg"], expected[example["record_id"]]["ecg"])
  assert "tensorflow" not in sys.modules
  assert not list(tmp_path.rglob("*.tmp*")), "bucket files left behind"
