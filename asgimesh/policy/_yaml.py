"""Policy documents in YAML: PyYAML's safe loader with YAML 1.2 booleans and no aliases.

A module of its own so that PyYAML is imported only when a YAML document is read: most
services take their policy as JSON (``MESH_POLICY``, the control plane) or none at all, and a
serverless cold start pays for every import (:mod:`asgimesh.policy._load` imports this lazily).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .._errors import PolicyError
from ._load import _one_line as one_line

__all__ = ["load_yaml"]


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans (only ``true``/``false``) and without anchors or aliases.

    Under PyYAML's YAML 1.1 rules the contract's own ``retries: {on: [...]}`` key would
    silently become the boolean ``True``. Aliases are refused where the composer meets them, so
    nothing is ever expanded: nine nested aliases in 302 bytes expand to a billion nodes (the
    "billion laughs"), and a policy document has no use for them (nor for ``<<`` merge keys,
    which need them).
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "anchors (&name) and aliases (*name) are not allowed in policy documents",
                event.start_mark,
            )
        return super().compose_node(parent, index)


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text: str, source: str) -> Any:
    """The document ``text`` holds; a syntax error is a :class:`PolicyError` naming where."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        # A reader error (a control character) has no mark but a two-line message.
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise PolicyError(
            [one_line(f"(document): invalid YAML{where}: {problem}")], source
        ) from None
