"""``POST /charge``: charge an amount, once per ``Idempotency-Key``."""

from __future__ import annotations

import json
import os
import random

from asgimesh_django import current_context
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

FAIL_PERCENT = float(os.environ.get("DEMO_FAIL_PERCENT", "0"))
REPLICA = os.environ.get("MESH_INSTANCE", "payments")
#: Charges already made, by idempotency key: a retried charge is answered, not made twice.
_charged: dict[str, dict[str, object]] = {}


@csrf_exempt
@require_POST
def charge(request: HttpRequest) -> JsonResponse:
    if random.random() * 100 < FAIL_PERCENT:
        return JsonResponse({"error": "unavailable", "detail": "flaky replica"}, status=503)
    key = request.headers.get("idempotency-key", "")
    if key in _charged:
        return JsonResponse(_charged[key])
    try:
        amount = json.loads(request.body or b"{}").get("amount", 0)
    except (ValueError, AttributeError):
        return JsonResponse({"error": "bad request", "detail": "expected JSON"}, status=400)
    ctx = current_context()
    receipt = {"charged": amount, "replica": REPLICA, "trace_id": ctx.trace_id if ctx else None}
    if key:
        _charged[key] = receipt
    return JsonResponse(receipt)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "replica": REPLICA})
