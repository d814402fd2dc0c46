"""Cold start: what importing asgimesh costs a fresh process, and how long a fresh Lambda
sandbox takes from process start to the first Mangum event answered.

(a) Imports: each variant is a fresh interpreter that times its own ``import`` statement
(``time.perf_counter`` around it) and checks that the modules it asked for are loaded; the
parent also times the whole process, interpreter start included. The budget: ``import
asgimesh`` at most 100 ms more than ``import httpx, starlette`` (what a service imports without
the mesh).

(b) First event: a fresh interpreter imports the shop's Lambda handler
(``examples/shop/lambda_handler.py``: FastAPI, the FastAPI plugin, Mangum; the mesh runtime is
built at import, Lambda's init phase) and calls it with one API Gateway HTTP API (v2) event, then
prints the answer; the parent times from ``Popen`` to that line. Two events: ``GET /`` (the
frontend calls the orders upstream, a real uvicorn on loopback, through the mesh) and
``GET /_mesh/health`` (answered by the middleware). The same FastAPI endpoint without the mesh
(plain ``httpx.AsyncClient``, same Mangum) is the baseline. Budget: ≤ 200 ms. Every answer is
checked (status 200, the upstream reached, ``x-request-id`` on the mesh's answers).

Variants alternate within each round (reversed every other round); figures are medians of the
rounds. ``python -X importtime`` then says where the import time goes, summed per top-level
package (self time; ``-X importtime`` itself adds overhead, so these are shares, not totals).

    python bench/bench_coldstart.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _report import median, write_section  # noqa: E402

SHOP = ROOT / "examples" / "shop"

IMPORTS: dict[str, tuple[str, ...]] = {
    "python, nothing imported": (),
    "import httpx, starlette": ("httpx", "starlette"),
    "import asgimesh": ("asgimesh",),
    "import fastapi, httpx": ("fastapi", "httpx"),
    "import asgimesh, asgimesh_fastapi": ("asgimesh", "asgimesh_fastapi"),
}
BASE, MESH = "import httpx, starlette", "import asgimesh"
PLUGIN_BASE, PLUGIN = "import fastapi, httpx", "import asgimesh, asgimesh_fastapi"
IMPORT_BUDGET_MS = 100.0
EVENT_BUDGET_MS = 200.0

_IMPORT_CHILD = """
import json, sys, time
names = {names!r}
start, cpu = time.perf_counter(), time.process_time()
for name in names:
    __import__(name)
took, cpu = time.perf_counter() - start, time.process_time() - cpu
assert all(name in sys.modules for name in names), names
print(json.dumps({{"import_s": took, "cpu_s": cpu, "modules": len(sys.modules)}}))
"""

#: The first event, as the Lambda runtime delivers it: import the handler, call it once.
_EVENT_CHILD = """
import json, sys, time
start = time.perf_counter()
{load}
loaded = time.perf_counter()
event = {{
    "version": "2.0", "routeKey": "$default", "rawPath": {path!r}, "rawQueryString": "",
    "headers": {{"host": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com", "user-agent": "bench"}},
    "requestContext": {{
        "accountId": "123456789012", "apiId": "r3pmxmplak", "stage": "$default",
        "domainName": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com",
        "http": {{"method": "GET", "path": {path!r}, "protocol": "HTTP/1.1",
                  "sourceIp": "203.0.113.7", "userAgent": "bench"}},
        "requestId": "bench", "routeKey": "$default", "time": "04/Dec/2026:19:03:58 +0000",
        "timeEpoch": 1796497438000,
    }},
    "isBase64Encoded": False,
}}
class Context:
    aws_request_id = "bench"; function_name = "shop-frontend"; memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:shop-frontend"
    def get_remaining_time_in_millis(self): return 15000
response = handler(event, Context())
done = time.perf_counter()
cpu = time.process_time()  # CPU since the process started, the interpreter's start included
print("@@ " + json.dumps({{"response": response, "init_s": loaded - start,
                          "event_s": done - loaded, "cpu_s": cpu}}), flush=True)
"""

_MESH_LOAD = "from lambda_handler import handler"
#: The same endpoint and Mangum without the mesh: the baseline of the first event.
_PLAIN_LOAD = """
import httpx
from fastapi import FastAPI
from mangum import Mangum
app = FastAPI()
client = None
@app.get("/")
async def home():
    global client
    client = client or httpx.AsyncClient(timeout=10)
    answer = await client.post(ORDERS + "/orders", json={"item": "tea", "quantity": 1})
    return {"frontend": "ok", "orders": answer.json()}
handler = Mangum(app, lifespan="off")
"""


def child_env(orders: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "PYTHON"))}
    env |= {"MESH_SERVICE": "frontend", "MESH_UPSTREAMS": f"orders={orders}"}
    return env


def run_import(names: tuple[str, ...], env: dict[str, str]) -> dict[str, float]:
    """The import's wall and CPU seconds measured inside, the whole process's wall outside."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHILD.format(names=names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SHOP,
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return {"import": answer["import_s"], "cpu": answer["cpu_s"], "wall": wall}


def run_event(variant: str, path: str, env: dict[str, str], orders: str) -> dict[str, float]:
    """Process start to the first event answered, with the answer checked."""
    load = _MESH_LOAD if variant == "mesh" else f"ORDERS = {orders!r}\n" + _PLAIN_LOAD
    code = _EVENT_CHILD.format(load=load, path=path)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=SHOP,
    )
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:  # the library's own log lines, if any, come before the answer
        if line.startswith("@@ "):
            break
    answered = time.perf_counter() - start
    _, errors = proc.communicate(timeout=60)
    assert line.startswith("@@ "), errors
    result = json.loads(line[3:])
    response = result["response"]
    assert response["statusCode"] == 200, response
    answer = json.loads(response["body"])
    if path == "/":
        assert answer["frontend"] == "ok", answer
        assert answer["orders"]["path"] == "/orders", answer
    else:
        assert answer["status"] == "ok", answer
        assert answer["service"] == "frontend", answer
    if variant == "mesh" and path == "/":
        assert response["headers"].get("x-request-id"), response["headers"]
    return {
        "wall": answered,
        "cpu": result["cpu_s"],
        "init": result["init_s"],
        "event": result["event_s"],
    }


def import_shares(statement: str, env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """``-X importtime``: self time summed per top-level package, largest first (ms)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SHOP,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    per_package: dict[str, float] = defaultdict(float)
    for row in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| (\s*)(\S+)", row)
        if match:
            per_package[match.group(3).split(".")[0]] += int(match.group(1)) / 1000
    return sorted(per_package.items(), key=lambda item: -item[1])[:top]


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asgimesh.testing:upstream_from_env", "--factory",
         "--port", str(port), "--log-level", "warning"],
        env={k: v for k, v in os.environ.items() if not k.startswith("MESH_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the upstream did not start in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    upstream, orders = start_upstream()
    try:
        env = child_env(orders)
        imports: dict[str, list[dict[str, float]]] = defaultdict(list)
        events: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
        event_variants = [("plain", "/"), ("mesh", "/"), ("mesh", "/_mesh/health")]
        for round_ in range(args.rounds):
            order = list(IMPORTS) if round_ % 2 == 0 else list(reversed(IMPORTS))
            for name in order:
                imports[name].append(
                    {k: v * 1000 for k, v in run_import(IMPORTS[name], env).items()}
                )
            for variant, path in event_variants if round_ % 2 == 0 else event_variants[::-1]:
                events[variant, path].append(
                    {k: v * 1000 for k, v in run_event(variant, path, env, orders).items()}
                )
        shares_mesh = import_shares("import asgimesh", env)
        shares_handler = import_shares("import lambda_handler", env)
    finally:
        upstream.terminate()
        upstream.wait(timeout=15)

    def of(name: str, key: str) -> float:
        return median([row[key] for row in imports[name]])

    def added(name: str, base: str, key: str = "import") -> float:
        pairs = zip(imports[name], imports[base], strict=True)
        return median([a[key] - b[key] for a, b in pairs])

    mesh_added, mesh_cpu = added(MESH, BASE), added(MESH, BASE, "cpu")
    plugin_added = added(PLUGIN, PLUGIN_BASE)
    first = median([e["wall"] for e in events["mesh", "/"]])
    first_cpu = median([e["cpu"] for e in events["mesh", "/"]])
    pairs = list(zip(events["mesh", "/"], events["plain", "/"], strict=True))
    over_plain = median([m["wall"] - p["wall"] for m, p in pairs])
    over_plain_cpu = median([m["cpu"] - p["cpu"] for m, p in pairs])
    import_rows = [
        f"| `{name}` | {of(name, 'import'):.1f} ms | {of(name, 'cpu'):.1f} ms "
        f"| {of(name, 'wall'):.1f} ms |"
        for name in IMPORTS
    ]
    labels = {
        ("plain", "/"): "FastAPI + Mangum, no mesh: `GET /` → upstream",
        ("mesh", "/"): "shop frontend handler (mesh): `GET /` → orders upstream",
        ("mesh", "/_mesh/health"): "shop frontend handler (mesh): `GET /_mesh/health`",
    }
    event_rows = []
    for key, label in labels.items():
        rows = events[key]
        event_rows.append(
            f"| {label} | {median([r['wall'] for r in rows]):.1f} ms "
            f"| {median([r['cpu'] for r in rows]):.1f} ms "
            f"| {median([r['init'] for r in rows]):.1f} ms "
            f"| {median([r['event'] for r in rows]):.1f} ms |"
        )

    def verdict(value: float, budget: float) -> str:
        within = "within" if value <= budget else "OVER"
        return f"{within} the {budget:.0f} ms budget"

    # An import is CPU-bound: wall time well above CPU time means other work had the cores.
    busy = of(MESH, "import") / max(of(MESH, "cpu"), 1e-9)
    load_note = (
        [
            f"- This run's wall times were {busy:.1f} times its CPU times (`import asgimesh`): the "
            "machine was busy with other work, so read the CPU columns; the budgets are for "
            "wall time on an idle machine.",
        ]
        if busy > 1.3
        else []
    )
    body = "\n".join(
        [
            "## Cold start: imports, and a fresh Lambda sandbox's first event",
            "",
            f"**Result: `import asgimesh` costs {mesh_added:+.1f} ms over `import httpx, "
            f"starlette` ({verdict(mesh_added, IMPORT_BUDGET_MS)}; {mesh_cpu:+.1f} ms of CPU); "
            f"the FastAPI plugin {plugin_added:+.1f} ms over `import fastapi, httpx`. A fresh "
            f"process answers its first Mangum event through the mesh to an upstream in "
            f"{first:.1f} ms ({verdict(first, EVENT_BUDGET_MS)}; {first_cpu:.1f} ms of CPU), "
            f"{over_plain:+.1f} ms ({over_plain_cpu:+.1f} ms of CPU) over the same endpoint "
            "and Mangum without the mesh.**",
            "",
            "| fresh process | the import, timed inside | its CPU time | whole process, timed "
            "outside |",
            "| --- | ---: | ---: | ---: |",
            *import_rows,
            "",
            "| process start → first event answered | total | CPU time (process start to "
            "answer) | of which init (imports, runtime) | of which the event |",
            "| --- | ---: | ---: | ---: | ---: |",
            *event_rows,
            "",
            "Where the import time goes (`python -X importtime`, self time per top-level "
            "package; the flag adds overhead of its own):",
            "",
            "- `import asgimesh`: "
            + ", ".join(f"{name} {ms:.1f} ms" for name, ms in shares_mesh),
            "- `import lambda_handler` (the shop's Lambda handler): "
            + ", ".join(f"{name} {ms:.1f} ms" for name, ms in shares_handler),
            "",
            f"- {args.rounds} rounds; each round starts every variant once, in alternating "
            "order; figures are medians over rounds, differences taken within each round. "
            "Wall times move with the machine's load; CPU times (`time.process_time` in the "
            "child) much less.",
            "- Imports: each child checks that the modules are loaded. Events: an API Gateway "
            "HTTP API (v2) event; every answer checked (200, the upstream reached, "
            "`x-request-id` on the mesh's answers to `GET /`). The upstream is "
            "`asgimesh.testing`'s FakeUpstream under uvicorn on loopback; `MESH_UPSTREAMS` "
            "points at it, no control plane (with `MESH_CONFIG=…?refresh=` the init adds one "
            "policy fetch).",
            "- On Lambda the init phase also loads the package from its storage: a real cold "
            "start is longer than a warm page cache's. The machine's 2 cores are shared with "
            "other work: compare the rows of one run.",
            *load_note,
        ]
    )
    print(body)
    write_section("coldstart", body, "bash bench/run.sh coldstart")


if __name__ == "__main__":
    main()
