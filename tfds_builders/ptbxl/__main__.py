"""`python -m tfds_builders.ptbxl --config 500hz --manual_dir DIR [tfds build flags]`
(see build_cli and the builder module's docstring)."""

from tfds_builders import build_cli

if __name__ == "__main__":
  build_cli.main(__package__)
