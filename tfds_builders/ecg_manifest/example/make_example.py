"""Writes the example export beside this file: `manifest.csv` and six 10 s synthetic ECGs, one
or more in each format the manifest builder reads (WFDB .hea/.dat, CinC .mat, .npy).

  python tfds_builders/ecg_manifest/example/make_example.py

The writers are also what tests use to make WFDB and CinC .mat files from their own arrays.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import scipy.io
import wfdb

from ecgclip_jax.data import synthetic
from ecgclip_jax.data.leads import LEAD_NAMES

FOLDER = pathlib.Path(__file__).parent
LABEL_NAMES = ("sinus_rhythm", "afib", "lbbb")  # the example config's vocabulary
_SYNTHETIC_NAME = {"sinus_rhythm": "normal_sinus_rhythm", "afib": "atrial_fibrillation",
                   "lbbb": "left_bundle_branch_block"}
EIGHT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")  # what many carts store
# path, patient_id, age, sex as the export spells it, labels, sample rate, split, lead order
ROWS = (
    ("wfdb/ecg001.hea", "P001", 55, "F", "sinus_rhythm", 100, "train", LEAD_NAMES),
    ("wfdb/ecg002", "P002", 70, "male", "afib", 250, "train", LEAD_NAMES),
    ("cinc/ecg003.mat", "P002", 71, "M", "afib;lbbb", 100, "train", LEAD_NAMES),
    ("npy/ecg004.npy", "P003", 35, "female", "sinus_rhythm;lbbb", 100, "validation",
     tuple(reversed(LEAD_NAMES))),
    ("npy/ecg005.npy", "P004", 77, "0", "sinus_rhythm", 100, "test", EIGHT_LEADS),
    ("cinc/ecg006.mat", "P005", "", "", "afib", 100, "train", LEAD_NAMES),  # no report: skipped
)


def write_wfdb(folder, name: str, signal_mv: np.ndarray, fs: float, lead_names,
               comments=()) -> None:
  """`name.hea` + `name.dat`: format 16 at 1 µV per unit."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  n = len(lead_names)
  wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=list(lead_names),
              p_signal=np.asarray(signal_mv, np.float64), fmt=["16"] * n, adc_gain=[1000.0] * n,
              baseline=[0] * n, comments=list(comments), write_dir=str(folder))


def write_cinc_mat(folder, name: str, signal_mv: np.ndarray, fs: float, lead_names,
                   comments=()) -> None:
  """`name.mat` (MATLAB v4, int16 `val` [lead, time] in µV) + `name.hea` as PhysioNet/CinC
  2020-2021 write them: format 16 at byte offset 24 (the v4 header and the name 'val')."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  digital = np.rint(np.asarray(signal_mv) * 1000).astype(np.int16)  # [T, C]
  scipy.io.savemat(folder / f"{name}.mat", {"val": digital.T}, format="4")
  lines = [f"{name} {len(lead_names)} {fs:g} {len(digital)}"]
  for lead, column in zip(lead_names, digital.T):
    checksum = (int(column.astype(np.int64).sum()) + 32768) % 65536 - 32768
    lines.append(f"{name}.mat 16x1+24 1000.0(0)/mV 16 0 {column[0]} {checksum} 0 {lead}")
  lines += [f"# {comment}" for comment in comments]
  (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")


def main(folder: pathlib.Path = FOLDER) -> None:
  """Writes the manifest and its waveforms into `folder` (deterministic: seeded records)."""
  with open(folder / "manifest.csv", "w", newline="") as f:
    manifest = csv.writer(f)
    manifest.writerow(["path", "patient_id", "age", "sex", "labels", "sample_rate",
                       "lead_names", "units", "split", "report"])
    for seed, (path, patient, age, sex, labels, fs, split, leads) in enumerate(ROWS):
      names = [_SYNTHETIC_NAME[label] for label in labels.split(";")]
      record = synthetic.synthesize(synthetic.labels_of(*names), fs, seed=seed)[0]
      ecg = record.ecg[:, [LEAD_NAMES.index(lead) for lead in leads]]
      file = folder / path
      name = pathlib.Path(path).with_suffix("").name
      units, lead_names = "", ""
      if path.endswith(".npy"):
        file.parent.mkdir(parents=True, exist_ok=True)
        if len(leads) == len(LEAD_NAMES):  # µV integers, leads in their own order, lower case
          np.save(file, synthetic.to_microvolts(ecg))
          units, lead_names = "uV", ",".join(lead.lower() for lead in leads)
        else:  # float32 millivolts
          np.save(file, ecg.astype(np.float32))
          lead_names = ",".join(leads)
      elif path.endswith(".mat"):
        write_cinc_mat(file.parent, name, ecg, fs, leads)
      else:
        write_wfdb(file.parent, name, ecg, fs, leads)
      rate = fs if path.endswith(".npy") or name == "ecg002" else ""  # WFDB: checked if given
      report = "" if name == "ecg006" else record.report
      manifest.writerow([path, patient, age, sex, labels, rate, lead_names, units, split,
                         report])


if __name__ == "__main__":
  main()
