"""The price table: usage in tokens -> cost in USD.

Shipped as ``prices.json`` (package data), extended by ``SWARMBUS_PRICES_FILE``
(same format) and by ``set_price``. A model missing from the table is
*unpriced*: its cost is ``None``, never a silent 0.
"""

from __future__ import annotations

import json
import os
import re
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import ConfigError

__all__ = [
    "PRICES_ENV",
    "Price",
    "PriceTable",
    "cost_usd",
    "load_prices",
    "price_for",
    "price_table",
    "set_price",
]

PRICES_ENV = "SWARMBUS_PRICES_FILE"

# A dated or "-latest" snapshot is priced like its base model.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class Price(BaseModel):
    """USD per million tokens. ``cached_input`` None bills cached input as ``input``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)

    def cost(self, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """Cost of one call; ``input_tokens`` includes ``cached_tokens``."""
        cached = min(cached_tokens, input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (input_tokens - cached) * self.input
            + cached * cached_rate
            + output_tokens * self.output
        )
        return total / 1_000_000


class PriceTable:
    """Prices by ``provider:model`` name. Thread-safe; later entries override earlier ones."""

    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        table = cls()
        table.load(path)
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
        self, name: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        price = self.get(name)
        if price is None:
            return None
        return price.cost(
            input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens
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
_default_lock = threading.Lock()


def price_table() -> PriceTable:
    """The process-wide table: shipped prices, then ``SWARMBUS_PRICES_FILE``, then ``set_price``."""
    global _default
    with _default_lock:
        if _default is None:
            shipped = resources.files(__package__).joinpath("prices.json").read_text("utf-8")
            table = PriceTable(_parse(shipped, source="prices.json"))
            extra = os.environ.get(PRICES_ENV)
            if extra:
                table.load(extra)
            _default = table
        return _default


def set_price(name: str, *, input: float, output: float, cached_input: float | None = None) -> None:
    """Add or override the price of ``provider:model`` (USD per million tokens).

    Use 0 for a local model you run yourself to make it priced and free.
    """
    price_table().set(name, Price(input=input, output=output, cached_input=cached_input))


def load_prices(path: str | os.PathLike[str]) -> None:
    """Add or override prices from a JSON file (same format as the shipped ``prices.json``)."""
    price_table().load(path)


def price_for(name: str) -> Price | None:
    return price_table().get(name)


def cost_usd(
    name: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0
) -> float | None:
    """USD for one call of ``name``; None when the model is unpriced."""
    return price_table().cost(
        name, input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens
    )
