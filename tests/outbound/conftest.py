"""The outbound integration tests' fixtures: every transport flavour, one driver per call.

Servers are started by the root ``conftest.py`` (``fake_upstreams``, ``spawn``); these only
make the clients that call them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from outbound_driver import VARIANTS, Driver, driver, runtime


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mesh(variant: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``mesh(services, defaults=None, max_connections=None, zone=None, **transport_kwargs)``
    -> a :class:`Driver` of this test's flavour, closed after the test. The policy's defaults
    are ``defaults`` over the test module's ``MESH_DEFAULTS`` (else ``FAST``)."""
    base = getattr(request.module, "MESH_DEFAULTS", None)
    opened: list[Any] = []

    def make(services: dict[str, Any], defaults: dict[str, Any] | None = None,
             max_connections: int | None = None, zone: str | None = None,
             **kwargs: Any) -> Driver:  # fmt: skip
        rt = runtime(services, defaults, base=base, **({"zone": zone} if zone else {}))
        if max_connections is not None:
            module = httpx if variant.startswith("httpx-") else httpx2
            kwargs["limits"] = module.Limits(max_connections=max_connections)
        cm = driver(variant, rt, **kwargs)
        d = cm.__enter__()
        d.runtime = rt  # type: ignore[attr-defined]
        opened.append(cm)
        return d

    yield make
    for cm in opened:
        cm.__exit__(None, None, None)
