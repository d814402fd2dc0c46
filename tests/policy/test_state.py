import time

import pytest

from asgimesh import MeshRuntime, MeshSettings, PolicyError
from asgimesh.policy import PolicyStore


def test_layers_lowest_first_with_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_TIMEOUT", "3s")
    monkeypatch.setenv("MESH_RETRIES", "1")
    monkeypatch.setenv("MESH_UPSTREAMS", "orders=http://127.0.0.1:9001")
    monkeypatch.setenv("MESH_POLICY", '{"defaults": {"retries": {"attempts": 4}}}')
    store = PolicyStore.from_settings(MeshSettings.from_env())
    snap = store.current
    assert snap.policy.defaults.timeout == 3.0
    assert snap.policy.defaults.retries.attempts == 4
    assert snap.policy.services["orders"].endpoints == ("http://127.0.0.1:9001",)
    assert snap.origin_of("defaults.timeout") == "env"
    assert snap.origin_of("defaults.retries.attempts") == "MESH_POLICY"
    assert snap.origin_of("defaults.per_try_timeout") == "default"

    after = store.apply({"defaults": {"timeout": "5s"}}, source="file:p.yaml")
    assert after.policy.defaults.timeout == 5.0 and after.policy.defaults.retries.attempts == 4
    assert (
        after.origin_of("defaults.timeout") == "file:p.yaml" and after.version == snap.version + 1
    )


def test_refused_update_keeps_last_good_policy_and_tells_listeners() -> None:
    store = PolicyStore([])
    good = store.apply({"defaults": {"timeout": "2s"}}, source="cp", version=7)
    refused: list[PolicyError] = []
    store.on_failure(refused.append)
    with pytest.raises(PolicyError):
        store.apply({"defaults": {"timeout": "fast"}}, source="cp", version=8)
    assert store.current is good and good.version == 7
    assert refused[0].problems[0].startswith("defaults.timeout")


def test_invalid_mesh_policy_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_POLICY", '{"defaults": {"timeout": "fast"}}')
    with pytest.raises(PolicyError, match=r"MESH_POLICY refused: defaults\.timeout"):
        MeshRuntime()


def test_file_source_hot_reload_and_refusal(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults: {timeout: 2s}\n")
    monkeypatch.setenv("MESH_CONFIG", str(path))
    runtime = MeshRuntime()
    try:
        assert runtime.snapshot.policy.defaults.timeout == 2.0
        first = runtime.snapshot.version

        path.write_text("defaults: {timeout: 4s}\n")
        deadline = time.monotonic() + 2.0
        while runtime.snapshot.policy.defaults.timeout != 4.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.snapshot.policy.defaults.timeout == 4.0
        assert runtime.snapshot.version == first + 1

        path.write_text("defaults: {timeout: soon}\n")
        failures = runtime.metrics.policy_reloads.labels(runtime.settings.service, "failure")
        deadline = time.monotonic() + 2.0
        while failures._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures._value.get() == 1
        assert runtime.snapshot.policy.defaults.timeout == 4.0
    finally:
        runtime.close()


def test_runtime_shared_and_created_once() -> None:
    import asgimesh

    first = asgimesh.get_runtime()
    assert asgimesh.get_runtime() is first
