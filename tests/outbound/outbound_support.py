"""Small builders shared by the outbound unit tests: a fake clock and policy-made configs."""

from __future__ import annotations

from typing import Any

from asgimesh.outbound._compile import BackendConfig, CallConfig, compile_policy
from asgimesh.policy import validate_document


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def call_config(service: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                method: str = "GET", path: str = "/") -> CallConfig:
    doc = {"defaults": defaults or {}, "services": {"svc": {"endpoints": ["http://a:1"], **(service or {})}}}
    return compile_policy(validate_document(doc)).services["svc"].config_for(method, path)


def backend_config(service: dict[str, Any] | None = None,
                   defaults: dict[str, Any] | None = None) -> BackendConfig:
    doc = {"defaults": defaults or {}, "services": {"svc": {"endpoints": ["http://a:1"], **(service or {})}}}
    return compile_policy(validate_document(doc)).backends["svc"]
