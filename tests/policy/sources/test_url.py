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


def _files(tmp_path):
    from asgimesh.testing import ThrowawayCA

    ca = ThrowawayCA()
    paths = ca.issue("spiffe://mesh.local/etcd-client").write(tmp_path)
    password = tmp_path / "password"
    password.write_text("s3cret-pw\n")
    return paths, password


def test_parse_etcds_urls(tmp_path) -> None:
    paths, password = _files(tmp_path)
    url = (f"etcds://mesh@etcd.internal:2379/team?cacert={paths.ca}&cert={paths.cert}"
           f"&key={paths.key}&password_file={password}&refresh=30s")
    options = parse_source_url(url)
    assert (options.kind, options.base_url, options.prefix) == (
        "etcd", "https://etcd.internal:2379", "/team")
    assert options.refresh == 30.0
    access = options.etcd
    assert access is not None and access.tls
    assert (access.cacert, access.cert, access.key) == (paths.ca, paths.cert, paths.key)
    assert access.user == "mesh" and access.read_password() == "s3cret-pw"
    assert "s3cret" not in repr(options) and "mesh" not in options.name
    inline = parse_source_url("etcd://mesh:in%40line@127.0.0.1:2379")
    assert inline.etcd is not None and inline.etcd.read_password() == "in@line"
    assert "in@line" not in repr(inline) and "in%40line" not in repr(inline)
    plain = parse_source_url("etcd://127.0.0.1:2379")
    assert plain.etcd is not None and not plain.etcd.tls and plain.etcd.user is None


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("cacert={missing}", "cacert='{missing}': cannot read it (No such file or directory)"),
        ("cacert={password}", "cacert='{password}': expected PEM CA certificates"),
        ("cert={cert}", "expected cert= and key= together"),
        ("cert={cert}&key={ca}", "expected a PEM certificate and its private key"),
        ("password_file={missing}", "password_file='{missing}': cannot read it"),
        ("cacert=", "cacert= is empty; expected a file path"),
        ("cakert={ca}", "unknown parameter 'cakert' (expected cacert, cert, key, password_file,"),
    ],
)
def test_bad_etcds_parameters_are_named_in_one_line(tmp_path, query: str, problem: str) -> None:
    paths, password = _files(tmp_path)
    names = {"missing": tmp_path / "nope.pem", "password": password, "cert": paths.cert,
             "ca": paths.ca}
    user = "mesh@" if "password_file" in query else ""
    with pytest.raises(ConfigError) as caught:
        parse_source_url(f"etcds://{user}127.0.0.1:2379/m?{query.format(**names)}")
    message = str(caught.value)
    assert message.startswith("MESH_CONFIG='etcds://") and "\n" not in message
    assert problem.format(**names) in message


def test_etcd_url_combinations_that_make_no_sense_are_refused(tmp_path) -> None:
    paths, password = _files(tmp_path)
    with pytest.raises(ConfigError, match="cacert= needs TLS; expected etcds://"):
        parse_source_url(f"etcd://127.0.0.1:2379?cacert={paths.ca}")
    with pytest.raises(ConfigError, match="password_file= needs a user name"):
        parse_source_url(f"etcds://127.0.0.1:2379?password_file={password}")
    with pytest.raises(ConfigError, match="not both") as caught:
        parse_source_url(f"etcds://mesh:hunter2@127.0.0.1:2379?password_file={password}")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="expected etcd://host:port"):
        parse_source_url("etcds://127.0.0.1/m")
    with pytest.raises(ConfigError) as caught:
        parse_source_url("etcds://mesh:hunter2@127.0.0.1:2379?password=hunter2")
    assert "hunter2" not in str(caught.value)


def test_the_store_url_takes_the_same_parameters(tmp_path) -> None:
    from asgimesh.controlplane.stores import open_store

    paths, password = _files(tmp_path)
    store = open_store(
        f"etcds://mesh@127.0.0.1:2379/cp?cacert={paths.ca}&password_file={password}", tmp_path
    )
    assert store.shared and store.description == "etcd:https://127.0.0.1:2379/cp"
    with pytest.raises(ConfigError, match=r"^--store='etcds://<redacted>@127.0.0.1:2379\?cert=.*"
                       "': expected cert= and key= together"):
        open_store(f"etcds://mesh:pw@127.0.0.1:2379?cert={paths.cert}", tmp_path)
    with pytest.raises(ConfigError, match="unknown parameter 'refresh'"):
        open_store("etcd://127.0.0.1:2379?refresh=1s", tmp_path)
