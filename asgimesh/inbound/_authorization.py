"""Authorization of inbound requests (``inbound.<service>.authorization``), sans-I/O.

Each ``allow`` rule is compiled once per policy version into sets and prefixes; a request is
allowed only if some rule matches its method, its path and its caller. A rule that names callers
(``from``) needs a *verified* caller identity: without one it never matches (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..policy import AuthorizationRule

__all__ = ["Authorizer", "compile_rule"]


@dataclass(frozen=True, slots=True)
class _Rule:
    """One ``allow``, compiled: ``None`` fields match anything."""

    methods: frozenset[str] | None
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    any_path: bool
    #: ``None``: any caller, verified or not; else these SPIFFE IDs and the IDs starting with
    #: one of ``caller_prefixes`` (``from`` entries ending in ``*``), or with ``any_verified``
    #: (``from: ["*"]``) every verified caller. An empty ``from`` matches nobody.
    callers: frozenset[str] | None
    caller_prefixes: tuple[str, ...] = ()
    any_verified: bool = False

    def matches_request(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.any_path or path in self.exact or path.startswith(self.prefixes)

    def matches_caller(self, caller: str | None) -> bool:
        if self.callers is None:
            return True
        if caller is None:
            return False  # fail closed: a rule that names callers needs a verified one
        return (
            self.any_verified or caller in self.callers or caller.startswith(self.caller_prefixes)
        )


def compile_rule(rule: AuthorizationRule) -> _Rule:
    allow = rule.allow
    paths = allow.paths
    callers: frozenset[str] | None = None
    prefixes: tuple[str, ...] = ()
    if allow.from_ is not None:
        callers = frozenset(e for e in allow.from_ if not e.endswith("*"))
        prefixes = tuple(e[:-1] for e in allow.from_ if e.endswith("*") and e != "*")
    return _Rule(
        methods=frozenset(allow.methods) if allow.methods is not None else None,
        exact=frozenset(p for p in paths or () if not p.endswith("*")),
        prefixes=tuple(p[:-1] for p in paths or () if p.endswith("*")),
        any_path=paths is None,
        callers=callers,
        caller_prefixes=prefixes,
        any_verified=allow.from_ is not None and "*" in allow.from_,
    )


def _has_dot_segment(path: str) -> bool:
    if "/." not in path:
        return False
    return any(segment in (".", "..") for segment in path.split("/"))


class Authorizer:
    """Allows a request only if some rule's ``allow`` matches it (no rules: nobody)."""

    __slots__ = ("rules", "service")

    def __init__(self, service: str, rules: tuple[AuthorizationRule, ...]) -> None:
        self.service = service
        self.rules = tuple(compile_rule(rule) for rule in rules)

    def check(self, method: str, path: str, caller: str | None) -> str | None:
        """``None`` if allowed, else why not (the 403's ``detail``)."""
        if _has_dot_segment(path):
            # The app may resolve "/public/../admin" to another path than the rules saw.
            return f"the path {path!r} has '.' or '..' segments, which authorization refuses"
        wanted_caller = False
        for rule in self.rules:
            if rule.matches_request(method, path):
                if rule.matches_caller(caller):
                    return None
                wanted_caller = True
        if wanted_caller and caller is None:
            return (
                f"no verified caller identity: the authorization of {self.service!r} allows "
                f"{method} {path} only from verified callers, and this request has no verified "
                "identity (unverified headers are never trusted)"
            )
        who = f"caller {caller}" if caller is not None else "an unverified caller"
        return f"no authorization rule of {self.service!r} allows {method} {path} from {who}"


