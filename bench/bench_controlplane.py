"""Policy propagation: from ``PUT /v1/policy`` returning to the last watching service holding the
new version.

Each watcher is a real :class:`asgimesh.MeshRuntime` following the control plane with the
service's own watch code (``ControlPlaneSource._watch``: long poll, signature verified against
the trust bundle, policy validated and swapped in). A service runs one such watch on a thread of
its own; here the watches of one worker process share one event loop instead of 50 threads, so
that the figure measures the control plane and the client, not 50 threads queueing for one GIL
(which no real deployment has). Watchers are spread over a few worker processes. For the SQLite
store one control plane serves them all; for etcd two replicas share one etcd, watchers split
between them, and every PUT goes to the first replica, so half the watchers hear of it through
etcd's watch. Each configuration makes 20 changes; the benchmark checks that every watcher
reported every version (and that versions are the ones PUT returned) before it reports a figure.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CHANGES = 20
ROUNDS = 3
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
SIZES = (50, 100, 200)
ADMIN = "bench-admin-token"


# -- worker: N runtimes, one line per applied version ---------------------------------------------


def worker(urls: list[str], count: int) -> None:
    import logging

    import structlog

    from asgimesh import MeshRuntime, MeshSettings
    from asgimesh.policy import PolicySnapshot

    # This process is the host: its logs go to stderr, warnings and up, off our protocol pipe.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )

    out = sys.stdout
    lock = threading.Lock()

    def listener(snapshot: PolicySnapshot) -> None:
        stamp = time.time()
        with lock:
            out.write(f"{snapshot.version} {stamp:.6f}\n")
            out.flush()

    runtimes = []
    for i in range(count):
        # start=False: the first load happens here; the watch loops run below, all on one loop.
        settings = MeshSettings(service=f"w{i}", config=urls[i % len(urls)])
        runtime = MeshRuntime(settings, start=False)
        runtime.policy.subscribe(listener)
        runtimes.append(runtime)
    with lock:
        versions = {r.policy.current.version for r in runtimes}
        out.write(f"ready {min(versions)}\n")
        out.flush()

    def stop_on_eof() -> None:
        sys.stdin.read()  # until the parent closes our stdin
        os._exit(0)

    threading.Thread(target=stop_on_eof, daemon=True).start()

    async def watch_all() -> None:
        async with anyio.create_task_group() as tasks:
            for runtime in runtimes:
                tasks.start_soon(runtime.source._watch)  # type: ignore[union-attr]

    anyio.run(watch_all, backend="asyncio")


# -- parent ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer in {timeout}s")


class Stack:
    """The servers of one configuration, stopped together."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], ready: str, name: str) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        wait_http(ready, proc)

    def control_plane(self, name: str, store: str | None = None) -> str:
        port = free_port()
        args = [sys.executable, "-m", "asgimesh", "control-plane", "--port", str(port)]
        args += ["--state-dir", str(self.tmp / name), "--admin-token", ADMIN]
        args += ["--log-format", "console"]
        if store:
            args += ["--store", store]
        url = f"http://127.0.0.1:{port}"
        self.spawn(args, url + "/v1/trust-bundle", name)
        return url

    def etcd(self) -> str:
        client, peer = free_port(), free_port()
        c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        args = ["etcd", "--name=bench", f"--data-dir={self.tmp / 'etcd'}"]
        args += [f"--listen-client-urls={c}", f"--advertise-client-urls={c}"]
        args += [f"--listen-peer-urls={p}", f"--initial-advertise-peer-urls={p}"]
        args += [f"--initial-cluster=bench={p}", "--log-level=error"]
        self.spawn(args, c + "/version", "etcd")
        return f"etcd://127.0.0.1:{client}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Our protocol lines only (the runtimes' own log lines share the pipe)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if parts and (parts[0] == "ready" or (len(parts) == 2 and parts[0].isdigit())):
            lines.put(line)


def measure(urls: list[str], watchers: int) -> dict[str, float]:
    """Start ``watchers`` runtimes on ``urls``; make CHANGES PUTs; per change, the seconds from
    PUT returning to the last watcher holding that version."""
    admin = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client() as client:
        client.put(urls[0] + "/v1/policy", json={}, headers=admin).raise_for_status()
    lines: queue.Queue[str] = queue.Queue()
    workers = []
    per_worker = [watchers // WORKERS + (i < watchers % WORKERS) for i in range(WORKERS)]
    for count in per_worker:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", ",".join(urls), "--count", str(count)],
            env=env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
        workers.append(proc)
    try:
        ready = 0
        while ready < WORKERS:
            line = lines.get(timeout=120)
            if line.startswith("ready"):
                ready += 1
        while not lines.empty():
            lines.get_nowait()
        print(f"  {watchers} watchers ready", flush=True)
        rounds: list[list[float]] = []
        with httpx.Client() as client:
            for _ in range(ROUNDS):
                rounds.append(_changes(client, urls[0], admin, lines, watchers))
    finally:
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    p50s, p99s = [], []
    for latencies in rounds:
        print("  latencies ms:", " ".join(f"{x * 1000:.0f}" for x in latencies), flush=True)
        latencies.sort()
        p50s.append(statistics.median(latencies))
        p99s.append(latencies[round(0.99 * (len(latencies) - 1))])
    return {
        "p50": statistics.median(p50s) * 1000,
        "p99": statistics.median(p99s) * 1000,
        "max": max(max(r) for r in rounds) * 1000,
        "checked": float(sum(len(r) for r in rounds) * watchers),
    }


def _changes(
    client: httpx.Client,
    url: str,
    admin: dict[str, str],
    lines: queue.Queue[str],
    watchers: int,
) -> list[float]:
    """CHANGES PUTs; for each, seconds from PUT returning to the last watcher applying it."""
    latencies = []
    for change in range(CHANGES):
        time.sleep(0.2)
        body = {"defaults": {"retries": {"attempts": change % 5}}}
        answer = client.put(url + "/v1/policy", json=body, headers=admin)
        returned = time.time()
        version = answer.json()["version"]
        last, seen = 0.0, 0
        while seen < watchers:
            got, stamp = lines.get(timeout=30).split()
            if int(got) < version:
                continue  # a watcher that started before the first version reached it
            if int(got) != version:
                raise SystemExit(f"a watcher applied {got} while waiting for {version}")
            seen += 1
            last = max(last, float(stamp))
        latencies.append(max(0.0, last - returned))
    return latencies


def run_config(name: str, watchers: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cp-"))
    stack = Stack(tmp)
    try:
        if name == "sqlite":
            urls = [stack.control_plane("cp")]
        else:
            store = stack.etcd()
            urls = [stack.control_plane("cp-a", store), stack.control_plane("cp-b", store)]
        return measure(urls, watchers)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from _report import write_section

    configs = ["sqlite"] + (["etcd"] if shutil.which("etcd") else [])
    rows = []
    for name in configs:
        for watchers in SIZES:
            result = run_config(name, watchers)
            label = "SQLite, 1 replica" if name == "sqlite" else "etcd, 2 replicas"
            print(
                f"{label:18} {watchers:4} watchers: p50 {result['p50']:6.1f} ms  "
                f"p99 {result['p99']:6.1f} ms  max {result['max']:6.1f} ms",
                flush=True,
            )
            rows.append((label, watchers, result))
    table = [
        "| store | watchers | p50 ms | p99 ms | worst ms | versions checked |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, watchers, r in rows:
        table.append(
            f"| {label} | {watchers} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} "
            f"| {int(r['checked'])} |"
        )
    body = f"""## Control plane: policy propagation

Time from `PUT /v1/policy` returning to the last watcher holding the new version. Each watcher
is a real `MeshRuntime` running the service's own watch code (the long poll kept open with
`Accept: application/x-ndjson`; each version's signature checked against the trust bundle, the
document validated, then swapped in); {WORKERS} worker processes share them, the watches of one
process on one event loop. SQLite: one control plane. etcd: two control-plane replicas on one
etcd, watchers split between them, every PUT through the first replica (half the watchers hear
of it through etcd's watch). {ROUNDS} rounds of {CHANGES} changes per row: p50 and p99 are the
medians of the rounds' p50 and p99 (with {CHANGES} changes a round's p99 is its slowest change);
worst is the slowest change of all. Every watcher's every version is checked. Target: p99 under
500 ms at 200 watchers. Watchers, control plane(s) and etcd share this machine's 2 cores (and
other work running on it), so growth with the watcher count is mostly client CPU: on a real
mesh each service's watcher has its own CPU. Two replicas answer faster than one even though
half the watchers hear through etcd: the fan-out is split between two server processes.

{chr(10).join(table)}
"""
    write_section("controlplane", body, "bash bench/run.sh controlplane")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--only", help="sqlite or etcd, and a watcher count: sqlite:200")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker.split(","), args.count)
    elif args.only:
        store, _, count = args.only.partition(":")
        print(run_config(store, int(count or 200)))
    else:
        main()
