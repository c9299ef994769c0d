"""Scores ECG files with a trained model: a zero-shot score per condition and the nearest
reports of a report bank, for recordings that were never part of a dataset build (the
predict command, predict.py, is its shell).

Inputs are files or folders (searched recursively), local or in a bucket (gs://): WFDB
records (by their `.hea`), CinC `.mat` files (read through the `.hea` beside them) and `.npy`
arrays, [time, lead] or [lead, time], which need `--sample_rate` (shared by every .npy input,
as are `--leads`, default the 12 standard leads in order, and `--units`). Each input goes
through the signal preparation of the model's own dataset build (`Inputs.signal_spec`:
canonical leads, repair, resampling, filter, length, int16 µV) and then the evaluation input
pipeline (normalization), so the model sees what it saw in training. A file longer than the
model's input is cropped as the build crops, or with `long="window"` read whole as windows
whose embeddings are averaged; a shorter one is zero-padded or rejected (`signal.Length`).
Each entry says how its file was fit (`windows`, `padded_samples`, `note`).

A score is the cosine similarity between the ECG and the mean embedding of the label's prompts
(default prompt file: the checkpoint's `eval.prompts`). The report bank holds the distinct
reports of a split of the checkpoint's dataset, embedded once and cached in
WORKDIR/predict_cache/ or `--cache_dir` (an exported model folder carries no dataset, so no
bank). A file that cannot be used is reported with its reason and the others
still run; the exit status is non-zero only when no input could be used. `--output F.json`
also writes F.csv, one row per input.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import textwrap
import time

import jax
import numpy as np
from etils import epath

from ecgclip_jax import api, caches, inference, model_folder, storage
from ecgclip_jax.data import contract, readers, signal, sources
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.skips import SkipRecord
from ecgclip_jax.evaluators import zero_shot
from ecgclip_jax.progress import Progress

NPY = ".npy"
WFDB_SUFFIXES = (".hea", ".dat", ".mat")
CACHE_DIR = "predict_cache"
SCORE = "cosine similarity between the ECG and the mean embedding of the label's prompts"


@dataclasses.dataclass(frozen=True)
class ArrayFormat:
  """How to read `.npy` inputs, which carry no header."""

  sample_rate: float | None = None
  leads: tuple[str, ...] = LEAD_NAMES
  units: str = "mV"

  def __post_init__(self):
    unknown = [name for name in self.leads if signal.canonical_lead_name(name) is None]
    if unknown:
      raise ValueError(f"--leads {unknown} are not among the 12 standard leads "
                       f"({', '.join(LEAD_NAMES)})")
    if self.sample_rate is not None and not self.sample_rate > 0:
      raise ValueError(f"--sample_rate must be positive, got {self.sample_rate}")


# ---------------------------------------------------------------------------- reading


def _record_key(path: str) -> str:
  """One key per recording: a WFDB record's .hea, .dat and .mat are the same record."""
  stem, suffix = os.path.splitext(path)
  return stem if suffix.casefold() in WFDB_SUFFIXES else path


def find_inputs(paths: list[str]) -> list[str]:
  """The recordings named by `paths`, each once, in order: a file as given (read or reported
  as an error later); a folder's `.hea` records and `.npy` arrays, recursively, and its
  `.mat` / `.dat` files that lack a `.hea` (reported as errors, not silently dropped)."""
  found = []
  for path in paths:
    if not epath.Path(path).is_dir():
      found.append(path)
      continue
    for folder, _, names in sorted(storage.walk(path)):
      stems = {os.path.splitext(n)[0] for n in names if n.casefold().endswith(".hea")}
      for name in sorted(names):
        stem, suffix = os.path.splitext(name)
        suffix = suffix.casefold()
        if suffix in (".hea", NPY) or (suffix in WFDB_SUFFIXES and stem not in stems):
          found.append(os.path.join(folder, name))
  unique = {}
  for path in found:
    unique.setdefault(_record_key(storage.absolute(path)), path)
  return list(unique.values())


def prepare_input(path: str, spec: signal.SignalSpec, arrays: ArrayFormat,
                  length: signal.Length = signal.Length()) -> signal.PreparedSignal:
  """One file through its reader and the build's signal preparation, fit to the model's
  input by `length` (`ecg`: its windows); `SkipRecord` (with the builds' reasons) says why a
  file cannot be used."""
  is_array = pathlib.Path(path).suffix.casefold() == NPY
  if is_array and not arrays.sample_rate:
    raise SkipRecord("missing_metadata", f"{path}: a .npy input needs --sample_rate")
  try:
    raw = readers.read_signal(path, arrays.sample_rate, list(arrays.leads), arrays.units)
  except SkipRecord as e:
    if is_array and e.reason in ("header_data_mismatch", "unsupported_format"):
      raise SkipRecord(e.reason, f"{e.detail}; a .npy input is [time, lead] or [lead, time] "
                       f"with the {len(arrays.leads)} leads of --leads") from None
    raise
  return signal.prepare(raw.signal_mv, raw.fs, raw.lead_names, spec, length)


def _read_all(paths: list[str], spec: signal.SignalSpec, arrays: ArrayFormat,
              length: signal.Length):
  """Per input: its result entry (with how it was fit), and its prepared signal or None."""
  entries, prepared = [], []
  meter = Progress("reading ECG files", len(paths), "files")
  for path in paths:
    name = os.path.splitext(os.path.basename(path))[0] or path
    entry = {"input": path, "record": name, "status": "ok", "error": None,
             "windows": None, "padded_samples": None, "note": None, "scores": {},
             "nearest_reports": []}
    try:
      prepared.append(prepare_input(path, spec, arrays, length))
      entry.update(prepared[-1].fit())
    except Exception as e:  # pylint: disable=broad-except
      # A reader's unforeseen failure costs this file, not the run; the reason on one line.
      reason = str(e) if isinstance(e, SkipRecord) else (
          f"unreadable_signal: {type(e).__name__}: {e}")
      entry.update(status="error", error=" ".join(reason.split()))
      prepared.append(None)
    entries.append(entry)
    meter.update(1)
  meter.done()
  return entries, prepared


# ------------------------------------------------------------------------- report bank


def report_bank(model: inference.Model, dataset, split: str,
                cache_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The distinct non-empty reports of `split`, how many records share each, and their unit
  embeddings; cached in `cache_dir` while model, dataset and split are unchanged."""
  key = f"{model.identity}|{dataset.builder.info.full_name}|{split}"
  name = f"bank-step{model.step}-{split}.npz"
  cached = caches.load_cache(cache_dir, name, key)
  if cached is not None:
    return cached["reports"], cached["counts"], cached["embeddings"]
  start = time.time()
  source = dataset.source(split)
  reports, counts = np.unique([contract.text(source[i]["report"]) for i in range(len(source))],
                              return_counts=True)
  reports, counts = reports[reports != ""], counts[reports != ""]
  print(f"report bank: embedding the {len(reports)} distinct reports of the {len(source)} "
        f"{split} records ...", flush=True)
  embeddings = model.embed_text(list(reports))
  note = caches.save_cache(cache_dir, name, key,
                            {"reports": reports, "counts": counts, "embeddings": embeddings})
  print(f"report bank: done in {time.time() - start:.1f} s ({note})", flush=True)
  return reports, counts, embeddings


# ----------------------------------------------------------------------------- predict


def predict(model_path: str, inputs: list[str], *, step: int | None = None,
            arrays: ArrayFormat = ArrayFormat(), length: signal.Length = signal.Length(),
            prompts: str = "", bank_split: str = "train", top_k: int = 3,
            cache_dir: str = "", embeddings: bool = False) -> dict:
  """Scores and nearest reports of every input, with the model of `model_path` (a training
  workdir or an exported model folder); the result (JSON-ready) has one entry per input
  under "records", each "ok" (with how it was fit to the model's input by `length`) or
  "error" with its reason. A windowed input's scores and nearest reports use the mean of
  its windows' embeddings (`inference.mean_over_windows`). The report bank is cached in
  `cache_dir` (default MODEL/predict_cache; see caches.cache_folder). With `embeddings`,
  result["embeddings"] holds the unit ECG embedding of each usable input (an array, rows in
  the order of the "ok" records; see `write_embeddings`)."""
  paths = find_inputs(inputs)
  if not paths:
    raise ValueError(f"no ECG files found in {', '.join(inputs)}")
  model = api.load(model_path, step=step)
  label_prompts = (zero_shot.load_prompts(prompts, model.label_names) if prompts
                   else dict(model.inputs.prompts))
  entries, prepared = _read_all(paths, model.inputs.signal_spec, arrays, length)
  ok = [i for i, p in enumerate(prepared) if p is not None]
  exported = model_folder.is_model_folder(model_path)
  result = {"workdir": storage.absolute(model_path), "step": model.step,
            "dataset": model.inputs.dataset,
            "signal_spec": dataclasses.asdict(model.inputs.signal_spec),
            "length": dataclasses.asdict(length),
            "normalization": model.config.data.normalization,
            "prompts": prompts or model.config.eval.prompts or None,
            "score": SCORE if label_prompts else None,
            "report_bank": None, "inputs": len(paths), "ok": len(ok), "records": entries}
  if not ok:
    return result
  ecg_emb = model.embed_records([prepared[i] for i in ok])
  if embeddings:
    result["embeddings"] = ecg_emb
  if label_prompts:
    scores, _ = zero_shot.prompt_scores(ecg_emb, label_prompts, model.label_names,
                                        model.embed_text)
    for row, i in enumerate(ok):
      entries[i]["scores"] = {name: round(float(s), 4)
                              for name, s in zip(label_prompts, scores[row])}
  if exported and bank_split and top_k > 0:
    print("report bank: none (an exported model folder carries no dataset)", flush=True)
  elif bank_split and top_k > 0:
    reports, counts, bank = report_bank(model, sources.open_dataset(model.config.data),
                                        bank_split,
                                        cache_dir or str(epath.Path(model_path) / CACHE_DIR))
    result["report_bank"] = {"split": bank_split, "distinct_reports": len(reports),
                             "records": int(counts.sum())}
    similarity = ecg_emb @ bank.T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    for row, i in enumerate(ok):
      entries[i]["nearest_reports"] = [
          {"similarity": round(float(similarity[row, j]), 4), "report": str(reports[j]),
           "records": int(counts[j])} for j in nearest[row]]
  return result


# ----------------------------------------------------------------------------- output

EMBEDDING_FORMATS = (".npy", ".parquet")


def _embedding_format(path: str) -> str:
  suffix = os.path.splitext(path)[1].casefold()
  if suffix not in EMBEDDING_FORMATS:
    raise ValueError(f"--embeddings must end in {' or '.join(EMBEDDING_FORMATS)}: {path}")
  return suffix


def write_embeddings(path: str, records: list[dict], embeddings: np.ndarray) -> int:
  """The embeddings of `predict(..., embeddings=True)` (`result["embeddings"]`, one row per
  usable entry of `result["records"]`), each with its record name and input path, to `path`
  (local or in a bucket): `.npy`, a structured array (fields record, input, embedding:
  `np.load(path)["embedding"]`), or `.parquet` (columns record, input, embedding as a
  fixed-size list; needs pyarrow). Returns the row count."""
  suffix = _embedding_format(path)
  ok = [e for e in records if e["status"] == "ok"]
  vectors = np.asarray(embeddings, np.float32)
  records, inputs = [e["record"] for e in ok], [e["input"] for e in ok]
  buffer = io.BytesIO()
  if suffix == ".npy":
    rows = np.empty(len(ok), [("record", f"U{max(map(len, records))}"),
                              ("input", f"U{max(map(len, inputs))}"),
                              ("embedding", np.float32, vectors.shape[1:])])
    rows["record"], rows["input"], rows["embedding"] = records, inputs, vectors
    np.save(buffer, rows, allow_pickle=False)
  else:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    pq.write_table(pa.table({"record": records, "input": inputs, "embedding": column}), buffer)
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(buffer.getvalue())
  return len(ok)



def format_text(result: dict) -> str:
  """Per input: status, scores highest first, nearest reports; then a one-line summary."""
  lines = []
  for entry in result["records"]:
    if entry["status"] != "ok":
      lines.append(f"[error] {entry['record']}  {entry['error']}")
      continue
    lines.append(f"[ok] {entry['record']}  {entry['input']}"
                 + (f"  ({entry['note']})" if entry["note"] else ""))
    ranked = sorted(entry["scores"].items(), key=lambda kv: -kv[1])
    if ranked:  # no-break spaces keep each label beside its score
      pairs = "  ".join(f"{name}\xa0{s:.3f}" for name, s in ranked)
      lines += [line.replace("\xa0", " ") for line in textwrap.wrap(
          pairs, 96, initial_indent="  scores: ", subsequent_indent="    ")]
    for near in entry["nearest_reports"]:
      lines.append(f"  {near['similarity']:.3f}  {near['report']}"
                   + (f"  ({near['records']} records)" if near["records"] > 1 else ""))
  if result["score"]:
    lines.append(f"scores: {result['score']} ({result['prompts']})")
  if result["report_bank"]:
    bank = result["report_bank"]
    lines.append(f"nearest reports: cosine similarity, among the {bank['distinct_reports']} "
                 f"distinct reports of {result['dataset']} {bank['split']}")
  lines.append(f"{result['ok']} of {result['inputs']} inputs scored"
               + (f"; {result['inputs'] - result['ok']} could not be used" if
                  result["ok"] < result["inputs"] else ""))
  return "\n".join(lines)


def csv_rows(result: dict, top_k: int) -> tuple[list[str], list[dict]]:
  """One row per input: status, how it was fit (windows, padded samples, note), a
  `score_<label>` column per label, `report_i` and `similarity_i` for the i-th nearest
  report."""
  labels = list(dict.fromkeys(name for e in result["records"] for name in e["scores"]))
  columns = ["input", "record", "status", "error", "windows", "padded_samples", "note"]
  header = [*columns, *(f"score_{name}" for name in labels)]
  for k in range(1, top_k + 1):
    header += [f"report_{k}", f"similarity_{k}"]
  rows = []
  for entry in result["records"]:
    row = {key: entry[key] for key in columns}
    row.update({f"score_{name}": s for name, s in entry["scores"].items()})
    for k, near in enumerate(entry["nearest_reports"], start=1):
      row.update({f"report_{k}": near["report"], f"similarity_{k}": near["similarity"]})
    rows.append(row)
  return header, rows


def write_outputs(result: dict, json_path: str, top_k: int) -> str:
  """`json_path` and the CSV beside it (local or in a bucket); returns the CSV's path."""
  storage.write_text(json_path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
  csv_path = json_path.removesuffix(".json") + ".csv"
  header, rows = csv_rows(result, top_k)
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=header, restval="")
  writer.writeheader()
  writer.writerows(rows)
  storage.write_text(csv_path, text.getvalue())
  return csv_path


def predict_and_write(model_path: str, inputs: list[str], output: str = "", *,
                      top_k: int = 3, embeddings: str = "", **options) -> dict:
  """`predict`, printed and (with `output`) written, and with `embeddings` (a file) its ECG
  embeddings too; a ValueError when no input could be used, after the per-file reasons are
  printed and written."""
  if output and not output.endswith(".json"):
    raise ValueError(f"--output must name a .json file (the .csv goes beside it): {output}")
  if embeddings:
    _embedding_format(embeddings)  # before any work
  result = predict(model_path, inputs, top_k=top_k, embeddings=bool(embeddings), **options)
  vectors = result.pop("embeddings", None)
  if jax.process_index() == 0:  # every process holds the same result
    print(format_text(result), flush=True)
    if output:
      print(f"wrote {output} and {write_outputs(result, output, top_k)}", flush=True)
    if vectors is not None:
      rows = write_embeddings(embeddings, result["records"], vectors)
      print(f"wrote {rows} embeddings ({vectors.shape[1]}-d, unit length) to {embeddings}",
            flush=True)
  if not result["ok"]:
    raise ValueError(f"none of the {result['inputs']} inputs could be used (reasons above)")
  return result
