"""A bad ``MESH_*`` setting stops each framework's real server at start-up, with the one line
that names the variable, its value and what was expected; none of them goes on serving."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port, subprocess_env

MESSAGE = "MESH_TIMEOUT='fast': expected a duration"
SITE = "tests.integrations.apps.django_site"


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a server that must exit by itself; a server still running after 60 s fails."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=subprocess_env({"MESH_TIMEOUT": "fast", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fastapi_install_stops_uvicorn_instead_of_serving_500s() -> None:
    port = free_port()
    proc = start("uvicorn", "tests.integrations.apps.fastapi_app:app", "--port", str(port))
    assert proc.returncode != 0
    assert MESSAGE in proc.stderr
    assert "lifespan" not in proc.stderr  # uvicorn never got as far as starting the app
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/_mesh/health")


@pytest.mark.parametrize(
    "server",
    [
        ("gunicorn", f"{SITE}.wsgi:application", "--bind", "127.0.0.1:{port}"),
        ("uvicorn", "tests.integrations.apps.django_app:asgi", "--port", "{port}"),
        ("gunicorn", "tests.integrations.apps.flask_app:app", "--bind", "127.0.0.1:{port}"),
    ],
    ids=["django-gunicorn", "django-uvicorn", "flask-gunicorn"],
)
def test_wsgi_and_asgi_servers_stop_with_the_message(server: tuple[str, ...]) -> None:
    port = str(free_port())
    proc = start(*(part.replace("{port}", port) for part in server))
    assert proc.returncode != 0
    assert MESSAGE in proc.stderr


@pytest.mark.parametrize("command", [["check"], ["runserver", "--noreload"]])
def test_django_commands_report_it_as_a_system_check(command: list[str]) -> None:
    """With ``asgimesh_django`` in ``INSTALLED_APPS`` the check runs before the WSGI app is
    loaded, so ``runserver`` exits with Django's one-line error rather than a thread's
    traceback."""
    port = str(free_port())
    args = [*command, f"127.0.0.1:{port}"] if command[0] == "runserver" else command
    proc = start("django", *args, env={"DJANGO_SETTINGS_MODULE": f"{SITE}.settings"})
    assert proc.returncode == 1
    line = next(line for line in proc.stderr.splitlines() if "asgimesh.E001" in line)
    assert MESSAGE in line
    assert "Traceback" not in proc.stderr


def test_django_check_passes_with_good_settings() -> None:
    proc = start(
        "django", "check", env={"MESH_TIMEOUT": "2s", "DJANGO_SETTINGS_MODULE": f"{SITE}.settings"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "no issues" in proc.stdout
