"""Processes for the tracing tests (``tests/test_tracing.py``).

As a script::

    python tests/_trace_helpers.py role SPANS ROLE NATS_URL NAMESPACE [--buggy-first]
    python tests/_trace_helpers.py noop NATS_URL NAMESPACE

``role`` installs the OpenTelemetry SDK with an exporter appending every finished span
to ``SPANS`` as a JSON line, then serves one scripted role (``_team_helpers``) until
SIGTERM. ``noop`` configures no SDK, runs the whole team in this process on one task
and prints a JSON line: the result's status, the tracer and meter providers' types,
whether any SDK module was loaded and how many stored messages carry a ``traceparent``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve()


def span_record(span: Any) -> dict[str, Any]:
    """A finished SDK span as plain data (ids in hex, as in a ``traceparent``)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})}
                   for e in span.events],
        "pid": os.getpid(),
    }


def install_file_exporter(path: Path) -> None:
    """Set the SDK's tracer provider, exporting each span as a JSON line to ``path``."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Lines(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with path.open("a") as f:
                for s in spans:
                    f.write(json.dumps(span_record(s), default=str) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Lines()))
    trace.set_tracer_provider(provider)


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spawn_traced_role(role: str, spans: Path, nats_url: str, namespace: str, log: Path, *,
                      buggy_first: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(HERE), "role", str(spans), role, nats_url, namespace]
    if buggy_first:
        args.append("--buggy-first")
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def run_noop(nats_url: str, namespace: str) -> dict[str, Any]:
    """Run the team without any SDK in a fresh process; what ``noop`` printed."""
    out = subprocess.run([sys.executable, str(HERE), "noop", nats_url, namespace],
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    line: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return line


async def _noop(nats_url: str, namespace: str) -> None:
    from _team_helpers import Script, run_task, team
    from opentelemetry import metrics, trace

    result, trail = await run_task(nats_url, namespace, team(Script(buggy_first=True).models()))
    print(json.dumps({
        "status": result.status,
        "provider": type(trace.get_tracer_provider()).__name__,
        "meter_provider": type(metrics.get_meter_provider()).__name__,
        "sdk_loaded": "opentelemetry.sdk" in sys.modules,
        "traceparents": sum("traceparent" in s.headers for s in trail),
        "messages": len(trail),
    }))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("role")
    p.add_argument("spans", type=Path)
    p.add_argument("role", choices=["architect", "coder", "reviewer"])
    p.add_argument("nats")
    p.add_argument("namespace")
    p.add_argument("--buggy-first", action="store_true")
    p = sub.add_parser("noop")
    p.add_argument("nats")
    p.add_argument("namespace")
    a = ap.parse_args(argv)
    if a.command == "noop":
        anyio.run(_noop, a.nats, a.namespace)
        return 0
    from _team_helpers import Script, _serve_role

    install_file_exporter(a.spans)
    anyio.run(_serve_role, a.role, a.nats, a.namespace,
              Script(buggy_first=a.buggy_first, prefix=f"p{a.role[0]}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
