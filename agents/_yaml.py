"""PyYAML's errors as one line (its own text spans several, with an excerpt)."""

from __future__ import annotations

import yaml

__all__ = ["yaml_problem"]


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what, and where (its own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({e.context})" if e.context else ""
        return f"{e.problem}{context}{where}"
    return " ".join(str(e).split())
