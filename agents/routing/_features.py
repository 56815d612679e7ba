"""What a router sees of a task and a step, and the hashed vector a learned router
reads: no network, no model download, the same numbers in every process."""

from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field

from ._np import Vector, np

__all__ = ["DIM", "Features", "vectorize"]

DIM = 512
# The vector's layout, for a dimension D: [0, D - C - N) hashed words of the goal and
# constraints, [D - C - N, D - N) hashed categories, [D - N, D) numbers (N = 5).
_NUMBERS = 5
_MIN_DIM = 64
_WORD = re.compile(r"\w+")
# Words, categories and numbers weigh about the same in a cosine: the word block has
# unit length, each of the four categories 0.5 (unit length together), numbers <= ~1.
_CATEGORY_WEIGHT = 0.5
# log1p(x) / log1p(scale): a value of `scale` maps to 1.0 (chars, rounds, findings, USD).
_SCALES = {"input_chars": 100_000.0, "round": 10.0, "open_findings": 20.0,
           "budget_left_usd": 100.0}


class Features(BaseModel):
    """One routing decision's inputs: the task and the step, as the runtime sees them
    before the step's first model call.

    ``workflow`` its name, ``step`` and ``role`` the step's; ``goal`` and
    ``constraints`` the task's text; ``language`` the code language if known;
    ``input_chars`` the size of the step's rendered inputs (characters); ``round``
    the step's round (1 on the first); ``open_findings`` findings sent back and not
    yet fixed; ``budget_left_usd`` the run's budget left (USD; None: no budget)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str = ""
    step: str = ""
    role: str = ""
    goal: str = ""
    constraints: list[str] = Field(default_factory=list)
    language: str | None = None
    input_chars: int = Field(default=0, ge=0)
    round: int = Field(default=1, ge=0)
    open_findings: int = Field(default=0, ge=0)
    budget_left_usd: float | None = Field(default=None, ge=0)


@lru_cache(maxsize=65536)
def _hashed(token: str, buckets: int) -> tuple[int, float]:
    """A token's (index, sign): blake2b of its UTF-8 bytes, the same in every process
    and Python version (never ``hash()``, which is salted per process)."""
    digest = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(),
                            "little")
    return digest % buckets, 1.0 if digest >> 63 else -1.0


def _texts(f: Features) -> list[list[str]]:
    """Word sequences (goal, then each constraint): bigrams do not cross them."""
    return [_WORD.findall(t.lower()) for t in (f.goal, *f.constraints)]


def vectorize(f: Features, dim: int = DIM) -> Vector:
    """The features as a float64 vector of length ``dim`` (>= 64), unit length unless
    all-zero.

    Words: unigrams and bigrams of the lower-cased goal and constraints (``\\w+``),
    each hashed (blake2b) to an index and a sign in the first ``dim - dim // 8 - 5``
    slots, counted, the block scaled to unit length. Categories: ``step``, ``role``,
    ``language`` and ``workflow`` each hashed to one of the next ``dim // 8`` slots
    with weight 0.5. Numbers, in the last 5: log1p of ``input_chars``, ``round``,
    ``open_findings`` and ``budget_left_usd`` each over log1p of a scale (100,000
    chars, 10 rounds, 20 findings, 100 USD), and 1.0 when a budget is known. The
    whole vector is then scaled to unit length, so a dot product is a cosine.
    Raises ``ValueError`` for ``dim`` < 64."""
    if dim < _MIN_DIM:
        raise ValueError(f"dim {dim}: at least {_MIN_DIM} (the default is {DIM})")
    categories = dim // 8
    words = dim - categories - _NUMBERS
    v = np.zeros(dim, dtype=np.float64)
    for seq in _texts(f):
        grams = seq + [f"{a} {b}" for a, b in pairwise(seq)]
        for g in grams:
            i, sign = _hashed("w:" + g, words)
            v[i] += sign
    norm = float(np.linalg.norm(v[:words]))
    if norm > 0:
        v[:words] /= norm
    for name, value in (("step", f.step), ("role", f.role), ("language", f.language or ""),
                        ("workflow", f.workflow)):
        i, _ = _hashed(f"{name}={value}", categories)
        v[words + i] += _CATEGORY_WEIGHT
    numbers = [f.input_chars, f.round, f.open_findings, f.budget_left_usd or 0.0]
    for k, (x, scale) in enumerate(zip(numbers, _SCALES.values(), strict=True)):
        v[dim - _NUMBERS + k] = math.log1p(max(float(x), 0.0)) / math.log1p(scale)
    v[dim - 1] = 1.0 if f.budget_left_usd is not None else 0.0
    total = float(np.linalg.norm(v))
    return v / total if total > 0 else v
