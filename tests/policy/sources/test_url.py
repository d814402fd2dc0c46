import pytest

from asgimesh import ConfigError
from asgimesh.policy.sources import parse_source_url


def test_parse_source_url() -> None:
    plain = parse_source_url("http://cp:7070/")
    assert (plain.kind, plain.base_url, plain.refresh) == ("http", "http://cp:7070", None)
    serverless = parse_source_url("https://cp:7070/mesh?refresh=30s&report=5s")
    assert serverless.base_url == "https://cp:7070/mesh"
    assert (serverless.refresh, serverless.report_every) == (30.0, 5.0)
    etcd = parse_source_url("etcd://127.0.0.1:2379/team")
    assert (etcd.kind, etcd.base_url, etcd.prefix) == ("etcd", "http://127.0.0.1:2379", "/team")
    with pytest.raises(ConfigError, match="unknown parameter 'refesh'"):
        parse_source_url("http://cp:7070?refesh=30s")
    with pytest.raises(ConfigError, match="refresh: expected a duration"):
        parse_source_url("http://cp:7070?refresh=soon")


def test_source_names_never_carry_credentials() -> None:
    options = parse_source_url("https://ops:hunter2@cp:7070/mesh?refresh=30s")
    assert "hunter2" not in options.name and "ops" not in options.name
    assert options.name.startswith("controlplane:https://")
    with pytest.raises(ConfigError) as caught:
        parse_source_url("https://ops:hunter2@cp:7070?refesh=1s")
    assert "hunter2" not in str(caught.value)
