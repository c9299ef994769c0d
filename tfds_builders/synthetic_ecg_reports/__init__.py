"""Synthetic ECG-report corpus as a TFDS dataset (see the builder module's docstring)."""

from .synthetic_ecg_reports_dataset_builder import (
    LABEL_NAMES, Builder, SyntheticConfig, custom_config, prepare)

__all__ = ["LABEL_NAMES", "Builder", "SyntheticConfig", "custom_config", "prepare"]
