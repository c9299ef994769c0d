"""Waveform readers: what they return equals what was written (or what scipy reads from the
same file), and every broken file becomes a SkipRecord with the reason the report counts."""

import glob
import os
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
import wfdb

from ecgclip_jax.data import readers
from ecgclip_jax.data.skips import SkipRecord

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
CINC = str(SHARED / "cinc2021")
NAMES = ["I", "AVR", "V1"]


@pytest.fixture
def rng(request):
  return np.random.default_rng(list(request.node.nodeid.encode()))


def skip_reason(fn, *args, **kwargs):
  with pytest.raises(SkipRecord) as e:
    fn(*args, **kwargs)
  return e.value.reason


def write_record(folder, rng, units=("mV", "mV", "mV")):
  """A random 3-lead WFDB record "rec" (format 16, 1000 samples at 250 Hz); returns its path
  and the values written."""
  x = rng.normal(scale=0.8, size=(1000, 3))
  wfdb.wrsamp("rec", fs=250, units=list(units), sig_name=NAMES, p_signal=x, fmt=["16"] * 3,
              adc_gain=[1000, 200, 1000], baseline=[0, 0, 0], write_dir=str(folder))
  return str(folder / "rec"), x


def edit_header(record, old, new):
  path = record + ".hea"
  with open(path) as f:
    text = f.read()
  assert old in text
  with open(path, "w") as f:
    f.write(text.replace(old, new, 1))


# --------------------------------------------------------------------------------------- WFDB


def test_wfdb_round_trip(tmp_path, rng):
  record, x = write_record(tmp_path, rng)
  raw = readers.read_wfdb(record)
  assert raw.fs == 250 and raw.lead_names == NAMES and raw.signal_mv.shape == (1000, 3)
  # within half an ADC step of what was written (1/1000 mV, 1/200 mV, 1/1000 mV) ...
  step = 1 / np.array([1000, 200, 1000])
  assert np.all(np.abs(raw.signal_mv - x) <= step / 2 + 1e-12)
  # ... and exactly what wfdb reads
  np.testing.assert_array_equal(raw.signal_mv, wfdb.rdrecord(record).p_signal)
  for suffix in (".hea", ".dat"):  # any of the record's file names works
    np.testing.assert_array_equal(readers.read_wfdb(record + suffix).signal_mv, raw.signal_mv)
    np.testing.assert_array_equal(readers.read_signal(record + suffix).signal_mv, raw.signal_mv)
  np.testing.assert_array_equal(readers.read_signal(record).signal_mv, raw.signal_mv)


def test_wfdb_units_become_millivolts(tmp_path, rng):
  n = 500
  x = rng.normal(scale=0.8, size=(n, 3))
  written = x * np.array([1.0, 1000.0, 1e-3])  # mV, µV, V
  wfdb.wrsamp("units", fs=500, units=["mV", "uV", "V"], sig_name=NAMES, p_signal=written,
              fmt=["16"] * 3, adc_gain=[1000, 1, 1e6], baseline=[0, 0, 0],
              write_dir=str(tmp_path))
  raw = readers.read_wfdb(tmp_path / "units")
  assert np.abs(raw.signal_mv - x).max() <= 0.5e-3 + 1e-9  # 1 µV steps in every lead


def test_unsupported_units(tmp_path, rng):
  record, _ = write_record(tmp_path, rng, units=("mV", "mmHg", "mV"))
  assert skip_reason(readers.read_wfdb, record) == "unsupported_format"


def test_missing_files(tmp_path, rng):
  assert skip_reason(readers.read_wfdb, tmp_path / "nothing") == "missing_file"
  record, _ = write_record(tmp_path, rng)
  os.remove(record + ".dat")
  assert skip_reason(readers.read_wfdb, record) == "missing_file"
  assert skip_reason(readers.read_signal, record + ".hea") == "missing_file"


def test_truncated_signal_file_is_unreadable(tmp_path, rng):
  record, _ = write_record(tmp_path, rng)  # 1000 frames of 6 bytes
  with open(record + ".dat", "r+b") as f:
    f.truncate(6 * 700 + 4)  # cut mid-frame
  assert skip_reason(readers.read_wfdb, record) == "unreadable_signal"
  with open(record + ".dat", "r+b") as f:
    f.truncate(0)
  assert skip_reason(readers.read_wfdb, record) == "unreadable_signal"


def test_header_length_disagreeing_with_the_data(tmp_path, rng):
  record, _ = write_record(tmp_path, rng)
  shutil.copy(record + ".hea", tmp_path / "original.hea")
  edit_header(record, "rec 3 250 1000", "rec 3 250 1200")  # promises more than the file holds
  assert skip_reason(readers.read_wfdb, record) == "header_data_mismatch"
  shutil.copy(tmp_path / "original.hea", record + ".hea")
  edit_header(record, "rec 3 250 1000", "rec 3 250 900")  # the file holds 100 frames more
  assert skip_reason(readers.read_wfdb, record) == "header_data_mismatch"
  # a file short by whole frames (header written for a longer record): the header disagrees
  shutil.copy(tmp_path / "original.hea", record + ".hea")
  with open(record + ".dat", "r+b") as f:
    f.truncate(6 * 800)
  assert skip_reason(readers.read_wfdb, record) == "header_data_mismatch"


@pytest.mark.parametrize("header", [
    "garbage\n",
    "rec 3 250 1000\nrec.dat 16 1000(0)/mV 16 0 0 0 0 I\n",  # 3 signals, 1 line
    "rec three 250 1000\n",
    "",
])
def test_malformed_header_is_unreadable(tmp_path, rng, header):
  record, _ = write_record(tmp_path, rng)
  with open(record + ".hea", "w") as f:
    f.write(header)
  assert skip_reason(readers.read_wfdb, record) == "unreadable_signal"


def wfdb_values(record):
  """What wfdb reads: its physical signal in millivolts, its rate, lead names and comments."""
  read = wfdb.rdrecord(str(record))
  factors = np.array([readers.units_to_mv(u) for u in read.units])
  return read.p_signal * factors, float(read.fs), read.sig_name, read.comments


def assert_reads_as_wfdb(record):
  raw = readers.read_wfdb(record)
  signal, fs, names, comments = wfdb_values(record)
  assert raw.signal_mv.dtype == signal.dtype and raw.signal_mv.shape == signal.shape
  assert raw.signal_mv.tobytes() == signal.tobytes()  # bit for bit, NaN where wfdb has NaN
  assert (raw.fs, raw.lead_names, raw.comments) == (fs, names, comments)


def add_bytes_before_data(record, count):
  with open(record + ".dat", "rb") as f:
    data = f.read()
  with open(record + ".dat", "wb") as f:
    f.write(bytes(range(count)) + data)


def missing_sample(record, frame, signal):
  """Format 16's "no sample" value (-32768) at one frame of one signal."""
  with open(record + ".dat", "r+b") as f:
    f.seek((3 * frame + signal) * 2)
    f.write(np.int16(-32768).tobytes())


@pytest.mark.parametrize("edits, direct", [
    ([], True),
    ([("rec 3 250 1000", "rec 3 250/1000(5) 1000 10:20:30 24/12/2019"),
      ("\n", "\n# Age: 61\n#Sex: F\n")], True),
    ([("rec 3 250 1000", "rec 3 360.000000001 1000")], True),  # wfdb rounds the rate to 360
    ([("16 1000(0)/mV 16 0", "16 1000(-37)/uV 16 0")], True),
    ([("16 200(0)/mV 16 0", "16 200/mV 16 12")], True),  # no baseline: the ADC zero (12)
    ([("16 200(0)/mV", "16 0(0)/mV")], True),  # gain 0 means 200
    ([("rec.dat 16 ", "rec.dat 16x1+24 ")] * 3 + [("data", 24)], True),  # CinC's .mat layout
    ([("missing", (10, 0)), ("missing", (999, 2))], True),
    ([("rec.dat 16 1000(0)/mV", "rec.dat 16:1 1000(0)/mV")], False),  # skewed: wfdb reads it
])
def test_format16_is_read_directly_with_wfdbs_values(tmp_path, rng, edits, direct):
  """The common layout is read with numpy (`_format16_header` parses it), giving exactly
  wfdb's values; anything else still goes through wfdb."""
  record, _ = write_record(tmp_path, rng)
  for old, new in edits:
    if old == "data":
      add_bytes_before_data(record, new)
    elif old == "missing":
      missing_sample(record, *new)
    else:
      edit_header(record, old, new)
  assert (readers._format16_header(record + ".hea") is not None) == direct
  assert_reads_as_wfdb(record)
  if any(old == "missing" for old, _ in edits):
    assert np.isnan(readers.read_wfdb(record).signal_mv[[10, 999], [0, 2]]).all()


def test_a_field_wfdb_cannot_convert_leaves_the_header_to_wfdb(tmp_path, rng):
  record, _ = write_record(tmp_path, rng)
  edit_header(record, "rec 3 250 1000", "rec 3 250 1000 10:20:30 31/02/2019")
  assert readers._format16_header(record + ".hea") is None
  assert skip_reason(readers.read_wfdb, record) == "unreadable_signal"


def test_other_formats_go_through_wfdb(tmp_path, rng):
  x = rng.normal(scale=0.8, size=(1000, 3))
  for name, fmt in (("f212", "212"), ("f24", "24"), ("f8", "80")):
    wfdb.wrsamp(name, fs=250, units=["mV"] * 3, sig_name=NAMES, p_signal=x, fmt=[fmt] * 3,
                adc_gain=[20] * 3, baseline=[0] * 3, write_dir=str(tmp_path))
    assert readers._format16_header(str(tmp_path / f"{name}.hea")) is None
    assert_reads_as_wfdb(str(tmp_path / name))


@pytest.mark.parametrize("folder", ["ptbxl/records100", "ptbxl/records500", "cinc2021"])
def test_shared_records_read_as_wfdb_reads_them(folder):
  """Every record of the shared PTB-XL slice (400 at each rate) and the CinC slice: the
  direct format 16 read equals wfdb's, bit for bit."""
  headers = sorted((SHARED / folder).rglob("*.hea"))
  if not headers:
    pytest.skip(f"shared data not found under {SHARED / folder} (a fresh clone has none)")
  for header in headers:
    assert readers._format16_header(str(header)) is not None, header
    assert_reads_as_wfdb(str(header.with_suffix("")))


def test_cinc_mat_is_read_through_its_header():
  headers = sorted(glob.glob(f"{CINC}/*.hea"))[:4]
  if not headers:
    pytest.skip(f"shared CinC 2021 slice not found under {CINC}")
  for header in headers:
    record = header.removesuffix(".hea")
    with open(header) as f:
      lines = f.read().splitlines()
    n_sig = int(lines[0].split()[1])
    fields = [line.split() for line in lines[1:1 + n_sig]]
    gains = np.array([float(f[2].split("(")[0].split("/")[0]) for f in fields])
    baselines = np.array([float(f[2].split("(")[1].split(")")[0]) for f in fields])
    val = scipy.io.loadmat(record + ".mat")["val"]  # [C, T] int16 ADC units
    expected = (val.T - baselines) / gains
    assert all(f[2].endswith("/mV") for f in fields)
    for path in (record, record + ".mat", header):
      raw = readers.read_signal(path)
      assert raw.fs == float(lines[0].split()[2])
      assert raw.lead_names == [f[-1] for f in fields]
      np.testing.assert_allclose(raw.signal_mv, expected, rtol=0, atol=1e-12)
    assert any(c.startswith("Dx:") for c in raw.comments)


# ---------------------------------------------------------------------------------------- npy


def test_npy_time_major_and_lead_major(tmp_path, rng):
  x = rng.normal(size=(700, 3)).astype(np.float32)
  np.save(tmp_path / "tc.npy", x)
  np.save(tmp_path / "ct.npy", x.T.copy())
  np.save(tmp_path / "uv.npy", np.rint(x * 1000).astype(np.int16))
  for name in ("tc.npy", "ct.npy"):
    raw = readers.read_npy(tmp_path / name, 350, NAMES)
    assert raw.fs == 350.0 and raw.lead_names == NAMES and raw.signal_mv.dtype == np.float64
    np.testing.assert_array_equal(raw.signal_mv, x.astype(np.float64))
  raw = readers.read_npy(tmp_path / "uv.npy", 350, NAMES, units="uV")
  np.testing.assert_allclose(raw.signal_mv, np.rint(x.astype(np.float64) * 1000) / 1000,
                             rtol=0, atol=1e-12)
  np.testing.assert_array_equal(readers.read_signal(tmp_path / "ct.npy", 350, NAMES).signal_mv,
                                x.astype(np.float64))


def test_npy_failures(tmp_path, rng):
  np.save(tmp_path / "cube.npy", rng.normal(size=(10, 3, 2)))
  np.save(tmp_path / "wide.npy", rng.normal(size=(100, 4)))
  np.save(tmp_path / "text.npy", np.array([["a", "b", "c"]] * 5))
  np.save(tmp_path / "objects.npy", np.array([[{}, 1, 2]] * 5, dtype=object), allow_pickle=True)
  np.save(tmp_path / "complex.npy", rng.normal(size=(20, 3)) + 1j)
  np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
  (tmp_path / "junk.npy").write_bytes(b"not an array")
  expected = {"cube": "unsupported_format", "wide": "header_data_mismatch",
              "text": "unsupported_format", "objects": "unreadable_signal",
              "complex": "unsupported_format", "empty": "unreadable_signal",
              "junk": "unreadable_signal", "missing": "missing_file"}
  for name, reason in expected.items():
    assert skip_reason(readers.read_npy, tmp_path / f"{name}.npy", 500, NAMES) == reason, name
  np.save(tmp_path / "ok.npy", rng.normal(size=(100, 3)))
  assert skip_reason(readers.read_npy, tmp_path / "ok.npy", 500, NAMES,
                     units="mmHg") == "unsupported_format"


# -------------------------------------------------------------------------------- read_signal


def test_read_signal_dispatch(tmp_path, rng):
  np.save(tmp_path / "x.npy", rng.normal(size=(100, 3)))
  assert skip_reason(readers.read_signal, tmp_path / "x.npy") == "missing_metadata"
  assert skip_reason(readers.read_signal, tmp_path / "x.npy", fs=500) == "missing_metadata"
  (tmp_path / "x.csv").write_text("1,2,3\n")
  assert skip_reason(readers.read_signal, tmp_path / "x.csv") == "unsupported_format"
  assert skip_reason(readers.read_signal, tmp_path / "x.edf") == "unsupported_format"
  assert skip_reason(readers.read_signal, tmp_path / "nothing") == "missing_file"
