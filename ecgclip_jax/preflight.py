"""Checks a user can act on, run before any data is read or anything compiles, and reported
together: one line per problem, so one edit of the config fixes them all."""

from __future__ import annotations

import math
import shutil

import jax
import ml_collections
from etils import epath

from ecgclip_jax import config_defaults, storage
from ecgclip_jax.data import sources
from ecgclip_jax.models import build, hf_import

# Room for one more checkpoint beyond the state's raw size (metadata, the config, slack).
DISK_MARGIN = 1.1


class PreflightError(ValueError):
  """Every problem found, a line each."""

  def __init__(self, problems: list[str]):
    super().__init__("\n".join(problems) if len(problems) == 1 else
                     f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))
    self.problems = problems


def workdir_problem(workdir: str) -> str | None:
  """A local folder or a bucket URL (gs://..., through etils.epath) this process can write."""
  try:
    folder = epath.Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write_probe_{jax.process_index()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    return f"workdir {workdir!r} is not writable: {e.strerror or e}"
  return None


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The config, the workdir, the text encoder folder and the dataset."""
  if problems := config_defaults.config_problems(config):
    raise PreflightError(problems)  # the other checks read the config
  if problem := storage.client_problem([workdir, config.data.data_dir, config.data.manual_dir,
                                        config.eval.prompts]):
    raise PreflightError([problem])  # the other checks would reach the missing clients
  problems = [workdir_problem(workdir), sources.dataset_problem(config.data)]
  problems += hf_import.encoder_problems(
      build.text_encoder_dir(config), need_weights=config.text.pretrained,
      max_length=config.text.max_length)
  if problems := [p for p in problems if p]:
    raise PreflightError(problems)


def checkpoint_bytes(abstract_state) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))


def check_disk_space(workdir: str, abstract_state) -> None:
  """Room for one more checkpoint (the previous ones stay until it is committed). Buckets
  are not checked."""
  if storage.is_remote(workdir):
    return
  need = checkpoint_bytes(abstract_state) * DISK_MARGIN
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise PreflightError([f"workdir {workdir!r} has {free / 2**20:,.0f} MiB free, but a "
                          f"checkpoint needs about {need / 2**20:,.0f} MiB: free some space "
                          f"or choose another workdir"])
