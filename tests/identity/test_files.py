"""File identities: MESH_CERT/KEY/CA and SPIFFE_CREDENTIAL_FOLDER, read at start and re-read
when they change; a bad delivery is refused and the last good identity kept."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.identity import IdentityError, IdentityStore
from asgimesh.identity._files import FileIdentitySource, files_reader, folder_reader
from asgimesh.testing import ThrowawayCA

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


def file_source(tmp_path: Path, ca: ThrowawayCA) -> tuple[FileIdentitySource, IdentityStore]:
    files = ca.issue(ORDERS).write(tmp_path)
    store = IdentityStore()
    read, paths = files_reader(files.cert, files.key, files.ca, "mesh.local")
    return FileIdentitySource(read, paths, store, "test", interval=0.05), store


def test_files_are_loaded_and_written_to_private_files(tmp_path: Path, ca: ThrowawayCA) -> None:
    source, store = file_source(tmp_path, ca)
    source.load()
    assert store.current is not None and store.current.spiffe_id == ORDERS
    files = store.files
    assert files is not None
    assert stat.S_IMODE(files.credential.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.credential.parent.stat().st_mode) == 0o700
    assert files.credential.read_bytes() == store.current.key_pem() + store.current.chain_pem()
    assert files.bundle.read_bytes() == ca.bundle_pem
    directory = files.credential.parent
    store.close()
    assert not directory.exists()


def test_a_rotation_on_disk_replaces_the_identity(tmp_path: Path, ca: ThrowawayCA) -> None:
    source, store = file_source(tmp_path, ca)
    source.load()
    seen = []
    store.subscribe(lambda svid: seen.append(svid.serial))
    first = store.current
    assert first is not None
    assert source.check() is False  # nothing changed
    rotated = ca.issue(ORDERS)
    rotated.write(tmp_path)
    assert source.check() is True
    assert store.current is not None and store.current.serial == rotated.certificate.serial_number
    assert seen == [first.serial, rotated.certificate.serial_number]
    store.close()


def test_a_bad_delivery_keeps_the_last_good_identity(tmp_path: Path, ca: ThrowawayCA) -> None:
    source, store = file_source(tmp_path, ca)
    source.load()
    good = store.current
    (tmp_path / "key.pem").write_bytes(ca.issue(ORDERS).key_pem)  # half a rotation: key only
    assert source.check() is False
    assert store.current is good
    ThrowawayCA("mesh.local").issue(ORDERS).write(tmp_path)  # a whole delivery from another CA...
    (tmp_path / "ca.pem").write_bytes(ca.bundle_pem)  # ...against our bundle: refused
    assert source.check() is False
    assert store.current is good
    store.close()


def test_the_watcher_thread_picks_up_a_rotation(tmp_path: Path, ca: ThrowawayCA) -> None:
    import time

    source, store = file_source(tmp_path, ca)
    source.load()
    source.start()
    rotated = ca.issue(ORDERS)
    rotated.write(tmp_path)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if store.current is not None and store.current.serial == rotated.certificate.serial_number:
            break
        time.sleep(0.02)
    source.close()
    assert store.current is not None
    assert store.current.serial == rotated.certificate.serial_number
    store.close()


def test_the_spiffe_credential_folder_layout(tmp_path: Path, ca: ThrowawayCA) -> None:
    issued = ca.issue(ORDERS)
    (tmp_path / "credential-bundle.pem").write_bytes(issued.credential_bundle())
    (tmp_path / "mesh.local.spiffe-trust-bundle.pem").write_bytes(ca.bundle_pem)
    read, paths = folder_reader(tmp_path, "mesh.local")
    svid = read()
    assert svid.spiffe_id == ORDERS and svid.serial == issued.certificate.serial_number
    assert tmp_path / "credential-bundle.pem" in paths


def test_the_folder_layout_under_the_contract_s_file_name(tmp_path: Path, ca: ThrowawayCA) -> None:
    issued = ca.issue(ORDERS)
    (tmp_path / "credential-bundle.private-key.pem").write_bytes(issued.credential_bundle())
    (tmp_path / "mesh.local.spiffe-trust-bundle.pem").write_bytes(ca.bundle_pem)
    assert folder_reader(tmp_path, "mesh.local")[0]().spiffe_id == ORDERS


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "expected a credential bundle named"),
        (b"", "expected a PRIVATE KEY block first"),
        ("cert-first", "expected a PRIVATE KEY block first"),
        ("key-only", "expected CERTIFICATE blocks after the private key"),
    ],
)
def test_bad_folders_are_named(tmp_path: Path, ca: ThrowawayCA, content, expected) -> None:
    issued = ca.issue(ORDERS)
    if content == "cert-first":
        content = issued.cert_pem + issued.key_pem
    elif content == "key-only":
        content = issued.key_pem
    if content is not None:
        (tmp_path / "credential-bundle.pem").write_bytes(content)
    (tmp_path / "mesh.local.spiffe-trust-bundle.pem").write_bytes(ca.bundle_pem)
    with pytest.raises(IdentityError, match=expected):
        folder_reader(tmp_path, "mesh.local")[0]()


def test_runtime_takes_a_file_identity_and_shows_its_expiry(tmp_path: Path, ca: ThrowawayCA) -> None:
    issued = ca.issue(ORDERS)
    files = issued.write(tmp_path)
    runtime = MeshRuntime(
        MeshSettings.from_env(service="orders", cert=files.cert, key=files.key, ca=files.ca),
        start=False,
    )
    try:
        assert runtime.identity.current is not None
        expiry = runtime.metrics.registry.get_sample_value(
            "mesh_identity_certificate_expiry_timestamp_seconds", {"service": "orders"}
        )
        assert expiry == issued.certificate.not_valid_after_utc.timestamp()
    finally:
        runtime.close()


def test_half_a_file_identity_stops_start_up_naming_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="missing MESH_KEY, MESH_CA"):
        MeshRuntime(MeshSettings.from_env(cert=tmp_path / "cert.pem"), start=False)


def test_a_bad_file_identity_stops_start_up_with_its_file_name(tmp_path: Path, ca) -> None:
    files = ca.issue("spiffe://elsewhere/ns/a/sa/b").write(tmp_path)
    with pytest.raises(IdentityError, match=r"MESH_CERT=.*cert\.pem: .*not in the trust domain"):
        MeshRuntime(
            MeshSettings.from_env(cert=files.cert, key=files.key, ca=files.ca), start=False
        )


def test_permissive_without_an_identity_stops_start_up() -> None:
    with pytest.raises(IdentityError, match="MESH_MTLS='permissive' needs an identity"):
        MeshRuntime(MeshSettings.from_env(mtls="permissive"), start=False)
