"""Saliency job: which parts of an ECG drive a class score, drawn on the clinical layout and,
on the synthetic corpus, scored against where the generator put each finding.

    python -m ecgclip_jax.interpret.explain --workdir workdirs/demo \\
        --classes st_elevation_anterior,left_bundle_branch_block --out results/saliency_demo

The model and its config come from the checkpoint (`--step`, or the latest); see
interpret/explanation.py for the targets, methods, plots and localization it writes.
"""

from absl import flags

from ecgclip_jax import api, cli
from ecgclip_jax.interpret import ecg_plot, explanation, saliency


def main():
  workdir, step = cli.define_model_flags()
  classes = flags.DEFINE_list("classes", None, "Labels whose score to explain.")
  out = flags.DEFINE_string("out", None, "Output folder for PNGs and localization.json.")
  split = flags.DEFINE_string("split", "test", "Split whose records to explain.")
  target = flags.DEFINE_enum("target", "zero_shot", explanation.TARGETS, "Score to explain.")
  versus = flags.DEFINE_string("versus", "", "Explain score(class) - score(this label).")
  control = flags.DEFINE_string(
      "control", "", "Also score this label's saliency in each finding's regions.")
  methods = flags.DEFINE_list("methods", list(saliency.METHODS), f"Any of {saliency.METHODS}.")
  defaults = saliency.SaliencyConfig()
  steps = flags.DEFINE_integer("steps", defaults.steps, "Integrated gradients: path points.")
  base = flags.DEFINE_enum("baseline", defaults.baseline, saliency.BASELINES,
                           "Integrated gradients' path start; what occlusion fills in.")
  blur_s = flags.DEFINE_float("blur_s", defaults.blur_s, "'blur' baseline: sigma in seconds.")
  chunk = flags.DEFINE_integer("chunk", defaults.chunk,
                               "Path points or occluded copies evaluated together.")
  occlusion_s = flags.DEFINE_float("occlusion_s", defaults.occlusion_s,
                                   "Occlusion: window in seconds, one lead at a time.")
  occlusion_stride_s = flags.DEFINE_float("occlusion_stride_s", defaults.occlusion_stride_s,
                                          "Occlusion: window step in seconds.")
  batch_size = flags.DEFINE_integer("batch_size", 16, "Records attributed together.")
  max_records = flags.DEFINE_integer("max_records", 100, "Records per class (split order).")
  num_plots = flags.DEFINE_integer("num_plots", 2, "PNGs per class and method (top scores).")
  prompts = flags.DEFINE_string("prompts", "", "Zero-shot prompts (default: the run's).")
  dpi = flags.DEFINE_float("dpi", ecg_plot.DPI, "PNG resolution (254: 10 pixels per mm).")
  flags.mark_flags_as_required(["workdir", "classes", "out"])

  def job():
    model = api.load(workdir.value, step=step.value)
    saliency_config = saliency.SaliencyConfig(steps.value, base.value, blur_s.value,
                                              chunk.value, occlusion_s.value,
                                              occlusion_stride_s.value)
    explanation.run_explain(
        model, out.value, classes=classes.value, split=split.value, target_kind=target.value,
        versus=versus.value, control=control.value, methods=methods.value,
        config=saliency_config, batch_size=batch_size.value, max_records=max_records.value,
        num_plots=num_plots.value, prompts=prompts.value, dpi=dpi.value)

  cli.run(job)


if __name__ == "__main__":
  main()
