"""The mesh's loggers: the host's structlog configuration when there is one, a safe one else."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from asgimesh._log import MAX_TEXT, MeshLogger, describe_error, redact


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as a host that never configured it leaves it (restored afterwards)."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


def test_unconfigured_host_gets_one_json_line_on_stderr(unconfigured, capsys) -> None:
    log = MeshLogger("asgimesh.test")
    log.error("app_error", error_type="ValueError", request_id="r-1")
    log.debug("too_chatty")  # below INFO: dropped
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout may be the app's own channel
    [line] = captured.err.splitlines()
    event = json.loads(line)
    assert event["event"] == "app_error" and event["level"] == "error"
    assert event["logger"] == "asgimesh.test" and event["request_id"] == "r-1"
    assert event["timestamp"].endswith("Z")


def test_unconfigured_host_never_gets_a_traceback(unconfigured, capsys) -> None:
    pytest.importorskip("rich")  # structlog's default renderer would draw a rich traceback
    secret = "Bearer tok-in-a-local"  # noqa: F841 - what a traceback with locals would show
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        MeshLogger("asgimesh.test").error("failed", exc_info=exc)
    err = capsys.readouterr().err
    assert "tok-in-a-local" not in err and "Traceback" not in err
    assert json.loads(err)["event"] == "failed"


def test_configured_host_gets_the_events(capsys) -> None:
    log = MeshLogger("asgimesh.test")
    with capture_logs() as logs:
        log.warning("policy_refused", source="file")
    assert logs == [{"event": "policy_refused", "source": "file", "log_level": "warning"}]
    assert capsys.readouterr().err == ""


def test_a_host_that_configures_after_import_is_followed(unconfigured, capsys) -> None:
    log = MeshLogger("asgimesh.test")  # made at import, before the host configures structlog
    log.info("before")
    assert json.loads(capsys.readouterr().err)["event"] == "before"
    with capture_logs() as logs:
        log.info("after")
    assert [e["event"] for e in logs] == ["after"]


def test_describe_error_is_one_bounded_line() -> None:
    kind, message = describe_error(ValueError("line one\nline two " + "x" * 10_000))
    assert kind == "ValueError"
    assert message.startswith("line one line two x") and "\n" not in message
    assert len(message) == MAX_TEXT and message.endswith("…")


def test_describe_error_redacts_credentials() -> None:
    _, message = describe_error(
        ConnectionError("https://alice:pa55word@payments/charge: Authorization: Bearer abc.def")
    )
    assert message == "https://<redacted>@payments/charge: Authorization: Bearer <redacted>"
    # Cut just before the '@': the part after '://' may be a password, so it goes.
    _, cut = describe_error(ValueError("x" * (MAX_TEXT - 20) + " http://alice:pa55word@host/"))
    assert "alice" not in cut and "pa55" not in cut


def test_describe_error_survives_a_broken_str() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_error(Weird()) == ("test_describe_error_survives_a_broken_str.<locals>.Weird", "<unprintable>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("etcd://root:pw@127.0.0.1:2379/mesh", "etcd://<redacted>@127.0.0.1:2379/mesh"),
        ("http://127.0.0.1:7070", "http://127.0.0.1:7070"),
        ("token=abc123 and basic Zm9vOmJhcg==", "token=<redacted> and basic <redacted>"),
        ("user@example.com wrote", "user@example.com wrote"),
        (
            "etcds://mesh:s3cret@10.0.0.1:2379/m?cacert=/ca.pem&password=s3cret&x=1",
            "etcds://<redacted>@10.0.0.1:2379/m?cacert=/ca.pem&password=<redacted>&x=1",
        ),
        ("password_file=/run/secrets/etcd", "password_file=/run/secrets/etcd"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
