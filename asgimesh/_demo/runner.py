"""Runs the example shop on this machine: a control plane, four service processes, traffic.

The services are ``examples/shop`` of the repository, each through its framework's plugin on
the server it would have in production: the FastAPI ``frontend`` on uvicorn, the Flask ``orders``
on gunicorn, and two replicas of the Django ``payments`` on gunicorn, one of them failing 30% of
its charges. Every piece is a real process on a loopback port, started as an operator would
start it, so the demo doubles as a walkthrough; the commands it prints work as printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .._errors import ConfigError
from ..controlplane._keys import new_admin_token
from ..policy import read_policy_file

__all__ = ["run_demo", "shop_dir"]

#: What the shop's processes import; ``bash scripts/demo.sh`` installs exactly these.
NEEDED = ("fastapi", "flask", "django", "gunicorn", "asgimesh_fastapi", "asgimesh_flask")
NEEDED_DJANGO = "asgimesh_django"
#: The policy files the demo suggests, relative to the repository.
TRY_POLICIES = ("fault-drill", "canary", "retries", "rate-limit")


@dataclass
class _Proc:
    name: str
    role: str
    url: str
    popen: subprocess.Popen[bytes]


@dataclass
class _Service:
    name: str  # the instance's readable name (MESH_INSTANCE), also its log file's
    service: str  # the mesh service it is
    role: str  # what it runs on, for people
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def shop_dir() -> Path:
    """``examples/shop`` of the checkout this package runs from; one line if there is none."""
    shop = Path(__file__).resolve().parents[2] / "examples" / "shop"
    if not (shop / "mesh.yaml").is_file():
        raise ConfigError(
            f"asgimesh demo runs examples/shop of a checkout of the repository; not found at "
            f"{shop} (clone it and run: bash scripts/demo.sh)"
        )
    return shop


def _check_installed() -> None:
    missing = [name for name in (*NEEDED, NEEDED_DJANGO) if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"asgimesh demo needs {', '.join(missing)}: run bash scripts/demo.sh, which installs "
            "them (pip install -e '.[demo]' -e integrations/fastapi -e integrations/flask "
            "-e integrations/django)"
        )


def _port(preferred: int) -> int:
    """``preferred`` when it is free (the printed URLs stay the same from run to run)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shown(path: Path) -> str:
    """A path as a command line should carry it: relative to here when inside, else absolute."""
    path = path.resolve()
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    return shlex.quote(str(path))


def _cli() -> str:
    """How to run ``asgimesh`` from this shell: the script beside this interpreter (the
    venv's, usually not on PATH), else ``python -m asgimesh``."""
    script = Path(sys.executable).with_name("asgimesh")
    if script.is_file():
        return _shown(script)
    return f"{_shown(Path(sys.executable))} -m asgimesh"


def _mesh_tls(ca: Path) -> ssl.SSLContext:
    """Trusts the mesh CA; the server's certificate names a SPIFFE ID, not a host, so the host
    name is not checked (the mesh's own transport checks the ID instead)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    return context


def _wait(proc: _Proc, log: Path, verify: ssl.SSLContext | bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = proc.url + ("/v1/trust-bundle" if proc.name == "control-plane" else "/_mesh/health")
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ConfigError(
                f"{proc.name} exited with status {proc.popen.returncode} while starting: "
                + " / ".join(tail)
                + f" (whole log: {log})"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, verify=verify).status_code == 200:
                return
        time.sleep(0.1)
    raise ConfigError(f"{proc.name} did not answer {url} within {timeout:g}s (log: {log})")


@contextlib.contextmanager
def _processes() -> Iterator[list[_Proc]]:
    procs: list[_Proc] = []
    try:
        yield procs
    finally:
        running = [proc for proc in reversed(procs) if proc.popen.poll() is None]
        if running:
            print(f"stopping {', '.join(p.name for p in running)} ...", flush=True)
        for proc in running:
            proc.popen.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
        if running:
            print(
                "stopped: " + ", ".join(f"{p.name} (pid {p.popen.pid})" for p in running),
                flush=True,
            )


def _spawn(
    procs: list[_Proc],
    spec: _Service,
    url: str,
    log_dir: Path,
    cwd: Path,
    say: str,
    verify: ssl.SSLContext | bool = True,
) -> _Proc:
    log = log_dir / f"{spec.name}.log"
    started = time.monotonic()
    print(f"  starting {spec.name:<16} {say:<38}", end="", flush=True)
    popen = subprocess.Popen(
        spec.argv,
        env={**_inherited(), "PYTHONUNBUFFERED": "1", **spec.env},
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
    )
    proc = _Proc(spec.name, spec.role, url, popen)
    procs.append(proc)
    _wait(proc, log, verify)
    print(f"ready in {time.monotonic() - started:.1f}s  {url}", flush=True)
    return proc


def _inherited() -> dict[str, str]:
    """This environment without ``MESH_*``: the shop's settings are the demo's, not the shell's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}


def _traffic(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    with httpx.Client(timeout=5.0) as client:
        while not stop.is_set():
            try:
                status = str(client.get(url).status_code)
            except httpx.HTTPError:
                status = "error"
            counts[status] = counts.get(status, 0) + 1
            stop.wait(0.05)


def run_demo(*, state_dir: Path, duration: float | None, port: int) -> int:
    """Start the shop, print where to look, run until Ctrl-C (or ``duration`` seconds)."""
    shop = shop_dir()
    _check_installed()
    repo = shop.parents[1]
    state_dir.mkdir(parents=True, exist_ok=True)
    log_dir = state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    admin_token = new_admin_token()
    token_file = state_dir / "admin-token"
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(admin_token + "\n")
    stop = threading.Event()

    cp_url = f"http://127.0.0.1:{_port(port)}"
    ports = {name: _port(8001 + i) for i, name in enumerate(("frontend", "orders", "p1", "p2"))}
    urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    ca = state_dir.resolve() / "control-plane" / "ca.pem"
    python = sys.executable
    print("asgimesh demo: the example shop (examples/shop), each service through its plugin")
    with _processes() as procs:
        control = _Service(
            "control-plane",
            "control-plane",
            "asgimesh control-plane",
            [python, "-m", "asgimesh", "control-plane", "--port", cp_url.rsplit(":", 1)[1],
             "--state-dir", str(state_dir.resolve() / "control-plane")],
            {"MESH_ADMIN_TOKEN": admin_token},
        )  # fmt: skip
        _spawn(procs, control, cp_url, log_dir, shop, "policy, identities, dashboard")
        admin = {"Authorization": f"Bearer {admin_token}"}
        policy = read_policy_file(shop / "mesh.yaml")
        httpx.put(cp_url + "/v1/policy", json=policy, headers=admin, timeout=10).raise_for_status()

        def gunicorn(target: str, port: int) -> list[str]:
            return [python, "-m", "gunicorn", target, "--bind", f"127.0.0.1:{port}",
                    "--workers", "1", "--threads", "4", "--log-level", "warning"]  # fmt: skip

        payments = f"payments={urls['p1']},{urls['p2']};payments-canary={urls['p2']}"
        services = [
            (_Service("payments-1", "payments", "Django on gunicorn",
                      gunicorn("payments.wsgi:application", ports["p1"]),
                      {"DJANGO_SETTINGS_MODULE": "payments.settings"}), urls["p1"]),
            (_Service("payments-2-flaky", "payments", "Django on gunicorn, fails 30%",
                      gunicorn("payments.wsgi:application", ports["p2"]),
                      {"DJANGO_SETTINGS_MODULE": "payments.settings",
                       "DEMO_FAIL_PERCENT": "30"}), urls["p2"]),
            (_Service("orders", "orders", "Flask on gunicorn",
                      gunicorn("orders:app", ports["orders"]),
                      {"MESH_UPSTREAMS": payments}), urls["orders"]),
            (_Service("frontend", "frontend", "FastAPI on uvicorn",
                      [python, "-m", "uvicorn", "frontend:app", "--port", str(ports["frontend"]),
                       "--log-level", "warning"],
                      {"MESH_UPSTREAMS": f"orders={urls['orders']}"}), urls["frontend"]),
        ]  # fmt: skip
        for spec, url in services:
            token = httpx.post(
                cp_url + "/v1/tokens", json={"service": spec.service}, headers=admin, timeout=10
            ).json()["token"]
            spec.env.update(
                MESH_SERVICE=spec.service,
                MESH_INSTANCE=spec.name,
                MESH_CONFIG=cp_url,
                MESH_TOKEN=token,
                # Identities from the control plane; the servers speak plain HTTP, so each call
                # between them carries a mesh-identity token (payments admits only orders).
                MESH_MTLS="permissive",
                # The control plane's CA (it signs each policy version) is trusted from its
                # own files, not on first use.
                MESH_CA=str(ca),
            )
            _spawn(procs, spec, url, log_dir, shop, spec.role, _mesh_tls(ca))

        counts: dict[str, int] = {}
        traffic = threading.Thread(
            target=_traffic, args=(urls["frontend"] + "/", stop, counts), daemon=True
        )
        traffic.start()
        # From here Ctrl-C ends the loop below (before, it interrupts the start-up): either way
        # the processes are stopped in order and named.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        _say_where(cp_url, urls, token_file, log_dir, repo)
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for proc in procs:
                if proc.popen.poll() is not None:
                    print(
                        f"{proc.name} exited with status {proc.popen.returncode}; "
                        f"see {log_dir / (proc.name + '.log')}",
                        file=sys.stderr,
                    )
                    stop.set()
            stop.wait(0.5)
        stop.set()
        traffic.join(timeout=5)
        total = sum(counts.values())
        ok = counts.get("200", 0)
        print(f"\ntraffic: {total} requests to the frontend, {ok} answered 200", flush=True)
    print(f"logs kept in {_shown(log_dir)}", flush=True)
    return 0 if total and ok / total >= 0.95 else 1


def _say_where(
    cp_url: str, urls: dict[str, str], token_file: Path, log_dir: Path, repo: Path
) -> None:
    cli = _cli()
    server = f"--server {cp_url}"
    # ``--token=VALUE``, not ``--token VALUE``: argparse takes a value that starts with ``-``
    # only in the joined form, and a user may paste any token into these lines.
    token = f'--token="$(cat {_shown(token_file)})"'
    policies = repo / "examples" / "policies"
    tries = "\n".join(
        f"  $ {cli} policy apply {_shown(policies / (name + '.yaml'))} {server} {token}"
        for name in TRY_POLICIES
    )
    print(
        f"""
The shop is running: frontend -> orders -> payments (payments-1, and payments-2-flaky failing
30% of its charges: the mesh retries them on the other replica, so the frontend sees none).

  dashboard                 {cp_url}/
  call the shop             $ curl -s {urls["frontend"]}/
  health, metrics           $ curl -s {urls["frontend"]}/_mesh/health
                            $ curl -s {urls["orders"]}/_mesh/metrics
  services and instances    $ {cli} status {server}
  the policy in force       $ {cli} policy get -o yaml {server}
  only orders may charge    $ curl -s -X POST {urls["p1"]}/charge

Policies to try while it runs (each is a new version, live in a few milliseconds):
{tries}
and back to the start:
  $ {cli} policy apply {_shown(repo / "examples" / "shop" / "mesh.yaml")} {server} {token}

Logs: {_shown(log_dir)}/  -  Ctrl-C stops everything.""",
        flush=True,
    )
