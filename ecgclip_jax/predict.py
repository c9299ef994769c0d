"""Scores ECG files with a trained model: a zero-shot score per condition and the nearest
reports of a report bank, for recordings that were never part of a dataset build.

    python -m ecgclip_jax.predict --workdir workdirs/demo --input ecgs/ [--step N] \\
        [--input a.npy,b.npy --sample_rate 500 [--leads I,II,...] [--units uV]] \\
        [--long crop|window [--window_stride_s 5]] [--short pad|reject] \\
        [--prompts configs/prompts/X.json] [--bank_split train] [--top_k 3] \\
        [--output predictions.json]

`--workdir` is a training workdir or an exported model folder. Each file is prepared as the
model's dataset build prepared its records (see prediction.py); a file that cannot be used
is reported with its reason and the others still run; the exit status is non-zero only when
no input could be used. `--output F.json` also writes F.csv, one row per input.
"""

from absl import flags

from ecgclip_jax import cli, prediction
from ecgclip_jax.data.leads import LEAD_NAMES


def main():
  workdir, step = cli.define_model_flags()
  inputs = flags.DEFINE_multi_string(
      "input", None, "ECG file or folder (repeatable or comma-separated): WFDB .hea, "
      "CinC .mat, .npy; folders are searched recursively.")
  sample_rate = flags.DEFINE_float("sample_rate", None, ".npy inputs: sampling rate (Hz).")
  leads = flags.DEFINE_list("leads", list(LEAD_NAMES), ".npy inputs: lead names, column order.")
  units = flags.DEFINE_enum("units", "mV", ["mV", "uV", "V"], ".npy inputs: amplitude unit.")
  length = cli.define_length_flags("crop", "A file")
  prompts = flags.DEFINE_string("prompts", "", "Zero-shot prompt file (JSON: label -> "
                                "prompts); default: the checkpoint's eval.prompts.")
  bank_split = flags.DEFINE_string("bank_split", "train",
                                   "Split whose reports form the report bank; '': none.")
  top_k = flags.DEFINE_integer("top_k", 3, "Nearest reports per ECG.", lower_bound=0)
  output = flags.DEFINE_string("output", "", "Write the results to this .json and a .csv "
                               "beside it.")
  embeddings = flags.DEFINE_string(
      "embeddings", "", "Also write each usable input's ECG embedding to this .npy "
      "(structured: record, input, embedding) or .parquet file, for models of your own.")
  cache_dir = cli.define_cache_flag("WORKDIR/predict_cache")
  flags.mark_flags_as_required(["workdir", "input"])
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    paths = [p for value in inputs.value for p in value.split(",") if p]
    arrays = prediction.ArrayFormat(sample_rate.value, tuple(leads.value), units.value)
    prediction.predict_and_write(workdir.value, paths, output.value, step=step.value,
                                 arrays=arrays, length=length(), prompts=prompts.value,
                                 bank_split=bank_split.value, top_k=top_k.value,
                                 cache_dir=cache_dir.value, embeddings=embeddings.value)

  cli.run(job)


if __name__ == "__main__":
  main()
