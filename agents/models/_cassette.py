"""Record a run's model calls to a cassette (JSONL) and play them back offline."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from swarmbus.protocols import Provenance

from ._base import Model, ModelRequest, ModelResponse, T
from ._errors import CassetteMissError
from ._ledger import current_ledger

__all__ = ["RecordingModel", "ReplayModel"]

_FORMAT = 1


def _request_record(request: ModelRequest[Any]) -> dict[str, Any]:
    return {
        "system": request.system,
        "messages": [m.model_dump(include={"role", "content"}) for m in request.messages],
        "output_type": request.output_type.__name__,
        "settings": request.settings.model_dump(),
    }


class RecordingModel(Model):
    """Passes every call to ``model`` and appends request + response to ``cassette_path``.

    One JSON object per line: ``hash`` (``request.request_hash(model.name)``),
    ``model``, ``request``, ``output`` and ``provenance``. Several recording
    models (one per role) may share a cassette: writes are appended whole,
    under a lock. Failed calls are not recorded. Nothing secret is written;
    prompts and outputs are, so treat cassettes like logs.
    """

    _locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def __init__(self, model: Model, cassette_path: str | os.PathLike[str]) -> None:
        self.inner = model
        self.name = model.name
        self.path = Path(cassette_path)
        self.recorded = 0

    def __repr__(self) -> str:
        return f"RecordingModel({self.inner!r}, {os.fspath(self.path)!r})"

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        response = await self.inner.complete(request)
        line = json.dumps(
            {
                "v": _FORMAT,
                "hash": request.request_hash(self.name),
                "model": self.name,
                "recorded_at": time.time(),
                "request": _request_record(request),
                "output": response.output.model_dump(mode="json"),
                "provenance": response.provenance.model_dump(mode="json"),
            },
            separators=(",", ":"),
        )
        with self._locks[os.fspath(self.path.resolve())]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        self.recorded += 1
        return response

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ReplayModel(Model):
    """Plays a cassette back: the recorded output for the same request, no network.

    A request matches an entry when its hash with the entry's model name is
    the recorded hash, so one cassette can serve every role of a run without
    naming models (give ``model_name`` to restrict matches to one). Identical
    requests recorded several times are answered in recorded order, the last
    one repeating. Provenance is the recorded one (same tokens and cost, so
    budgets behave as in the recorded run), booked into the current ledger
    like a provider's answer (``before_call`` first). A request not in the
    cassette raises ``CassetteMissError`` naming its hash.
    """

    def __init__(
        self, cassette_path: str | os.PathLike[str], *, model_name: str | None = None
    ) -> None:
        self.path = Path(cassette_path)
        self.model_name = model_name
        self.name = model_name or "replay:" + self.path.stem
        self._entries: dict[str, list[dict[str, Any]]] | None = None
        self._served: dict[str, int] = defaultdict(int)
        self._models: list[str] = []

    def __repr__(self) -> str:
        return f"ReplayModel({os.fspath(self.path)!r})"

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        if self._entries is None:
            entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
            models: list[str] = []
            with self.path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                        key, model = str(entry["hash"]), str(entry["model"])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(
                            f"{self.path}:{number}: not a cassette entry: {exc}"
                        ) from exc
                    if self.model_name is not None and model != self.model_name:
                        continue
                    entries[key].append(entry)
                    if model not in models:
                        models.append(model)
            self._entries, self._models = dict(entries), models
        return self._entries

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        entries = self._load()
        for model in self._models:
            key = request.request_hash(model)
            recorded = entries.get(key)
            if recorded:
                ledger = current_ledger()
                if ledger is not None:
                    ledger.before_call(model)
                index = min(self._served[key], len(recorded) - 1)
                self._served[key] += 1
                entry = recorded[index]
                provenance = Provenance.model_validate(entry["provenance"])
                if ledger is not None:
                    await ledger.book(provenance)
                return ModelResponse(
                    output=request.output_type.model_validate(entry["output"]),
                    provenance=provenance,
                )
        wanted = ", ".join(f"{request.request_hash(m)} ({m})" for m in self._models) or (
            request.request_hash(self.name)
        )
        raise CassetteMissError(
            f"no recorded response in {os.fspath(self.path)} for this "
            f"{request.output_type.__name__} request: hash {wanted}. The prompt, output "
            "type or settings changed since recording, or it was never recorded; "
            "re-record with RecordingModel.",
            model=self.name,
            request_hash=request.request_hash(self._models[0] if self._models else self.name),
        )
