"""The fixtures that start real servers must not be fooled by a port another process holds."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import PortTakenError, Spawner, free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50


def test_a_server_that_loses_its_port_is_noticed_not_mistaken_for_ready(spawn: Spawner) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        with pytest.raises(PortTakenError, match=f"port {port} was taken"):
            spawn.uvicorn("tests.inbound.apps_asgi:bare", port=port)
