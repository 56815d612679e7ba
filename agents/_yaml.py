"""The one way the project reads YAML (workflow files, ``swarm.yaml``, ``SWARMBUS_*``
values), and PyYAML's errors as one line.

PyYAML's ``safe_load`` keeps YAML 1.1's habits: a key given twice silently keeps
the last value, and ``yes``/``no``/``on``/``off`` are booleans, even as keys (a
route ``yes:`` became ``True``; pyyaml#855). ``load_yaml`` is strict instead.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["DuplicateKeyError", "load_yaml", "yaml_problem"]

_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A mapping names the same key twice (lines and columns are 1-based)."""

    def __init__(self, key: str, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key = key
        self.line, self.column = again.line + 1, again.column + 1
        self.first_line, self.first_column = first.line + 1, first.column + 1

    def __str__(self) -> str:
        if self.line == self.first_line:  # a flow mapping, or a one-line value
            return (f"duplicate key {self.key!r} at line {self.line}, column {self.column} "
                    f"(first at column {self.first_column})")
        return f"duplicate key {self.key!r} at line {self.line} (first at line {self.first_line})"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with keys as written, each once, and YAML 1.2's booleans."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):  # `!!map` on a scalar: PyYAML says what it found
            return super().construct_mapping(node, deep=deep)
        seen: dict[str, yaml.Mark] = {}
        for key_node, _ in node.value:  # the keys as written: merged ones may be overridden
            if key_node.tag == _MERGE:
                continue
            key = _key(key_node, node)
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        self.flatten_mapping(node)  # `<<: *anchor` merges, explicit keys win
        return {_key(k, node): self.construct_object(v, deep=deep) for k, v in node.value}


def _key(key_node: Node, mapping: MappingNode) -> str:
    """A key exactly as written: ``yes``, ``on``, ``true`` and ``1`` stay words."""
    if not isinstance(key_node, ScalarNode):
        kind = "list" if isinstance(key_node, SequenceNode) else "mapping"
        raise ConstructorError("while reading a mapping", mapping.start_mark,
                               f"a key must be a word, not a {kind}", key_node.start_mark)
    return str(key_node.value)


# YAML 1.2's core schema: only true/false (any of three casings) are booleans.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """One YAML document as Python data (dicts, lists, str, int, float, bool, None).

    Mapping keys are strings exactly as written; only ``true``/``false`` are
    booleans (``yes``, ``no``, ``on``, ``off`` are words). Raises
    ``DuplicateKeyError`` for a key given twice in one mapping, and
    ``yaml.YAMLError`` for anything else that is not valid YAML (format either
    with ``yaml_problem``).
    """
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds no Python objects


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what, and where (its own text spans several lines)."""
    if isinstance(e, DuplicateKeyError):
        return str(e)
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({e.context})" if e.context else ""
        return f"{e.problem}{context}{where}"
    return " ".join(str(e).split())
