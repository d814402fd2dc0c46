"""Shared by ``bench_chain`` and ``bench_memory``: the processes of a two-hop chain.

A chain is wrk → gateway → payments. Each app is one server process (uvicorn or gunicorn); a
sidecar variant puts one proxy process beside each app (nginx or HAProxy, config written into
a temporary directory), in Istio's shape: the gateway's sidecar takes the gateway's inbound
and, on a second listener, its outbound calls, which it sends to payments' sidecar, which
takes payments' inbound. Every process runs in its own process group and is stopped with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT
from bench_inbound import LOAD_CPU, SERVER_CPU, free_port, pin

__all__ = [
    "LOAD_CPU",
    "SERVER_CPU",
    "Chain",
    "Proc",
    "Sidecar",
    "WrkRun",
    "app_server",
    "cpu_ns",
    "free_port",
    "pin",
    "rss_kib",
    "wrk",
]


@dataclass
class Proc:
    """One server process, started in its own session (process group), pinned like all the
    chain's servers, stopped with its whole group."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: A URL that answers once the process is ready (any HTTP answer counts).
    ready: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, work: Path) -> None:
        """Start in ``work`` (its output goes to a log file there, never to a pipe nobody
        reads, which would stall the server once full)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "CHAIN_"))}
        env.update(PYTHONPATH=str(ROOT), MESH_ACCESS_LOG="false", **self.env)
        log = work / f"{self.name.replace(' ', '-')}.out"
        with log.open("wb") as output:
            self.proc = subprocess.Popen(
                [*pin(SERVER_CPU), *self.argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = log.read_text(errors="replace").strip()[-2000:]
                raise SystemExit(f"{self.name} stopped at start: {err}")
            try:
                httpx.get(self.ready, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"{self.name} did not answer {self.ready} within 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def app_server(kind: str, role: str, port: int, env: dict[str, str]) -> Proc:
    """``role`` (gateway or payments) of the ASGI chain under one uvicorn worker, or of the
    WSGI chain under one gunicorn sync worker."""
    if kind == "asgi":
        argv = [
            sys.executable, "-m", "uvicorn", "--factory", f"bench._chain_app:{role}",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--log-level", "warning", "--no-access-log",
        ]
    else:
        argv = [
            sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            f"bench._chain_wsgi:{role}()",
        ]
    # The gateway starts last: its check crosses the whole chain.
    ready = f"http://127.0.0.1:{port}/{'pay/' if role == 'payments' else ''}ready"
    return Proc(f"{kind} {role}", argv, {"MESH_SERVICE": role, **env}, ready)


@dataclass
class Listener:
    """One listener of a sidecar: it takes ``port`` and proxies to ``upstream``, adding the
    header ``mark`` (``x-chain-front``, ``x-chain-out`` or ``x-chain-in``) naming the proxy."""

    port: int
    upstream: int
    mark: str


_NGINX = """\
worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body-{name};
    proxy_temp_path {dir}/proxy-{name};
    fastcgi_temp_path {dir}/fastcgi-{name};
    uwsgi_temp_path {dir}/uwsgi-{name};
    scgi_temp_path {dir}/scgi-{name};
{blocks}}}
"""

_NGINX_BLOCK = """\
    upstream u{port} {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://u{port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header {mark} nginx;
        }}
    }}
"""

_HAPROXY = """\
global
    nbthread 1
    maxconn 1024
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
{blocks}"""

_HAPROXY_BLOCK = """\
frontend f{port}
    bind 127.0.0.1:{port}
    http-request set-header {mark} haproxy
    default_backend b{port}
backend b{port}
    server app 127.0.0.1:{upstream}
"""


@dataclass
class Sidecar:
    """An nginx (one worker process) or HAProxy (one thread) beside one app."""

    proxy: str
    name: str
    listeners: list[Listener]

    def process(self, work: Path) -> Proc:
        if self.proxy == "nginx":
            blocks = "".join(_NGINX_BLOCK.format(**vars(lst)) for lst in self.listeners)
            conf = work / f"nginx-{self.name}.conf"
            conf.write_text(_NGINX.format(dir=work, name=self.name, blocks=blocks))
            argv = ["nginx", "-p", str(work), "-e", str(work / f"nginx-{self.name}.log"),
                    "-c", str(conf)]
        else:
            blocks = "".join(_HAPROXY_BLOCK.format(**vars(lst)) for lst in self.listeners)
            conf = work / f"haproxy-{self.name}.cfg"
            conf.write_text(_HAPROXY.format(blocks=blocks))
            argv = ["haproxy", "-db", "-f", str(conf)]
        # Ready once the last listener answers (any answer: its upstream may not be up yet).
        ready = f"http://127.0.0.1:{self.listeners[-1].port}/pay/ready"
        return Proc(f"{self.proxy} {self.name}", argv, ready=ready)


@dataclass
class Chain:
    """One variant: wrk → (sidecar →) gateway (→ sidecar → sidecar) → payments."""

    name: str
    kind: str  # asgi or wsgi
    #: ``direct``, ``mesh``, ``nginx`` or ``haproxy``.
    shape: str
    work: Path
    procs: list[Proc] = field(default_factory=list)
    entry: int = 0

    def start(self) -> None:
        work = self.work / f"{self.kind}-{self.shape}"
        work.mkdir(exist_ok=True)
        gw, pay = free_port(), free_port()
        payments_env: dict[str, str] = {}
        if self.shape == "mesh":
            payments_env = {"CHAIN_MESH": "1"}
            gateway_env = {
                "CHAIN_MESH": "1",
                "CHAIN_PAYMENTS": "http://payments",
                "MESH_UPSTREAMS": f"payments=http://127.0.0.1:{pay}",
            }
            self.entry = gw
            sidecars: list[Sidecar] = []
        elif self.shape == "direct":
            gateway_env = {"CHAIN_PAYMENTS": f"http://127.0.0.1:{pay}"}
            self.entry = gw
            sidecars = []
        else:
            front, out, into = free_port(), free_port(), free_port()
            gateway_env = {"CHAIN_PAYMENTS": f"http://127.0.0.1:{out}"}
            self.entry = front
            sidecars = [
                Sidecar(self.shape, f"{self.kind}-payments", [Listener(into, pay, "x-chain-in")]),
                Sidecar(
                    self.shape,
                    f"{self.kind}-gateway",
                    [Listener(front, gw, "x-chain-front"), Listener(out, into, "x-chain-out")],
                ),
            ]
        self.procs = [
            app_server(self.kind, "payments", pay, payments_env),
            *(sidecar.process(work) for sidecar in sidecars),
            app_server(self.kind, "gateway", gw, gateway_env),
        ]
        for proc in self.procs:
            proc.start(work)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry}/checkout"

    @property
    def wrk_headers(self) -> tuple[str, ...]:
        """gunicorn's sync worker closes every connection after answering, so wrk calling the
        WSGI gateway straight would pay a new connection per request where, through a sidecar,
        it would keep one: every WSGI variant asks for a new connection per request instead,
        as a load balancer in front of sync workers has."""
        return ("Connection: close",) if self.kind == "wsgi" else ()

    def app(self, role: str) -> Proc:
        return next(p for p in self.procs if p.name == f"{self.kind} {role}")

    def check(self) -> None:
        """One request through the chain answers as this variant must: payments' body arrived,
        with a ``traceparent`` if and only if the mesh carried it, and the marks of every
        proxy the request should have crossed (and none other)."""
        response = httpx.get(self.url + "/check", timeout=10)
        assert response.status_code == 200, (self.name, response.status_code, response.text)
        seen = response.json()
        assert seen["paid"] is True, (self.name, seen)
        assert seen["path"] == "/pay/checkout/check", (self.name, seen)
        traced = seen["traceparent"]
        if self.shape == "mesh":
            assert isinstance(traced, str), (self.name, seen)
            assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", traced), (self.name, seen)
            assert "x-request-id" in response.headers, (self.name, response.headers)
        else:
            assert traced is None, (self.name, seen)
        proxy = self.shape if self.shape in ("nginx", "haproxy") else None
        assert seen["in"] == proxy, (self.name, seen)
        assert seen["out"] == proxy, (self.name, seen)
        assert response.headers["x-chain-front"] == (proxy or "-"), (self.name, response.headers)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class WrkRun:
    rps: float
    p50: float
    p99: float
    requests: int


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str, connections: int, duration: int, headers: tuple[str, ...] = ()
) -> WrkRun:
    """One ``wrk -t1`` run on the load core; refuses runs with any non-2xx answer or any socket
    error (a connection the server closed after answering, as gunicorn's sync worker does,
    is not an error to wrk)."""
    argv = [*pin(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 120
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect \d+, read \d+, write \d+, timeout \d+", out)
    if non_2xx or sockets:
        raise SystemExit(f"wrk saw wrong answers or socket errors against {url}:\n{out}")
    return WrkRun(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50=_seconds(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        p99=_seconds(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    )


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` and all its descendants (a gunicorn arbiter and its worker,
    an nginx master and its worker), in KiB, from ``/proc``."""
    total = 0
    for child in [pid, *_descendants(pid)]:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total


def cpu_ns(pids: list[int]) -> int:
    """CPU time used so far by ``pids``, their descendants and all their threads, in
    nanoseconds (``/proc/<pid>/task/*/schedstat``): time on a core, not time waiting for one."""
    total = 0
    for each in [p for pid in pids for p in (pid, *_descendants(pid))]:
        try:
            tasks = list(Path(f"/proc/{each}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread ended
    return total


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found
