"""The portable model folder: everything `ecgclip_jax.load` needs, and nothing else.

    DIR/
      config.json        the architecture (the run's resolved config), the inputs (signal
                         spec, normalization, lead order), label names, default zero-shot
                         prompts, and where the weights came from (dataset, step)
      model.safetensors  `params/...` and `model_state/...` (BatchNorm statistics), float32;
                         no optimizer state
      text_encoder/      the text tower's Hugging Face config.json and tokenizer files (its
                         weights are in model.safetensors)
      README.md          the model card: training data, steps, the evaluation stored with
                         the step

A model hub takes the layout as it is. Reading needs no workdir, TFDS data or Orbax.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Mapping, Sequence

import jax
import numpy as np
from etils import epath
import safetensors.numpy
from jax.sharding import Mesh

from ecgclip_jax import config_defaults, inference, parallel, passes, storage
from ecgclip_jax.data import signal
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.models import build

FORMAT, FORMAT_VERSION = "ecgclip_jax", 1
CONFIG_FILE, WEIGHTS_FILE, TEXT_DIR, CARD_FILE = ("config.json", "model.safetensors",
                                                  "text_encoder", "README.md")
PARTS = ("params", "model_state")


def is_model_folder(path: str) -> bool:
  config_file = epath.Path(path) / CONFIG_FILE
  if not config_file.exists():
    return False
  try:
    return json.loads(config_file.read_text()).get("format") == FORMAT
  except (ValueError, AttributeError):
    return False


def flatten(weights: build.Weights) -> dict[str, np.ndarray]:
  """`{"params/ecg_encoder/stem_conv/kernel": array, ...}` of host arrays."""
  flat = {}
  for part, tree in zip(PARTS, weights):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      flat[f"{part}/{build.path_str(path)}"] = np.array(passes.gather(leaf)).reshape(leaf.shape)
  return flat


def unflatten(tensors: Mapping[str, np.ndarray], abstract: build.Weights,
              source: str) -> build.Weights:
  """The weights of `abstract`'s structure from `flatten`'s names; every tensor must be
  there with its shape, and no other."""
  wanted = {}
  for part, tree in zip(PARTS, abstract):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      wanted[f"{part}/{build.path_str(path)}"] = (part, path, leaf)
  problems = [f"missing {name}" for name in sorted(wanted.keys() - tensors.keys())]
  problems += [f"unexpected {name}" for name in sorted(tensors.keys() - wanted.keys())]
  problems += [f"{name}: shape {tensors[name].shape}, the model has {leaf.shape}"
               for name, (_, _, leaf) in sorted(wanted.items())
               if name in tensors and tensors[name].shape != leaf.shape]
  if problems:
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ValueError(f"{source} does not fit the model in its config.json: "
                     f"{'; '.join(problems[:5])}{more}")
  values = {part: {} for part in PARTS}
  for name, (part, path, leaf) in wanted.items():
    values[part][path] = np.asarray(tensors[name], leaf.dtype)
  return tuple(jax.tree_util.tree_map_with_path(lambda p, _, part=part: values[part][p], tree)
               for part, tree in zip(PARTS, abstract))


# ------------------------------------------------------------------------------- write


def model_card(model: inference.Model, config_json: dict, metrics: dict | None) -> str:
  """README.md: what the model is, what it was trained on, how it scored, how to load it."""
  c = model.config
  inputs = model.inputs
  spec = inputs.signal_spec
  lines = [
      "---", "library_name: ecgclip_jax", "tags: [ecg, electrocardiogram, clip, jax, flax]",
      "---", f"# ECGCLIP: {c.ecg.arch} ×{c.ecg.width_multiplier:g} ECG tower, "
      f"{c.model.embed_dim}-d embeddings", "",
      "An ECG–report contrastive model trained with ecgclip_jax (JAX/Flax): a 1-D ResNet "
      "ECG tower and a BERT "
      f"text tower ({config_json['text_encoder']['num_hidden_layers']} layers × "
      f"{config_json['text_encoder']['hidden_size']}, {c.text.pooling} pooling) map ECGs and "
      "report texts into one embedding space.", "",
      "## Training", "",
      f"- data: `{inputs.dataset}`",
      f"- steps: {model.step} of global batch {c.batch_size} "
      f"({(model.step or 0) * c.batch_size:,} ECG–report pairs seen), loss `{c.model.loss}`",
      f"- text tower layers trained: "
      f"{'all' if c.text.trainable_top_layers < 0 else c.text.trainable_top_layers}", "",
      "## Inputs", "",
      f"- 12 leads in the order {', '.join(LEAD_NAMES)}; absent leads zero and masked",
      f"- {spec.sample_rate} Hz × {spec.duration_s:g} s"
      + (f", band-pass {spec.bandpass_hz} Hz" if spec.bandpass_hz else "")
      + f"; normalization `{c.data.normalization}`",
      "- `model.embed_ecg(signals, sample_rate=...)` resamples, crops and filters raw "
      "recordings exactly as the training data was prepared", "",
      "## Evaluation", ""]
  if metrics is None:
    lines.append("No evaluation was stored with this step.")
  else:
    lines.append(f"At step {metrics['step']} on the `{metrics['split']}` split "
                 f"({metrics['num_examples']} ECGs):")
    lines.append("")
    macro = metrics.get("zero_shot", {}).get("macro", {})
    if macro.get("auroc") is not None:
      lines.append(f"- zero-shot macro AUROC {macro['auroc']:.3f}, PRAUC {macro['prauc']:.3f} "
                   f"over {len(metrics['zero_shot']['per_label'])} labels")
    for direction, recalls in metrics.get("retrieval", {}).items():
      lines.append(f"- retrieval {direction.replace('_', ' ')}: "
                   + ", ".join(f"{k} {v:.3f}" for k, v in recalls.items()))
  lines += ["", "## Use", "", "```python", "import ecgclip_jax", "",
            'model = ecgclip_jax.load("PATH/TO/THIS/FOLDER")',
            f"embeddings = model.embed_ecg(signals, sample_rate={spec.sample_rate})  "
            "# [N, T, 12] in mV",
            "scores = model.zero_shot(signals, sample_rate="
            f"{spec.sample_rate})  # {{label: [N] cosine scores}}", "```", "",
            "## Files", "",
            f"`{CONFIG_FILE}` (architecture, inputs, labels, prompts), `{WEIGHTS_FILE}` "
            f"(parameters and BatchNorm statistics), `{TEXT_DIR}/` (tokenizer and text "
            "encoder config).", ""]
  return "\n".join(lines)


def write(model: inference.Model, out_dir: str, metrics: dict | None = None) -> list[str]:
  """Writes `model` as a model folder (process 0; every process must call, as the weights
  are gathered); returns the files written."""
  weights = flatten(model.weights)
  if jax.process_index() != 0:
    return []
  out = epath.Path(out_dir)
  (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
  text_dir = build.text_encoder_dir(model.config)
  text_config = json.loads((epath.Path(text_dir) / "config.json").read_text())
  (out / TEXT_DIR / "config.json").write_text(json.dumps(text_config, indent=2))
  with tempfile.TemporaryDirectory() as local:  # Hugging Face writes local folders only
    for name in model.tokenizer.save_pretrained(local):
      epath.Path(name).copy(out / TEXT_DIR / os.path.basename(name), overwrite=True)
  inputs = model.inputs
  config_json = {
      "format": FORMAT, "format_version": FORMAT_VERSION,
      "inputs": {"signal": dataclasses.asdict(inputs.signal_spec),
                 "normalization": model.config.data.normalization,
                 "lead_names": list(LEAD_NAMES),
                 "units": "int16 microvolts after preparation"},
      "label_names": list(inputs.label_names),
      "prompts": {name: list(texts) for name, texts in inputs.prompts.items()},
      "trained": {"dataset": inputs.dataset, "step": model.step},
      "text_encoder": text_config,
      "config": json.loads(model.config.to_json()),
  }
  (out / CONFIG_FILE).write_text(json.dumps(config_json, indent=2))
  (out / WEIGHTS_FILE).write_bytes(safetensors.numpy.save(weights, metadata={"format": FORMAT}))
  (out / CARD_FILE).write_text(model_card(model, config_json, metrics))
  return [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE,
          *sorted(f"{TEXT_DIR}/{p.name}" for p in (out / TEXT_DIR).iterdir())]


# -------------------------------------------------------------------------------- read


def _local_folder(folder: epath.Path) -> str:
  """`folder` itself, or for one in a bucket a local copy (Hugging Face reads local files),
  removed when the process exits: the tokenizer is read from it when first needed."""
  if not storage.is_remote(folder):
    return str(folder)
  local = tempfile.mkdtemp(prefix="ecgclip-text-")
  atexit.register(shutil.rmtree, local, ignore_errors=True)
  for path in folder.iterdir():
    path.copy(epath.Path(local) / path.name)
  return local


def read(path: str, *, mesh: Mesh | Mapping[str, int] | None = None,
         devices: Sequence | None = None, batch_size: int | None = None) -> inference.Model:
  """The model in folder `path`, its weights placed on the mesh by the FSDP rule."""
  folder = epath.Path(path)
  stored = json.loads((folder / CONFIG_FILE).read_text())
  if stored.get("format_version", 0) > FORMAT_VERSION:
    raise ValueError(f"{folder / CONFIG_FILE} has format version {stored['format_version']}; "
                     f"this ecgclip_jax reads up to {FORMAT_VERSION}: upgrade it")
  config = config_defaults.from_stored(stored["config"])
  config.text.encoder_dir = _local_folder(folder / TEXT_DIR)  # architecture and tokenizer only
  config.text.pretrained = False
  config.data.normalization = stored["inputs"]["normalization"]
  if batch_size is not None:
    config.eval.batch_size = batch_size
  config_defaults.validate_config(config)
  model_def = build.ModelDef(config)
  weights = unflatten(safetensors.numpy.load((folder / WEIGHTS_FILE).read_bytes()),
                      model_def.abstract_weights, str(folder / WEIGHTS_FILE))
  mesh = inference.mesh_for(config, mesh, devices)
  weights = parallel.place(weights, inference.weight_shardings(weights, config, mesh))
  inputs = inference.Inputs(signal.SignalSpec(**stored["inputs"]["signal"]),
                            tuple(stored["label_names"]), stored["prompts"],
                            stored["trained"]["dataset"])
  name = os.path.basename(os.path.normpath(path))
  return inference.Model(config, weights, mesh, inputs, name=f"{name} (exported, step "
                         f"{stored['trained']['step']})",
                         identity=f"folder:{storage.absolute(path)}",
                         step=stored["trained"]["step"], model_def=model_def)
