"""A trained model for inference: what `ecgclip_jax.load` returns, and what the evaluate,
probe, predict and explain jobs are built on.

A `Model` holds the weights (parameters and BatchNorm statistics only, placed on a mesh by
the FSDP rule, so a model trained sharded is served sharded), the jitted forward passes of
its structure (models/build.py), its config (normalization: `data.normalization`), its
tokenizer, and `Inputs`: how its training records were prepared (signal spec), its label
names and default zero-shot prompts.
Raw recordings go through the same `signal.prepare` as the dataset build and the same
normalization as the input pipeline, so the model sees what it saw in training.

A record longer than the model's input may be read whole, as windows of the model's length
(`signal.Length`); its embedding is then the mean of its windows' embeddings, renormalized to
unit length (`mean_over_windows`), and a zero-shot score is the cosine with that embedding.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from typing import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ecgclip_jax import parallel, passes
from ecgclip_jax.data import pipeline, readers, signal
from ecgclip_jax.data.leads import LEAD_NAMES, NUM_LEADS
from ecgclip_jax.data.skips import SkipRecord
from ecgclip_jax.evaluators import zero_shot
from ecgclip_jax.models import build, hf_import
from ecgclip_jax.progress import Progress


@dataclasses.dataclass(frozen=True)
class Inputs:
  """How a model's training records were made, and what it was trained to name."""

  signal_spec: signal.SignalSpec  # rate, length, filter, rejection rules of the build
  label_names: tuple[str, ...]  # the training dataset's `labels`
  prompts: Mapping[str, Sequence[str]]  # default zero-shot prompts per label ({} if none)
  dataset: str  # the training dataset's full name


def mesh_for(config: ml_collections.ConfigDict, mesh: Mesh | Mapping[str, int] | None = None,
             devices: Sequence | None = None) -> Mesh:
  """`mesh` as given, axis sizes over `devices` (default: all), or the config's own mesh (a
  model trained with FSDP is served with FSDP)."""
  if isinstance(mesh, Mesh):
    return mesh
  return parallel.make_mesh(mesh if mesh is not None else config.mesh, devices)


def weight_shardings(weights: build.Weights, config: ml_collections.ConfigDict,
                     mesh: Mesh) -> build.Weights:
  """The FSDP rule's shardings of the weights on `mesh` (replicated without an fsdp axis):
  the rule training used, so a model too large for one device is served the same way."""
  return parallel.state_shardings(weights, mesh, config.sharding.fsdp_min_size)


UNIT_OUTPUTS = ("ecg_emb", "text_emb")  # the embed_source outputs of unit length


def mean_over_windows(out: Mapping[str, np.ndarray],
                      windows: Sequence[int]) -> dict[str, np.ndarray]:
  """Per-window outputs (`Model.embed_source`, each record's windows in a row) -> per record,
  `windows[i]` being record i's count: the mean of its windows, renormalized to unit length
  for unit embeddings (the mean of unit vectors is shorter), labels (the same in every window)
  once. A zero-shot score with the mean embedding is, per record, the mean of the window
  scores divided by that mean's length: the classes rank as by the mean window score."""
  first = np.cumsum(np.r_[0, windows[:-1]]).astype(np.int64)
  counts = np.asarray(windows, np.float64)[:, None]
  result = {}
  for name, values in out.items():
    if name == "labels":
      result[name] = values[first]
      continue
    mean = np.add.reduceat(values.astype(np.float64), first, axis=0) / counts
    if name in UNIT_OUTPUTS:
      mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    result[name] = mean.astype(values.dtype)
  return result


class WindowedSource(collections.abc.Sequence):
  """The windows of a data-contract source whose records all have one length, other than the
  model's (a task dataset at the model's rate): record i's windows are items i*W..(i+1)*W-1,
  each the record with its `ecg` cut by `signal.fit_windows`. Passes read items in order, so
  the last record's windows are kept: each record is read and cut once, not once a window."""

  def __init__(self, source: Sequence[dict], spec: signal.SignalSpec, length: signal.Length):
    self.source, self.spec, self.length = source, spec, length
    first, _, self.note = signal.fit_windows(np.asarray(source[0]["ecg"]), spec, length)
    self.windows = len(first)
    self._last = (-1, {}, first)  # (record index, record, its windows)

  def __len__(self) -> int:
    return len(self.source) * self.windows

  def __getitem__(self, j: int) -> dict:
    i, window = divmod(j, self.windows)
    last = self._last  # one read: another thread may replace it
    if last[0] != i:
      record = self.source[i]
      last = self._last = (i, record, signal.fit_windows(np.asarray(record["ecg"]), self.spec,
                                                         self.length)[0])
    return {**last[1], "ecg": last[2][window]}


class Model:
  """A two-tower ECG–report model ready to embed ECGs and reports, batched and sharded over
  its mesh's devices. Build it with `ecgclip_jax.load(path)`."""

  def __init__(self, config: ml_collections.ConfigDict, weights: build.Weights, mesh: Mesh,
               inputs: Inputs | Callable[[], Inputs], *, name: str, identity: str,
               step: int | None = None, model_def: build.ModelDef | None = None):
    """`weights` (params, model_state) already placed on `mesh`; `inputs` or a function that
    finds them (a workdir reads them from its dataset only when they are needed)."""
    self.config, self.weights, self.mesh = config, weights, mesh
    self.name, self.identity, self.step = name, identity, step
    self._inputs = inputs
    self._tokenizer = None
    self.model_def = model_def or build.ModelDef(config)
    self._embed_ecg = jax.jit(self.model_def.embed_ecg)
    self._features = jax.jit(self.model_def.ecg_features)
    self._embed_text = jax.jit(self.model_def.embed_text)
    self._text_features = jax.jit(self.model_def.text_features)

  def with_weights(self, weights: build.Weights, *, name: str, identity: str,
                   step: int | None) -> Model:
    """The same structure with other weights (another checkpoint of the run), sharing the
    compiled passes."""
    other = Model(self.config, weights, self.mesh, self._inputs, name=name, identity=identity,
                  step=step, model_def=self.model_def)
    other._embed_ecg, other._features = self._embed_ecg, self._features
    other._embed_text, other._tokenizer = self._embed_text, self._tokenizer
    other._text_features = self._text_features
    return other

  # ----------------------------------------------------------------------- what it is

  @property
  def inputs(self) -> Inputs:
    if callable(self._inputs):
      self._inputs = self._inputs()
    return self._inputs

  @property
  def label_names(self) -> list[str]:
    return list(self.inputs.label_names)

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = hf_import.load_tokenizer(build.text_encoder_dir(self.config))
    return self._tokenizer

  @property
  def embed_dim(self) -> int:
    return self.config.model.embed_dim

  def __repr__(self) -> str:
    c = self.config
    return (f"Model({self.name!r}: {c.ecg.arch} x{c.ecg.width_multiplier:g} ECG tower, "
            f"{c.model.embed_dim}-d embeddings, mesh {dict(self.mesh.shape)})")

  # ------------------------------------------------------------------ preparing ECGs

  def prepare_records(self, signals, sample_rate: float, leads: Sequence[str] = LEAD_NAMES,
                      units: str = "mV", length: signal.Length = signal.Length()
                      ) -> list[signal.PreparedSignal]:
    """Raw recordings `[N, T, L]` (or one `[T, L]`) in `units`, at `sample_rate`, with the
    columns named by `leads`, as the model's dataset build prepared its records: canonical
    lead order (absent leads zero and masked), repair, resampling, filter, int16 µV; then fit
    to the model's input by `length` (default: the build's crop and pad). Each record's
    `ecg` holds its windows `[W, T', 12]` and `fit()` says how it was fit; a record that
    cannot be used is a ValueError naming it and the reason."""
    x = np.asarray(signals)
    if x.ndim == 2:
      x = x[None]
    if x.ndim != 3 or x.shape[2] != len(leads):
      hint = (" (the array looks [N, lead, time]: transpose it to [N, time, lead])"
              if x.ndim == 3 and x.shape[1] == len(leads) else "")
      raise ValueError(f"signals must be [N, time, {len(leads)} leads] or [time, leads], "
                       f"got shape {np.shape(signals)}{hint}")
    factor = readers.units_to_mv(units)
    prepared = []
    for i, record in enumerate(x):
      try:
        prepared.append(signal.prepare(record.astype(np.float64) * factor, sample_rate,
                                       list(leads), self.inputs.signal_spec, length))
      except SkipRecord as e:
        raise ValueError(f"record {i} cannot be used: {e}") from None
    return prepared

  def prepare_ecg(self, signals, sample_rate: float, leads: Sequence[str] = LEAD_NAMES,
                  units: str = "mV") -> tuple[np.ndarray, np.ndarray]:
    """What the model sees of raw recordings prepared as its dataset build prepared its
    records (see `prepare_records`; cropped and padded as the build does):
    `(ecg [N, T', 12] int16, lead_mask [N, 12])`."""
    prepared = self.prepare_records(signals, sample_rate, leads, units)
    return np.concatenate([p.ecg for p in prepared]), np.stack([p.lead_mask for p in prepared])

  # ------------------------------------------------------------------------ embedding

  def _batch_size(self, n: int) -> int:
    """The eval batch, cut to fit `n` records (a few ECGs need not fill a big batch)."""
    dp = math.lcm(parallel.data_parallel_size(self.mesh), jax.process_count())
    return min(self.config.eval.batch_size, dp * math.ceil(max(n, 1) / dp))

  def embed_source(self, source, outputs: Sequence[str] = ("ecg_emb",),
                   label_feature: str | None = "labels", progress: str = "",
                   batch_size: int | None = None,
                   max_text_length: int | None = None) -> dict[str, np.ndarray]:
    """Per record of `source` (data-contract records): any of `ecg_emb` (unit ECG
    embeddings), `features` (pooled ECG-tower features, what linear probes read),
    `text_emb` (unit report embeddings), `text_features` (pooled text-tower features), and
    the `label_feature` labels; in source order. Reports are cut to `max_text_length`
    tokens (default: text.max_length)."""
    passes_by_name = {
        "ecg_emb": lambda b: self._embed_ecg(*self.weights, b["ecg"]),
        "features": lambda b: self._features(*self.weights, b["ecg"]),
        "text_emb": lambda b: self._embed_text(*self.weights, b["input_ids"],
                                               b["attention_mask"]),
        "text_features": lambda b: self._text_features(*self.weights, b["input_ids"],
                                                       b["attention_mask"]),
    }
    unknown = sorted(set(outputs) - set(passes_by_name))
    if unknown:
      raise ValueError(f"unknown output(s) {unknown}; choose from {sorted(passes_by_name)}")
    with_text = bool({"text_emb", "text_features"} & set(outputs))
    return passes.run_over_split(
        source, {name: passes_by_name[name] for name in outputs}, self.mesh,
        batch_size=batch_size or self.config.eval.batch_size,
        normalization=self.config.data.normalization,
        tokenizer=self.tokenizer if with_text else None,
        max_text_length=max_text_length or self.config.text.max_length,
        label_feature=label_feature, progress=progress,
        read_threads=self.config.data.read_threads)

  def embed_windows(self, source, outputs: Sequence[str] = ("ecg_emb",),
                    label_feature: str | None = "labels", progress: str = "",
                    length: signal.Length = signal.Length(long="window")
                    ) -> dict[str, np.ndarray]:
    """`embed_source` for data-contract records at the model's rate whose length (one for
    all) may differ from the model's input (the probe's task datasets): each record's
    windows (`length`; default: all of it, no overlap) embedded and averaged
    (`mean_over_windows`), and a note on how records were fit printed. A shorter record is
    padded with no minimum (it passed its own build's) unless `length` rejects it."""
    target = self.config.data.num_samples
    n = len(source[0]["ecg"]) if len(source) else target
    if n == target:
      return self.embed_source(source, outputs, label_feature, progress=progress)
    spec = dataclasses.replace(self.inputs.signal_spec, min_duration_s=0)
    try:
      signal.check_min_length(n, spec, length)
    except SkipRecord as e:
      raise ValueError(f"records of {n} samples for a model input of {target}: {e}") from None
    windows = WindowedSource(source, spec, length)
    print(f"  records of {windows.note}", flush=True)
    out = self.embed_source(windows, outputs, label_feature, progress=progress)
    return mean_over_windows(out, [windows.windows] * len(source))

  def text_features(self, source, progress: str = "text features") -> np.ndarray:
    """The text tower's pooled features `[N, H]` of every record's report, in source order
    (what text.precompute_features feeds the train step). Reports are grouped by token
    count, each group padded only to a multiple of 8 (up to text.max_length): padding is
    masked out of attention and pooling, so each report gets the features of one full-length
    pass for a fraction of the work (the demo's reports: median 17 of 40 tokens, 46% of
    the padded tokens). Every host counts every report's tokens, so all agree on the
    groups."""
    max_length = self.config.text.max_length
    buckets = np.minimum(-(-pipeline.token_counts(source, self.tokenizer, max_length) // 8) * 8,
                         max_length)
    hidden = self.model_def.abstract_weights[0]["text_projection"]["kernel"].shape[0]
    features = np.zeros((len(source), hidden), np.float32)
    for length in np.unique(buckets):
      rows = np.flatnonzero(buckets == length)
      features[rows] = self.embed_source(
          pipeline.Subset(source, rows), ("text_features",), label_feature=None,
          progress=f"{progress}, reports of up to {length} tokens",
          max_text_length=int(length))["text_features"]
    return features

  def _embed_prepared(self, ecg, lead_mask, output: str) -> np.ndarray:
    ecg = np.asarray(ecg)
    single = ecg.ndim == 2
    ecg = ecg[None] if single else ecg
    if ecg.ndim != 3 or ecg.shape[2] != NUM_LEADS:
      raise ValueError(f"prepared ECGs must be [N, T, {NUM_LEADS}] (int16 µV in the order "
                       f"{', '.join(LEAD_NAMES)}), got {np.shape(ecg)}")
    if ecg.shape[1] != self.config.data.num_samples:
      raise ValueError(f"prepared ECGs have {ecg.shape[1]} samples; this model takes "
                       f"{self.config.data.num_samples}: use embed_ecg on raw signals to "
                       f"resample and crop them")
    masks = (np.ones((len(ecg), NUM_LEADS), bool) if lead_mask is None
             else np.broadcast_to(np.asarray(lead_mask, bool), (len(ecg), NUM_LEADS)))
    records = [{"ecg": e, "lead_mask": m} for e, m in zip(ecg, masks)]
    out = self.embed_source(records, (output,), label_feature=None,
                            progress=f"embedding {len(records)} ECGs",
                            batch_size=self._batch_size(len(records)))[output]
    return out[0] if single else out

  def embed_ecg_prepared(self, ecg, lead_mask=None) -> np.ndarray:
    """Unit embeddings `[N, E]` (`[E]` for one record) of ECGs already in the data
    contract: int16 µV `[N, T, 12]` in canonical lead order at the model's rate and length,
    `lead_mask` `[N, 12]` or `[12]` (default: all present); normalized as in training."""
    return self._embed_prepared(ecg, lead_mask, "ecg_emb")

  def ecg_features_prepared(self, ecg, lead_mask=None) -> np.ndarray:
    """Pooled ECG-tower features (before the projection) of data-contract ECGs: the
    representation linear probes and regressions on embeddings usually read."""
    return self._embed_prepared(ecg, lead_mask, "features")

  def embed_records(self, prepared: Sequence[signal.PreparedSignal]) -> np.ndarray:
    """Unit embeddings `[N, E]` of records prepared with a `signal.Length`: the windows of
    each embedded and averaged (`mean_over_windows`)."""
    windows = [len(p.ecg) for p in prepared]
    ecg = np.concatenate([p.ecg for p in prepared])
    masks = np.repeat(np.stack([p.lead_mask for p in prepared]), windows, axis=0)
    return mean_over_windows({"ecg_emb": self.embed_ecg_prepared(ecg, masks)},
                             windows)["ecg_emb"]

  def embed_ecg(self, signals, sample_rate: float, leads: Sequence[str] = LEAD_NAMES,
                units: str = "mV", *, long: str = "crop", window_stride_s: float | None = None,
                short: str = "pad", notes: bool = False):
    """Unit embeddings `[N, E]` (`[E]` for one `[T, L]` record) of raw recordings, prepared
    as the training data was (see `prepare_records`). A record longer than the model's input
    is cropped as the build crops (`long="crop"`), or read whole (`long="window"`): windows
    of the model's length `window_stride_s` apart (default: the window length, and one more
    aligned to the end), their embeddings averaged and renormalized. A shorter one is
    zero-padded (`short="pad"`, down to the build's minimum duration) or rejected
    (`short="reject"`). With `notes`, also how each record was fit: `{"windows",
    "padded_samples", "note"}` per record (one dict for one record)."""
    prepared = self.prepare_records(signals, sample_rate, leads, units,
                                    signal.Length(long, window_stride_s, short))
    out, fits = self.embed_records(prepared), [p.fit() for p in prepared]
    if np.ndim(signals) == 2:
      out, fits = out[0], fits[0]
    return (out, fits) if notes else out

  def embed_text(self, reports: Sequence[str]) -> np.ndarray:
    """Unit embeddings `[N, E]` of report texts, in batches sharded over the mesh."""
    if isinstance(reports, str):
      raise ValueError("embed_text takes a list of reports, not one string")
    tokens = self.tokenizer(list(reports), padding="max_length", truncation=True,
                            max_length=self.config.text.max_length, return_tensors="np")
    ids, mask = (tokens[k].astype(np.int32) for k in ("input_ids", "attention_mask"))
    batch = self._batch_size(len(ids))
    out = []
    meter = Progress(f"embedding {len(ids)} reports", len(ids), "reports")
    for start in range(0, len(ids), batch):
      rows = np.arange(start, start + batch).clip(max=len(ids) - 1)  # pad with the last row
      emb = self._embed_text(*self.weights, parallel.shard_rows(ids[rows], self.mesh),
                             parallel.shard_rows(mask[rows], self.mesh))
      out.append(passes.gather(emb)[:len(ids) - start])
      meter.update(batch)
    meter.done()
    return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

  # ------------------------------------------------------------------------ zero-shot

  def class_embeddings(self, prompts: Mapping[str, str | Sequence[str]] | None = None
                       ) -> tuple[list[str], np.ndarray]:
    """Class names and one unit vector each: the renormalized mean of its prompts'
    embeddings. `prompts`: class -> prompt(s); default, the model's own prompts."""
    prompts = self.inputs.prompts if prompts is None else prompts
    if not prompts:
      raise ValueError("this model has no default zero-shot prompts: pass prompts={class: "
                       "[texts]}")
    prompts = {name: [texts] if isinstance(texts, str) else list(texts)
               for name, texts in prompts.items()}
    return list(prompts), zero_shot.class_embeddings(prompts, self.embed_text)

  def zero_shot(self, signals, prompts: Mapping[str, str | Sequence[str]] | None = None, *,
                sample_rate: float, leads: Sequence[str] = LEAD_NAMES, units: str = "mV",
                long: str = "crop", window_stride_s: float | None = None, short: str = "pad",
                notes: bool = False):
    """Class -> cosine score per recording (`[N]`, or a float for one record) of raw
    recordings against each class's averaged prompt embeddings. `long`, `window_stride_s`,
    `short` and `notes` as in `embed_ecg`: a windowed record scores with the mean of its
    windows' embeddings."""
    names, classes = self.class_embeddings(prompts)
    emb, fits = self.embed_ecg(signals, sample_rate, leads, units, long=long,
                               window_stride_s=window_stride_s, short=short, notes=True)
    scores = np.atleast_2d(emb) @ classes.T
    if np.ndim(signals) == 2:
      out = {name: float(scores[0, j]) for j, name in enumerate(names)}
    else:
      out = {name: scores[:, j] for j, name in enumerate(names)}
    return (out, fits) if notes else out
