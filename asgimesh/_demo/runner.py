"""Runs the example mesh on this machine: a control plane, four service processes, traffic.

Every piece is a real process on a loopback port, started the way an operator would start it
(``asgimesh control-plane``, ``asgimesh serve``), so the demo doubles as a walkthrough.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["DEMO_POLICY", "run_demo"]

DEMO_POLICY = {
    "version": 1,
    "defaults": {"timeout": "2s", "per_try_timeout": "500ms"},
    "services": {
        "payments": {
            "routes": [
                # Charges carry an idempotency key in a real system, so retrying them is safe.
                {"match": {"method": "POST", "path": "/charge"}, "idempotent": True}
            ],
        },
    },
    "inbound": {},
}


@dataclass
class _Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return _free_port()
    return preferred


def _wait(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}; see its log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {url} within {timeout:g}s")


@contextlib.contextmanager
def _processes(state: Path) -> Iterator[list[_Proc]]:
    procs: list[_Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()


def _spawn(
    procs: list[_Proc], name: str, args: list[str], env: dict[str, str], log_dir: Path, url: str
) -> _Proc:
    log = (log_dir / f"{name}.log").open("wb")
    popen = subprocess.Popen(
        [sys.executable, "-m", "asgimesh", *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    proc = _Proc(name, url, popen)
    procs.append(proc)
    return proc


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
    """Start the mesh, print where to look, run until Ctrl-C (or ``duration`` seconds)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_dir = state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    admin_token = secrets.token_urlsafe(24)
    token_file = state_dir / "admin-token"
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(admin_token + "\n")
    cp_port = _port(port)
    cp_url = f"http://127.0.0.1:{cp_port}"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    with _processes(state_dir) as procs:
        cp = _spawn(
            procs,
            "control-plane",
            [
                "control-plane",
                "--port",
                str(cp_port),
                "--state-dir",
                str(state_dir / "control-plane"),
            ],
            {"MESH_ADMIN_TOKEN": admin_token},
            log_dir,
            cp_url,
        )
        _wait(cp_url + "/v1/policy", cp.popen, "control plane")

        ports = {name: _free_port() for name in ("payments-1", "payments-2", "orders", "frontend")}
        policy: dict[str, Any] = copy.deepcopy(DEMO_POLICY)
        services = policy["services"]
        services["payments"]["endpoints"] = [
            f"http://127.0.0.1:{ports['payments-1']}",
            f"http://127.0.0.1:{ports['payments-2']}",
        ]
        services["orders"] = {"endpoints": [f"http://127.0.0.1:{ports['orders']}"]}
        admin = {"Authorization": f"Bearer {admin_token}"}
        httpx.put(cp_url + "/v1/policy", json=policy, headers=admin, timeout=10).raise_for_status()

        apps = {
            "payments-1": ("payments", "payments", {"DEMO_REPLICA": "1"}),
            "payments-2": (
                "payments",
                "payments",
                {"DEMO_REPLICA": "2", "DEMO_FAIL_PERCENT": "30"},
            ),
            "orders": ("orders", "orders", {}),
            "frontend": ("frontend", "frontend", {}),
        }
        for name, (service, app, extra) in apps.items():
            token = httpx.post(
                cp_url + "/v1/tokens", json={"service": service}, headers=admin, timeout=10
            ).json()["token"]
            env = {
                "MESH_SERVICE": service,
                "MESH_CONFIG": cp_url,
                "MESH_TOKEN": token,
                # Trust the control plane's CA from its own files, not on first use.
                "MESH_CA": str(state_dir / "control-plane" / "ca.pem"),
                **extra,
            }
            url = f"http://127.0.0.1:{ports[name]}"
            _spawn(
                procs,
                name,
                ["serve", f"asgimesh._demo.apps:{app}", "--port", str(ports[name])],
                env,
                log_dir,
                url,
            )
        for proc in procs[1:]:
            _wait(proc.url + "/_mesh/health", proc.popen, proc.name)

        frontend = f"http://127.0.0.1:{ports['frontend']}"
        counts: dict[str, int] = {}
        traffic = threading.Thread(
            target=_traffic, args=(frontend + "/", stop, counts), daemon=True
        )
        traffic.start()
        print(
            f"""
asgimesh demo is running: frontend -> orders -> payments (2 replicas, one failing 30%).

  dashboard         {cp_url}/
  call the mesh     curl {frontend}/
  health, metrics   curl {frontend}/_mesh/health ; curl {frontend}/_mesh/metrics
  services          MESH_CONFIG={cp_url} asgimesh status
  change policy     MESH_CONFIG={cp_url} MESH_ADMIN_TOKEN=$(cat {token_file}) \\
                      asgimesh policy apply FILE
  logs              {log_dir}/

Press Ctrl-C to stop.""",
            flush=True,
        )
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for proc in procs:
                if proc.popen.poll() is not None:
                    print(
                        f"{proc.name} exited with status {proc.popen.returncode}", file=sys.stderr
                    )
                    stop.set()
            stop.wait(0.5)
        stop.set()
        traffic.join(timeout=5)
        total = sum(counts.values())
        ok = counts.get("200", 0)
        print(f"traffic: {total} requests to the frontend, {ok} answered 200", flush=True)
        return 0 if total and ok / total >= 0.95 else 1
