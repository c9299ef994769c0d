"""How fast the train step runs on the backend at hand, from the step exactly as training
jits it (`Trainer.sharded_step`): compile time, step time, examples/s per chip, FLOPs (XLA's
count beside an analytic one), MFU, device memory, and where the step's time goes.

With synthetic inputs this module needs only jax, flax, optax and ml_collections (no grain,
TFDS, TensorFlow or tokenizer), so it runs on a bare accelerator image; `pipeline_rates`
measures the real input pipeline alone. The benchmark command (benchmark.py) prints these.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ecgclip_jax import parallel, train_state
from ecgclip_jax.models import bert as bert_lib
from ecgclip_jax.models import build, resnet1d

# Dense peak TFLOP/s per chip: (bfloat16, float32 as XLA runs it by default). TPUs run f32
# matmuls at default precision as one bf16 pass; NVIDIA GPUs (Ampere on) as TF32. Matched by
# the longest name contained in `device_kind`.
PEAK_TFLOPS = {
    "TPU v2": (45.0, 45.0), "TPU v3": (123.0, 123.0), "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0), "TPU v5e": (197.0, 197.0), "TPU v5": (459.0, 459.0),
    "TPU v5p": (459.0, 459.0), "TPU v6 lite": (918.0, 918.0), "TPU v6e": (918.0, 918.0),
    "A100": (312.0, 156.0), "A10G": (70.0, 35.0), "L4": (121.0, 60.0),
    "H100": (989.0, 495.0), "H100 PCIe": (756.0, 378.0), "H200": (989.0, 495.0),
    "B200": (2250.0, 1100.0), "GH200": (989.0, 495.0),
}
WARMUP_STEPS = 3


def peak_flops(device: jax.Device, dtype: str) -> float | None:
  """The chip's published dense peak FLOP/s for `dtype`, or None (CPU, unknown chips)."""
  names = [name for name in PEAK_TFLOPS if name in device.device_kind]
  if not names:
    return None
  bf16, f32 = PEAK_TFLOPS[max(names, key=len)]
  return 1e12 * (bf16 if dtype == "bfloat16" else f32)


def measured_matmul_flops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one `size`³ matmul on the default device: the peak MFU is read against where
  no published figure exists (CPUs)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best


def _rate(flops_per_s: float) -> str:
  return (f"{flops_per_s / 1e12:,.1f} TFLOP/s" if flops_per_s >= 1e12
          else f"{flops_per_s / 1e9:,.1f} GFLOP/s")


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------------

def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random inputs of the config's shapes: standard-normal ECG `[B, T, 12]`, and token ids of
  full-length reports (the text tower's worst case) or, where training precomputes the frozen
  text tower's features, standard-normal features `[B, H]`."""
  rng = np.random.default_rng(seed)
  b, length = config.batch_size, config.text.max_length
  text = bert_lib.BertConfig.from_hf_dir(build.text_encoder_dir(config))
  batch = {"ecg": rng.standard_normal((b, config.data.num_samples, 12), np.float32)}
  if train_state.precomputes_text_features(config):
    return {**batch, "text_features": rng.standard_normal((b, text.hidden_size), np.float32)}
  return {**batch, "input_ids": rng.integers(1000, text.vocab_size, (b, length), dtype=np.int32),
          "attention_mask": np.ones((b, length), np.int32)}


# ---------------------------------------------------------------------------------------
# Analytic FLOPs of the train step: convolutions and matmuls only.
# ---------------------------------------------------------------------------------------

def _conv_forward_flops(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """(stem, every other convolution) forward FLOPs of the ECG tower for the global batch."""
  ecg = build.ecg_encoder_config(config)
  widths, b = ecg.widths, config.batch_size
  out_len = lambda t, k, s, pad: (t + 2 * pad - k) // s + 1
  t = out_len(config.data.num_samples, 7, 2, 3)
  stem = 2 * b * t * ecg.in_leads * widths[0] * 7
  rest, c_in = 0, widths[0]
  for depth, width, stride in zip(resnet1d.STAGE_DEPTHS[ecg.arch], widths,
                                  resnet1d.STAGE_STRIDES):
    for block in range(depth):
      s = stride if block == 0 else 1
      t_out = out_len(t, 3, s, 1)
      rest += 2 * b * t_out * width * (c_in * 3 + width * 3)
      if s != 1 or c_in != width:
        rest += 2 * b * t_out * c_in * width
      t, c_in = t_out, width
  if ecg.pooling == "attention":  # query of one token, keys/values of t + 1
    f = widths[-1]
    rest += 2 * b * f * f * (2 + 2 * (t + 1)) + 2 * 2 * b * (t + 1) * f
  return stem, rest


def analytic_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Train-step FLOPs by part, for the global batch: forward, and a backward pass of twice
  the forward where gradients flow (only the kernel gradient at the ECG stem, whose input is
  data; nothing through frozen text layers)."""
  text = bert_lib.BertConfig.from_hf_dir(build.text_encoder_dir(config))
  b, length, h, e = config.batch_size, config.text.max_length, text.hidden_size, \
      config.model.embed_dim
  stem, convs = _conv_forward_flops(config)
  ecg_features = build.ecg_encoder_config(config).feature_dim
  layer = 2 * b * length * (4 * h * h + 2 * h * text.intermediate_size) + 4 * b * length**2 * h
  k = config.text.trainable_top_layers
  trains_all = k < 0 or k > text.num_layers
  trainable_layers = text.num_layers if trains_all else k
  text_flops = layer * (text.num_layers + 2 * trainable_layers)
  if train_state.precomputes_text_features(config):  # computed once, before training
    text_flops = 0
  if 0 < trainable_layers and not trains_all:  # no input gradient below the lowest one
    text_flops -= 2 * 3 * 2 * b * length * h * h
  projections = 3 * 2 * b * (ecg_features + h) * e - (2 * b * h * e if k == 0 else 0)
  return {"ecg": 2 * stem + 3 * convs, "text": text_flops, "projections": projections,
          "loss": 3 * 2 * b * b * e}


# ---------------------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class StepFigures:
  devices: int
  device_kind: str
  compile_s: float
  step_ms_median: float
  step_ms_min: float
  examples_per_s_per_chip: float
  xla_flops_per_chip: float
  analytic_flops_per_chip: float
  memory_bytes: dict[str, int]
  peak_memory_bytes: int | None  # the allocator's peak (GPU/TPU), None where not reported


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  names = {"peak": "peak_memory_in_bytes", "argument": "argument_size_in_bytes",
           "output": "output_size_in_bytes", "alias": "alias_size_in_bytes",
           "temp": "temp_size_in_bytes"}
  return {short: int(getattr(m, name)) for short, name in names.items() if hasattr(m, name)}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _allocator_peak(device: jax.Device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return None if not stats else stats.get("peak_bytes_in_use")


def _time_steps(run: Callable[[], Any], steps: int) -> list[float]:
  """Seconds of each of `steps` calls of `run` (which waits for its own result), after
  warm-up calls."""
  for _ in range(WARMUP_STEPS):
    run()
  return [_timed(run) for _ in range(steps)]


class StepBench:
  """The train step of `config` on its mesh, with fresh (random) weights."""

  def __init__(self, config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None):
    self.config = config
    self.mesh = parallel.make_mesh(config.mesh, devices)
    parallel.check_batch_size(config.batch_size, self.mesh)
    self.trainer = train_state.Trainer(config, self.mesh)
    shapes = self.trainer.abstract_state()
    self.shardings = parallel.state_shardings(shapes, self.mesh, config.sharding.fsdp_min_size)
    self.state = jax.device_put(self.trainer.init(jax.random.key(config.seed), False),
                                self.shardings)
    self.batch = parallel.global_batch(synthetic_batch(config), self.mesh)

  def run(self, steps: int) -> StepFigures:
    start = time.perf_counter()
    compiled = self.trainer.sharded_step(self.shardings).lower(self.state, self.batch).compile()
    compile_s = time.perf_counter() - start

    def step():
      self.state, metrics = compiled(self.state, self.batch)
      metrics["loss"].block_until_ready()

    times = _time_steps(step, steps)
    n = self.mesh.size
    median = statistics.median(times)
    return StepFigures(
        devices=n, device_kind=self.mesh.devices.flat[0].device_kind, compile_s=compile_s,
        step_ms_median=1e3 * median, step_ms_min=1e3 * min(times),
        examples_per_s_per_chip=self.config.batch_size / median / n,
        xla_flops_per_chip=_flops(compiled),
        analytic_flops_per_chip=sum(analytic_flops(self.config).values()) / n,
        memory_bytes=_memory(compiled), peak_memory_bytes=_allocator_peak(jax.devices()[0]))

  def part_times(self, steps: int) -> dict[str, float]:
    """Median ms of each part of the step on its own: the ECG tower and the text tower
    (forward and backward to their trainable parameters, in train mode), and the loss
    (forward and gradients for the embeddings and the logit scale)."""
    trainer, state, batch = self.trainer, self.state, self.batch
    trainable, frozen = train_state.partition(state.params, trainer.mask)
    dropout_key = train_state.step_dropout_key(state.rng, state.step)

    def tower(which: str):
      def embed(trainable):
        model = trainer.model(train_state.combine(trainable, frozen), state.model_state)
        if which == "ecg":
          return model.encode_ecg(batch["ecg"], train=True)
        return trainer.train_text_embeddings(model, batch, dropout_key)

      def forward_backward(trainable):
        emb, pullback = jax.vjp(embed, trainable)
        return pullback(jnp.ones_like(emb))[0]
      return forward_backward

    embeddings = jax.jit(lambda t: trainer.embed_batch(t, frozen, state.model_state, batch,
                                                  dropout_key)[0])(trainable)
    loss = jax.value_and_grad(
        lambda params, emb: trainer.batch_loss(params, state.model_state, emb), argnums=(0, 1))
    parts = {"ecg tower": (jax.jit(tower("ecg")), (trainable,)),
             "text tower": (jax.jit(tower("text")), (trainable,)),
             "loss": (jax.jit(loss), (state.params, embeddings))}
    return {name: 1e3 * statistics.median(
                _time_steps(lambda: jax.block_until_ready(fn(*args)), steps))
            for name, (fn, args) in parts.items()}


# ---------------------------------------------------------------------------------------
# The input pipeline alone (real data: imports grain and TFDS).
# ---------------------------------------------------------------------------------------

def pipeline_rates(config: ml_collections.ConfigDict, worker_counts: list[int],
                   batches: int) -> dict[int, float]:
  """Examples/s per core of this process's input pipeline, per grain worker count (0: the
  main process alone), timed over `batches` batches after the first."""
  from ecgclip_jax.data import pipeline, sources  # real inputs only
  from ecgclip_jax.models import hf_import

  source = sources.open_dataset(config.data).source(config.data.train_split)
  tokenizer = hf_import.load_tokenizer(build.text_encoder_dir(config))
  per_process = config.batch_size // jax.process_count()
  rates = {}
  for workers in worker_counts:
    batches_iter = pipeline.make_train_iterator(
        source, tokenizer=tokenizer, max_text_length=config.text.max_length,
        normalization=config.data.normalization, per_process_batch_size=per_process,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=workers, start_step=0,
        read_threads=config.data.read_threads)
    next(batches_iter)
    seconds = _timed(lambda: [next(batches_iter) for _ in range(batches)])
    rates[workers] = batches * per_process / seconds / max(1, workers)
  return rates


# ---------------------------------------------------------------------------------------
# The PyTorch reference (benchmark extra: torch, transformers).
# ---------------------------------------------------------------------------------------

def torch_rates(config: ml_collections.ConfigDict, steps: int,
                modes: tuple[str, ...] = ("eager", "compiled")) -> dict[str, Any]:
  """Examples/s of the PyTorch reference of the same model and step (torch_reference.py),
  eager and/or torch.compile'd, on the GPU when JAX runs on one, and its parameter counts."""
  import torch

  from ecgclip_jax import torch_reference

  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if device == "cuda":  # as XLA on GPUs: TF32 float32 matmuls, the fastest convolutions
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True
  text_config = torch_reference.load_text_config(config)
  inputs = synthetic_batch(config)  # the very inputs the JAX step is timed on
  result: dict[str, Any] = {"device": device}
  for mode in modes:
    model, optimizer = torch_reference.build(config, text_config, device)
    result["parameters"] = torch_reference.parameter_counts(model)
    step = torch_reference.make_step(model, optimizer, config, compile=mode == "compiled")
    batch = {name: torch.from_numpy(x).to(device) for name, x in inputs.items()}
    start = time.perf_counter()
    step(batch)
    sync()
    result[f"{mode}_first_step_s"] = time.perf_counter() - start
    times = _time_steps(lambda: (step(batch), sync()), steps)
    result[f"{mode}_step_ms_median"] = 1e3 * statistics.median(times)
    result[f"{mode}_examples_per_s"] = config.batch_size / statistics.median(times)
  return result


def jax_parameter_counts(trainer: train_state.Trainer) -> dict[str, int]:
  """Parameter counts by tower, as torch_reference.parameter_counts reports them."""
  params = trainer.model_def.abstract_weights[0]
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  return {"ecg": count([params["ecg_encoder"], params["ecg_projection"]]),
          "text": count([params["text_encoder"], params["text_projection"]]),
          "total": count(params),
          "trainable": count(train_state.partition(params, trainer.mask)[0])}


# ---------------------------------------------------------------------------------------
# Everything, printed.
# ---------------------------------------------------------------------------------------

def benchmark(config: ml_collections.ConfigDict, steps: int, *, parts: bool = True,
              pipeline_workers: list[int] | None = None, compare_torch: bool = False,
              torch_modes: tuple[str, ...] = ("eager", "compiled"),
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Measures the train step (and, if asked, its parts, the input pipeline and the PyTorch
  reference), logs a readable summary and returns every figure."""
  bench = StepBench(config)
  dtype = config.model.dtype
  log(f"{bench.mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()}), mesh "
      f"{dict(bench.mesh.shape)}; {config.ecg.arch} x{config.ecg.width_multiplier} at "
      f"{config.data.num_samples} samples, text {config.text.max_length} tokens, global batch "
      f"{config.batch_size}, {dtype}")
  step = bench.run(steps)
  result: dict[str, Any] = {"config": {"dtype": dtype, "batch_size": config.batch_size,
                                       "num_samples": config.data.num_samples,
                                       "arch": config.ecg.arch,
                                       "width_multiplier": config.ecg.width_multiplier},
                            "step": dataclasses.asdict(step), "jax_version": jax.__version__}
  peak = peak_flops(jax.devices()[0], dtype)
  peak_source = "published"
  if peak is None:
    peak, peak_source = measured_matmul_flops(dtype), "measured 2048^3 matmul"
  achieved = step.xla_flops_per_chip / (step.step_ms_median / 1e3)
  result.update(peak_flops_per_chip=peak, peak_source=peak_source,
                achieved_flops_per_chip=achieved, mfu=achieved / peak)
  memory = step.memory_bytes
  log(f"compile {step.compile_s:.1f} s; step median {step.step_ms_median:.1f} ms, min "
      f"{step.step_ms_min:.1f} ms over {steps} steps; {step.examples_per_s_per_chip:,.1f} "
      f"examples/s per chip")
  log(f"FLOPs per chip per step: XLA {step.xla_flops_per_chip / 1e9:,.1f} G, analytic "
      f"(convolutions and matmuls) {step.analytic_flops_per_chip / 1e9:,.1f} G (ratio "
      f"{step.xla_flops_per_chip / max(step.analytic_flops_per_chip, 1):.3f})")
  log(f"achieved {_rate(achieved)} per chip; MFU {100 * achieved / peak:.1f}% of {_rate(peak)} "
      f"({peak_source}, {dtype})")
  if memory:
    log("memory per chip (compiled step): " + ", ".join(
        f"{name} {value / 2**20:,.1f} MiB" for name, value in memory.items()))
  if step.peak_memory_bytes is not None:
    log(f"allocator peak: {step.peak_memory_bytes / 2**30:,.2f} GiB")
  if parts:
    part_ms = bench.part_times(steps)
    total = sum(part_ms.values())
    result["parts_ms"] = part_ms
    log("parts alone (forward+backward): " + ", ".join(
        f"{name} {ms:.1f} ms ({100 * ms / total:.0f}%)" for name, ms in part_ms.items())
        + f"; the step {step.step_ms_median:.1f} ms")
  if pipeline_workers:
    rates = pipeline_rates(config, pipeline_workers, batches=max(steps, 5))
    result["pipeline_examples_per_s_per_core"] = rates
    per_process_step = step.examples_per_s_per_chip * jax.local_device_count()
    for workers, rate in rates.items():
      total_rate = rate * max(1, workers)
      log(f"input pipeline, {workers} grain workers: {rate:,.1f} examples/s per core "
          f"({total_rate:,.1f} in all; pipeline / step = {total_rate / per_process_step:.2f})")
  if compare_torch:
    reference = torch_rates(config, steps, torch_modes)
    result["torch"] = reference
    ours = jax_parameter_counts(bench.trainer)
    log(f"PyTorch reference on {reference['device']}: parameters {reference['parameters']} "
        f"({'the same as' if reference['parameters'] == ours else 'DIFFERENT from'} JAX's {ours})")
    jax_rate = step.examples_per_s_per_chip * step.devices
    for mode in torch_modes:
      rate = reference[f"{mode}_examples_per_s"]
      result[f"jax_over_torch_{mode}"] = jax_rate / rate
      log(f"PyTorch {mode}: {reference[f'{mode}_step_ms_median']:.1f} ms/step, {rate:,.1f} "
          f"examples/s (first step {reference[f'{mode}_first_step_s']:.1f} s); JAX / PyTorch "
          f"{mode} = {jax_rate / rate:.2f}")
  return result
