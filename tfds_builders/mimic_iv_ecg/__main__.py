"""`python -m tfds_builders.mimic_iv_ecg [tfds build flags]` (see build_cli)."""

from tfds_builders import build_cli

if __name__ == "__main__":
  build_cli.main(__package__)
