"""Hypothesis strategies for policy documents: plausible ones, built from the real model's
fields with random values (right, wrong and absurd), and garbage (random JSON-like trees, odd
text, deep nesting within the parsers' limits).

Plausible documents reach deep into validation (the field validators, the unions, the model
validators); garbage tests that nothing but a clean refusal comes out of anything else.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import strategies as st

#: Text that is not plain ASCII: combining marks, right-to-left, emoji, NUL, a BOM, look-alike
#: digits ("²", "٣"), and a lone surrogate (which no UTF-8 text can hold).
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "\ufeff",
    "é",
    "e\u0301",
    "\u202e",
    "😀",
    "²",
    "٣s",
    "\ud800",
    "1e309",
    "NaN",
    "-0",
    "0x10",
    "10 s",
    "1h" * 40,
]

#: Integers and floats around every bound in the model, and beyond what floats hold.
NUMBERS: list[int | float] = [
    0,
    1,
    -1,
    2,
    9,
    10,
    11,
    99,
    100,
    101,
    199,
    200,
    599,
    600,
    2**31,
    2**63,
    -(2**63),
    10**30,
    10**400,
    0.5,
    -0.5,
    1e-300,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]

texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(),
    st.floats(),
    texts,
)
#: Any JSON-like tree (YAML and Python add nothing a policy accepts).
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(texts, children, max_size=4),
    ),
    max_leaves=12,
)
#: A small tree, for a wrong value inside an otherwise plausible document.
small_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=2), st.dictionaries(texts, children, max_size=2)
    ),
    max_leaves=4,
)


def weighted(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int
) -> st.SearchStrategy[Any]:
    """``good`` ``odds`` times out of ``odds + 1``, else ``bad`` (``st.one_of`` of repeated
    branches does not weight: it favours the simplest)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda g: good if g else bad)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``good``, sometimes anything: most of a document is right, some of it is not."""
    return weighted(good, st.one_of(scalars, small_trees), 20)


def _model(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping with any subset of ``fields``; now and then also a field the model lacks."""
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.fixed_dictionaries(
        {}, optional={"timout": scalars, "": scalars, "\u00e9": small_trees}
    )
    return weighted(known, st.builds(lambda a, b: {**a, **b}, known, unknown), 20)


good_durations = st.one_of(
    st.sampled_from(["250ms", "2s", "1m", "1h", "0", "0.5", ".5s", "1.5h"]),
    st.integers(0, 3600),
    st.floats(0, 3600),
)
durations = weighted(
    good_durations,
    st.one_of(
        st.sampled_from(["fast", "-1s", "1d", "1e3s"]),
        st.integers(-5, 10**6),
        st.floats(allow_nan=True),
        st.sampled_from(ODD_TEXT),
    ),
    6,
)
percents = weighted(
    st.one_of(st.integers(0, 30), st.floats(0, 30)),
    st.one_of(st.integers(-10, 120), st.floats(), st.sampled_from(NUMBERS)),
    6,
)


def mostly(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``valid`` most of the time, one of ``invalid`` now and then."""
    return weighted(st.sampled_from(valid), st.sampled_from(invalid), 8)


methods = mostly(["GET", "post", "PUT", "DELETE"], ["BREW", "", "G\u0130T", "GET "])
paths = mostly(["/", "/charge", "/api/*", "/\u00e9"], ["/a*b", "charge", "", "*"])
identities = mostly(
    ["*", "spiffe://mesh.local/ns/default/sa/orders", "spiffe://other.example/x"],
    ["spiffe://mesh.local", "spiffe://MESH/x", "https://orders", ""],
)
names = mostly(["payments", "orders", "a", "\u00e9t\u00e9"], ["x" * 300, "pay ments", ""])
urls = mostly(
    ["http://127.0.0.1:8001", "https://payments:443/", "http://[::1]:80"],
    ["ftp://x", "http://", "payments", ""],
)
conditions = mostly(["connect-failure", "reset", 502, "503", 599], [399, 600, "5xx", True])

backoff = _model({"base": maybe(durations), "max": maybe(durations)})
budget = _model(
    {"ratio": maybe(percents), "min_per_second": maybe(percents), "ttl": maybe(durations)}
)
retries = _model(
    {
        "attempts": maybe(st.integers(-2, 12)),
        "on": maybe(st.lists(conditions, max_size=4)),
        "backoff": maybe(backoff),
        "budget": maybe(budget),
    }
)
outlier = _model(
    {
        "consecutive_failures": maybe(st.integers(-1, 10)),
        "interval": maybe(durations),
        "base_ejection_time": maybe(durations),
        "max_ejection_percent": maybe(percents),
    }
)
split = st.lists(_model({"service": maybe(names), "weight": maybe(percents)}), max_size=3)
fault = _model(
    {
        "abort": maybe(
            _model({"percent": maybe(percents), "status": maybe(st.integers(100, 700))})
        ),
        "delay": maybe(_model({"percent": maybe(percents), "duration": maybe(durations)})),
    }
)
hedge = _model(
    {
        "delay": maybe(mostly(["50ms", 0.02, "p95", "P99", "p50"], ["p100", "p49", 0, "-1s", True])),
        "max": maybe(st.integers(-1, 5)),
    }
)
mirror = _model({"service": maybe(names), "percent": maybe(percents)})
route = _model(
    {
        "match": maybe(_model({"method": maybe(methods), "path": maybe(paths)})),
        "timeout": maybe(durations),
        "per_try_timeout": maybe(durations),
        "retries": maybe(retries),
        "idempotent": maybe(st.booleans()),
        "split": maybe(split),
        "fault": maybe(fault),
        "hedge": maybe(hedge),
        "mirror": maybe(mirror),
    }
)
load_balancers = mostly(["p2c_ewma", "round_robin", "least_request", "random"], ["best", ""])
service = _model(
    {
        "endpoints": maybe(st.lists(urls, max_size=3)),
        "dns": maybe(mostly(["payments:8000", "https://p:443"], ["p", "p:x", "p:99999"])),
        "timeout": maybe(durations),
        "per_try_timeout": maybe(durations),
        "retries": maybe(retries),
        "load_balancer": maybe(load_balancers),
        "outlier_detection": maybe(outlier),
        "routes": maybe(st.lists(route, max_size=2)),
        "split": maybe(split),
        "fault": maybe(fault),
        "hedge": maybe(hedge),
        "mirror": maybe(mirror),
        "identity": maybe(identities),
    }
)
allow = _model(
    {
        "from": maybe(st.lists(identities, max_size=3)),
        "methods": maybe(st.lists(methods, max_size=3)),
        "paths": maybe(st.lists(paths, max_size=3)),
    }
)
inbound = _model(
    {
        "authorization": maybe(
            st.lists(st.fixed_dictionaries({"allow": maybe(allow)}), max_size=3)
        ),
        "rate_limit": maybe(
            _model(
                {
                    "requests_per_second": maybe(percents),
                    "burst": maybe(st.integers(-1, 10**6)),
                }
            )
        ),
        "concurrency_limit": maybe(st.integers(-1, 10**6)),
        "trusted_proxies": maybe(
            st.lists(mostly(["10.0.0.0/8", "::1", "192.168.1.7"], ["10.0.0.0/33", "x"]))
        ),
    }
)
defaults = _model(
    {
        "timeout": maybe(durations),
        "per_try_timeout": maybe(durations),
        "retries": maybe(retries),
        "load_balancer": maybe(load_balancers),
        "outlier_detection": maybe(outlier),
    }
)
#: Documents shaped like the model, with random values.
plausible = _model(
    {
        "version": maybe(st.sampled_from([1, 2, "1", 1.0, True])),
        "defaults": maybe(defaults),
        "services": maybe(st.dictionaries(names, service, max_size=3)),
        "inbound": maybe(st.dictionaries(names, inbound, max_size=3)),
    }
)
#: Anything at the top: a mapping of anything, or not a mapping at all.
documents = st.one_of(plausible, plausible, st.dictionaries(texts, trees, max_size=5), trees)


def nested(depth: int, kind: str) -> Any:
    """A document nested ``depth`` levels deep under ``defaults``, built without recursion."""
    leaf: Any = "2s"
    for _ in range(depth):
        leaf = [leaf] if kind == "list" else {"retries": leaf}
    return {"defaults": leaf}


def as_text(document: Any, fmt: str) -> str:
    """``document`` written as ``fmt`` (JSON keeps NaN and infinities as Python writes them)."""
    if fmt == "yaml":
        return yaml.safe_dump(document, allow_unicode=True)
    return json.dumps(document, ensure_ascii=False)


#: Text no serializer would write: truncated, misquoted, mixed up.
raw_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "{",
            "[]",
            "null",
            "1",
            '"x"',
            "{'a': 1}",
            "defaults: {timeout: [",
            "&a [*a]",
            "a: &x 1\nb: *x\n",
            "!!python/object:os.system ls",
            "defaults:\n  timeout: 2s\n timeout: 3s\n",
            "\ufeff{}",
            '{"defaults": {"timeout": 1e999}}',
            '{"defaults": 1, "defaults": 2}',
            "\x00",
        ]
    ),
)
