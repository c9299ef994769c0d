"""Records in the PhysioNet/CinC Challenge's own format (also PhysioNet's Chapman-Shaoxing-
Ningbo release), for builder and task-set tests."""

import pathlib

import numpy as np
import scipy.io


def write_record(folder: pathlib.Path, name: str, val: np.ndarray, fs: float, gain: float,
                 leads: list[str], comments=("# Age: 60", "# Sex: Female", "# Dx: 164889003")):
  """A record as the challenge ships it: `val` [C, T] int16 in a MATLAB v4 .mat, and a header
  whose signal lines point 24 bytes into it (past the v4 matrix header and the name 'val')."""
  folder.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(folder / f"{name}.mat", {"val": val.astype(np.int16)}, format="4")
  lines = [f"{name} {len(leads)} {fs:g} {val.shape[1]}"]
  for lead, row in zip(leads, val.astype(np.int64)):
    checksum = (row.sum() + 32768) % 65536 - 32768
    lines.append(f"{name}.mat 16x1+24 {gain:g}(0)/mV 16 0 {row[0]} {checksum} 0 {lead}")
  (folder / f"{name}.hea").write_text("\n".join([*lines, *comments]) + "\n")
