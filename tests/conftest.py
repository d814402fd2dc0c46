"""Fixtures shared by the whole suite, and the only place that starts servers.

Every server is a real process on a loopback port of its own, started through :class:`Spawner`,
which waits until it answers, keeps its output for the failure message, and stops it (and its
children) at teardown even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

import asgimesh

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join(
    [str(ROOT), *(str(ROOT / "integrations" / name) for name in ("flask", "django", "fastapi"))]
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs under asyncio and under trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _clean_mesh_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's ``MESH_*`` variables or another test's runtime."""
    for name in list(os.environ):
        if name.startswith("MESH_"):
            monkeypatch.delenv(name)
    old = asgimesh.set_runtime(None)
    yield
    runtime = asgimesh.set_runtime(old)
    if runtime is not None:
        runtime.close()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, never handed out before in this
    session (so two servers of one run never race for a port one of them just let go).

    For what cannot take an already-bound socket (etcd, a subprocess's ``--port``) or must find
    nothing listening. In-process servers bind first instead (``asgimesh.testing``), and
    :meth:`Spawner.start` picks another port if a process loses the race for this one.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 100 tries")


class PortTakenError(RuntimeError):
    """A server process could not bind the port it was given: another process took it."""


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours without ``MESH_*``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONPATH"] = PYTHONPATH + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the loopback TCP sockets listening on ``port`` (Linux ``/proc/net/tcp``)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _group_pids(group: int) -> list[int]:
    """The processes of the process group ``group`` (servers start in a session of their own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[2]) == group:
                    pids.append(int(entry))
    return pids


class ServerProcess:
    """A real server process on ``127.0.0.1:port``."""

    def __init__(self, args: Sequence[str], port: int, env: Mapping[str, str], cwd: Path) -> None:
        self.args = list(args)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: A ``--tls`` control plane's trust bundle (``MESH_CA``); ``None`` otherwise.
        self.trust_bundle: Path | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="asgimesh-test-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.args,
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0, path: str | None = None) -> None:
        """Wait until the port accepts connections (and ``path`` answers, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.output()
                if "address already in use" in output.lower():
                    raise PortTakenError(f"{self.args!r}: port {self.port} was taken")
                raise RuntimeError(
                    f"{self.args!r} exited with {self.proc.returncode}:\n{output[-4000:]}"
                )
            try:
                if path is None:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        pass
                else:
                    httpx.get(self.url + path, timeout=0.5)
                if self._owns_port():
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.args!r} not ready in {timeout}s:\n{self.output()[-4000:]}")

    def _owns_port(self) -> bool:
        """Whether the socket listening on the port belongs to this process (or its group:
        gunicorn's workers, a server a CLI started). Something else answering there (another
        process that won the race for the port) must not pass for this server. Where ``/proc``
        is missing (not Linux) the answer is yes."""
        if not os.path.exists("/proc/net/tcp"):
            return True
        listening = _listening_inodes(self.port)
        for pid in _group_pids(self.proc.pid):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:[") and link[8:-1] in listening:
                            return True
        return False

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 5 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


class Spawner:
    """Starts servers for one test and stops them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[ServerProcess] = []

    def start(
        self,
        args: Sequence[str],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_path: str | None = None,
        timeout: float = 20.0,
    ) -> ServerProcess:
        """Start ``args`` (``{port}`` in them is replaced) and wait until it serves. A port
        chosen here that another process took meanwhile is replaced by a fresh one."""
        tries = 1 if port else 3
        for attempt in range(tries):
            chosen = port or free_port()
            argv = [a.replace("{port}", str(chosen)) for a in args]
            server = ServerProcess(argv, chosen, subprocess_env(env), self.tmp_path)
            self.processes.append(server)
            try:
                server.wait_ready(timeout, ready_path)
            except PortTakenError:
                if attempt == tries - 1:
                    raise
                continue
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    def uvicorn(
        self,
        app: str,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        ready_path: str | None = None,
        extra: Sequence[str] = (),
    ) -> ServerProcess:
        """A real uvicorn serving ``app`` (``module:attr``) on its own loopback port."""
        return self.start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            port=port,
            ready_path=ready_path,
        )

    def gunicorn(
        self,
        app: str,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        ready_path: str | None = None,
        extra: Sequence[str] = (),
    ) -> ServerProcess:
        """A real gunicorn (sync workers) serving the WSGI ``app`` on its own loopback port."""
        return self.start(
            [
                sys.executable,
                "-m",
                "gunicorn",
                app,
                "--bind",
                "127.0.0.1:{port}",
                "--workers",
                "1",
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            port=port,
            ready_path=ready_path,
        )

    def close(self) -> None:
        for server in reversed(self.processes):
            server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Start real servers for this test; all of them stop when it ends, pass or fail."""
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.close()


@pytest.fixture(scope="module")
def module_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """Like ``spawn``, for servers that every test of a module shares (read-only tests)."""
    spawner = Spawner(tmp_path_factory.mktemp("servers"))
    try:
        yield spawner
    finally:
        spawner.close()


# ---- outbound: fake upstreams (asgimesh.testing.FakeUpstream under real uvicorn) ----------------


class FakeUpstreams:
    """Real uvicorn processes serving :class:`asgimesh.testing.FakeUpstream`, started once per
    session; each test sets the behaviours it needs and finds them reset to ``ok`` after."""

    def __init__(self, spawner: Spawner) -> None:
        self._spawner = spawner
        self.servers: list[ServerProcess] = []

    def get(self, count: int) -> list[str]:
        """URLs of ``count`` upstreams, each answering ``ok`` with fresh counters."""
        while len(self.servers) < count:
            name = f"u{len(self.servers)}"
            self.servers.append(
                self._spawner.uvicorn(
                    "asgimesh.testing:upstream_from_env",
                    env={"UPSTREAM_NAME": name},
                    extra=["--factory", "--http", "h11", "--log-level", "critical",
                           "--timeout-graceful-shutdown", "1"],
                )
            )
        for server in self.servers[:count]:
            self.control(server.url, "ok")
        return [server.url for server in self.servers[:count]]

    @staticmethod
    def control(url: str, behaviour: str, retry_after: str | None = None) -> None:
        """Set the behaviour of the upstream at ``url`` and reset its counters."""
        httpx.put(url + "/_upstream/behaviour", content=behaviour, timeout=5).raise_for_status()
        httpx.post(url + "/_upstream/reset-stats", timeout=5).raise_for_status()
        if retry_after is not None:
            httpx.put(url + "/_upstream/retry-after", content=retry_after, timeout=5)

    @staticmethod
    def stats(url: str) -> dict[str, object]:
        return dict(httpx.get(url + "/_upstream/stats", timeout=5).json())


@pytest.fixture(scope="session")
def _fake_upstream_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstreams]:
    spawner = Spawner(tmp_path_factory.mktemp("upstreams"))
    try:
        yield FakeUpstreams(spawner)
    finally:
        spawner.close()


@pytest.fixture
def fake_upstreams(_fake_upstream_pool: FakeUpstreams) -> FakeUpstreams:
    """Fake upstreams on loopback that a test makes fail, hang, reset or slow down."""
    return _fake_upstream_pool


# ---- control plane: etcd and control-plane processes --------------------------------------------


class Etcd:
    """A real single-member etcd on loopback ports of its own, data in the test's temp dir.

    :meth:`stop` and :meth:`start` again keep the ports and the data, as an etcd restart would.
    """

    def __init__(self, spawner: Spawner, data_dir: Path) -> None:
        self._spawner = spawner
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.url = f"etcd://127.0.0.1:{self.client_port}"
        self.process: ServerProcess | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = self._spawner.start(
            [
                "etcd",
                "--name=test",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={self.endpoint}",
                f"--advertise-client-urls={self.endpoint}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--log-level=error",
            ],
            port=self.client_port,
            ready_path="/version",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def etcd(spawn: Spawner, tmp_path: Path) -> Etcd:
    """A running etcd (``etcd.url`` is ``etcd://127.0.0.1:PORT``); skipped without the binary."""
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    server = Etcd(spawn, tmp_path / "etcd")
    server.start()
    return server


class ControlPlaneStarter:
    """Starts real ``asgimesh control-plane`` processes; ``start()`` returns the process, whose
    ``url`` is the control plane's and whose ``admin_token`` opens its admin calls."""

    admin_token = "test-admin-token"

    def __init__(self, spawner: Spawner, tmp_path: Path) -> None:
        self._spawner = spawner
        self._tmp_path = tmp_path
        self._count = 0

    def start(
        self,
        *extra: str,
        store: str | None = None,
        state_dir: Path | None = None,
        port: int | None = None,
        launcher: Sequence[str] = (sys.executable, "-m", "asgimesh"),
        tls: bool = False,
    ) -> ServerProcess:
        """``launcher`` is what runs ``asgimesh`` (a wrapper may set limits first). With
        ``tls`` the process serves ``--tls``: its ``url`` is ``https://`` and its
        ``trust_bundle`` the PEM file services pin it with (``MESH_CA``)."""
        self._count += 1
        state = state_dir or self._tmp_path / f"cp{self._count}"
        if tls:
            # uvicorn binds only once the app's start-up is done: a connection is readiness.
            server = self._spawner.start(self._args(state, store, launcher, ("--tls", *extra)),
                                         port=port)
            server.url = f"https://127.0.0.1:{server.port}"
            server.trust_bundle = state / "trust-bundle.pem"
            return server
        args = self._args(state, store, launcher, extra)
        return self._spawner.start(args, port=port, ready_path="/v1/trust-bundle")

    def _args(
        self, state: Path, store: str | None, launcher: Sequence[str], extra: Sequence[str]
    ) -> list[str]:
        args = [
            *launcher,
            "control-plane",
            "--port",
            "{port}",
            "--state-dir",
            str(state),
            "--admin-token",
            self.admin_token,
            *(["--store", store] if store else []),
            *extra,
        ]
        return args


class Prometheus:
    """A real Prometheus server (Debian's ``prometheus``) scraping the ``targets`` given to
    :meth:`start` every ``interval`` on loopback; ``url`` is its base URL."""

    def __init__(self, spawner: Spawner, directory: Path) -> None:
        self._spawner = spawner
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, targets: Sequence[str], interval: str = "1s") -> ServerProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        listed = ", ".join(f"'{target}'" for target in targets)
        config = self.directory / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
            "scrape_configs:\n"
            "  - job_name: mesh\n"
            "    metrics_path: /_mesh/metrics\n"
            f"    static_configs: [{{targets: [{listed}]}}]\n"
        )
        return self._spawner.start(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            port=self.port,
            ready_path="/-/ready",
        )


@pytest.fixture
def prometheus(spawn: Spawner, tmp_path: Path) -> Prometheus:
    """A Prometheus server to start on the test's targets; skipped without the binary."""
    import shutil

    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    return Prometheus(spawn, tmp_path / "prometheus")


def service_token(url: str, service: str) -> str:
    """A new service token for ``service`` from the control plane at ``url`` (admin call)."""
    answer = httpx.post(
        url + "/v1/tokens",
        json={"service": service},
        headers={"authorization": f"Bearer {ControlPlaneStarter.admin_token}"},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


@pytest.fixture
def control_plane_process(spawn: Spawner, tmp_path: Path) -> ControlPlaneStarter:
    """Start real control-plane processes (SQLite in the test's temp dir unless ``store=``)."""
    return ControlPlaneStarter(spawn, tmp_path)


@pytest.fixture
def https_server(spawn: Spawner) -> Callable[[Path, Path], ServerProcess]:
    """Start a real uvicorn serving HTTPS with the given certificate and key files (an
    :class:`asgimesh.testing.FakeUpstream` answering 200 to anything): a server that is not
    the control plane, for the tests of what clients refuse."""

    def start(cert: Path, key: Path) -> ServerProcess:
        server = spawn.uvicorn(
            "asgimesh.testing:upstream_from_env",
            env={"UPSTREAM_NAME": "impostor"},
            extra=["--factory", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                   "--log-level", "critical", "--timeout-graceful-shutdown", "1"],
        )
        server.url = f"https://127.0.0.1:{server.port}"
        return server

    return start


# ---- etcd locked down: TLS, client certificates, user auth ---------------------------------------


def _tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA, etcd's server certificate (127.0.0.1; client use too, since etcd's
    gateway dials etcd with it), a client certificate without a Common Name (etcd's gateway
    refuses one with a CN while auth is on) and a foreign CA that trusts nothing here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str,
             server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else [])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[1].subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        sans: list[x509.GeneralName] = (
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            if server else [x509.UniformResourceIdentifier("spiffe://mesh.local/etcd-client")]
        )
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not name)
        cert = builder.sign(issuer[0], hashes.SHA256())
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(pem), key_pem

    directory.mkdir(parents=True, exist_ok=True)
    good, foreign = ca("etcd test CA"), ca("foreign CA")
    files = {name: directory / f"{name}.pem" for name in
             ("ca", "foreign-ca", "server", "server-key", "client", "client-key",
              "foreign-client", "foreign-client-key")}
    files["ca"].write_bytes(good[1].public_bytes(pem))
    files["foreign-ca"].write_bytes(foreign[1].public_bytes(pem))
    for name, issuer, server in (("server", good, True), ("client", good, False),
                                 ("foreign-client", foreign, False)):
        cert, key = leaf(issuer, "etcd" if server else "", server)
        files[name].write_bytes(cert)
        files[f"{name}-key"].write_bytes(key)
        files[f"{name}-key"].chmod(0o600)
    return files


class SecureEtcd:
    """A real etcd on loopback serving only HTTPS, requiring a client certificate from its CA
    (``--client-cert-auth``) and with user auth on: ``root`` (every right, for tests to read
    the whole keyspace) and ``mesh`` (read and write under ``/asgimesh`` and ``/t-*``, what the
    control plane and services use). Tokens live ``token_ttl`` seconds, so that re-authenticating
    is exercised."""

    token_ttl = 3
    root_password = "root-Pw-4e1d9"
    mesh_password = "mesh-Pw-77c0a"
    #: ``svc`` has only what docs/controlplane.md tells operators to give a service, on this
    #: prefix: read the versions and the trust bundle, write reports.
    service_prefix = "/t-cp"
    svc_password = "svc-Pw-0b3f2"

    def __init__(self, spawner: Spawner, directory: Path) -> None:
        self._spawner = spawner
        self.dir = directory
        self.files = _tls_files(directory / "tls")
        self.client_port, self.peer_port = free_port(), free_port()
        self.endpoint = f"https://127.0.0.1:{self.client_port}"
        self.passwords = {}
        for user, password in (("root", self.root_password), ("mesh", self.mesh_password),
                               ("svc", self.svc_password)):
            path = directory / f"{user}-password"
            path.write_text(password + "\n")
            path.chmod(0o600)
            self.passwords[user] = path
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = spawner.start(
            [
                "etcd", "--name=secure", f"--data-dir={directory / 'data'}",
                f"--listen-client-urls={self.endpoint}",
                f"--advertise-client-urls={self.endpoint}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=secure={peer}",
                f"--cert-file={self.files['server']}", f"--key-file={self.files['server-key']}",
                "--client-cert-auth", f"--trusted-ca-file={self.files['ca']}",
                f"--auth-token-ttl={self.token_ttl}", "--log-level=error",
            ],
            port=self.client_port,
        )
        self._enable_auth()

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTPS client with the good client certificate (no credentials)."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.files["ca"]))
        context.load_cert_chain(str(self.files["client"]), str(self.files["client-key"]))
        return httpx.Client(base_url=self.endpoint, verify=context, timeout=10, **kwargs)

    def _enable_auth(self) -> None:
        import base64

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        deadline = time.monotonic() + 20
        with self.client() as http:
            while True:
                try:
                    http.get("/version").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            calls: list[tuple[str, dict[str, object]]] = [
                ("/v3/auth/user/add", {"name": "root", "password": self.root_password}),
                ("/v3/auth/role/add", {"name": "root"}),
                ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                ("/v3/auth/user/add", {"name": "mesh", "password": self.mesh_password}),
                ("/v3/auth/role/add", {"name": "mesh"}),
                ("/v3/auth/user/grant", {"user": "mesh", "role": "mesh"}),
            ]
            for prefix, end in (("/asgimesh", "/asgimesi"), ("/t-", "/t."), ):
                perm = {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}
                calls.append(("/v3/auth/role/grant", {"name": "mesh", "perm": perm}))
            calls += [
                ("/v3/auth/user/add", {"name": "svc", "password": self.svc_password}),
                ("/v3/auth/role/add", {"name": "svc"}),
                ("/v3/auth/user/grant", {"user": "svc", "role": "svc"}),
            ]
            base = self.service_prefix
            for perm_type, key, end in (
                ("READ", f"{base}/policy/", f"{base}/policy0"),
                ("READ", f"{base}/bootstrap/trust-bundle", None),
                ("READWRITE", f"{base}/reports/", f"{base}/reports0"),
            ):
                perm = {"permType": perm_type, "key": b64(key)}
                if end is not None:
                    perm["range_end"] = b64(end)
                calls.append(("/v3/auth/role/grant", {"name": "svc", "perm": perm}))
            calls.append(("/v3/auth/enable", {}))
            for path, body in calls:
                http.post(path, json=body).raise_for_status()

    def url(self, prefix: str = "/asgimesh", *, user: str | None = "mesh", tls: str = "good",
            **params: str) -> str:
        """``etcds://mesh@127.0.0.1:PORT/prefix?cacert=…&cert=…&key=…&password_file=…``;
        ``tls="foreign"`` names the foreign CA and client certificate, ``"none"`` no client
        certificate; ``params`` add or replace parameters."""
        query: dict[str, str] = {"cacert": str(self.files["ca"])}
        if tls == "good":
            query |= {"cert": str(self.files["client"]), "key": str(self.files["client-key"])}
        elif tls == "foreign":
            query = {"cacert": str(self.files["foreign-ca"]),
                     "cert": str(self.files["foreign-client"]),
                     "key": str(self.files["foreign-client-key"])}
        if user is not None:
            query["password_file"] = str(self.passwords[user])
        query |= params
        who = f"{user}@" if user is not None else ""
        encoded = "&".join(f"{k}={v}" for k, v in query.items())
        return f"etcds://{who}127.0.0.1:{self.client_port}{prefix}?{encoded}"

    def read_all(self) -> dict[str, bytes]:
        """Every key and value in etcd, read as ``root``."""
        import base64

        with self.client() as http:
            token = http.post("/v3/auth/authenticate",
                              json={"name": "root", "password": self.root_password}).json()["token"]
            answer = http.post("/v3/kv/range", headers={"authorization": token},
                               json={"key": "AA==", "range_end": "AA=="}).json()
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in answer.get("kvs", [])}

    def put(self, key: str, value: bytes) -> None:
        """Write ``key`` as ``root`` (a test playing someone who can write etcd)."""
        import base64

        with self.client() as http:
            token = http.post("/v3/auth/authenticate",
                              json={"name": "root", "password": self.root_password}).json()["token"]
            http.post("/v3/kv/put", headers={"authorization": token},
                      json={"key": base64.b64encode(key.encode()).decode(),
                            "value": base64.b64encode(value).decode()}).raise_for_status()


@pytest.fixture(scope="module")
def secure_etcd(module_spawn: Spawner) -> SecureEtcd:
    """One locked-down etcd per test module (tests keep to prefixes of their own)."""
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    return SecureEtcd(module_spawn, module_spawn.tmp_path / "secure-etcd")
