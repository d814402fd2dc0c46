"""What the mesh writes, and what it costs, when a wrapped app raises on an unconfigured host.

A FastAPI endpoint raises; the request carries an ``Authorization`` header. Run under
``mesh_wrap``'s patch (so the app is wrapped as in the suite), this prints the time per failing
request, bare and wrapped, then everything written to stdout/stderr during one wrapped failing
request, and whether it holds rich's frame-locals panel, the ASGI ``scope`` or the secret.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

from fastapi import FastAPI
from starlette.testclient import TestClient

SECRET = "Bearer probe-secret-4f1c"
N = 20

app = FastAPI()


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("boom")


def per_request_ms(client: TestClient) -> float:
    client.get("/boom", headers={"Authorization": SECRET})  # warm up
    started = time.perf_counter()
    for _ in range(N):
        client.get("/boom", headers={"Authorization": SECRET})
    return (time.perf_counter() - started) / N * 1000


def main() -> int:
    bare = TestClient(app, raise_server_exceptions=False)
    # Silence what the warm-up and timing loops print: only the one request below is shown.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        bare_ms = per_request_ms(bare)
        import mesh_wrap

        mesh_wrap.install()
        wrapped = TestClient(app, raise_server_exceptions=False)
        assert type(wrapped.app).__name__ == "MeshMiddleware", wrapped.app
        wrapped_ms = per_request_ms(wrapped)

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = wrapped.get("/boom", headers={"Authorization": SECRET}).status_code
    captured = out.getvalue() + err.getvalue()
    print(f"failing request, bare:    {bare_ms:8.2f} ms")
    print(f"failing request, wrapped: {wrapped_ms:8.2f} ms  (status {status})")
    print(f"--- written during one wrapped failing request: {len(captured)} characters, "
          f"{captured.count(chr(10))} lines (stdout {len(out.getvalue())}, "
          f"stderr {len(err.getvalue())}) ---")
    sys.stdout.write(captured)
    print("--- end ---")
    checks = {
        "rich locals panel": "locals" in captured and "╭" in captured,
        "'scope' shown": "'scope'" in captured or "scope =" in captured,
        "Authorization value shown": "probe-secret-4f1c" in captured,
    }
    for name, seen in checks.items():
        print(f"{name}: {'YES' if seen else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
