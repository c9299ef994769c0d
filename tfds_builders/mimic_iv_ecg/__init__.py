"""MIMIC-IV-ECG v1.0 as a TFDS dataset (see the builder module's docstring)."""

from .mimic_iv_ecg_dataset_builder import Builder, MimicConfig, clean_reports, read_record

__all__ = ["Builder", "MimicConfig", "clean_reports", "read_record"]
