"""Errors about configuration: what the operator wrote, not what the network did.

Outbound failures are ``httpx`` exceptions (see :mod:`asgimesh.outbound`), so that code that
already catches them keeps working; these are for settings and policy documents.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ConfigError", "PolicyError"]


class ConfigError(Exception):
    """A setting has a value the mesh cannot use. The message names the variable, the value
    and what was expected, in one line fit for an operator's terminal."""


class PolicyError(ConfigError):
    """A policy document was refused whole. ``problems`` lists every problem as
    ``"path.to.field: what was wrong"``, so that one round trip fixes them all."""

    def __init__(self, problems: Sequence[str], source: str = "policy") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source} refused: " + "; ".join(self.problems))
