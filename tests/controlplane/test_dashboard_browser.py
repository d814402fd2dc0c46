"""The dashboard in a real headless browser (Debian's Chromium) against a real control plane
process: the page's own script fetches ``/v1/services`` and ``/v1/policy`` and renders them, and
names that arrive in reports are shown as text, never run."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ControlPlaneStarter, Etcd, Spawner, service_token

CHROMIUM = Path("/usr/bin/chromium")
T = TypeVar("T")
BROWSER_TIMEOUT = 60.0
ADMIN = {"authorization": f"Bearer {ControlPlaneStarter.admin_token}"}
#: Markup in a name: if the page ever parsed it, the title would change or the body would get
#: a ``data-pwned`` attribute.
PAYLOAD = (
    "<script>document.title='pwned'</script><img src=x onerror=\"document.body.dataset.pwned=1\">"
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing (Debian: apt-get install chromium; scripts/_setup.sh does)",
)


FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def until(check: Callable[[], T | Literal[False] | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    pytest.fail(f"{what}: not seen within {timeout} s")


class DevTools:
    """The few DevTools protocol calls the tests need, over the page's websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self._socket.recv(timeout=BROWSER_TIMEOUT))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return dict(message["result"])

    def text(self, selector: str) -> str:
        expression = f"document.querySelector({json.dumps(selector)})?.textContent ?? ''"
        return str(self.evaluate(expression))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def attribute(self, selector: str, name: str) -> str:
        expression = (
            f"document.querySelector({json.dumps(selector)})?.getAttribute({json.dumps(name)})"
            " ?? ''"
        )
        return str(self.evaluate(expression))

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(text)}")

    def press(self, key: str, code: int) -> None:
        """A real key press, as the keyboard sends it (focus moves, handlers run)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=code,
                nativeVirtualKeyCode=code,
            )

    def screenshot(self, path: Path) -> bytes:
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=800,
                  deviceScaleFactor=1, mobile=False)
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data


class Chromium:
    """Runs headless Chromium, each run bounded by ``BROWSER_TIMEOUT``; every process group it
    started is killed at teardown, whatever happened (Chromium leaves helper processes)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._runs: list[subprocess.Popen[bytes]] = []

    def run(self, url: str, *args: str) -> str:
        profile = self.tmp_path / f"chromium-profile-{len(self._runs)}"
        proc = subprocess.Popen(
            [
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *args,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._runs.append(proc)
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT} s: {args}")
        assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
        return out.decode()

    def dump_dom(self, url: str) -> str:
        return self.run(url, "--dump-dom")

    def screenshot(self, url: str, path: Path) -> bytes:
        self.run(url, f"--screenshot={path}", "--window-size=1280,900", "--hide-scrollbars")
        return path.read_bytes()

    @contextlib.contextmanager
    def devtools(self) -> Iterator[DevTools]:
        """A browser kept running, driven over the DevTools protocol (one page)."""
        profile = self.tmp_path / f"chromium-profile-{len(self._runs)}"
        proc = subprocess.Popen(
            [
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._runs.append(proc)
        active = profile / "DevToolsActivePort"
        port = until(lambda: active.exists() and active.read_text().split("\n")[0], "DevTools")
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], open_timeout=10, max_size=None) as socket:
            yield DevTools(socket)

    def close(self) -> None:
        for proc in self._runs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    cells: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """The rendered DOM, reduced to what the assertions read: the text of each element with an
    ``id``, and each table row (its attributes and the text of its cells)."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, Node] = {}
        self.rows: list[Node] = []
        self.title = ""
        self._open: list[Node] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        if tag == "tr":
            self.rows.append(node)
        if tag in ("td", "th") and self.rows:
            self.rows[-1].cells.append("")
        if "id" in node.attrs:
            self.ids[node.attrs["id"]] = node
        if tag not in self.VOID:
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        tags = [node.tag for node in self._open]
        for node in self._open:
            node.text += data
        if "title" in tags and "svg" not in tags:  # the page's, not an SVG element's tooltip
            self.title += data
        if ("td" in tags or "th" in tags) and self.rows and self.rows[-1].cells:
            self.rows[-1].cells[-1] += data

    def text(self, element_id: str) -> str:
        return " ".join(self.ids[element_id].text.split())

    def row(self, **attrs: str) -> Node:
        found = [r for r in self.rows if all(r.attrs.get(k) == v for k, v in attrs.items())]
        assert len(found) == 1, f"expected one row with {attrs}, found {len(found)}"
        return found[0]


def png_size_and_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Width, height and the (still row-filtered) pixel bytes of a PNG, with the stdlib."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, width, height, data = 8, 0, 0, b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        chunk = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            data += chunk
        position += 12 + length
    return width, height, zlib.decompress(data)


def report(url: str, token: str, **fields: Any) -> None:
    body = {"requests": 120, "requests_per_second": 12.0, "success_rate": 1.0, **fields}
    answer = httpx.post(
        url + "/v1/reports", json=body, headers={"authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text


def test_dashboard_renders_services_instances_and_policy(
    control_plane_process: ControlPlaneStarter, chromium: Chromium, tmp_path: Path
) -> None:
    cp = control_plane_process.start()
    for timeout in ("2s", "750ms"):
        policy = {"defaults": {"timeout": timeout}}
        assert httpx.put(cp.url + "/v1/policy", json=policy, headers=ADMIN).status_code == 200
    payments, orders = service_token(cp.url, "payments"), service_token(cp.url, "orders")
    report(
        cp.url,
        payments,
        service="payments",
        instance="pay-1",
        policy_version=2,
        p50_ms=3.2,
        p99_ms=41.0,
    )
    report(
        cp.url,
        payments,
        service="payments",
        instance="pay-2",
        policy_version=1,
        success_rate=0.95,
        p50_ms=4.0,
        p99_ms=88.5,
        state="draining",
        concurrency_limit=12,
    )
    report(cp.url, orders, service="orders", instance=PAYLOAD, policy_version=2)
    # Reporting names are checked by the API, so markup can arrive only as an instance name
    # (or, with etcd, straight from the store: see the next test).
    refused = httpx.post(cp.url + "/v1/tokens", json={"service": "<script>"}, headers=ADMIN)
    assert refused.status_code == 422

    dom = chromium.dump_dom(cp.url + "/")
    page = Page(dom)

    assert page.text("status").startswith("live, updated"), page.text("status")
    assert page.text("version") == "v2"
    assert page.text("applied").startswith("applied ")
    assert page.text("service-count") == "2" and page.text("instance-count") == "3"
    assert page.text("fleet") == "1 instance behind v2"

    pay = page.row(**{"class": "service", "data-service": "payments"})
    assert pay.cells[0] == "payments2 instances" and pay.cells[1] == "v1, v2"
    assert pay.cells[2:6] == ["24.0", "97.50%", "4.0", "88.5"]
    order = page.row(**{"class": "service", "data-service": "orders"})
    assert order.cells[0] == "orders1 instance" and order.cells[1] == "v2"

    current = page.row(**{"class": "instance", "data-instance": "pay-1"})
    assert current.cells[1] == "v2" and current.cells[2:6] == ["12.0", "100.00%", "3.2", "41.0"]
    assert current.cells[6:8] == ["0", "0"] and current.cells[8].endswith(" s ago")
    behind = page.row(**{"class": "instance behind", "data-instance": "pay-2"})
    assert behind.cells[1] == "v1behind"
    assert behind.cells[0] == "pay-2draininglimit 12"  # shutting down; adaptive limit found
    assert current.cells[0] == "pay-1"

    # The markup is on the page as text: the DOM serialisation escapes it, nothing ran.
    hostile = page.row(**{"class": "instance", "data-instance": PAYLOAD})
    assert hostile.cells[0] == PAYLOAD
    assert PAYLOAD not in dom and "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert page.title == "asgimesh control plane" and "data-pwned" not in dom

    assert json.loads(page.ids["policy"].text) == {"defaults": {"timeout": "750ms"}}
    assert page.text("policy-version") == "v2"

    screenshot = chromium.screenshot(cp.url + "/", tmp_path / "dashboard.png")
    width, height, pixels = png_size_and_pixels(screenshot)
    assert (width, height) == (1280, 900)
    assert len(screenshot) > 10_000 and len(set(pixels)) > 64, "the screenshot looks blank"


def test_dashboard_shows_a_service_name_with_markup_as_text(
    etcd: Etcd, control_plane_process: ControlPlaneStarter, chromium: Chromium
) -> None:
    """With etcd, services write reports into the store themselves, past the API's name check:
    the dashboard must still treat the service name as text."""
    cp = control_plane_process.start(store=etcd.url)
    assert httpx.put(cp.url + "/v1/policy", json={}, headers=ADMIN).status_code == 200
    name = "evil" + PAYLOAD
    record = {
        "service": name,
        "instance": "i-1",
        "policy_version": 1,
        "requests": 5,
        "requests_per_second": 1.0,
        "success_rate": 1.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "received": time.time(),
    }
    key = f"/asgimesh/reports/{name}/i-1"
    put = httpx.post(
        etcd.endpoint + "/v3/kv/put",
        json={
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(json.dumps(record).encode()).decode(),
        },
    )
    put.raise_for_status()
    assert httpx.get(cp.url + "/v1/services").json()["services"][0]["service"] == name

    dom = chromium.dump_dom(cp.url + "/")
    page = Page(dom)
    row = page.row(**{"class": "service", "data-service": name})
    assert row.cells[0] == name + "1 instance"
    assert PAYLOAD not in dom and "data-pwned" not in dom
    assert page.title == "asgimesh control plane"
    assert page.text("version") == "v1" and page.text("fleet") == "all on v1"


def test_dashboard_keeps_the_last_data_while_the_control_plane_is_down(
    control_plane_process: ControlPlaneStarter, chromium: Chromium, tmp_path: Path
) -> None:
    """An operator watching the page sees the outage (and the data kept from before it), then
    the page goes live again by itself when the control plane is back."""
    cp = control_plane_process.start()
    assert httpx.put(cp.url + "/v1/policy", json={}, headers=ADMIN).status_code == 200
    report(cp.url, service_token(cp.url, "payments"), service="payments", instance="p-1", policy_version=1)
    row = "tr.service[data-service=payments] td.name"
    with chromium.devtools() as page:
        page.call("Page.navigate", url=cp.url + "/")
        until(lambda: page.text(row) == "payments1 instance", "payments on the page")
        until(lambda: page.text("#status").startswith("live"), "the page live")

        cp.stop()
        status = until(lambda: "unreachable" in (t := page.text("#status")) and t, "the outage")
        assert "showing data from" in status
        assert page.text(row) == "payments1 instance" and page.text("#version") == "v1"

        control_plane_process.start(port=cp.port, state_dir=tmp_path / "cp1")
        until(lambda: page.text("#status").startswith("live"), "the page live again")
        assert page.text(row) == "payments1 instance"


# -- issue 9.4: the service graph, per-service figures, history, diff and rollback ------------


def _calls(url: str, stop: Any, seen: list[int]) -> None:
    """Frontend calling payments through the mesh, until ``stop`` is set."""
    with httpx.Client(base_url=url, timeout=5) as http:
        while not stop.is_set():
            answer = http.get("/call", params={"to": "payments"}).json()
            seen.append(int(answer.get("status", 0)))
            time.sleep(0.02)


def test_the_graph_shows_real_calls_and_a_fault_turns_the_edge_red(
    control_plane_process: ControlPlaneStarter,
    spawn: Spawner,
    chromium: Chromium,
    tmp_path: Path,
) -> None:
    import threading

    cp = control_plane_process.start()
    env = {"MESH_CONFIG": f"{cp.url}?report=300ms"}
    payments = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "payments", "MESH_TOKEN": service_token(cp.url, "payments")},
    )
    routes = {"services": {"payments": {"endpoints": [payments.url]}}}
    assert httpx.put(cp.url + "/v1/policy", json=routes, headers=ADMIN).status_code == 200
    frontend = spawn.uvicorn(
        "tests.controlplane.edges_app:app",
        env={**env, "MESH_SERVICE": "frontend", "MESH_TOKEN": service_token(cp.url, "frontend")},
    )
    payments.wait_ready(path="/ok")
    frontend.wait_ready(path="/ok")
    stop, seen = threading.Event(), []
    caller = threading.Thread(target=_calls, args=(frontend.url, stop, seen), daemon=True)
    caller.start()
    edge = "#graph g.edge[data-source=frontend][data-destination=payments]"
    try:
        with chromium.devtools() as page:
            page.call("Page.navigate", url=cp.url + "/")
            until(lambda: "ok" in page.attribute(edge, "class").split(), "a green edge")
            nodes = page.evaluate(
                "[...document.querySelectorAll('#graph g.node')].map(n => n.dataset.service)"
            )
            assert sorted(nodes) == ["frontend", "payments"]
            # The figures on the edge are the reports' (the same roll-up the API serves).
            api = httpx.get(cp.url + "/v1/services").json()
            (row,) = [e for e in api["edges"] if e["source"] == "frontend"]
            assert row["destination"] == "payments" and row["known"] and row["success_rate"] == 1
            assert page.text(edge + " text.rate").endswith(" rps \u00b7 100.0%")
            assert page.text(edge + " text.latency").startswith("p99 ")
            # Instances by where they serve and their pid, not a random id.
            names = page.evaluate(
                "[...document.querySelectorAll('tr.instance td.name')].map(c => c.textContent)"
            )
            assert any(n.startswith(f"127.0.0.1:{payments.port} \u00b7 pid ") for n in names), names
            ok_png = page.screenshot(tmp_path / "graph-healthy.png")
            assert png_size_and_pixels(ok_png)[:2] == (1280, 800)

            fault = {"endpoints": [payments.url], "fault": {"abort": {"percent": 100, "status": 503}}}
            injected = {"services": {"payments": fault}}
            started = time.monotonic()
            assert httpx.put(cp.url + "/v1/policy", json=injected, headers=ADMIN).status_code == 200
            until(lambda: "bad" in page.attribute(edge, "class").split(), "the edge turning red")
            assert time.monotonic() - started < 10
            assert page.text("#version") == "v2"
            assert "100.0%" not in page.text(edge + " text.rate")
            page.screenshot(tmp_path / "graph-fault.png")
    finally:
        stop.set()
        caller.join(timeout=10)
    assert 200 in seen and 503 in seen


def test_policy_history_diff_rollback_and_keyboard(
    control_plane_process: ControlPlaneStarter, chromium: Chromium
) -> None:
    cp = control_plane_process.start()
    first, second = {"defaults": {"timeout": "2s"}}, {"defaults": {"timeout": "750ms"}}
    for document in (first, second):
        assert httpx.put(cp.url + "/v1/policy", json=document, headers=ADMIN).status_code == 200
    payments = service_token(cp.url, "payments")
    report(cp.url, payments, service="payments", instance="p-1", policy_version=2)
    admin = ControlPlaneStarter.admin_token
    with chromium.devtools() as page:
        page.call("Page.navigate", url=cp.url + "/")
        until(lambda: page.text("#version") == "v2", "v2 on the page")

        page.type_into("#token", "not-the-token")
        page.click("#load-history")
        refused = until(lambda: "refused" in (t := page.text("#history-message")) and t, "401")
        assert "401" in refused

        page.type_into("#token", admin)
        page.click("#load-history")
        until(lambda: page.text("#history-message") == "2 versions kept", "the history")
        assert page.evaluate("document.querySelector('#from').value") == "1"
        assert page.evaluate("document.querySelector('#to').value") == "2"
        lines = page.evaluate("[...document.querySelectorAll('#diff span')].map(s => s.textContent)")
        assert '-     "timeout": "2s"' in lines and '+     "timeout": "750ms"' in lines, lines
        assert page.text("#diff-summary") == "v1 \u2192 v2: 2 changed lines"
        # The token is in the page's memory only: not in the form, the DOM or storage.
        kept = page.evaluate(
            "document.documentElement.outerHTML + JSON.stringify(localStorage) +"
            " JSON.stringify(sessionStorage) + document.querySelector('#token').value"
        )
        assert admin not in kept

        assert page.text("#rollback") == "Roll back to v1"
        page.click("#rollback")
        until(lambda: page.text("#version") == "v3", "the rollback's new version")
        done = "rolled back: v3 is v1's document; 3 versions kept"
        until(lambda: page.text("#history-message") == done, "the rollback's message")
        current = httpx.get(cp.url + "/v1/policy").json()
        assert (current["version"], current["policy"]) == (3, first)
        assert page.evaluate("document.querySelector('#to').value") == "3"

        # The keyboard alone: Tab reaches the graph's node, Enter selects it, and the focus
        # survives the page's next refresh.
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        page.press("Tab", 9)
        assert page.evaluate("document.activeElement.dataset.service") == "payments"
        page.press("Enter", 13)
        until(lambda: page.text("#details h3") == "payments", "the selected service")
        assert page.attribute("#graph g.node", "aria-pressed") == "true"
        time.sleep(2.5)  # one refresh re-draws the graph
        assert page.evaluate("document.activeElement.dataset.service") == "payments"
