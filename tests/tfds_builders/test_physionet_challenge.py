"""The PhysioNet/CinC Challenge builder: the real Georgia slice read back against scipy and its
headers, resampled synthetic records in the challenge's own format, and planted faults."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.signal
import tensorflow_datasets as tfds
from etils import epath

from ecgclip_jax.data import skips
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import physionet_challenge as pc
from tfds_builders.ecg_builder import hash_split

from challenge_fixture import write_record  # beside this file

ROOT = pathlib.Path(__file__).resolve().parents[2]
GEORGIA = ROOT.parent / "shared" / "data" / "cinc2021"
needs_georgia = pytest.mark.skipif(not GEORGIA.is_dir(),
                                   reason=f"{GEORGIA} absent (shared challenge slice)")

# The 2021 challenge's 30 scored codes with their abbreviations, and the pairs it scores as one.
SCORED = {
    "164889003": "AF", "164890007": "AFL", "6374002": "BBB", "426627000": "Brady",
    "733534002": "CLBBB", "164909002": "LBBB", "713427006": "CRBBB", "59118001": "RBBB",
    "270492004": "IAVB", "713426002": "IRBBB", "39732003": "LAD", "445118002": "LAnFB",
    "164947007": "LPR", "251146004": "LQRSV", "111975006": "LQT", "698252002": "NSIVCB",
    "426783006": "NSR", "284470004": "PAC", "63593006": "SVPB", "10370003": "PR",
    "365413008": "PRWP", "427172004": "PVC", "17338001": "VPB", "164917005": "QAb",
    "47665007": "RAD", "427393009": "SA", "426177001": "SB", "427084000": "STach",
    "164934002": "TAb", "59931005": "TInv"}
EQUIVALENT = {"CLBBB": "LBBB", "CRBBB": "RBBB", "SVPB": "PAC", "VPB": "PVC"}
# Every code in the Georgia slice's Dx lines, with its name in the challenge's mapping.
GEORGIA_NAMES = {
    "67741000119109": "left atrial enlargement", "426177001": "sinus bradycardia",
    "253352002": "left atrial abnormality", "427084000": "sinus tachycardia",
    "111975006": "prolonged qt interval", "164873001": "left ventricular hypertrophy",
    "426783006": "sinus rhythm", "428750005": "nonspecific st t abnormality",
    "59118001": "right bundle branch block", "426434006": "anterior ischemia",
    "59931005": "t wave inversion", "164934002": "t wave abnormal"}


def parse_header(path: pathlib.Path) -> tuple[list[str], np.ndarray, dict[str, str]]:
  """(lead names, gains in adu/mV, `# Key: value` comments) read straight from the text."""
  lines = path.read_text().splitlines()
  count = int(lines[0].split()[1])
  signal_lines = [line.split() for line in lines[1:1 + count]]
  gains = np.array([float(fields[2].split("(")[0].split("/")[0]) for fields in signal_lines])
  comments = dict(line.lstrip("#").strip().split(": ", 1) for line in lines if line[0] == "#")
  return [fields[-1] for fields in signal_lines], gains, comments


def build(manual_dir, data_dir, config="georgia", beam=False) -> tfds.core.DatasetBuilder:
  beam_options = None
  if beam:
    from apache_beam.options.pipeline_options import PipelineOptions
    beam_options = PipelineOptions(["--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"])
  builder = pc.Builder(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), beam_options=beam_options))
  return builder


def read_all(builder) -> dict[str, dict]:
  """record_id -> example, with the split it came from."""
  return {example["record_id"].decode(): {**example, "split": split}
          for split, source in builder.as_data_source().items() for example in source}


def names(vector, vocabulary) -> set[str]:
  return {vocabulary[i] for i in np.flatnonzero(vector)}


@pytest.fixture(scope="module")
def georgia(tmp_path_factory):
  if not GEORGIA.is_dir():
    pytest.skip(f"{GEORGIA} absent (shared challenge slice)")
  builder = build(GEORGIA, tmp_path_factory.mktemp("tfds"))
  return builder, read_all(builder)


def test_vocabulary_holds_the_scored_classes_and_the_slice_codes():
  table = {c.code: c for c in pc.CODES}
  assert len(table) == len(pc.CODES) == 133
  assert {code: table[code].abbreviation for code in SCORED} == SCORED
  assert {code for code, c in table.items() if c.scored_class} == set(SCORED)
  for code, abbreviation in SCORED.items():
    assert table[code].scored_class == EQUIVALENT.get(abbreviation, abbreviation)
  assert sorted(pc.LABEL_SETS["labels_scored"]) == sorted(
      set(SCORED.values()) - set(EQUIVALENT))
  assert len(pc.LABEL_SETS["labels_scored"]) == 26
  assert {code: table[code].name for code in GEORGIA_NAMES} == GEORGIA_NAMES


@needs_georgia
def test_georgia_slice_round_trip(georgia):
  builder, examples = georgia
  assert len(examples) == 20 == builder.info.splits.total_num_examples
  report = skips.read_report(builder.data_dir)
  assert (report["seen"], report["kept"], report["skipped"]) == (20, 20, 0)
  assert report["unknown_dx_codes"] == {}
  metadata = builder.info.metadata
  vocabulary, scored = metadata["label_names"], metadata["label_sets"]["labels_scored"]
  assert metadata["snomed_ct"]["426177001"]["abbreviation"] == "SB"
  assert metadata["scored_classes"]["RBBB"] == ["713427006", "59118001"]
  for record_id, example in examples.items():
    leads, gains, comments = parse_header(GEORGIA / f"{record_id}.hea")
    codes = set(comments["Dx"].split(","))
    assert names(example["labels"], vocabulary) == codes
    assert names(example["labels_scored"], scored) == {
        EQUIVALENT.get(SCORED[c], SCORED[c]) for c in codes if c in SCORED}
    assert example["age"] == int(comments["Age"])
    assert example["sex"] == {"Male": 1, "Female": 0}[comments["Sex"]]
    assert example["report"] == b""
    assert example["patient_id"].decode() == record_id
    assert example["split"] == hash_split(record_id, "georgia")
    val = scipy.io.loadmat(GEORGIA / f"{record_id}.mat")["val"]
    expected_uv = (val / gains[:, None] * 1000.0).T[:, [leads.index(n) for n in LEAD_NAMES]]
    assert example["ecg"].shape == (5000, 12) and example["ecg"].dtype == np.int16
    np.testing.assert_allclose(example["ecg"], expected_uv, atol=0.5)
    assert example["lead_mask"].all()


@needs_georgia
def test_beam_gives_the_same_examples_as_the_local_build(georgia, tmp_path):
  _, local = georgia
  beam = read_all(build(GEORGIA, tmp_path, beam=True))
  assert set(beam) == set(local)
  for record_id, example in beam.items():
    for key, value in example.items():
      np.testing.assert_array_equal(value, local[record_id][key], err_msg=f"{record_id} {key}")


@pytest.mark.parametrize("config, fs, seconds, up, down, crop_start", [
    ("st_petersburg_incart", 257, 30, 500, 257, 5000),  # 15000 samples at 500 Hz, centre
    ("ptb", 1000, 12, 1, 2, 0),
])
def test_other_rates_are_resampled_and_cropped(tmp_path, config, fs, seconds, up, down,
                                               crop_start):
  rng = np.random.default_rng(fs)
  t = np.arange(fs * seconds) / fs
  mv = np.sin(2 * np.pi * rng.uniform(0.5, 3, (12, 1)) * t) + 0.2 * rng.normal(size=(12, t.size))
  gain = 200.0
  val = np.rint(mv * gain).astype(np.int16)
  leads = list(LEAD_NAMES[6:] + LEAD_NAMES[:6])  # precordial leads first, as no file has it
  write_record(tmp_path / "in" / "g1", "S0001", val, fs, gain, leads)
  (example,) = read_all(build(tmp_path / "in", tmp_path / "out", config=config)).values()
  source_mv = (val / gain).T[:, [leads.index(n) for n in LEAD_NAMES]]
  resampled_uv = scipy.signal.resample_poly(source_mv, up, down, axis=0) * 1000.0
  np.testing.assert_allclose(example["ecg"], resampled_uv[crop_start:crop_start + 5000],
                             atol=0.5 + 1e-6)
  if crop_start:
    assert np.abs(example["ecg"] - resampled_uv[:5000]).max() > 100  # not the first 10 s
  assert names(example["labels"], pc.LABEL_SETS["labels"]) == {"164889003"}
  assert (example["age"], example["sex"]) == (60, 0)


@needs_georgia
def test_planted_faults_are_counted_with_their_reasons(tmp_path):
  corpus = tmp_path / "georgia"
  shutil.copytree(GEORGIA, corpus / "g1")
  g1 = corpus / "g1"
  for path in g1.iterdir():
    path.chmod(0o644)

  def edit_header(record_id, edit):
    path = g1 / f"{record_id}.hea"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")

  def rewrite_val(record_id, change):
    leads, gains, comments = parse_header(g1 / f"{record_id}.hea")
    val = change(scipy.io.loadmat(g1 / f"{record_id}.mat")["val"].astype(np.int64))
    write_record(g1, record_id, val, 500, gains[0], leads,
                 [f"# {key}: {value}" for key, value in comments.items()])

  (g1 / "E07500.mat").unlink()
  data = (g1 / "E07501.mat").read_bytes()
  (g1 / "E07501.mat").write_bytes(data[:len(data) // 2])
  edit_header("E07502", lambda lines: [lines[0].replace(" 12 ", " 13 ", 1), *lines[1:]])
  edit_header("E07503", lambda lines: [line for line in lines if not line.startswith("# Dx")])
  rewrite_val("E07504", lambda v: np.concatenate([np.zeros_like(v[:3]), v[3:]]))
  rewrite_val("E07505", lambda v: v[:, :2000])  # 4 s
  edit_header("E07507", lambda lines: [
      *lines[:1], *(line.rsplit(" ", 1)[0] + f" ECG{i}" for i, line in enumerate(lines[1:13])),
      *lines[13:]])
  edit_header("E07508", lambda lines: [lines[0].replace(" 5000", " 6000"), *lines[1:]])
  rewrite_val("E07509", lambda v: np.concatenate(
      [np.clip(v[:3], None, np.percentile(v[:3], 90, axis=1, keepdims=True)), v[3:]]))
  edit_header("E07510", lambda lines: [*lines[:13], "#Age: NaN", "#Sex: F",
                                       "#Dx: 426783006, 999999999"])
  (corpus / "g2").mkdir()
  for suffix in (".hea", ".mat"):
    shutil.copy(g1 / f"E07506{suffix}", corpus / "g2")

  builder = build(corpus, tmp_path / "out")
  report = skips.read_report(builder.data_dir)
  reasons = {}
  for section in report["splits"].values():
    for reason, entry in section["reasons"].items():
      for record_id in entry["first_ids"]:
        reasons.setdefault(record_id, []).append(reason)
  assert reasons == {
      "E07500": ["missing_file"], "E07501": ["unreadable_signal"],
      "E07502": ["unreadable_signal"], "E07503": ["missing_metadata"],
      "E07504": ["flat_leads"], "E07505": ["wrong_duration"],
      "E07506": ["duplicate_record_id"], "E07507": ["unsupported_format"],
      "E07508": ["header_data_mismatch"], "E07509": ["saturated_leads"]}
  examples = read_all(builder)
  assert report["seen"] == report["kept"] + report["skipped"] == 21
  assert report["kept"] == len(examples) == 11
  assert set(examples) == {f"E075{i:02d}" for i in (6, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)}
  cpsc_style = examples["E07510"]
  assert (cpsc_style["age"], cpsc_style["sex"]) == (-1, 0)
  assert names(cpsc_style["labels"], pc.LABEL_SETS["labels"]) == {"426783006"}
  assert report["unknown_dx_codes"] == {"999999999": 1}


def test_a_folder_without_headers_is_a_corpus_error(tmp_path):
  (tmp_path / "georgia" / "g1").mkdir(parents=True)
  (tmp_path / "georgia" / "g1" / "E00001.mat").write_bytes(b"")
  with pytest.raises(CorpusError, match=r"georgia: no \.hea headers"):
    build(tmp_path / "georgia", tmp_path / "out")
  result = subprocess.run(
      [sys.executable, "-m", "tfds_builders.physionet_challenge", "--config", "georgia",
       f"--manual_dir={tmp_path / 'georgia'}", f"--data_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'georgia'}: "
                                                           f"no .hea headers")


@needs_georgia
def test_a_custom_config_splits_by_its_source_not_its_name(tmp_path):
  config = pc.ChallengeConfig(name="georgia_8s", source="georgia", signal={"min_duration_s": 8})
  builder = pc.Builder(config=config, data_dir=tmp_path)
  assert builder.builder_config.signal.min_samples == 4000
  tasks, skipped = builder.list_records(epath.Path(GEORGIA))
  assert not skipped and len(tasks) == 20
  assert [t.split for t in tasks] == [hash_split(t.record_id, "georgia") for t in tasks]
  with pytest.raises(ValueError, match="source must be one of"):
    pc.ChallengeConfig(name="mitdb")


def test_header_fields():
  fields = pc.header_fields("E1 12 500 5000\nE1.mat 16x1+24 1000/mV 16 0 1 2 0 I\n"
                            "#Age: 53\n# Sex: M\n# Dx: 164889003, 59118001,164889003\n")
  assert pc.dx_codes(fields["dx"]) == ("164889003", "59118001")
  assert (pc.age_of(fields["age"]), pc.sex_of(fields["sex"])) == (53, 1)
  for bad in (None, "", "164889003;59118001", "AF"):
    with pytest.raises(ValueError):
      pc.dx_codes(bad)
  assert [pc.age_of(v) for v in ("NaN", "Unknown", None, "-1", "300", "61.6")] == [
      -1, -1, -1, -1, -1, 62]
  assert [pc.sex_of(v) for v in ("Male", "female", "F", "Unknown", None)] == [1, 0, 0, -1, -1]
