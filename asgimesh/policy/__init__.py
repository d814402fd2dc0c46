"""Policy: the document (contract, section 4), its validation, layering and hot reload."""

from ._load import (
    format_validation_error,
    merge_layers,
    parse_document,
    parse_policy,
    read_policy_file,
    validate_document,
)
from ._model import Policy
from ._state import PolicySnapshot, PolicyStore, settings_layers

__all__ = [
    "Policy",
    "PolicySnapshot",
    "PolicyStore",
    "format_validation_error",
    "merge_layers",
    "parse_document",
    "parse_policy",
    "read_policy_file",
    "settings_layers",
    "validate_document",
]
