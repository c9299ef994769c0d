"""Puts the downstream results of several runs side by side in one markdown table.

    python -m ecgclip_jax.compare RUN_DIR [RUN_DIR ...] [--out comparison.md] \\
        [--metric prauc|auroc] [--per_task] [--published FIGURES.csv]

Each RUN_DIR holds a results.csv written by `python -m ecgclip_jax.probe`. Lines are (method,
task), macro first (only macro without --per_task); columns are run x label fraction, e.g.
"pretrained step 600 1%", "random init 100%"; cells "0.812 [0.790, 0.830]" (95% bootstrap CI).
A run name found in two folders is prefixed with its folder's name. Folders of several task
sets make one table whose lines name the task set. `--published` adds a paper's macro figures
for those task sets as runs of their own (configs/published/, e.g. MERL's Table 1).
"""

from __future__ import annotations

import argparse
import sys

from ecgclip_jax import storage
from ecgclip_jax.cli import USER_ERRORS
from ecgclip_jax.evaluators import results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m ecgclip_jax.compare",
                                   description="Downstream results of several runs side by side.")
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="folders holding results.csv")
  parser.add_argument("--out", help="also write the table to this markdown file")
  parser.add_argument("--metric", choices=("prauc", "auroc"), default="prauc")
  parser.add_argument("--per_task", action="store_true", help="every task, not only macro")
  parser.add_argument("--published", default="",
                      help="CSV of published macro figures (configs/published/) to add")
  args = parser.parse_args(argv)
  try:
    table = results.comparison(args.run_dirs, args.metric, args.per_task, args.published)
    if args.out:
      storage.write_text(args.out, table + "\n")
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")
  print(table)
  if args.out:
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
