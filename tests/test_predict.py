"""predict: every input format, prepared exactly as a dataset build prepares it; bad files
reported one by one while the rest still run; JSON and CSV that agree."""

import csv
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax import api, evaluation, prediction, training
from ecgclip_jax.data import pipeline, signal, sources, synthetic
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.signal import SignalSpec
from ecgclip_jax.data.skips import SkipRecord
from ecgclip_jax.evaluators import zero_shot
from tfds_builders.ecg_manifest import ecg_manifest_dataset_builder as manifest
from tfds_builders.ecg_manifest.example import make_example

SPEC = SignalSpec(sample_rate=100)  # 10 s, as the tiny checkpoint's corpus


def _ecg_mv(fs: float, seconds: float, seed: int = 0) -> np.ndarray:
  """A synthetic 12-lead ECG [T, 12] in mV on the 1 µV grid every format stores exactly."""
  record = synthetic.synthesize(synthetic.labels_of("normal_sinus_rhythm"), fs, seed=seed,
                                duration_s=seconds)[0]
  return np.round(record.ecg, 3)


def _write_good(folder):
  """One recording per format: WFDB at 250 Hz (cropped), CinC .mat at 100 Hz, .npy
  [lead, time] µV at 500 Hz. Returns {record name: path}."""
  make_example.write_wfdb(folder / "wfdb", "rec_wfdb", _ecg_mv(250, 12, 1), 250, LEAD_NAMES)
  make_example.write_cinc_mat(folder / "cinc", "rec_mat", _ecg_mv(100, 10, 2), 100, LEAD_NAMES)
  (folder / "npy").mkdir()
  np.save(folder / "npy" / "rec_npy.npy", np.rint(_ecg_mv(500, 10, 3).T * 1000).astype(np.int16))
  return {"rec_wfdb": folder / "wfdb" / "rec_wfdb.hea", "rec_mat": folder / "cinc" / "rec_mat.mat",
          "rec_npy": folder / "npy" / "rec_npy.npy"}


def _write_bad(folder):
  """One broken file per failure: {record name: expected reason}."""
  folder.mkdir(parents=True, exist_ok=True)
  make_example.write_wfdb(folder, "truncated", _ecg_mv(100, 10), 100, LEAD_NAMES)
  dat = folder / "truncated.dat"
  dat.write_bytes(dat.read_bytes()[:-3])
  (folder / "garbage.npy").write_bytes(b"\x93NUMPY not really an array")
  make_example.write_cinc_mat(folder, "headless", _ecg_mv(100, 10), 100, LEAD_NAMES)
  (folder / "headless.hea").unlink()
  np.save(folder / "wrong_shape.npy", np.zeros((5, 7), np.float32))
  np.save(folder / "too_short.npy", _ecg_mv(500, 1))
  return {"truncated": "unreadable_signal", "garbage": "unreadable_signal",
          "headless": "missing_file", "wrong_shape": "header_data_mismatch",
          "too_short": "wrong_duration"}


def test_find_inputs_walks_folders_once_per_recording(tmp_path):
  for name in ("a.hea", "a.dat", "sub/b.hea", "sub/b.mat", "c.npy", "sub/deeper/d.mat", "e.dat",
               "notes.txt", "sub/labels.csv"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("")
  found = prediction.find_inputs([str(tmp_path), str(tmp_path / "a.dat"), "missing.npy"])
  assert found == [str(tmp_path / n) for n in ("a.hea", "c.npy", "e.dat", "sub/b.hea",
                                               "sub/deeper/d.mat")] + ["missing.npy"]


def test_each_format_is_prepared_exactly_as_a_build_prepares_it(tmp_path):
  paths = _write_good(tmp_path / "export")
  with open(tmp_path / "export" / "manifest.csv", "w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["path", "patient_id", "report", "sample_rate", "units", "split"])
    for i, (name, path) in enumerate(paths.items()):
      npy = path.suffix == ".npy"
      rows.writerow([path.relative_to(tmp_path / "export"), f"P{i}", "Sinus rhythm.",
                     500 if npy else "", "uV" if npy else "", "train"])
  config = manifest.ManifestConfig(name="predict_test", signal=SPEC)
  builder = manifest.Builder(config=config, data_dir=str(tmp_path / "tfds"),
                             file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "export")))
  built = tfds.builder_from_directory(builder.data_dir)  # as a later job opens it
  spec = sources.Dataset(built).signal_spec
  assert spec == SPEC
  arrays = prediction.ArrayFormat(sample_rate=500, units="uV")
  transform = pipeline.RecordTransform(None, 0, "zscore")
  records = {r["record_id"].decode().split("/")[-1]: r for r in built.as_data_source("train")}
  assert set(records) == set(paths)
  for name, path in paths.items():
    prepared = prediction.prepare_input(str(path), spec, arrays)
    assert prepared.ecg.shape[0] == 1  # the build's crop: one window
    np.testing.assert_array_equal(prepared.ecg[0], records[name]["ecg"])
    np.testing.assert_array_equal(prepared.lead_mask, records[name]["lead_mask"])
    mine = {"ecg": prepared.ecg[0], "lead_mask": prepared.lead_mask, "labels": np.zeros(1)}
    np.testing.assert_array_equal(transform.map(mine)["ecg"],
                                  transform.map(records[name])["ecg"])  # the model's input


def test_bad_files_fail_with_their_reason(tmp_path):
  expected = _write_bad(tmp_path)
  arrays = prediction.ArrayFormat(sample_rate=500)
  for name, reason in expected.items():
    path = next(p for p in prediction.find_inputs([str(tmp_path)]) if f"/{name}." in p)
    with pytest.raises(SkipRecord) as error:
      prediction.prepare_input(path, SPEC, arrays)
    assert error.value.reason == reason, (name, str(error.value))
  with pytest.raises(SkipRecord, match=r"\[time, lead\] or \[lead, time\] with the 12 leads"):
    prediction.prepare_input(str(tmp_path / "wrong_shape.npy"), SPEC, arrays)
  with pytest.raises(SkipRecord, match="needs --sample_rate"):
    prediction.prepare_input(str(tmp_path / "garbage.npy"), SPEC, prediction.ArrayFormat())
  with pytest.raises(ValueError, match=r"--leads \['V7'\] are not among the 12 standard"):
    prediction.ArrayFormat(sample_rate=500, leads=("I", "V7"))


def test_predict_a_folder_of_every_format_with_bad_files(tiny_config, tmp_path, capsys):
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 2
  workdir = str(tmp_path / "run")
  training.train_and_evaluate(tiny_config, workdir)
  inputs = tmp_path / "inputs"
  paths = _write_good(inputs)
  paths["rec_npy"].unlink()  # its place: a test record of the checkpoint's own dataset
  test_split = sources.open_dataset(tiny_config.data).source("test")
  np.save(inputs / "npy" / "test0.npy", test_split[0]["ecg"] / 1000.0)  # mV [T, 12], 100 Hz
  bad = _write_bad(inputs / "bad")

  out = tmp_path / "out" / "predictions.json"
  embeddings = tmp_path / "out" / "embeddings.npy"
  result = prediction.predict_and_write(workdir, [str(inputs)], str(out), top_k=2,
                                     arrays=prediction.ArrayFormat(sample_rate=100),
                                     embeddings=str(embeddings))
  by_name = {e["record"]: e for e in result["records"]}
  assert set(by_name) == {"rec_wfdb", "rec_mat", "test0", *bad}
  assert result["ok"] == 3 and result["inputs"] == 8
  for name, reason in bad.items():
    assert by_name[name]["status"] == "error" and by_name[name]["error"].startswith(reason)
    assert by_name[name]["windows"] is None and by_name[name]["note"] is None
  assert by_name["rec_wfdb"]["note"] == "12.00 s: cropped to 10 s from the start"
  assert (by_name["rec_wfdb"]["windows"], by_name["test0"]["note"]) == (1, "")
  prompts = zero_shot.load_prompts(tiny_config.eval.prompts,
                                   sources.open_dataset(tiny_config.data).label_names)
  train_reports = {r["report"].decode() for r in sources.open_dataset(
      tiny_config.data).source("train")}
  for name in ("rec_wfdb", "rec_mat", "test0"):
    entry = by_name[name]
    assert entry["status"] == "ok" and list(entry["scores"]) == list(prompts)
    similarities = [near["similarity"] for near in entry["nearest_reports"]]
    assert len(similarities) == 2 and similarities == sorted(similarities, reverse=True)
    assert all(near["report"] in train_reports for near in entry["nearest_reports"])
  printed = capsys.readouterr().out
  assert "report bank: embedding" in printed and "3 of 8 inputs scored" in printed

  # The dataset's own record scores as the evaluation pass scores it.
  model = api.load(workdir)
  dataset = sources.open_dataset(tiny_config.data)
  ecg_emb = evaluation.embed_split(model, dataset, "test")["ecg_emb"][:1]
  scores, _ = zero_shot.prompt_scores(ecg_emb, prompts, dataset.label_names, model.embed_text)
  np.testing.assert_allclose(list(by_name["test0"]["scores"].values()), scores[0], atol=2e-4)

  # The embeddings file: one row per usable input, in the result's order, with its names;
  # the dataset record's row is the evaluation pass's embedding. The same as Parquet.
  rows = np.load(embeddings)
  ok = [e for e in result["records"] if e["status"] == "ok"]
  assert list(rows["record"]) == [e["record"] for e in ok]
  assert list(rows["input"]) == [e["input"] for e in ok]
  np.testing.assert_allclose(np.linalg.norm(rows["embedding"], axis=1), 1, rtol=1e-5)
  test0 = [e["record"] for e in ok].index("test0")
  np.testing.assert_allclose(rows["embedding"][test0], ecg_emb[0], atol=1e-5)
  pq = pytest.importorskip("pyarrow.parquet")
  parquet = tmp_path / "out" / "embeddings.parquet"
  assert prediction.write_embeddings(str(parquet), result["records"], rows["embedding"]) == 3
  table = pq.read_table(parquet).to_pydict()
  assert table["record"] == list(rows["record"]) and table["input"] == list(rows["input"])
  np.testing.assert_array_equal(np.array(table["embedding"], np.float32), rows["embedding"])
  with pytest.raises(ValueError, match="--embeddings must end in .npy or .parquet"):
    prediction.predict_and_write(workdir, [str(inputs)], embeddings=str(tmp_path / "e.csv"))

  # JSON and CSV agree.
  assert json.loads(out.read_text()) == result
  with open(out.with_suffix(".csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["record"] for r in rows] == [e["record"] for e in result["records"]]
  for row, entry in zip(rows, result["records"]):
    assert row["status"] == entry["status"] and row["error"] == (entry["error"] or "")
    assert row["note"] == (entry["note"] or "")
    assert row["windows"] == str(entry["windows"] if entry["windows"] is not None else "")
    assert {k: float(row[f"score_{k}"]) for k in entry["scores"]} == entry["scores"]
    for k, near in enumerate(entry["nearest_reports"], start=1):
      assert (row[f"report_{k}"], float(row[f"similarity_{k}"])) == (near["report"],
                                                                     near["similarity"])

  # The bank is cached in the workdir: not embedded the second time.
  cache = tmp_path / "run" / prediction.CACHE_DIR
  assert (cache / "bank-step2-train.npz").is_file()
  capsys.readouterr()
  reports, counts, _ = prediction.report_bank(model, dataset, "train", str(cache))
  assert "report bank: embedding" not in capsys.readouterr().out
  assert set(reports) == train_reports - {""} and counts.sum() == len(dataset.source("train"))

  # Longer files read whole as windows 5 s apart, scored with their mean embedding; a
  # shorter one rejected.
  other = tmp_path / "other_lengths"
  other.mkdir()
  long_mv = _ecg_mv(100, 20, 4)
  np.save(other / "long.npy", long_mv)
  np.save(other / "short.npy", _ecg_mv(100, 9.95, 5))
  length = signal.Length(long="window", window_stride_s=5, short="reject")
  result = prediction.predict_and_write(workdir, [str(other)], str(tmp_path / "w.json"),
                                        arrays=prediction.ArrayFormat(sample_rate=100),
                                        length=length, top_k=1)
  assert result["length"] == {"long": "window", "window_stride_s": 5, "short": "reject"}
  entry = {e["record"]: e for e in result["records"]}
  assert entry["long"]["windows"] == 3 and entry["long"]["padded_samples"] == 0
  assert entry["long"]["note"] == "20.00 s: 3 windows of 10 s, 5 s apart, averaged"
  assert entry["short"]["error"].startswith("wrong_duration: 9.95 s < 10.00 s (short='reject')")
  emb = model.embed_ecg(long_mv, sample_rate=100, long="window", window_stride_s=5)
  scores, _ = zero_shot.prompt_scores(emb[None], prompts, dataset.label_names, model.embed_text)
  np.testing.assert_allclose(list(entry["long"]["scores"].values()), scores[0], atol=2e-4)
  printed = capsys.readouterr().out
  assert "[ok] long" in printed and "(20.00 s: 3 windows of 10 s, 5 s apart, averaged)" in printed
  with open(tmp_path / "w.csv", newline="") as f:
    row = next(r for r in csv.DictReader(f) if r["record"] == "long")
  assert (row["windows"], row["padded_samples"]) == ("3", "0") and "3 windows" in row["note"]

  # With nothing readable the outputs still say why, and it fails.
  with pytest.raises(ValueError, match="none of the 5 inputs could be used"):
    prediction.predict_and_write(workdir, [str(inputs / "bad")], str(out),
                              arrays=prediction.ArrayFormat(sample_rate=100))
  assert json.loads(out.read_text())["ok"] == 0
