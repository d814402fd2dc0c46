"""What mesh identity costs: a two-hop chain in plain HTTP, with tokens, and with mTLS.

Two services, each one uvicorn worker with the mesh (access log off, metrics and tracing on;
``asgimesh serve bench._identity_app:app`` for mTLS, the app already wrapped otherwise):
``frontend``'s ``GET /call`` asks ``payments``' ``GET /whoami`` through ``AsyncMeshTransport``
and answers what payments said. A driver (this process, a
keep-alive ``httpx.Client``) calls frontend one request at a time, so every request crosses two
hops, driver → frontend and frontend → payments:

* ``plain``: ``MESH_MTLS=off``, both hops plain HTTP;
* ``token``: ``MESH_MTLS=permissive`` on plain HTTP (TLS ending before the app, as behind a
  serverless host's load balancer): frontend's calls to payments carry a ``mesh-identity``
  token (signed with its certificate's key, ``x5c``), which payments verifies;
* ``mtls``: ``MESH_MTLS=strict``, both hops HTTPS with client certificates; each service's
  identity comes from files (``MESH_CERT``/``MESH_KEY``/``MESH_CA``, issued by a throwaway CA
  like the mesh's own: ECDSA P-256); the driver presents a ``bench`` identity. Payments sees
  frontend's verified SPIFFE ID, frontend the driver's: the benchmark checks both answers.

Two measurements, alternating variants round by round:

* keep-alive latency: p50 and p99 of ``--calls`` sequential requests over one connection (the
  handshakes happen once; what is left is the records' encryption and the mesh's identity work:
  the verified chain in the ASGI scope, the caller ID in the request's context);
* new connections: a fresh connection per request straight to payments (TCP + TLS handshake
  with both certificates verified + one request), in connections per second, one at a time.

    python bench/bench_identity.py [--rounds 7] [--calls 2000] [--connections 300]
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, median, write_section
from bench_inbound import LOAD_CPU, SERVER_CPU, free_port, pin

TD = "spiffe://mesh.local/ns/default/sa"
APP = "bench._identity_app:app"
MESHED = "bench._identity_app:meshed_app"


@dataclass
class Service:
    name: str
    env: dict[str, str]
    https: bool
    #: ``asgimesh serve`` (HTTPS under mTLS), else uvicorn with the app already in the mesh.
    serve: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}"

    def start(self, client: httpx.Client) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.update(PYTHONPATH=str(ROOT), MESH_SERVICE=self.name, MESH_ACCESS_LOG="false")
        env.update(self.env)
        if self.serve:
            command = ["-m", "asgimesh", "serve", APP, "--port", str(self.port)]
        else:
            command = [
                "-m", "uvicorn", "--factory", MESHED, "--port", str(self.port),
                "--log-level", "warning", "--no-access-log",
            ]
        self.proc = subprocess.Popen(
            [*pin(SERVER_CPU), sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} stopped: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if client.get(self.url + "/_mesh/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"{self.name}: asgimesh serve did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@dataclass
class Variant:
    name: str
    frontend: Service
    payments: Service
    client: httpx.Client

    def check(self) -> None:
        """Right answers, and in mTLS the callers each side verified, before any figure."""
        answer = self.client.get(self.frontend.url + "/call")
        assert answer.status_code == 200, (self.name, answer.status_code, answer.text)
        body = answer.json()
        assert body["status"] == 200, (self.name, body)
        expected = None if self.name == "plain" else f"{TD}/frontend"
        assert body["payments"]["caller"] == expected, (self.name, body)
        me = self.client.get(self.frontend.url + "/whoami").json()["caller"]
        assert me == (f"{TD}/bench" if self.name == "mtls" else None), (self.name, me)

    def latencies(self, calls: int) -> list[float]:
        url = self.frontend.url + "/call"
        get, clock = self.client.get, time.perf_counter
        out = []
        for _ in range(calls):
            start = clock()
            response = get(url)
            out.append(clock() - start)
            if response.status_code != 200:
                raise SystemExit(f"{self.name}: {response.status_code} {response.text}")
        return out

    def connections_per_second(self, count: int, verify: ssl.SSLContext | bool) -> float:
        """New connection (and TLS handshake) per request, straight to payments."""
        url = self.payments.url + "/whoami"
        start = time.perf_counter()
        for _ in range(count):
            with httpx.Client(verify=verify, timeout=5) as fresh:
                response = fresh.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{self.name}: {response.status_code} {response.text}")
        return count / (time.perf_counter() - start)


def token_sides(ca: object, calls: int = 100_000) -> dict[str, float]:
    """Microseconds per call of each side's token work, in process: the caller's cache hit, the
    callee's cache hit, and, for scale, signing and verifying a token the first time."""
    from asgimesh.identity import IdentityStore, parse_svid
    from asgimesh.identity._jwt import JWTVerifier, TokenMinter, sign_with_svid
    from asgimesh.testing import ThrowawayCA

    assert isinstance(ca, ThrowawayCA)
    issued = ca.issue(f"{TD}/frontend")
    store = IdentityStore()
    svid = parse_svid(
        issued.cert_pem, issued.key_pem, ca.bundle_pem, trust_domain="mesh.local", source="bench"
    )
    store.set(svid)
    audience = f"{TD}/payments"
    minter = TokenMinter(store)
    header = minter.token_for(audience)
    assert header is not None
    bundle = store.current.bundle if store.current is not None else None
    verifier = JWTVerifier(audience, lambda: bundle)
    token, now = header.decode(), time.time()
    assert verifier.verify(token, now) == (f"{TD}/frontend", None)  # checks its own answer

    def per_call(fn: object, n: int) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                fn()  # type: ignore[operator]
            best = min(best, (time.perf_counter() - start) / n * 1e6)
        return best

    result = {
        "mint_cached": per_call(lambda: minter.cached(audience), calls),
        "verify_cached": per_call(lambda: verifier.verify(token, now), calls),
        "sign": per_call(lambda: sign_with_svid(store, audience, now, 300), 200),
        "verify": per_call(lambda: JWTVerifier(audience, lambda: bundle).verify(token, now), 200),
    }
    store.close()
    return result


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CPU}) if len(os.sched_getaffinity(0)) >= 2 else None

    from asgimesh.testing import ThrowawayCA

    ca = ThrowawayCA()
    work = Path(tempfile.mkdtemp(prefix="asgimesh-bench-identity-"))
    (work / "ca.pem").write_bytes(ca.bundle_pem)

    written: dict[str, dict[str, str]] = {}

    def files(name: str) -> dict[str, str]:
        if name in written:
            return written[name]
        svid = ca.issue(f"{TD}/{name}")
        (work / f"{name}.pem").write_bytes(svid.cert_pem)
        (work / f"{name}.key").write_bytes(svid.key_pem)
        os.chmod(work / f"{name}.key", 0o600)
        written[name] = {
            "MESH_CERT": str(work / f"{name}.pem"),
            "MESH_KEY": str(work / f"{name}.key"),
            "MESH_CA": str(work / "ca.pem"),
        }
        return written[name]

    driver_tls = ssl.create_default_context(cadata=ca.bundle_pem.decode())
    driver_tls.check_hostname = False  # mesh peers are known by SPIFFE ID, checked below
    bench_files = files("bench")
    driver_tls.load_cert_chain(bench_files["MESH_CERT"], bench_files["MESH_KEY"])
    # Handshakes without a client certificate would meet strict mode's 401: present one too.
    fresh_tls = driver_tls
    plain_tls = ssl.create_default_context()  # unused on http://, but built once like the other

    variants: list[Variant] = []
    try:
        plain_pay = Service("payments", {"MESH_MTLS": "off"}, https=False, serve=False)
        plain_front = Service(
            "frontend",
            {"MESH_MTLS": "off", "MESH_UPSTREAMS": f"payments={plain_pay.url}"},
            https=False,
            serve=False,
        )
        token_pay = Service(
            "payments", {"MESH_MTLS": "permissive", **files("payments")}, https=False,
            serve=False,
        )
        token_front = Service(
            "frontend",
            {"MESH_MTLS": "permissive", "MESH_UPSTREAMS": f"payments={token_pay.url}",
             **files("frontend")},
            https=False,
            serve=False,
        )
        tls_pay = Service("payments", {"MESH_MTLS": "strict", **files("payments")}, https=True)
        tls_front = Service(
            "frontend",
            {"MESH_MTLS": "strict", "MESH_UPSTREAMS": f"payments={tls_pay.url}",
             **files("frontend")},
            https=True,
        )
        variants = [
            Variant("plain", plain_front, plain_pay, httpx.Client(timeout=10)),
            Variant("token", token_front, token_pay, httpx.Client(timeout=10)),
            Variant("mtls", tls_front, tls_pay, httpx.Client(verify=driver_tls, timeout=10)),
        ]
        for variant in variants:
            variant.payments.start(variant.client)
            variant.frontend.start(variant.client)
            variant.check()
            variant.latencies(200)  # warm up: connections, caches, the interpreter
        results: dict[str, dict[str, list[float]]] = {
            v.name: {"p50": [], "p99": [], "cps": []} for v in variants
        }
        for round_ in range(1, args.rounds + 1):
            order = variants[round_ % 3 :] + variants[: round_ % 3]  # each first in turn
            for variant in order:
                times = variant.latencies(args.calls)
                verify = fresh_tls if variant.name == "mtls" else plain_tls
                cps = variant.connections_per_second(args.connections, verify)
                row = results[variant.name]
                row["p50"].append(quantile(times, 0.5))
                row["p99"].append(quantile(times, 0.99))
                row["cps"].append(cps)
                print(
                    f"round {round_} {variant.name:5}: p50 {row['p50'][-1] * 1e6:7.0f} µs  "
                    f"p99 {row['p99'][-1] * 1e6:7.0f} µs  new connections {cps:6.0f}/s",
                    flush=True,
                )
        for variant in variants:
            variant.check()  # still right after the load
    finally:
        for variant in variants:
            variant.client.close()
            variant.frontend.stop()
            variant.payments.stop()
        for path in work.iterdir():
            path.unlink()
        work.rmdir()

    side = token_sides(ca)
    plain, token, mtls = results["plain"], results["token"], results["mtls"]

    def added(variant: dict[str, list[float]], key: str) -> float:
        return median([(v - p) * 1e6 for v, p in zip(variant[key], plain[key], strict=True)])

    cps_ratio = median([m / p for m, p in zip(mtls["cps"], plain["cps"], strict=True)])
    handshake = median(
        [(1 / m - 1 / p) * 1e6 for m, p in zip(mtls["cps"], plain["cps"], strict=True)]
    )

    def row(label: str, variant: dict[str, list[float]], cps: str) -> str:
        p50, p99 = median(variant["p50"]) * 1e6, median(variant["p99"]) * 1e6
        return f"| {label} | {p50:.0f} µs | {p99:.0f} µs | {cps} |"

    body = f"""## Identity: mTLS on every hop, or `mesh-identity` tokens

Driver → frontend → payments, one request at a time over keep-alive connections
({args.calls} per round), and new connections straight to payments ({args.connections} per
round, each a TCP (+ TLS) handshake and one request). Each service one uvicorn worker with the
mesh (metrics and tracing on, access log off).

| variant | p50 (two hops) | p99 (two hops) | new connections/s |
|---|---|---|---|
{row("plain HTTP (`MESH_MTLS=off`)", plain, f"{median(plain['cps']):.0f}")}
{row("tokens: plain HTTP, `permissive`, frontend → payments carries a JWT-SVID", token, "")}
{row("mTLS on both hops, SPIFFE IDs verified (`strict`, `asgimesh serve`)", mtls,
     f"{median(mtls['cps']):.0f}")}

- mTLS adds **{added(mtls, "p50"):.0f} µs p50 per call over two hops, about
  {added(mtls, "p50") / 2:.0f} µs per hop** (median over rounds of the within-round difference;
  p99 {added(mtls, "p99"):+.0f} µs). That is TLS itself (records encrypted both ways, in
  Python's `ssl` on both ends of each hop) plus the verified caller in each request's context.
- A new mTLS connection (both chains and URI SANs verified) costs {handshake:.0f} µs more than a
  plain one: {cps_ratio:.0%} of plain's connections per second. The mesh's outbound keeps
  connections per endpoint, so a caller pays it once per connection.
- Tokens add **{added(token, "p50"):+.0f} µs p50** on the one hop that carries them (p99
  {added(token, "p99"):+.0f} µs; within the run's noise). In process, per request: the caller's
  cached token {side["mint_cached"]:.2f} µs, the callee's check of a token it has verified
  before {side["verify_cached"]:.2f} µs — against {side["sign"]:.0f} µs to sign one and
  {side["verify"]:.0f} µs to verify one the first time (x5c, chain checked), which each side
  pays once per token life (half of five minutes for the caller).
- Every answer checked: payments saw frontend's verified ID (certificate or token) and, over
  mTLS, frontend the driver's; in plain HTTP neither saw any. {args.rounds} rounds, each
  variant first in turn; the servers share one core, the driver has the other. The plain and
  token servers are uvicorn with the app already wrapped, the mTLS ones `asgimesh serve`
  (uvicorn too, with TLS).
"""
    print(body)
    write_section("identity", body, "bash bench/run.sh identity")


if __name__ == "__main__":
    main()
