"""structlog set-up: JSON lines when not on a terminal, readable lines when on one.

Every line, ours or a library's (nats-py logs through the standard ``logging``),
has every registered secret scrubbed before it is written: a provider that
echoes an API key in an error never puts it in a log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, cast

import structlog
from pydantic_core import to_json

from swarmbus.bus import scrub

__all__ = ["configure_logging"]

LogFormat = Literal["auto", "json", "console"]


def _dumps(obj: Any, **_: Any) -> str:
    # pydantic-core's Rust JSON encoder: a log line costs a few microseconds, not tens.
    return to_json(obj, fallback=repr).decode()


def _scrubbed(_logger: Any, _method: str, line: Any) -> Any:
    return scrub(line) if isinstance(line, str) else line


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was set up
    (a replaced stream, e.g. a test's captured one, may be closed by then)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: LogFormat = "auto", *, level: str = "INFO") -> None:
    """Configure structlog (and stdlib logging, e.g. nats-py's) once, to stderr."""
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            _scrubbed,  # the rendered line, whatever field a secret hid in
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(cast(TextIO, _Stderr()))
    handler.setFormatter(_ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(lvl, logging.WARNING), handlers=[handler], force=True)
