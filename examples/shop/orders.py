"""The shop's orders service: Flask on gunicorn, with the mesh from ``asgimesh_flask``.

``POST /orders`` charges the order through ``payments``. Each charge carries an
``Idempotency-Key``, which is why ``mesh.yaml`` lets the mesh retry ``POST /charge``. A mesh
failure is one log line and a 502 naming it.

    MESH_SERVICE=orders MESH_UPSTREAMS=payments=http://127.0.0.1:8003,http://127.0.0.1:8004 \\
        gunicorn orders:app --bind 127.0.0.1:8002
"""

from __future__ import annotations

import logging
import random
import uuid

import httpx
from asgimesh_flask import Mesh
from flask import Flask, jsonify, request

log = logging.getLogger("shop.orders")
app = Flask(__name__)
mesh = Mesh(app)


@app.post("/orders")
def create_order():  # type: ignore[no-untyped-def]
    order = request.get_json(silent=True) or {}
    amount = random.randint(1, 100)
    try:
        answer = mesh.client.post(
            "http://payments/charge",
            json={"amount": amount, "item": order.get("item")},
            headers={"idempotency-key": uuid.uuid4().hex},
        )
    except httpx.HTTPError as exc:
        log.warning("payments unavailable: %s: %s", type(exc).__name__, exc)
        return jsonify(error="payments unavailable", detail=f"{type(exc).__name__}: {exc}"), 502
    if answer.status_code != 200:
        log.warning("payment refused: %s %s", answer.status_code, answer.text[:200])
        return jsonify(error="payment failed", status=answer.status_code), 502
    return jsonify(order="ok", amount=amount, payment=answer.json())
