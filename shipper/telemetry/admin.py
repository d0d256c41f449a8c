"""The admin HTTP server: /metrics, /health, /ready, /status and the status page at /.

- `/metrics`: the Prometheus text format of every metric (process CPU, memory and fds included).
- `/health`: 200 `{"healthy": true}`, or 503 with `problems` saying why: discovery not synced with the
  Docker daemon, a sink failing past its retry budget, the spool not writable, the event loop stalled.
- `/ready`: 200 once started and discovery has synced once; 503 while starting or stopping.
- `/status`: the JSON document `shipper status` and the page read (containers, sinks, buffer, drops, dockerd).
- `POST /-/reload`: read the config file again and apply its sinks, as SIGHUP does; 200 applied, 422 refused
  (the running config kept; the log says why), 409 when no reload could start (one is running, or the config
  came from standard input).

Bound to loopback by default (`[admin] address`); elsewhere only with TLS or an explicit `allow_insecure`
(checked when the config is loaded). With a token configured, every path but /health needs
`Authorization: Bearer TOKEN` (or `?access_token=TOKEN`, for a browser opening the page); a wrong or missing
token is a 401, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shipper.telemetry.config import AdminConfig, split_address
from shipper.telemetry.metrics import Metrics
from shipper.telemetry.page import render_page
from shipper.telemetry.status import Status

log = logging.getLogger("shipper")
OPEN_PATHS = frozenset({"/health"})
UNIX_PREFIX = "unix:"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc, option=orjson.OPT_INDENT_2), status=status,
                        content_type="application/json")


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class AdminHttp(ABC):
    """Listening, TLS and the token; what each path answers is a subclass's (one process, or the workers')."""

    def __init__(self, cfg: AdminConfig, host_name: str = "") -> None:
        self.cfg = cfg
        self.host_name = host_name or socket.gethostname()
        self._token = cfg.token().encode()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/status", self._status)
        app.router.add_post("/-/reload", self._reload)
        return app

    async def start(self) -> None:
        """Listen; an address that cannot be bound raises OSError (the caller decides what that means).
        `unix:PATH` (a worker's, for its supervisor only) listens on a unix socket."""
        # a scrape or a page still open at shutdown gets a moment, not aiohttp's default minute
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        tls = None
        site: web.BaseSite
        if self.cfg.address.startswith(UNIX_PREFIX):
            site = web.UnixSite(self._runner, self.cfg.address[len(UNIX_PREFIX):])
        else:
            host, port = split_address(self.cfg.address)
            tls = server_ssl_context(self.cfg.tls_cert, self.cfg.tls_key) if self.cfg.tls_cert else None
            site = web.TCPSite(self._runner, host, port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.url = f"{'https' if tls else 'http'}://{self.cfg.address}/"
        log.info("admin server listening url=%s token=%s", self.url, "required" if self._token else "none")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else request.query.get("access_token", "")
            if not hmac.compare_digest(token.strip().encode(), self._token):
                return web.Response(status=401, text="a bearer token is required\n",
                                    headers={"WWW-Authenticate": 'Bearer realm="shipper"'})
        return await handler(request)

    def page(self, status: dict[str, object]) -> web.Response:
        return web.Response(text=render_page(status, self.host_name), content_type="text/html",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                                "script-src 'unsafe-inline'; connect-src 'self'; "
                                                                "img-src 'self' data:"})

    @abstractmethod
    async def _page(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    async def _metrics(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    async def _health(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    async def _ready(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    async def _status(self, request: web.Request) -> web.Response: ...

    @abstractmethod
    async def _reload(self, request: web.Request) -> web.Response: ...


class AdminServer(AdminHttp):
    """The admin server of one pipeline: answers from its Status and Metrics."""

    def __init__(self, cfg: AdminConfig, status: Status, metrics: Metrics, host_name: str = "") -> None:
        super().__init__(cfg, host_name)
        self.status = status
        self.metrics = metrics

    # --- handlers --------------------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        self.status.refresh_gauges()
        return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        healthy, problems = self.status.health()
        return _json({"healthy": healthy, "problems": problems}, 200 if healthy else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        ready, why = self.status.ready()
        return _json({"ready": ready, "reason": why}, 200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.status.snapshot())

    async def _reload(self, request: web.Request) -> web.Response:
        task = self.status.app.request_reload("reload requested on the admin server")
        if task is None:
            return _json({"reloaded": False, "reason": "no reload could start: one is running, or the config "
                                                       "cannot be read again (see shipper's log)"}, 409)
        applied = await asyncio.shield(task)  # a client that goes away must not cancel the reload
        if applied:
            return _json({"reloaded": True})
        reason = self.status.app.reload_refusal or "see shipper's log"
        return _json({"reloaded": False, "reason": f"the new config was refused and the running one kept: {reason}"},
                     422)

    async def _page(self, request: web.Request) -> web.Response:
        return self.page(self.status.snapshot())
