"""Writes a training checkpoint as a portable model folder (model_folder.py): safetensors
weights without optimizer state, one config.json, the tokenizer, a model card.

    python -m ecgclip_jax.export --workdir workdirs/demo [--step N] --out exported/demo

`ecgclip_jax.load("exported/demo")` then needs nothing else: no workdir, no TFDS data, no
Orbax. The folder can be uploaded to a model hub as it is.
"""

from absl import flags

from ecgclip_jax import api, cli, model_folder


def main():
  workdir, step = cli.define_model_flags("Training workdir holding checkpoints/.")
  out = flags.DEFINE_string("out", None, "Folder to write the model to.")
  flags.mark_flags_as_required(["workdir", "out"])

  def job():
    model = api.load_checkpoint(workdir.value, step.value)
    files = model_folder.write(model, out.value,
                               api.checkpoint_metrics(workdir.value, model.step))
    print(f"wrote {model.name} to {out.value}: {', '.join(files)}", flush=True)

  cli.run(job)


if __name__ == "__main__":
  main()
