"""``swarmbus ui``'s page: a Starlette app, server-rendered with Jinja2, kept live by
Server-Sent Events (sse-starlette) that htmx swaps in, the graph drawn by Mermaid. The
JavaScript ships under ``ui/static`` (``.ci/vendor-ui``): the page needs no network
beyond this server. Needs the ``ui`` extra."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import anyio
import anyio.abc

from swarmbus.bus import SwarmClient
from swarmbus.protocols import TaskStatus

from ._ui import LIST_LIMIT, LIVE_POLL_S, Listed, Viewer, open_namespace

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["UI_PORT", "serve_ui", "ui_app", "ui_socket"]

UI_PORT = 8470
"""``swarmbus ui``'s default port (on 127.0.0.1)."""

_HERE = Path(__file__).resolve().parent / "ui"
THROTTLE_S = 0.5
"""At most one live update per page in this many seconds (a burst of messages is one)."""
STATUSES = ("running", "waiting", "stalled", *get_args(TaskStatus))
"""What the list's status filter offers: where a run stands, or how it ended."""


def _require() -> None:
    try:
        import jinja2  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from ..eval import MissingExtraError

        raise MissingExtraError(
            f"swarmbus ui needs {e.name}, which is not installed: pip install 'swarmbus[ui]'"
        ) from None


def _graph_hash(graph: str) -> str:
    return hashlib.blake2b(graph.encode(), digest_size=6).hexdigest()


def ui_app(viewer: Viewer) -> Starlette:
    """The page's ASGI app (read-only: every route is a GET).

    ``/`` lists runs (``?q=`` in id or goal, ``?status=``); ``/events`` streams the rows
    that changed; ``/runs/{id}`` is one run and ``/runs/{id}/events`` its changes:
    ``head`` and ``timeline`` (HTML), and ``graph`` (Mermaid text) when it changed."""
    _require()
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    ns = viewer.bus.namespace
    base = {"namespace": ns, "trace_url": viewer.trace_url, "statuses": STATUSES,
            "limit": LIST_LIMIT}

    def fragment(name: str, **context: Any) -> str:
        return templates.get_template(name).render(**base, **context)

    def number(request: Request, name: str) -> int:
        """A version the page was rendered at (``?after=``, ``?live=``): its stream sends
        only what is newer; -1 (none given, or not a number) sends the state at once."""
        try:
            return int(request.query_params.get(name, "-1"))
        except ValueError:
            return -1

    def filters(request: Request) -> dict[str, str]:
        status = request.query_params.get("status", "")
        return {"q": request.query_params.get("q", "")[:200],
                "status": status if status in STATUSES else ""}

    async def index(request: Request) -> Response:
        with anyio.move_on_after(5):
            await viewer.caught_up.wait()
        version, chosen = viewer.version, filters(request)
        return templates.TemplateResponse(request, "index.html", {
            **base, **chosen, "runs": await viewer.listed(**chosen), "version": version,
            "total": len(viewer.rows)})

    async def runs_events(request: Request) -> Response:
        """``rows``: the rows that changed since the page showed them, each swapped in
        place by htmx (``hx-swap-oob``; a new run on top, one that no longer matches the
        filter removed); ``runs``: the whole list, when the page is older than the
        stream's first answer (or gave no ``?after=``)."""
        chosen = filters(request)

        def stamp(item: Listed) -> tuple[int, str, str, str]:
            return item.row.version, item.word, item.step, item.waiting_for

        async def updates() -> AsyncIterator[dict[str, str]]:
            seen = number(request, "after")
            shown: dict[str, tuple[int, str, str, str]] | None = None
            if seen == viewer.version:  # nothing happened since the page was rendered
                shown = {i.row.status.workflow_id: stamp(i)
                         for i in await viewer.listed(**chosen)}
            while True:
                seen = await viewer.changed(seen)
                runs = await viewer.listed(**chosen)
                if shown is None:
                    yield {"event": "runs", "data": fragment("_runs.html", runs=runs)}
                    shown = {i.row.status.workflow_id: stamp(i) for i in runs}
                    continue
                now = {i.row.status.workflow_id: i for i in runs}
                html = [f'<tr id="run-{run}" hx-swap-oob="delete"></tr>'
                        for run in shown if run not in now]
                for item in reversed(runs):  # oldest first: each new one goes on top
                    run = item.row.status.workflow_id
                    if shown.get(run) != stamp(item):
                        html.append(fragment("_row.html", r=item, oob="outerHTML"
                                             if run in shown else "afterbegin:#runs"))
                shown = {run: stamp(i) for run, i in now.items()}
                if html:
                    html.append('<tr id="runs-empty" hx-swap-oob="delete"></tr>')
                    yield {"event": "rows", "data": "\n".join(html)}
                await anyio.sleep(THROTTLE_S)
        return EventSourceResponse(updates(), ping=15)

    async def run_page(request: Request) -> Response:
        wf = request.path_params["workflow_id"]
        row = viewer.rows.get(wf)
        version = row.version if row is not None else 0
        view = await viewer.view(wf)
        if view is None:
            raise HTTPException(404, f"no run {wf!r} in namespace {ns!r}")
        return templates.TemplateResponse(request, "run.html", {
            **base, "run": view, "version": version, "live": viewer.live_version,
            "graph_hash": _graph_hash(view.graph)})

    async def run_events(request: Request) -> Response:
        wf = request.path_params["workflow_id"]
        graph = request.query_params.get("graph", "")

        async def updates() -> AsyncIterator[dict[str, str]]:
            nonlocal graph
            seen, live = number(request, "after"), number(request, "live")
            while True:
                row = viewer.rows.get(wf)
                if row is None or (row.version <= seen and viewer.live_version == live):
                    await viewer.changed(viewer.version, timeout_s=LIVE_POLL_S)
                    continue
                seen, live = row.version, viewer.live_version
                view = await viewer.view(wf)
                if view is None:
                    continue
                yield {"event": "head", "data": fragment("_head.html", run=view)}
                yield {"event": "timeline", "data": fragment("_timeline.html", run=view)}
                if _graph_hash(view.graph) != graph and view.graph:
                    graph = _graph_hash(view.graph)
                    yield {"event": "graph", "data": view.graph}
                await anyio.sleep(THROTTLE_S)
        return EventSourceResponse(updates(), ping=15)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/events", runs_events),
            Route("/runs/{workflow_id}", run_page),
            Route("/runs/{workflow_id}/events", run_events),
            Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=1024)],
    )


def ui_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one). Raises ``OSError``
    (taken, not this machine's address), ``socket.gaierror`` (no such host),
    ``OverflowError`` (port outside 0-65535)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def page_url(sock: socket.socket) -> str:
    """The URL to open: an any-address bind is shown as this machine's loopback."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve_ui(client: SwarmClient, sock: socket.socket, *, trace_url: str = "",
                   task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the page on ``sock`` until cancelled (or a signal stops uvicorn); reports the
    page's URL once it listens. Reads NATS, never writes to it. Raises
    ``MissingExtraError`` without the ``ui`` extra, ``ConfigError`` when the namespace
    has no stream."""
    _require()
    import uvicorn

    await open_namespace(client)
    viewer = Viewer(client, trace_url=trace_url)
    host = sock.getsockname()[0]
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: swarmbus ui listens on {host}: the page has no login and shows "
              "every run's code and findings to whoever reaches it", file=sys.stderr)
    ready = anyio.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            ready.set()

    server = Server(uvicorn.Config(ui_app(viewer), log_level="warning", lifespan="off",
                                   timeout_graceful_shutdown=2))
    with sock:
        async with anyio.create_task_group() as tg:
            await tg.start(viewer.watch)

            async def run() -> None:
                # Shielded: on a cancel, uvicorn is told to stop (below) and closes its
                # connections itself, within timeout_graceful_shutdown.
                with anyio.CancelScope(shield=True):
                    await server.serve([sock])
                tg.cancel_scope.cancel()  # uvicorn stopped (a signal): so does the watch

            tg.start_soon(run)
            try:
                await ready.wait()
                task_status.started(page_url(sock))
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
