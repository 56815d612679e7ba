"""Reading a model's text as the output type, leniently enough to spare a paid repair."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from pydantic import ValidationError

from ._base import T

__all__ = ["describe", "repair_prompt", "validate_output"]

_MAX_DETAIL_CHARS = 2000
_MAX_OBJECT_STARTS = 64  # bounds the scan of hostile text for "prose, then one object"
_WHOLE_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```\s*\Z", re.S)
_TRAILING_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n(\{.*\})\s*\r?\n?```\s*\Z", re.S)
_DECODER = json.JSONDecoder()


def _unwrapped(text: str) -> Iterator[str]:
    """JSON that ``text`` carries in a wrapper: one fenced block as the whole content;
    prose followed by one fenced object; prose (with no JSON object in it) followed
    by one JSON object that ends the reply."""
    whole = _WHOLE_FENCE.match(text)
    if whole:
        yield whole.group(1)
    trailing = _TRAILING_FENCE.search(text)
    if trailing:
        yield trailing.group(1)
    body = text.rstrip()
    start = body.find("{")
    for _ in range(_MAX_OBJECT_STARTS):
        if start < 0:
            return
        try:
            value, end = _DECODER.raw_decode(body, start)
        except ValueError:
            start = body.find("{", start + 1)
            continue
        # The first object found must be the only one, and end the reply.
        if end == len(body) and isinstance(value, dict):
            yield body[start:end]
        return


def validate_output(output_type: type[T], text: str) -> T:
    """``text`` as an instance of ``output_type``.

    Strict JSON first; then, without another model call, the same JSON when it is
    wrapped: the whole reply one fenced block (```json ... ```), or prose followed
    by one JSON object (local servers often ignore the response format). Raises
    the strict attempt's ``ValidationError`` when nothing fits.
    """
    try:
        return output_type.model_validate_json(text)
    except ValidationError as strict:
        for candidate in _unwrapped(text):
            try:
                return output_type.model_validate_json(candidate)
            except ValidationError:
                continue
        raise strict from None


def describe(error: ValidationError) -> str:
    """One line per validation error: where, and what is wrong (never the input)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"- {where}: {item['msg']}")
    return "\n".join(lines)


def repair_prompt(error: ValidationError | str) -> str:
    """The user message of a repair attempt: what did not fit, and to answer again."""
    detail = error if isinstance(error, str) else describe(error)
    return (
        "Your previous reply did not match the required JSON schema:\n"
        f"{detail[:_MAX_DETAIL_CHARS]}\n"
        "Reply again with only one JSON object that fits the schema, and nothing else."
    )
