"""The public API is exactly what ``__all__`` says, and every name in it is importable."""

import asgimesh


def test_all_names_are_exported() -> None:
    exported = {name for name in dir(asgimesh) if not name.startswith("_")}
    public = {name for name in asgimesh.__all__ if not name.startswith("_")}
    missing = public - set(dir(asgimesh))
    assert not missing
    # Submodules are reachable, but everything else public must be listed in __all__.
    modules = {
        "cli",
        "controlplane",
        "identity",
        "inbound",
        "outbound",
        "policy",
        "serverless",
        "settings",
        "telemetry",
        "testing",
    }
    assert exported - public - modules == set()


def test_contract_names_present() -> None:
    for name in (
        "MeshMiddleware",
        "MeshWSGIMiddleware",
        "MeshTransport",
        "AsyncMeshTransport",
        "MeshSettings",
        "Policy",
        "current_context",
        "NoHealthyEndpoints",
        "DeadlineExceeded",
        "RetryBudgetExhausted",
        "CircuitOpen",
    ):
        assert name in asgimesh.__all__, name


#: The public API, pinned: adding or removing a name is a decision, made here on purpose.
PUBLIC = [
    "AsyncMeshTransport",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "MeshContext",
    "MeshMiddleware",
    "MeshRuntime",
    "MeshSettings",
    "MeshTransport",
    "MeshWSGIMiddleware",
    "NoHealthyEndpoints",
    "Policy",
    "PolicyError",
    "PolicySnapshot",
    "RetryBudgetExhausted",
    "__version__",
    "current_context",
    "get_runtime",
    "set_runtime",
]


def test_the_public_api_is_pinned() -> None:
    assert asgimesh.__all__ == PUBLIC


def test_public_members_say_where_they_belong() -> None:
    for name in asgimesh.__all__:
        member = getattr(asgimesh, name)
        if not isinstance(member, str):
            assert member.__module__ == "asgimesh", name
