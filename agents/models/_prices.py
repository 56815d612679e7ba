"""The price table: usage in tokens -> cost in USD.

Shipped as ``prices.json`` (package data; each entry says when it was checked,
against which vendor page, and what is unsure), extended by
``SWARMBUS_PRICES_FILE`` (same format) and by ``set_price``. A model missing
from the table is *unpriced*: its cost is ``None``, never a silent 0.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import ConfigError, Usage

__all__ = [
    "PRICES_ENV",
    "Price",
    "PriceTable",
    "cost_text",
    "cost_usd",
    "is_priced",
    "load_prices",
    "price_for",
    "price_table",
    "set_price",
    "using_prices",
]

PRICES_ENV = "SWARMBUS_PRICES_FILE"

# A dated or "-latest" snapshot is priced like its base model.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def _clamp(value: int, high: int) -> int:
    return max(0, min(value, high))


class Price(BaseModel):
    """USD per million tokens, by kind of token.

    ``input``: plain input. ``cached_input``: input read from the provider's
    prompt cache (None: billed as ``input``). ``cache_write``: input written to
    the cache, Anthropic's 5-minute writes (None: billed as ``input``).
    ``cache_write_1h``: Anthropic's 1-hour writes (None: billed as
    ``cache_write``). ``output``: output, reasoning tokens included.
    ``cache_storage_per_hour``: USD per million tokens per hour that an explicit
    cache (Gemini's ``cachedContents``) is stored; None: unknown, so such a cache's
    cost is unknown too (never 0, see ``cache_create_cost``).
    ``as_of`` / ``source`` / ``note``: when the entry was checked, against which
    page, and what is unsure (informational).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)
    cache_write_1h: float | None = Field(None, ge=0)
    cache_storage_per_hour: float | None = Field(None, ge=0)
    as_of: str | None = None
    source: str | None = None
    note: str | None = None

    def cost(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> float:
        """USD for one call.

        ``input_tokens`` includes ``cached_tokens`` (cache reads) and
        ``cache_write_tokens`` (cache writes, of which ``cache_write_1h_tokens``
        at the 1-hour rate); ``output_tokens`` includes reasoning tokens.
        Sub-counts larger than what contains them are clamped.
        """
        cached = _clamp(cached_tokens, input_tokens)
        writes = _clamp(cache_write_tokens, input_tokens - cached)
        writes_1h = _clamp(cache_write_1h_tokens, writes)
        plain = input_tokens - cached - writes
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        write_1h_rate = write_rate if self.cache_write_1h is None else self.cache_write_1h
        total = (
            plain * self.input
            + cached * cached_rate
            + (writes - writes_1h) * write_rate
            + writes_1h * write_1h_rate
            + max(0, output_tokens) * self.output
        )
        return total / 1_000_000

    def cache_create_cost(self, tokens: int, ttl_s: float) -> float | None:
        """USD for creating an explicit cache of ``tokens`` tokens that lives ``ttl_s``
        seconds (Gemini's ``cachedContents``): the tokens at the ``input`` rate, plus
        their storage at ``cache_storage_per_hour`` for the whole lifetime (Google bills
        the lifetime asked for, also when a cache is deleted sooner). None when the
        storage price is unknown."""
        if self.cache_storage_per_hour is None:
            return None
        tokens = max(0, tokens)
        hours = max(0.0, ttl_s) / 3600
        return (tokens * self.input + tokens * self.cache_storage_per_hour * hours) / 1_000_000


class PriceTable:
    """Prices by ``provider:model`` name. Thread-safe; later entries override earlier ones.

    ``get`` prices a dated or ``-latest`` snapshot (``openai:gpt-4o-2024-08-06``)
    like its base model when the snapshot itself is not listed.
    """

    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        table = cls()
        table.load(path)
        return table

    @classmethod
    def shipped(cls, *, environ: bool = True) -> PriceTable:
        """A new table with the shipped prices, then (``environ``) the file named by
        ``SWARMBUS_PRICES_FILE``. Raises ``ConfigError`` if that file is unreadable."""
        text = resources.files(__package__).joinpath("prices.json").read_text("utf-8")
        table = cls(_parse(text, source="prices.json"))
        extra = os.environ.get(PRICES_ENV) if environ else None
        if extra:
            table.load(extra)
        return table

    def load(self, path: str | os.PathLike[str]) -> None:
        """Add or override the prices in a JSON file: ``{"models": {"p:m": {"input": ..}}}``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read price file {os.fspath(path)!r}: {exc}") from exc
        self.update(_parse(text, source=os.fspath(path)))

    def update(self, prices: dict[str, Price]) -> None:
        with self._lock:
            self._prices.update(prices)

    def set(self, name: str, price: Price) -> None:
        if ":" not in name:
            raise ConfigError(f"price names are 'provider:model', got {name!r}")
        with self._lock:
            self._prices[name] = price

    def get(self, name: str) -> Price | None:
        with self._lock:
            price = self._prices.get(name)
            if price is None:
                base = _SNAPSHOT.sub("", name)
                if base != name:
                    price = self._prices.get(base)
            return price

    def cost(
        self,
        name: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> float | None:
        """USD for one call of ``name`` (see ``Price.cost``); None when it is unpriced."""
        price = self.get(name)
        if price is None:
            return None
        return price.cost(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_write_1h_tokens=cache_write_1h_tokens,
        )

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._prices)


def _parse(text: str, *, source: str) -> dict[str, Price]:
    try:
        data: Any = json.loads(text)
        models = data["models"] if isinstance(data, dict) and "models" in data else data
        if not isinstance(models, dict):
            raise TypeError("expected an object of model name -> price")
        return {str(k): Price.model_validate(v) for k, v in models.items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"invalid price file {source}: {exc}") from exc


_default: PriceTable | None = None
_overrides: list[PriceTable] = []
_default_lock = threading.Lock()


def price_table() -> PriceTable:
    """The table in use: the innermost ``using_prices`` table, else the process-wide
    one (shipped prices, then ``SWARMBUS_PRICES_FILE``, then ``set_price``)."""
    global _default
    with _default_lock:
        if _overrides:
            return _overrides[-1]
        if _default is None:
            _default = PriceTable.shipped()
        return _default


@contextmanager
def using_prices(table: PriceTable) -> Iterator[PriceTable]:
    """Use ``table`` (process-wide) inside the block, e.g. a test's own
    ``PriceTable.shipped()`` so that its ``set_price`` calls do not leak. Nests."""
    with _default_lock:
        _overrides.append(table)
    try:
        yield table
    finally:
        with _default_lock:
            _overrides.remove(table)


def set_price(
    name: str,
    *,
    input: float,
    output: float,
    cached_input: float | None = None,
    cache_write: float | None = None,
    cache_write_1h: float | None = None,
    cache_storage_per_hour: float | None = None,
) -> None:
    """Add or override the price of ``provider:model`` (USD per million tokens, see ``Price``;
    ``cache_storage_per_hour``: USD per million tokens per hour).

    Use 0 for a local model you run yourself to make it priced and free.
    """
    price_table().set(
        name,
        Price(
            input=input,
            output=output,
            cached_input=cached_input,
            cache_write=cache_write,
            cache_write_1h=cache_write_1h,
            cache_storage_per_hour=cache_storage_per_hour,
        ),
    )


def load_prices(path: str | os.PathLike[str]) -> None:
    """Add or override prices from a JSON file (same format as the shipped ``prices.json``)."""
    price_table().load(path)


def price_for(name: str) -> Price | None:
    """The price of ``provider:model`` (or of its base model for a snapshot), or None."""
    return price_table().get(name)


def is_priced(name: str) -> bool:
    """Whether calls to ``provider:model`` get a cost (False: counted as unpriced,
    e.g. for a start-up warning). A ``ModelSpec.price`` also prices a model."""
    return price_table().get(name) is not None


def cost_usd(
    name: str,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
) -> float | None:
    """USD for one call of ``name`` (see ``Price.cost``); None when the model is unpriced."""
    return price_table().cost(
        name,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
    )


def cost_text(u: Usage) -> str:
    """A total in USD as shown, with the trail's marks: ``cost unknown`` when no call
    had a price (never $0), ``>=`` when some had none, ``~`` when some tokens were
    estimated."""
    if u.unpriced_calls and u.unpriced_calls >= u.calls:
        return "cost unknown"
    return (">=" if u.unpriced_calls else "") + ("~" if u.estimated_calls else "") + (
        f"${u.priced_cost_usd:.4f}")
