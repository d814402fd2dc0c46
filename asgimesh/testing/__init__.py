"""Helpers for testing services that use asgimesh: fake upstreams to fail, hang, reset or slow."""

from ._upstream import Behaviour, FakeUpstream, parse_behaviour, upstream_from_env

__all__ = ["Behaviour", "FakeUpstream", "parse_behaviour", "upstream_from_env"]
