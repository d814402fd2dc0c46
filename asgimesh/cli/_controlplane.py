"""``asgimesh control-plane`` (run the server), ``token create SERVICE`` and ``status``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx

from .._durations import parse_duration
from .._etcd import EtcdError, EtcdRefusedError
from .._log import describe_error
from ..controlplane.stores import Store, open_store
from ._client import EXIT_UNREACHABLE, CommandFailedError, add_server_options, call, fail

if TYPE_CHECKING:
    from ..controlplane import ControlPlaneConfig
    from ..identity import MeshCA

__all__ = ["register"]


def register(commands: Any) -> None:
    server = commands.add_parser(
        "control-plane",
        help="run the control plane (policy, tokens, trust bundle, dashboard)",
        description="Serve the mesh control plane. State lives in a SQLite file in --state-dir "
        "unless --store etcd://host:port[/prefix] keeps it in etcd for several replicas. "
        "Private keys stay in --state-dir files unless --key-encryption-key-file seals them "
        "into etcd.",
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=7070)
    server.add_argument(
        "--store",
        default="",
        help="etcd://host:port[/prefix], etcds://[USER@]host:port[/prefix]?cacert=F&cert=F"
        "&key=F&password_file=F (TLS, client certificate, user auth), sqlite:///path or a "
        "file path (default: STATE_DIR/controlplane.db)",
    )
    server.add_argument(
        "--key-encryption-key-file",
        type=Path,
        default=None,
        help="etcd store only: keep the private keys in etcd sealed (AES-256-GCM) with the 32 "
        "random bytes in this file (raw, hex or base64; e.g. 'openssl rand -hex 32'), for "
        "replicas that share them; default: the keys stay in --state-dir files",
    )
    server.add_argument(
        "--migrate-keys",
        action="store_true",
        help="once: move private keys an older asgimesh kept in etcd in clear to --state-dir "
        "(or sealed, with --key-encryption-key-file) and delete the clear copies",
    )
    server.add_argument(
        "--admin-token",
        help="bearer token for admin calls (default: MESH_ADMIN_TOKEN; else one is made and "
        "kept in STATE_DIR/admin-token)",
    )
    server.add_argument(
        "--state-dir",
        default=".asgimesh-controlplane",
        help="where the SQLite file, the mesh CA and the signing key live",
    )
    server.add_argument("--trust-domain", default=None, help="default: MESH_TRUST_DOMAIN")
    server.add_argument("--max-wait", default="60s", help="longest long poll (default 60s)")
    server.add_argument(
        "--stale-after", default="60s", help="forget instances silent this long (default 60s)"
    )
    server.add_argument(
        "--store-wait", default="10s", help="how long to wait for the store at start (10s)"
    )
    server.add_argument(
        "--limit-concurrency",
        type=_positive,
        default=None,
        help="connections and requests served at once; past it uvicorn answers 503 "
        "(default: the open-files limit less 64, at most 4096)",
    )
    server.add_argument(
        "--max-parked-polls",
        type=_positive,
        default=None,
        help="long polls parked at once; past it a poll gets 503 and Retry-After "
        "(default: half of --limit-concurrency, at most 1024)",
    )
    server.add_argument(
        "--max-parked-per-client",
        type=_positive,
        default=None,
        help="long polls one client address may park (default: a quarter of --max-parked-polls)",
    )
    server.add_argument(
        "--cert-lifetime",
        default="24h",
        help="lifetime of the workload certificates issued, 2s to 24h (default 24h); "
        "services renew at half of it",
    )
    server.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate the mesh CA issues at start for the control "
        "plane's ID (valid 24h: restart within a day); services pin it with MESH_CA",
    )
    server.add_argument(
        "--prometheus",
        default=None,
        metavar="URL",
        help="read the figures /v1/services and the dashboard show from this Prometheus "
        "server's query API (it scrapes the services' /_mesh/metrics) instead of reports",
    )
    server.add_argument(
        "--prometheus-window",
        default="1m",
        help="the rate window of those queries, a PromQL duration (default 1m)",
    )
    server.add_argument("--log-format", choices=["json", "console"], default="json")
    server.set_defaults(handler=control_plane_command)

    token = commands.add_parser("token", help="create service tokens")
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="print a new token for SERVICE")
    create.add_argument("service")
    create.add_argument("--namespace", default="default")
    add_server_options(create)
    create.set_defaults(handler=token_create_command)

    status = commands.add_parser(
        "status", help="services, instances, policy versions, rates and latencies"
    )
    add_server_options(status, token=False)
    status.set_defaults(handler=status_command)


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return int(text)


def _default_concurrency() -> int:
    """What the open-files limit allows, less a margin for the store, the listening socket and
    the log: past the limit ``accept()`` fails (EMFILE) and every caller times out, whereas
    uvicorn's ``limit_concurrency`` answers the caller 503 and closes the connection."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft - 64))


def _cert_lifetime(text: str) -> float:
    from .._errors import ConfigError
    from ..identity import MIN_LIFETIME, WORKLOAD_LIFETIME

    low, high = MIN_LIFETIME.total_seconds(), WORKLOAD_LIFETIME.total_seconds()
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--cert-lifetime: {exc}") from None
    if not low <= seconds <= high:
        raise ConfigError(
            f"--cert-lifetime: {text!r} is out of range; expected a duration from 2s to 24h"
        )
    return seconds


def _prometheus_options(url: str | None, window: str) -> str | None:
    from .._errors import ConfigError
    from ..controlplane import PROMETHEUS_WINDOW

    if not PROMETHEUS_WINDOW.fullmatch(window):
        raise ConfigError(
            f"--prometheus-window: {window[:40]!r} is not a PromQL duration; expected e.g. 30s, 1m"
        )
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--prometheus: expected the server's http(s):// base URL, got {url[:80]!r}"
        )
    return url


def control_plane_command(args: argparse.Namespace) -> int:

    from .._errors import ConfigError
    from .._logging import configure_logging, throttle_server_logs
    from ..controlplane import ControlPlaneConfig, KeyStoreError, create_app
    from ..identity import control_plane_id

    configure_logging(args.log_format)
    throttle_server_logs()
    concurrency = args.limit_concurrency or _default_concurrency()
    parked = args.max_parked_polls or max(1, min(1024, concurrency // 2))
    per_client = args.max_parked_per_client or max(1, parked // 4)
    try:
        max_wait, stale_after = parse_duration(args.max_wait), parse_duration(args.stale_after)
        store_wait = parse_duration(args.store_wait)
    except ValueError as exc:
        raise ConfigError(f"--max-wait/--stale-after/--store-wait: {exc}") from None
    cert_lifetime = _cert_lifetime(args.cert_lifetime)
    prometheus = _prometheus_options(args.prometheus, args.prometheus_window)
    config = ControlPlaneConfig(
        store=args.store,
        state_dir=Path(args.state_dir),
        admin_token=args.admin_token or os.environ.get("MESH_ADMIN_TOKEN") or None,
        trust_domain=args.trust_domain or os.environ.get("MESH_TRUST_DOMAIN") or "mesh.local",
        max_wait=max_wait,
        stale_after=stale_after,
        max_parked_polls=parked,
        max_parked_per_client=per_client,
        cert_lifetime=cert_lifetime,
        prometheus=prometheus,
        prometheus_window=args.prometheus_window,
        key_encryption_key_file=args.key_encryption_key_file,
        migrate_keys=args.migrate_keys,
    )
    app = create_app(config)
    problem = anyio.run(_probe_store, open_store(config.store, config.state_dir), store_wait)
    if problem:
        print(f"asgimesh: {problem}", file=sys.stderr)
        return EXIT_UNREACHABLE
    # The keys are loaded (or made, or migrated) now, so that a refusal is one line here
    # rather than a traceback from the server's start-up; the server then loads the same.
    try:
        ca = anyio.run(_load_ca, open_store(config.store, config.state_dir), config)
    except KeyStoreError as exc:
        print(f"asgimesh: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, httpx.HTTPError, EtcdError, sqlite3.Error) as exc:
        print(f"asgimesh: cannot load the mesh CA: {describe_error(exc)[1]}", file=sys.stderr)
        return EXIT_UNREACHABLE
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 1,
        "limit_concurrency": concurrency,
    }
    if not args.tls:
        return _serve(app, options)
    # uvicorn stops gracefully on SIGTERM, then raises it again: with the default handler the
    # process would end there, leaving the private key behind. This handler unwinds instead
    # (removing it), and the signal is raised again once the files are gone.
    previous = signal.signal(signal.SIGTERM, _terminated)
    terminated = False
    try:
        with _tls_files(ca, args.host, config.state_dir) as (cert, key, bundle):
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(
                f"asgimesh: control plane at https://{host}:{args.port} as "
                f"{control_plane_id(config.trust_domain)}; trust bundle: {bundle} "
                f"(give services MESH_CA={bundle})",
                flush=True,
            )
            _serve(app, {**options, "ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    except _TerminatedError:
        terminated = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if terminated:
        signal.raise_signal(signal.SIGTERM)
    return 0


def _serve(app: Any, options: dict[str, Any]) -> int:
    """``uvicorn.run``, but a stop signal first ends the parked long polls (see
    ``ControlPlane.shutting_down``), so the graceful shutdown finishes in time."""
    import uvicorn

    plane = app.state.control_plane

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            plane.shutting_down()
            super().handle_exit(sig, frame)

    server = DrainingServer(uvicorn.Config(app, **options))
    server.run()
    return 0 if server.started else EXIT_UNREACHABLE


class _TerminatedError(Exception):
    """SIGTERM arrived: unwind, so the TLS key's temp dir is removed."""


def _terminated(signum: int, frame: object) -> None:
    raise _TerminatedError


async def _load_ca(store: Store, config: ControlPlaneConfig) -> MeshCA:
    """The mesh CA the server is about to load (created now if there is none yet: the
    server's start-up then loads the same one, from the state dir or the shared store), and
    the JWT key likewise."""
    from ..controlplane import load_all_keys

    await store.open()
    try:
        ca, _ = await load_all_keys(
            store,
            config.state_dir,
            config.trust_domain,
            kek_file=config.key_encryption_key_file,
            migrate=config.migrate_keys,
        )
        return ca
    finally:
        await store.close()


@contextlib.contextmanager
def _tls_files(ca: MeshCA, host: str, state_dir: Path) -> Iterator[tuple[Path, Path, Path]]:
    """The control plane's TLS certificate and key in a private temp dir (0700, files 0600,
    removed on exit), and the trust bundle written to ``STATE_DIR/trust-bundle.pem`` for
    services' ``MESH_CA``. The certificate is made anew at every start and lasts 24 hours."""
    chain, key = ca.control_plane_tls([host])
    state_dir.mkdir(parents=True, exist_ok=True)
    bundle = (state_dir / "trust-bundle.pem").resolve()
    _write(bundle, ca.bundle_pem(), 0o644)
    private = Path(tempfile.mkdtemp(prefix="asgimesh-controlplane-tls-"))
    try:
        cert_path, key_path = private / "cert.pem", private / "key.pem"
        _write(cert_path, chain, 0o600)
        _write(key_path, key, 0o600)
        yield cert_path, key_path, bundle
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the start, replacing it atomically."""
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(partial, mode)  # whatever the umask took away (a bundle stays world-readable)
    os.replace(partial, path)


async def _probe_store(store: Store, patience: float = 10.0) -> str | None:
    """Whether the store answers, retried for ``patience`` seconds (etcd may be starting too);
    one line saying why not, rather than a traceback from the server's start-up."""
    deadline = anyio.current_time() + patience
    while True:
        try:
            await store.open()
            try:
                await store.latest()
            finally:
                await store.close()
            return None
        except EtcdRefusedError as exc:
            return f"cannot use the store {store.description}: {exc}"  # retrying will not help
        except (OSError, httpx.HTTPError, EtcdError, sqlite3.Error) as exc:
            if anyio.current_time() > deadline:
                return f"cannot use the store {store.description}: {describe_error(exc)[1]}"
            await anyio.sleep(0.5)


def token_create_command(args: argparse.Namespace) -> int:
    try:
        response = call(
            args, "POST", "/v1/tokens", json={"service": args.service, "namespace": args.namespace}
        )
    except CommandFailedError as error:
        return fail(error)
    print(response.json()["token"])
    return 0


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _counts(counts: dict[str, int]) -> str:
    return ",".join(f"{reason}:{count}" for reason, count in counts.items()) or "-"


def status_command(args: argparse.Namespace) -> int:
    try:
        response = call(args, "GET", "/v1/services", admin=False)
    except CommandFailedError as error:
        return fail(error)
    body = response.json()
    print(
        f"control plane {args.server or os.environ.get('MESH_CONFIG')}: "
        f"policy version {body['policy_version']}"
    )
    rows = [("SERVICE", "INSTANCES", "POLICY", "REQ/S", "SUCCESS", "P50 MS", "P99 MS")]
    for service in body["services"]:
        rows.append(
            (
                service["service"],
                str(len(service["instances"])),
                ",".join(str(v) for v in service["policy_versions"]),
                _cell(service["requests_per_second"], ".1f"),
                _percent(service["success_rate"]),
                _cell(service["p50_ms"], ".1f"),
                _cell(service["p99_ms"], ".1f"),
            )
        )
    _print_table(rows)
    if len(rows) == 1:
        print("(no instance has reported yet)", file=sys.stderr)
    edges = body.get("edges") or []
    if edges:
        print()
        calls = [("CALLER", "CALLEE", "REQ/S", "SUCCESS", "P50 MS", "P99 MS", "RETRIES", "REFUSED")]
        for edge in edges:
            calls.append(
                (
                    edge["source"],
                    edge["destination"],
                    _cell(edge["requests_per_second"], ".1f"),
                    _percent(edge["success_rate"]),
                    _cell(edge["p50_ms"], ".1f"),
                    _cell(edge["p99_ms"], ".1f"),
                    _counts(edge["retries"]),
                    _counts(edge["refusals"]),
                )
            )
        _print_table(calls)
    return 0
