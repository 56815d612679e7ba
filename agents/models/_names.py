"""Model names without a provider prefix: ``gpt-4o`` -> ``openai:gpt-4o``."""

from __future__ import annotations

import re

__all__ = ["qualify_model_name"]

# The vendors' own model-id families (their model list pages); a name that fits none
# must say its provider ('ollama:llama3.1').
_FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(gpt-|chatgpt-|o[1-9](-|$)|codex-)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^(gemini-|gemma-)"), "google"),
)


def qualify_model_name(name: str) -> str:
    """``provider:model`` for ``name``: unchanged when it has a provider, else the
    provider whose model family it belongs to (``gpt-``/``o3`` -> openai,
    ``claude-`` -> anthropic, ``gemini-`` -> google). Raises ``ValueError`` when
    the family is unknown."""
    if ":" in name:
        return name
    for pattern, provider in _FAMILIES:
        if pattern.match(name):
            return f"{provider}:{name}"
    raise ValueError(
        f"model {name!r} has no provider and fits no known family: write "
        f"'provider:{name}' (e.g. 'openai:{name}', 'ollama:{name}')"
    )
