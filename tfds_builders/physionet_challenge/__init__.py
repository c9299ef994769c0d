"""PhysioNet/CinC Challenge 2020-2021 as a TFDS dataset (see the builder module's docstring)."""

from .physionet_challenge_dataset_builder import (
    CODES, LABEL_SETS, SOURCES, Builder, ChallengeConfig, Code, age_of, code_labels, dx_codes,
    header_fields, read_codes, read_record, sex_of)

__all__ = ["CODES", "LABEL_SETS", "SOURCES", "Builder", "ChallengeConfig", "Code", "age_of",
           "code_labels", "dx_codes", "header_fields", "read_codes", "read_record", "sex_of"]
