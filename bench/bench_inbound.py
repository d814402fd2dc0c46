"""Inbound overhead: examples/hello_asgi's Starlette app bare vs behind ``MeshMiddleware``, and a
Flask app bare vs behind ``MeshWSGIMiddleware`` (bench/_wsgi_app.py).

Each variant runs under its own single-worker server on loopback (uvicorn, stock: asyncio loop,
h11; gunicorn, stock: one sync worker); ``wrk`` drives one at a time, alternating variants round
by round so that drift in the shared machine's load hits both alike. Two measurements per
variant and round:

* throughput: ``wrk -t1 -c32`` (requests per second, closed loop);
* latency: ``wrk -t1 -c1`` (one connection, one request at a time), whose p50 is the time a
  request takes without queueing behind 31 others, so the difference is the mesh's own cost.

The mesh variant has metrics and W3C tracing on (every request carries a ``traceparent`` and is
continued, and an ``x-request-id`` made and echoed) and the access log off. A third variant
adds the OpenTelemetry SDK (BatchSpanProcessor, an exporter that drops spans) for reference.
Before measuring, each server's answers are checked; each wrk run must report no non-2xx
responses and no socket errors, or the benchmark fails instead of reporting.

Where valgrind is installed, the instructions each server process executes for a fixed number
of requests are also counted (callgrind, counting switched on after warm-up): unlike times,
those counts do not move with the load of a shared machine.

    python bench/bench_inbound.py [--rounds 9] [--duration 3] [--callgrind 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, median, write_section

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: name -> (server, app, the bare variant it is compared with).
VARIANTS = {
    "bare": ("uvicorn", "examples.hello_asgi:bare", "bare"),
    "mesh": ("uvicorn", "examples.hello_asgi:app", "bare"),
    "mesh+otel": ("uvicorn", "bench._otel_app:app", "bare"),
    "wsgi bare": ("gunicorn", "bench._wsgi_app:bare", "wsgi bare"),
    "wsgi mesh": ("gunicorn", "bench._wsgi_app:app", "wsgi bare"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    app: str
    port: int = field(default_factory=free_port)
    #: "uvicorn" or "gunicorn".
    kind: str = "uvicorn"
    #: Extra command-line options for the server.
    options: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    #: Extra environment for the server (on top of ``MESH_SERVICE=bench``).
    env: dict[str, str] = field(default_factory=dict)
    #: Send the server's output (tracebacks, logs) to /dev/null rather than the terminal.
    quiet: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        if self.kind == "gunicorn":
            return [
                sys.executable,
                "-m",
                "gunicorn",
                self.app,
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--timeout",
                "600",  # under valgrind the worker boots slowly
                *self.options,
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
            *self.options,
        ]

    def start(self, prefix: list[str] | None = None, wait: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.update(PYTHONPATH=str(ROOT), MESH_SERVICE="bench", MESH_ACCESS_LOG="false")
        env.update(self.env)
        output = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(
            [*(pin(SERVER_CPU) if prefix is None else prefix), *self.command()],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                # Under valgrind a first answer takes seconds: a retried one would count twice.
                httpx.get(self.url, timeout=1 if prefix is None else 300)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{self.name}: {self.kind} did not start")

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after 30 s (under
        valgrind a graceful shutdown can take that long)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def pids(self) -> list[int]:
        """The server's processes: uvicorn's one, or gunicorn's arbiter and its worker."""
        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):  # a process ended
                    if os.getpgid(int(entry.name)) == self.proc.pid:
                        found.append(int(entry.name))
        return found

    def cpu_ns(self) -> int:
        """CPU time the server's processes have used so far (all threads), in nanoseconds."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it ended
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        total += int((task / "schedstat").read_text().split()[0])
        return total

    def check(self) -> None:
        """The answers are right before any figure is taken."""
        response = httpx.get(self.url, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200, (self.name, response.status_code)
        assert response.text == "Hello, mesh!\n", (self.name, response.text)
        meshed = "bare" not in self.name
        assert ("x-request-id" in response.headers) is meshed, (self.name, response.headers)
        if meshed:
            metrics = httpx.get(self.url + "_mesh/metrics").text
            assert 'mesh_inbound_requests_total{method="GET",service="bench",status="200"}' in (
                metrics
            ), metrics


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


#: The server and the load generator each get a core of their own (where there are two), so
#: that neither steals the other's time slices: the run-to-run noise drops several-fold.
SERVER_CPU, LOAD_CPU = 1, 0


def pin(cpu: int) -> list[str]:
    """A ``taskset`` prefix pinning a command to ``cpu``, or nothing where that cannot be done."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str, connections: int, duration: int, *, all_non_2xx: bool = False
) -> tuple[float, float, int]:
    """(requests/s, p50 seconds, requests) of one wrk run; refuses runs with socket errors, and
    runs with non-2xx answers, or with ``all_non_2xx`` runs where any answer was 2xx."""
    out = subprocess.run(
        [
            *pin(LOAD_CPU),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"traceparent: {TRACEPARENT}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    wrong = (not non_2xx or int(non_2xx.group(1)) != total) if all_non_2xx else bool(non_2xx)
    errors = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
    sockets = re.search(errors, out)
    if sockets and all_non_2xx:
        # uvicorn closes a connection after an app's exception: wrk counts that as a read error.
        connect, read, write, timeout = (int(n) for n in sockets.groups())
        wrong = wrong or connect + write + timeout > 0 or read > total
    elif sockets:
        wrong = True
    if wrong:
        raise SystemExit(f"wrk saw unexpected answers or errors against {url}:\n{out}")
    return rps, p50, total


def in_process(rounds: int = 7, calls: int = 10000) -> tuple[float, float]:
    """Microseconds per request of the bare app and of the mesh app, called directly (no server,
    no sockets): the middleware's own cost without the server's noise. Best of ``rounds``."""
    import asyncio

    sys.path.insert(0, str(ROOT))
    os.environ["MESH_SERVICE"] = "bench"
    from examples.hello_asgi import app, bare

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"traceparent", TRACEPARENT.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])  # type: ignore[arg-type]

    async def loop(target: object) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await target(dict(scope), receive, send)  # type: ignore[operator]
        return (time.perf_counter() - start) / calls * 1e6

    async def measure() -> tuple[float, float]:
        await loop(bare)
        await loop(app)
        bare_us, mesh_us = [], []
        for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits both
            bare_us.append(await loop(bare))
            mesh_us.append(await loop(app))
        return min(bare_us), min(mesh_us)

    result = asyncio.run(measure())
    if set(statuses) != {200} or len(statuses) != calls * (2 * rounds + 2):
        raise SystemExit(f"in-process answers were wrong: {sorted(set(statuses))}")
    global _PROFILE_TARGET
    _PROFILE_TARGET = (app, loop)
    return result


_PROFILE_TARGET: tuple[object, object] | None = None
#: Where a function's own time goes, by the file it is defined in (first match wins).
_AREAS = (
    ("asgimesh/inbound/_decide.py", "core decision (ids, trace, deadline)"),
    ("asgimesh/inbound/_exchange.py", "exchange (status, slot, span, telemetry once)"),
    ("asgimesh/_wire.py", "core decision (ids, trace, deadline)"),
    ("asgimesh/_context.py", "core decision (ids, trace, deadline)"),
    ("<string>", "core decision (ids, trace, deadline)"),  # the dataclass __init__
    ("asgimesh/inbound/_asgi.py", "ASGI shell (send wrapper, context variable)"),
    ("asgimesh/telemetry", "metrics (asgimesh + prometheus_client)"),
    ("prometheus_client", "metrics (asgimesh + prometheus_client)"),
    ("_thread.lock", "metrics (asgimesh + prometheus_client)"),
    ("starlette", "the app (Starlette)"),
)


_BUILTINS = "built-ins called by all of these"


def profile_breakdown(calls: int = 5000) -> list[tuple[str, float]]:
    """Share of the mesh app's in-process time per area, from cProfile's own-time figures."""
    import asyncio
    import cProfile
    import pstats

    assert _PROFILE_TARGET is not None
    app, loop = _PROFILE_TARGET
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(loop(app))  # type: ignore[operator]
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in stats.items():
        where = f"{filename}:{name}"
        area = next((label for key, label in _AREAS if key in where), _BUILTINS)
        totals[area] = totals.get(area, 0.0) + own
    whole = sum(totals.values())
    return sorted(((area, own / whole) for area, own in totals.items()), key=lambda x: -x[1])


def _get(connection: http.client.HTTPConnection, name: str) -> None:
    connection.request("GET", "/", headers={"traceparent": TRACEPARENT})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200 or body != b"Hello, mesh!\n":
        raise SystemExit(f"{name} under valgrind: {response.status} {body!r}")


def _summary(dump: Path) -> int:
    found = re.search(r"^summary:\s+(\d+)", dump.read_text(), re.M)
    return int(found.group(1)) if found else 0


_VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file={out}/cg.%p"]


def instructions(name: str, requests: int) -> float:
    """Instructions per request that the server's processes execute for sequential GETs,
    counted by callgrind after start-up and a warm-up of 200 requests."""
    kind, app, _ = VARIANTS[name]
    if kind == "gunicorn":
        # callgrind_control cannot reach a forked worker: the worker (the app preloaded in
        # the arbiter) counts from its fork to its exit after --max-requests, and the
        # difference between two such runs is what the extra requests cost.
        few = _worker_instructions(name, app, 200)
        return (_worker_instructions(name, app, 200 + requests) - few) / requests
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out:
        server = Server(name, app, kind=kind, quiet=True)
        valgrind = [arg.format(out=out) for arg in _VALGRIND]
        server.start([*valgrind, "--instr-atstart=no"], wait=600)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            for _ in range(200):
                _get(connection, name)
            pids = [str(pid) for pid in server.pids()]
            on = ["callgrind_control", "-i", "on", *pids]
            subprocess.run(on, capture_output=True, check=True)
            for _ in range(requests):
                _get(connection, name)
            subprocess.run(["callgrind_control", "-d", *pids], capture_output=True, check=True)
        finally:
            server.stop()
        total = sum(_summary(dump) for dump in Path(out).glob("cg.*.1"))  # the dump
    if not total:
        raise SystemExit(f"{name}: callgrind counted nothing")
    return total / requests


def _worker_instructions(name: str, app: str, requests: int) -> int:
    """Everything one gunicorn worker executes from its fork to its exit after ``requests``."""
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out:
        options = ["--preload", "--max-requests", str(requests)]
        server = Server(name, app, kind="gunicorn", quiet=True, options=options)
        server.start([arg.format(out=out) for arg in _VALGRIND], wait=600)
        try:
            assert server.proc is not None
            workers = [pid for pid in server.pids() if pid != server.proc.pid]
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            for _ in range(requests - 1):  # start() made the first
                _get(connection, name)
            dumps = [Path(out) / f"cg.{pid}" for pid in workers]
            deadline = time.monotonic() + 300
            while not all(dump.exists() and _summary(dump) for dump in dumps):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: the gunicorn worker did not exit under valgrind")
                time.sleep(1)
        finally:
            server.stop()
        return sum(_summary(dump) for dump in dumps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument(
        "--callgrind", type=int, default=1000, metavar="N",
        help="requests counted under valgrind per variant (0: skip)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    bare_us, mesh_us = in_process()
    print(f"in-process: bare {bare_us:.1f} us, mesh {mesh_us:.1f} us per request", flush=True)
    breakdown = profile_breakdown()
    profile = "; ".join(f"{area} {share:.0%}" for area, share in breakdown)
    counted: dict[str, float] = {}
    if args.callgrind and shutil.which("valgrind") and shutil.which("callgrind_control"):
        for name in ("bare", "mesh", "wsgi bare", "wsgi mesh"):
            counted[name] = instructions(name, args.callgrind)
            print(f"callgrind {name:10} {counted[name]:,.0f} instructions/request", flush=True)
    servers = [Server(name, app, kind=kind) for name, (kind, app, _) in VARIANTS.items()]
    rps: dict[str, list[float]] = {s.name: [] for s in servers}
    p50: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            server.start()
            server.check()
            wrk(server.url, 32, 1)  # warm up
        for round_ in range(1, args.rounds + 1):
            order = servers if round_ % 2 else servers[::-1]
            for server in order:
                cpu_before = server.cpu_ns()
                r, _, total = wrk(server.url, 32, args.duration)
                cpu[server.name].append((server.cpu_ns() - cpu_before) / total / 1000)
                _, latency, _ = wrk(server.url, 1, args.duration)
                rps[server.name].append(r)
                p50[server.name].append(latency)
                line = (
                    f"{r:9.0f} req/s  p50(c1) {latency * 1e6:7.1f} us  "
                    f"server CPU {cpu[server.name][-1]:6.1f} us/request"
                )
                print(f"round {round_} {server.name:10} {line}", flush=True)
        for server in servers:
            server.check()  # still right after the load
    finally:
        for server in servers:
            server.stop()

    def paired(name: str) -> tuple[float, float]:
        """Median over rounds of (req/s ratio to its bare variant, added p50 in µs) within
        each round."""
        base = VARIANTS[name][2]
        ratios = [m / b for m, b in zip(rps[name], rps[base], strict=True)]
        added = [(m - b) * 1e6 for m, b in zip(p50[name], p50[base], strict=True)]
        return median(ratios), median(added)

    rows = []
    for name, (kind, _, base) in VARIANTS.items():
        ratio, added = paired(name)
        runs = ", ".join(f"{v:.0f}" for v in rps[name])
        cpu_us = median(cpu[name])
        rows.append(
            f"| {name} ({kind}) | {median(rps[name]):,.0f} | {ratio:.1%} "
            f"| {median(p50[name]) * 1e6:.0f} µs | {added:+.0f} µs | {cpu_us:.1f} µs "
            f"| {median(cpu[base]) / cpu_us:.1%} | {runs} |"
        )
    cpu_ratio = median(cpu["bare"]) / median(cpu["mesh"])
    cpu_added = median(cpu["mesh"]) - median(cpu["bare"])
    ratio, added = paired("mesh")
    wsgi_ratio, wsgi_added = paired("wsgi mesh")
    verdict = (
        f"**Result: the mesh keeps {ratio:.1%} of the bare app's requests per second under "
        f"uvicorn and {wsgi_ratio:.1%} under gunicorn (target ≥ 95%), and adds {added:.0f} µs "
        f"and {wsgi_added:.0f} µs at p50 (target ≤ 25 µs).** Called in-process "
        f"(no server, no sockets), a request costs {bare_us:.1f} µs bare and {mesh_us:.1f} µs "
        f"with the mesh: {mesh_us - bare_us:.1f} µs added. By the server's own CPU time per "
        f"request, the mesh adds {cpu_added:.1f} µs ({cpu_ratio:.1%} of the bare app's capacity)."
    )
    counts = ""
    if counted:
        lines = []
        for name, base in (("mesh", "bare"), ("wsgi mesh", "wsgi bare")):
            added_ir = counted[name] - counted[base]
            lines.append(
                f"| {VARIANTS[name][0]} | {counted[base]:,.0f} | {counted[name]:,.0f} "
                f"| {added_ir:+,.0f} ({added_ir / counted[base]:+.1%}) "
                f"| {counted[base] / counted[name]:.1%} |"
            )
        counts = (
            "\n\nInstructions per request, counted by callgrind in the server's processes "
            f"({args.callgrind} sequential requests after 200 of warm-up, each with the same "
            "`traceparent`; gunicorn's by the worker from fork to exit, the difference between "
            f"{args.callgrind + 200} and 200 requests): unlike times, these do not move with the "
            "machine's load.\n\n"
            "| server | bare | mesh | added | capacity vs bare (by instructions) |\n"
            "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(lines)
        )
    header = (
        "| variant | req/s (median, wrk -c32) | vs its bare (median of rounds) "
        "| p50 (median, wrk -c1) | added p50 (median of rounds) | server CPU per request "
        "| capacity vs its bare (by CPU) | req/s per round |"
    )
    body = f"""## Inbound: the mesh middleware vs the bare app (uvicorn and gunicorn)

{verdict}

{header}
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}{counts}

- Apps: `examples/hello_asgi.py` (`bare` vs `app` = `MeshMiddleware(bare)`), one uvicorn worker
  each (asyncio loop, h11: uvicorn's defaults without the `standard` extra), `--no-access-log`;
  `bench/_wsgi_app.py` (the same answer from Flask, bare vs `MeshWSGIMiddleware`), one gunicorn
  sync worker each (gunicorn's default: a connection per request).
- Mesh: metrics on, W3C tracing on (wrk sends a `traceparent` that every request continues; an
  `x-request-id` is made and echoed), access log off, no OpenTelemetry SDK. `mesh+otel` adds the
  OpenTelemetry SDK (`BatchSpanProcessor`, an exporter that drops spans): one SERVER span per
  request, for reference (its cost is the SDK's).
- {args.rounds} rounds, each running every variant in turn (order alternating per round);
  throughput with `wrk -t1 -c32 -d{args.duration}s`, latency with `wrk -t1 -c1 -d{args.duration}s`
  (no queueing, so the p50 difference is the per-request cost). Ratios and differences are
  taken within each round (the variants ran seconds apart), then the median over rounds.
- Server CPU per request: the server's processes' CPU time (`/proc/<pid>/task/*/schedstat`)
  during the `-c32` run divided by the requests wrk completed. It leaves out time spent waiting
  for a core, but not the slowdown from sharing caches and hyperthreads with other processes:
  on a loaded machine it moves by tens of µs between runs; the instruction counts do not.
- In-process: the same two ASGI apps called directly in a loop (best of 7 rounds of 10,000
  calls).
- Checked: 200 and the exact body before and after the load (and every request under valgrind),
  `x-request-id` only on the mesh variants, the mesh's request counter present; every wrk run
  had no non-2xx answers and no socket errors.
- Profile of the mesh app called in-process (cProfile, own time by area; the profiler inflates
  small functions, so read shares, not times): {profile}. Under a server, h11 also validates
  the echoed `x-request-id` header (two regular expressions per request).
- The server is pinned to one core and wrk to the other (`taskset`), so they do not steal each
  other's time slices. Figures still move between runs on this shared 2-core machine; compare the
  columns of one run.
"""
    print(body)
    if not args.no_write:
        write_section("inbound", body, "bash bench/run.sh inbound")


if __name__ == "__main__":
    main()
