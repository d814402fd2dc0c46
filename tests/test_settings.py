import pytest

from asgimesh import ConfigError, MeshSettings


def test_defaults_match_the_contract() -> None:
    s = MeshSettings.from_env()
    assert (s.service, s.namespace, s.trust_domain) == ("app", "default", "mesh.local")
    assert s.timeout == 10.0 and s.retries == 2 and s.mtls == "off"
    assert s.access_log is False and s.log_format == "json" and s.config is None
    assert s.spiffe_id == "spiffe://mesh.local/ns/default/sa/app"


def test_reads_every_variable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    env = {
        "MESH_SERVICE": "payments",
        "MESH_NAMESPACE": "shop",
        "MESH_TRUST_DOMAIN": "corp.example",
        "MESH_CONFIG": str(tmp_path / "p.yaml"),
        "MESH_POLICY": '{"version": 1}',
        "MESH_UPSTREAMS": "orders=http://127.0.0.1:8001,http://127.0.0.1:8002;stock=http://127.0.0.1:8003",
        "MESH_TIMEOUT": "250ms",
        "MESH_RETRIES": "0",
        "MESH_TOKEN": "t0k",
        "MESH_ADMIN_TOKEN": "s3cr3t-admin",
        "MESH_MTLS": "strict",
        "MESH_CERT": "/c.pem",
        "MESH_KEY": "/k.pem",
        "MESH_CA": "/ca.pem",
        "MESH_ACCESS_LOG": "true",
        "MESH_LOG_FORMAT": "console",
        "MESH_ZONE": "us-east-1a",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = MeshSettings.from_env()
    assert s.spiffe_id == "spiffe://corp.example/ns/shop/sa/payments"
    assert s.timeout == 0.25 and s.retries == 0 and s.mtls == "strict" and s.access_log
    assert s.zone == "us-east-1a"
    assert s.upstream_map == {
        "orders": ("http://127.0.0.1:8001", "http://127.0.0.1:8002"),
        "stock": ("http://127.0.0.1:8003",),
    }
    assert s.token is not None and s.token.get_secret_value() == "t0k"
    assert "t0k" not in repr(s) and "s3cr3t-admin" not in repr(s)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MESH_TIMEOUT", "fast", "MESH_TIMEOUT='fast': expected a duration"),
        ("MESH_RETRIES", "-1", "MESH_RETRIES='-1': expected greater than or equal to 0"),
        ("MESH_RETRIES", "two", "MESH_RETRIES='two': expected a valid integer"),
        ("MESH_MTLS", "on", "MESH_MTLS='on': expected one of 'off', 'permissive' or 'strict'"),
        ("MESH_LOG_FORMAT", "xml", "MESH_LOG_FORMAT='xml': expected one of 'json' or 'console'"),
        ("MESH_ACCESS_LOG", "maybe", "MESH_ACCESS_LOG='maybe': expected a valid boolean"),
        ("MESH_SERVICE", "pay ments", "MESH_SERVICE='pay ments': expected a name"),
        ("MESH_CONFIG", "policy.txt", "MESH_CONFIG='policy.txt': expected a policy file"),
        ("MESH_UPSTREAMS", "payments", "MESH_UPSTREAMS='payments': expected service=url"),
        ("MESH_UPSTREAMS", "p=ftp://x", "expected an http:// or https:// endpoint for 'p'"),
        ("MESH_INSTANCE", "payments 2", "MESH_INSTANCE='payments 2': expected a name"),
        ("MESH_ZONE", "us east", "MESH_ZONE='us east': expected a zone name (letters, digits"),
        ("MESH_POLICY_MAX_AGE", "a week", "MESH_POLICY_MAX_AGE='a week': expected a duration"),
        ("MESH_POLICY_MAX_AGE", "-1h", "MESH_POLICY_MAX_AGE='-1h': expected a duration"),
    ],
)
def test_bad_values_name_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        MeshSettings.from_env()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_bad_value_reported_at_once_and_secrets_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESH_TIMEOUT", "soon")
    monkeypatch.setenv("MESH_MTLS", "yes")
    with pytest.raises(ConfigError) as info:
        MeshSettings.from_env()
    assert "MESH_TIMEOUT" in str(info.value) and "MESH_MTLS" in str(info.value)


def test_bad_setting_stops_start_up_with_one_line(spawn, tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    proc = subprocess.run(
        [sys.executable, "-c", "import asgimesh; asgimesh.get_runtime()"],
        env=subprocess_env({"MESH_TIMEOUT": "fast"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "MESH_TIMEOUT='fast'" in proc.stderr


def test_mtls_without_an_identity_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from asgimesh import MeshRuntime

    # Strict and permissive serve with an identity of their own: without one, a clear stop.
    for mode in ("strict", "permissive"):
        monkeypatch.setenv("MESH_MTLS", mode)
        with pytest.raises(ConfigError, match=rf"MESH_MTLS='{mode}' needs an identity"):
            MeshRuntime(start=False)


def test_policy_max_age_defaults_to_a_week_and_zero_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgimesh.policy import PolicyStore
    from asgimesh.policy.sources import policy_source_for

    assert MeshSettings.from_env().policy_max_age == 7 * 24 * 3600
    monkeypatch.setenv("MESH_POLICY_MAX_AGE", "6h")
    assert MeshSettings.from_env().policy_max_age == 6 * 3600
    for value, expected in (("90m", 5400.0), ("0", None)):
        monkeypatch.setenv("MESH_POLICY_MAX_AGE", value)
        settings = MeshSettings.from_env(config="http://127.0.0.1:9")
        source = policy_source_for(settings, PolicyStore([]))
        assert source is not None and source._max_age == expected  # type: ignore[attr-defined]
