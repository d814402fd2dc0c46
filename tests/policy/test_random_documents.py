"""Randomized policy documents (hypothesis) through validation and the policy store.

Whatever the document (plausible, with random values in the model's own fields, or garbage),
validation answers with a :class:`Policy` or a :class:`PolicyError` listing one-line problems,
never anything else; and the store either applies it whole or refuses it whole, leaving the
previous snapshot untouched in every field. Derandomized, so CI runs the same search each time.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asgimesh import PolicyError
from asgimesh.policy import (
    Policy,
    PolicyStore,
    merge_layers,
    parse_document,
    validate_document,
)

from .documents import as_text, documents, nested, plausible, raw_texts

SEARCH = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: A refusal line is for a log and a terminal: one line, bounded.
LONGEST_PROBLEM = 1000


def _refusal(error: PolicyError) -> None:
    assert error.problems, "a refusal names at least one problem"
    for problem in error.problems:
        assert isinstance(problem, str) and problem.strip()
        assert "\n" not in problem, problem
        assert len(problem) <= LONGEST_PROBLEM, problem[:200]
    assert "Traceback" not in str(error)


def _validate(document: Any) -> Policy | None:
    """The validation answer, checked for shape; ``None`` for a refusal."""
    try:
        policy = validate_document(document, "fuzz")
    except PolicyError as error:
        _refusal(error)
        return None
    assert isinstance(policy, Policy)
    return policy


@SEARCH
@given(documents)
# Found by this search: a key holding a line break made a refusal of two log lines, the second
# one whatever the document's author chose; a huge key or value made a huge line.
@example({"\n": None})
@example({"services": {"a\nlevel=error msg=forged": {"timeout": "x"}}})
@example({"defaults": {"load_balancer": "x" * 100_000}})
@example({"services": {"p": {"routes": [{"match": {"method": "B" * 100_000}}]}}})
def test_validation_answers_a_policy_or_a_clean_refusal(document: Any) -> None:
    if not isinstance(document, dict):
        return  # the parsers refuse non-mappings before validation (below)
    before = copy.deepcopy(document) if _deep_copyable(document) else None
    _validate(document)
    if before is not None:
        assert _same(document, before), "validation must not change its input"


@SEARCH
@given(st.one_of(documents.map(lambda d: ("json", d)), documents.map(lambda d: ("yaml", d))))
def test_parsing_written_documents_answers_a_policy_or_a_clean_refusal(
    case: tuple[str, Any],
) -> None:
    fmt, document = case
    try:
        text = as_text(document, fmt)
    except (ValueError, UnicodeEncodeError, RecursionError):
        return  # not writable as that format (a lone surrogate in YAML, say)
    try:
        parsed = parse_document(text, fmt, "fuzz")
    except PolicyError as error:
        _refusal(error)
        return
    assert isinstance(parsed, dict)
    _validate(parsed)


@SEARCH
@given(raw_texts, st.sampled_from(["json", "yaml", "toml"]))
# Found by this search: YAML's refusal of a control character was two lines.
@example("\x1f", "yaml")
def test_parsing_raw_text_answers_a_mapping_or_a_clean_refusal(text: str, fmt: str) -> None:
    try:
        parsed = parse_document(text, fmt, "fuzz")
    except PolicyError as error:
        _refusal(error)
        return
    assert isinstance(parsed, dict)
    _validate(parsed)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [50, 900, 5000, 100_000])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_deep_nesting_is_a_clean_refusal_whatever_the_depth(
    kind: str, depth: int, fmt: str
) -> None:
    document = nested(depth, kind)
    text = (
        '{"defaults": ' + "[" * depth + '"2s"' + "]" * depth + "}"
        if kind == "list"
        else '{"defaults": ' + '{"retries": ' * depth + '"2s"' + "}" * depth + "}"
    )
    try:
        parsed = parse_document(text, fmt, "fuzz")
    except PolicyError as error:
        _refusal(error)
        parsed = None
    if parsed is not None:
        assert _validate(parsed) is None
    if depth <= 900:  # a document that deep is still a value a test can hand over
        assert _validate(document) is None


# -- the store: whole or not at all ----------------------------------------------------------

BASE = ("env", {"defaults": {"timeout": 3.0}, "services": {"orders": {"endpoints": ["http://o"]}}})
FIRST = {
    "defaults": {"retries": {"attempts": 1}},
    "inbound": {"payments": {"concurrency_limit": 4}},
}


def _fields(snapshot: Any) -> tuple[Any, ...]:
    return (
        snapshot.version,
        snapshot.source,
        dict(snapshot.origin),
        snapshot.policy.model_dump(mode="json", by_alias=True),
    )


@SEARCH
@given(plausible, st.sampled_from(["cp", "file:p.yaml"]))
def test_the_store_applies_a_document_whole_or_refuses_it_whole(
    document: dict[str, Any], source: str
) -> None:
    store = PolicyStore([BASE])
    previous = store.apply(FIRST, source=source, version=1 if source == "cp" else None)
    recorded = _fields(previous)
    applied: list[Any] = []
    refused: list[PolicyError] = []
    store.subscribe(applied.append)
    store.on_failure(refused.append)
    version = 2 if source == "cp" else None
    try:
        snapshot = store.apply(document, source=source, version=version)
    except PolicyError as error:
        failure: PolicyError | None = error
    else:
        failure = None
    if failure is not None:
        _refusal(failure)
        assert store.current is previous and _fields(store.current) == recorded
        assert applied == [] and refused == [failure]
        return
    merged, origin = merge_layers([BASE, (source, document)])
    assert store.current is snapshot and applied == [snapshot] and refused == []
    assert snapshot.policy == validate_document(merged)
    assert dict(snapshot.origin) == origin and snapshot.source == source
    assert snapshot.version == (2 if source == "cp" else previous.version + 1)
    # Nothing of the first document survives unless the new one or the base set it.
    assert snapshot.origin_of("defaults.retries.attempts") in ("default", source)
    assert _fields(previous) == recorded, "the previous snapshot is never modified"


def _deep_copyable(value: Any) -> bool:
    try:
        copy.deepcopy(value)
    except RecursionError:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equality that holds NaN equal to NaN (a document may carry one)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)
