"""`load`: a trained model from a training workdir or an exported model folder.

A workdir's weights come from its Orbax checkpoint and its inputs (signal spec, labels,
prompts) from its dataset build; an exported folder (model_folder.py) carries all of it and
needs neither Orbax nor TFDS, which are imported only for workdirs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping, Sequence

import jax
import ml_collections
from etils import epath
from jax.sharding import Mesh

from ecgclip_jax import config_defaults, inference, model_folder, parallel, storage
from ecgclip_jax.evaluators import zero_shot
from ecgclip_jax.models import build

_STEP_SUFFIX = re.compile(r"^(.*)@(\d+)$")


def split_step(path: str, step: int | None = None) -> tuple[str, int | None]:
  """`DIR@400` -> (`DIR`, 400); a `step` given as well must agree."""
  match = _STEP_SUFFIX.match(str(path))
  if not match:
    return str(path), step
  if step is not None and step != int(match.group(2)):
    raise ValueError(f"{path} names step {match.group(2)} but step={step} was given")
  return match.group(1), int(match.group(2))


def run_name(workdir: str, step: int) -> str:
  return f"{os.path.basename(os.path.normpath(workdir))} step {step}"


def load(path: str | os.PathLike, *, step: int | None = None,
         mesh: Mesh | Mapping[str, int] | None = None, devices: Sequence | None = None,
         batch_size: int | None = None) -> inference.Model:
  """The model in `path`: a training workdir (its newest checkpoint, or `step`, or
  `"WORKDIR@STEP"`) or a folder written by `python -m ecgclip_jax.export`.

  `mesh`: a jax Mesh or axis sizes such as `{"data": 1, "fsdp": -1}` over `devices`
  (default: every device, laid out as the model was trained). `batch_size`: the global
  batch of embedding passes (default: the model's `eval.batch_size`).
  """
  path, step = split_step(os.fspath(path), step)
  if model_folder.is_model_folder(path):
    if step is not None:
      raise ValueError(f"{path} is an exported model folder, which holds one step")
    return model_folder.read(path, mesh=mesh, devices=devices, batch_size=batch_size)
  return load_checkpoint(path, step, mesh=mesh, devices=devices, batch_size=batch_size)


def dataset_inputs(config: ml_collections.ConfigDict,
                   prompts_file: str | None = None) -> inference.Inputs:
  """A run's inputs as its dataset build recorded them, with the prompts of `prompts_file`
  (default: the config's `eval.prompts`; '' for none)."""
  from ecgclip_jax.data import sources  # TFDS: only models that still live in a workdir
  dataset = sources.open_dataset(config.data)
  prompts_file = config.eval.prompts if prompts_file is None else prompts_file
  prompts = zero_shot.load_prompts(prompts_file, dataset.label_names) if prompts_file else {}
  return inference.Inputs(dataset.signal_spec, tuple(dataset.label_names), prompts,
                          dataset.builder.info.full_name)


def evaluation_side(config: ml_collections.ConfigDict | None) -> dict:
  """What a job's own `--config` may set on a restored model: the mesh and the eval batch
  (the model itself always comes from the checkpoint)."""
  return {} if config is None else {"mesh": config.mesh.to_dict(),
                                    "batch_size": config.eval.batch_size}


def _with_overrides(config: ml_collections.ConfigDict, batch_size: int | None
                    ) -> ml_collections.ConfigDict:
  if batch_size is not None:
    config.eval.batch_size = batch_size
  config_defaults.validate_config(config)
  return config


def load_checkpoint(workdir: str, step: int | None = None, *,
                    mesh: Mesh | Mapping[str, int] | None = None,
                    devices: Sequence | None = None, batch_size: int | None = None,
                    like: inference.Model | None = None) -> inference.Model:
  """Parameters and normalization statistics of a workdir's checkpoint (never the
  optimizer state), placed on the mesh by the FSDP rule; the model's shape comes from the
  config stored with the step. A model `like` this one (another step of the run, same
  structure and mesh) lends its compiled passes."""
  from ecgclip_jax import checkpoint  # Orbax: only workdirs need it
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = checkpoint.resolve_step(manager, step)
  config = _with_overrides(checkpoint.restore_config(manager, step), batch_size)
  mesh = inference.mesh_for(config, mesh, devices)
  model_def = build.ModelDef(config)
  shardings = inference.weight_shardings(model_def.abstract_weights, config, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          model_def.abstract_weights, shardings)
  weights = checkpoint.restore_weights(manager, step, abstract)
  if jax.process_index() == 0:
    print(f"restored checkpoint step {step} from {manager.directory}", flush=True)
  identity = f"{storage.absolute(workdir)}@{step}"
  if like is not None and like.model_def.graphdef == model_def.graphdef and like.mesh == mesh:
    return like.with_weights(weights, name=run_name(workdir, step), identity=identity,
                             step=step)
  return inference.Model(config, weights, mesh, lambda: dataset_inputs(config),
                         name=run_name(workdir, step), identity=identity, step=step,
                         model_def=model_def)


def initialize(config: ml_collections.ConfigDict, *,
               mesh: Mesh | Mapping[str, int] | None = None) -> inference.Model:
  """Fresh random weights of `config`'s architecture (the random-init baseline of probes):
  no pretrained text tower, seeded by `config.seed`."""
  config = _with_overrides(config, None)
  mesh = inference.mesh_for(config, mesh)
  model_def = build.ModelDef(config)
  weights = model_def.init(jax.random.key(config.seed), load_pretrained_text=False)
  weights = parallel.place(weights, inference.weight_shardings(weights, config, mesh))
  return inference.Model(config, weights, mesh, lambda: dataset_inputs(config),
                         name=f"random init ({config.ecg.arch})",
                         identity=f"random:{config.to_json()}", model_def=model_def)


def checkpoint_metrics(workdir: str, step: int) -> dict | None:
  """The evaluation stored with a step (`WORKDIR/eval/<step>/metrics.json`), if any."""
  path = epath.Path(workdir) / "eval" / str(step) / "metrics.json"
  return json.loads(path.read_text()) if path.exists() else None
