"""Policy: the document (contract, section 4), its validation, layering, signed versions and
where it comes from (:mod:`asgimesh.policy.sources`)."""

from ._load import (
    format_for,
    format_validation_error,
    merge_layers,
    parse_document,
    parse_policy,
    read_policy_file,
    validate_document,
)
from ._model import (
    AuthorizationRule,
    Defaults,
    Fault,
    InboundPolicy,
    OutlierDetection,
    Policy,
    Retries,
    RetriesOverride,
    RetryBudget,
    Route,
    ServicePolicy,
    SplitTarget,
    ValueMatch,
    parse_dns_target,
)
from ._signed import PolicyRecord, SignatureError, sign_policy, verify_policy
from ._state import PolicySnapshot, PolicyStore, settings_layers

__all__ = [
    "AuthorizationRule",
    "Defaults",
    "Fault",
    "InboundPolicy",
    "OutlierDetection",
    "Policy",
    "PolicyRecord",
    "PolicySnapshot",
    "PolicyStore",
    "Retries",
    "RetriesOverride",
    "RetryBudget",
    "Route",
    "ServicePolicy",
    "SignatureError",
    "SplitTarget",
    "ValueMatch",
    "format_for",
    "format_validation_error",
    "merge_layers",
    "parse_dns_target",
    "parse_document",
    "parse_policy",
    "read_policy_file",
    "settings_layers",
    "sign_policy",
    "validate_document",
    "verify_policy",
]
