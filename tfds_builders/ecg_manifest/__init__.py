"""A hospital's own ECG export as a TFDS dataset (see the builder module's docstring)."""

from .ecg_manifest_dataset_builder import Builder, ManifestConfig, read_manifest, read_record

__all__ = ["Builder", "ManifestConfig", "read_manifest", "read_record"]
