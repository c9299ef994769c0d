"""PTB-XL as a TFDS dataset (see the builder module's docstring)."""

from .ptbxl_dataset_builder import (
    LABEL_SETS, SCP_STATEMENTS, SUPERCLASSES, Builder, PtbxlConfig, Statement, read_record,
    read_scp_statements, statement_labels)

__all__ = ["LABEL_SETS", "SCP_STATEMENTS", "SUPERCLASSES", "Builder", "PtbxlConfig", "Statement",
           "read_record", "read_scp_statements", "statement_labels"]
