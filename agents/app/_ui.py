"""``swarmbus ui``: a local, read-only page over a namespace's runs.

One ordered consumer reads the namespace's whole stream from its first message (so runs
that ended before the page started are listed) and keeps a ``RunRow`` per run; the page
is server-rendered (Starlette, Jinja2) and kept live by Server-Sent Events (sse-starlette)
that htmx swaps in, with the graph drawn by Mermaid. The JavaScript is vendored under
``ui/static`` (``.ci/vendor-ui``): the page needs no network beyond this server. Needs the
``ui`` extra."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import nats.errors
from nats.js import api

from swarmbus.bus import StoredMessage, SwarmClient, WorkflowStore
from swarmbus.protocols import CompiledWorkflow, Subject, SubjectError, namespace_filter

from ._view import RunRow, RunView, run_view

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["UI_PORT", "Viewer", "serve_ui", "ui_app", "ui_socket"]

UI_PORT = 8470
"""``swarmbus ui``'s default port (on 127.0.0.1)."""

_HERE = Path(__file__).resolve().parent / "ui"
LIST_LIMIT = 200
"""The list shows the newest runs up to this many (and says how many there are)."""
THROTTLE_S = 0.25
"""At most one live update per page in this many seconds (a burst of messages is one)."""


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


class Viewer:
    """The namespace's runs as the page lists them, kept from the stream by ``watch``.

    ``version`` grows with every message; ``changed`` waits for it to pass a value."""

    def __init__(self, client: SwarmClient, *, trace_url: str = "") -> None:
        self.client = client
        self.trace_url = trace_url
        self.rows: dict[str, RunRow] = {}
        self.version = 0
        self._changed = anyio.Event()
        self.caught_up = anyio.Event()
        """Set once the messages stored before ``watch`` started are read."""
        self._store: WorkflowStore | None = None
        self._workflows: dict[str, CompiledWorkflow | None] = {}

    def apply(self, stored: StoredMessage) -> None:
        try:
            wf = Subject.parse(stored.subject).workflow_id
        except SubjectError:
            return
        row = self.rows.get(wf)
        if row is None:
            from swarmbus.bus import WorkflowStatus

            row = self.rows[wf] = RunRow(WorkflowStatus(wf, known=True))
        row.status.steps += 1
        row.apply(stored)
        self.version += 1
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def changed(self, seen: int) -> int:
        """Wait until ``version`` is past ``seen``; returns it."""
        while self.version <= seen:
            await self._changed.wait()
        return self.version

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]
                    = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the namespace's messages, first to last, then new ones as they come."""
        bus = self.client.bus
        info = await bus.js.stream_info(bus.stream_name)
        if info.state.messages == 0:
            self.caught_up.set()
        sub = await bus.js.subscribe(
            namespace_filter(bus.namespace), stream=bus.stream_name, ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
            idle_heartbeat=5.0)
        task_status.started()
        try:
            async for msg in sub.messages:
                meta = msg.metadata
                stamp = getattr(meta, "timestamp", None)
                self.apply(StoredMessage(
                    meta.sequence.stream if meta.sequence else 0, msg.subject, msg.data,
                    dict(msg.headers or {}), stamp.isoformat() if stamp is not None else None))
                if not meta.num_pending:
                    self.caught_up.set()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def workflow(self, workflow_hash: str) -> CompiledWorkflow | None:
        """The stored workflow with this hash (None when none is stored: the graph is
        then left out)."""
        if not workflow_hash:
            return None
        if workflow_hash not in self._workflows:
            if self._store is None:
                self._store = await WorkflowStore.find(self.client.bus)
            found = await self._store.get(workflow_hash) if self._store is not None else None
            if found is None:
                return None  # asked again later: a daemon may store it yet
            self._workflows[workflow_hash] = found
        return self._workflows[workflow_hash]

    async def listed(self) -> list[tuple[RunRow, str]]:
        """The newest ``LIST_LIMIT`` runs, newest first, with their workflow's name (''
        when not stored)."""
        rows = sorted(self.rows.values(), key=lambda r: (r.started, r.status.workflow_id),
                      reverse=True)[:LIST_LIMIT]
        out = []
        for row in rows:
            wf = await self.workflow(row.status.workflow)
            out.append((row, wf.name if wf is not None else ""))
        return out

    async def view(self, workflow_id: str) -> RunView | None:
        """One run as its page shows it (None: no message of it in the stream)."""
        trail = await self.client.trail(workflow_id)
        if not trail:
            return None
        row = self.rows.get(workflow_id)
        wf = await self.workflow(row.status.workflow if row is not None else "")
        view = run_view(workflow_id, trail, wf)
        if wf is None and view.status.workflow:
            view = run_view(workflow_id, trail, await self.workflow(view.status.workflow))
        with contextlib.suppress(nats.errors.Error):
            await self.client.describe(view.status)  # who serves the waiting step, stalled
        return view


def ui_app(viewer: Viewer) -> Starlette:
    """The page's ASGI app (read-only: every route is a GET)."""
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
    ns = viewer.client.bus.namespace
    base = {"namespace": ns, "trace_url": viewer.trace_url}

    def fragment(name: str, **context: Any) -> str:
        return templates.get_template(name).render(**base, **context)

    def listing() -> dict[str, Any]:
        return {"total": len(viewer.rows), "limit": LIST_LIMIT}

    def after(request: Request) -> int:
        """The version a page was rendered at (``?after=``): its stream sends only what
        is newer; -1 (none given) sends the state at once."""
        try:
            return int(request.query_params.get("after", "-1"))
        except ValueError:
            return -1

    async def index(request: Request) -> Response:
        with anyio.move_on_after(5):
            await viewer.caught_up.wait()
        version = viewer.version
        return templates.TemplateResponse(request, "index.html", {
            **base, **listing(), "runs": await viewer.listed(), "version": version})

    async def run_page(request: Request) -> Response:
        wf = request.path_params["workflow_id"]
        row = viewer.rows.get(wf)
        version = row.version if row is not None else 0
        view = await viewer.view(wf)
        if view is None:
            raise HTTPException(404, f"no run {wf!r} in namespace {ns!r}")
        return templates.TemplateResponse(request, "run.html", {
            **base, "run": view, "version": version})

    async def runs_events(request: Request) -> Response:
        async def updates() -> AsyncIterator[dict[str, str]]:
            seen = after(request)
            while True:
                seen = await viewer.changed(seen)
                yield {"event": "runs", "data": fragment(
                    "_runs.html", **listing(), runs=await viewer.listed())}
                await anyio.sleep(THROTTLE_S)
        return EventSourceResponse(updates(), ping=15)

    async def run_events(request: Request) -> Response:
        wf = request.path_params["workflow_id"]

        async def updates() -> AsyncIterator[dict[str, str]]:
            seen = after(request)
            while True:
                while (row := viewer.rows.get(wf)) is None or row.version <= seen:
                    await viewer.changed(viewer.version)
                seen = row.version
                view = await viewer.view(wf)
                if view is not None:
                    yield {"event": "run", "data": fragment("_run.html", run=view)}
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
    """A listening socket on ``host:port`` (port 0: any free one); ``OSError`` when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_ui(client: SwarmClient, sock: socket.socket, *, trace_url: str = "",
                   task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the page on ``sock`` until cancelled (or a signal stops uvicorn); reports the
    page's URL when it listens. Raises ``MissingExtraError`` without the ``ui`` extra."""
    _require()
    import uvicorn

    viewer = Viewer(client, trace_url=trace_url)
    host, port = sock.getsockname()[:2]
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
                await server.serve([sock])
                tg.cancel_scope.cancel()  # uvicorn stopped (a signal): so does the watch

            tg.start_soon(run)
            await ready.wait()
            shown = f"[{host}]" if ":" in host else host
            task_status.started(f"http://{shown}:{port}/")
