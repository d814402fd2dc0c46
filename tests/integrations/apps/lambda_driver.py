"""What the AWS Lambda runtime does with a Python handler, in a fresh process of its own.

Init phase: import ``LAMBDA_HANDLER`` (``module.attribute``). An error there is reported as the
runtime reports it, ``{"errorType": ..., "errorMessage": ...}``, and the process exits 1.
Then each line on stdin is one command, answered by one line on stdout starting with ``@@ ``
(the library's own log lines may go to stdout too; the test skips them):

* ``{"event": {...}}``: call ``handler(event, context)`` with a minimal Lambda context object
  (the function's timeout: ``LAMBDA_TIMEOUT_MS``, default 15 s); answers ``{"response": ..., "threads": [...]}``.
* ``{"settle": seconds}``: wait until only the main thread is left (a serverless refresh runs on
  a helper that ends by itself), at most that long; answers ``{"threads": [...]}``.

``threads`` are the names of the live threads: in serverless mode nothing but ``MainThread``
survives an event.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
import threading
import time
from typing import Any

_ids = itertools.count(1)


class LambdaContext:
    """The attributes and the method of ``awslambdaric``'s context that handlers use."""

    function_name = "shop-frontend"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:shop-frontend"
    memory_limit_in_mb = "512"
    log_group_name = "/aws/lambda/shop-frontend"
    log_stream_name = "2026/12/04/[$LATEST]0123456789abcdef"

    def __init__(self, timeout_ms: int = 15_000) -> None:
        self.aws_request_id = f"c6af9ac6-7b61-11e6-9a41-{next(_ids):012d}"
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _threads() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())


def _answer(payload: dict[str, Any]) -> None:
    sys.stdout.write("@@ " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    module, _, attribute = os.environ["LAMBDA_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module), attribute)
    except Exception as exc:  # what the runtime shows for a failed init
        _answer({"errorType": type(exc).__name__, "errorMessage": str(exc)})
        return 1
    _answer({"ready": True, "threads": _threads()})
    for line in sys.stdin:
        command = json.loads(line)
        if "event" in command:
            timeout_ms = int(os.environ.get("LAMBDA_TIMEOUT_MS", "15000"))
            response = handler(command["event"], LambdaContext(timeout_ms))
            _answer({"response": response, "threads": _threads()})
        elif "settle" in command:
            deadline = time.monotonic() + float(command["settle"])
            while threading.active_count() > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            _answer({"threads": _threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
