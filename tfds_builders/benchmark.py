"""Build throughput of a dataset builder: records/s and records/s per core.

  python -m tfds_builders.benchmark --dataset ptbxl --config 500hz \
      --manual_dir ../shared/data/ptbxl [--beam_workers 2]

Builds into a fresh temporary folder (nothing cached), once in this process or on that many
Beam DirectRunner worker processes, and prints the figures. Cores are the processes doing the
work: 1 for a plain build, `--beam_workers` for Beam.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time

import tensorflow_datasets as tfds

from ecgclip_jax.data import skips


def build_seconds(dataset: str, config: str, manual_dir: str, beam_workers: int) -> tuple[float, dict]:
  """Wall seconds of one fresh build, and its build report."""
  importlib.import_module(f"tfds_builders.{dataset}")
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if beam_workers:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
    download_config.beam_options = PipelineOptions(
        [f"--direct_num_workers={beam_workers}", "--direct_running_mode=multi_processing"])
  with tempfile.TemporaryDirectory() as data_dir:
    builder = tfds.builder(f"{dataset}/{config}", data_dir=data_dir, file_format="array_record")
    start = time.perf_counter()
    builder.download_and_prepare(download_config=download_config)
    seconds = time.perf_counter() - start
    return seconds, skips.read_report(builder.data_dir)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="ptbxl")
  parser.add_argument("--config", default="500hz")
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--beam_workers", type=int, default=0,
                      help="0: build in this process; N: Beam DirectRunner, N processes")
  args = parser.parse_args()
  seconds, report = build_seconds(args.dataset, args.config, args.manual_dir, args.beam_workers)
  cores = max(1, args.beam_workers)
  mode = f"Beam DirectRunner, {cores} workers" if args.beam_workers else "in process"
  print(f"{args.dataset}/{args.config} ({mode}, {os.cpu_count()} CPUs on this machine): "
        f"{report['seen']} records seen, {report['kept']} kept in {seconds:.1f} s -> "
        f"{report['seen'] / seconds:.1f} records/s, {report['seen'] / seconds / cores:.1f} "
        f"records/s per core")


if __name__ == "__main__":
  main()
