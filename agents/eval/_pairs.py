"""Blinded pairs for human raters: what the harness cannot score itself (for instance
"architecture coherence") is left to people, who see two solutions without the arms."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from swarmbus.protocols import ConfigError

from ._rows import EvalRow

__all__ = ["KEY_FILE", "PAIRS_FILE", "export_pairs"]

PAIRS_FILE = "pairs.jsonl"
KEY_FILE = "pairs_key.jsonl"


def export_pairs(
    rows: Sequence[EvalRow],
    out: str | Path,
    *,
    arms: Sequence[str] | None = None,
    goals: dict[str, str] | None = None,
    seed: int | None = None,
) -> tuple[Path, Path]:
    """Write ``out/pairs.jsonl`` and ``out/pairs_key.jsonl``; return both paths.

    For each (task, repeat) where the first arm of ``arms`` and another arm both
    left a ``solution.py``, one pair: ``{"pair": id, "task": ..., "goal": ...,
    "solution_a": ..., "solution_b": ...}``, the pairs and the two sides of each in
    random order (``seed`` makes it repeatable). With three arms or more, the first
    arm's solution of a task is in each of that task's pairs. The arms stand only
    in the key file, ``{"pair": id, "a": arm, "b": arm, "a_passed": ..., "b_passed": ...}``: give
    raters the first file alone. ``goals`` maps task ids to the goal shown.
    Raises ``ConfigError`` when there are fewer than two arms or no pair.
    """
    order = list(arms or [])
    order += [r.arm for r in rows if r.arm not in order]
    if len(order) < 2:
        raise ConfigError("blinded pairs need two arms or more in the results")
    first, others = order[0], order[1:]
    found = {(r.arm, r.task, r.repeat): r for r in rows if r.solution is not None}
    rng = random.Random(seed)
    pairs: list[dict[str, object]] = []
    keys: list[dict[str, object]] = []
    matched = [(base, match) for (arm, task, repeat), base in sorted(found.items())
               if arm == first
               for match in [found.get((other, task, repeat)) for other in others]
               if match is not None]
    # Pairs in random order across the file, each pair's sides too: neither the
    # position in the file nor the side gives an arm away.
    rng.shuffle(matched)
    for base, match in matched:
        ident = f"p{len(pairs) + 1:05d}"
        a, b = (base, match) if rng.random() < 0.5 else (match, base)
        pairs.append({"pair": ident, "task": base.task, "goal": (goals or {}).get(base.task, ""),
                      "solution_a": a.solution, "solution_b": b.solution})
        keys.append({"pair": ident, "task": base.task, "repeat": base.repeat, "a": a.arm,
                     "b": b.arm, "a_passed": a.passed, "b_passed": b.passed})
    if not pairs:
        raise ConfigError(f"no task has a solution from both {first!r} and another arm")
    folder = Path(out)
    paths = folder / PAIRS_FILE, folder / KEY_FILE
    for path, items in zip(paths, (pairs, keys), strict=True):
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items),
                        encoding="utf-8")
    return paths
