"""The HTTP server around the app: header limits, JSON for what aiohttp refuses itself, the run loop.

aiohttp answers a request it cannot parse (a header line over the limit, too many headers, garbage)
from its protocol handler, before any middleware, with text/plain. The SPEC wants JSON wherever the
request got far enough to answer, so the protocol handler is ours: the same handler with a JSON
``handle_error``. aiohttp builds its ``Server`` inside ``Application._make_handler`` without a hook
for the handler class, hence the small runner that re-classes the server it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from router.caller_headers import new_request_id
from router.http_errors import error_response

log = logging.getLogger(__name__)

MAX_HEADER_LINE = 8192
MAX_HEADERS = 100
# Given to web.Application(handler_args=...): every server of the app parses with these limits.
HTTP_LIMITS: dict[str, Any] = {
    "max_line_size": MAX_HEADER_LINE,
    "max_field_size": MAX_HEADER_LINE,
    "max_headers": MAX_HEADERS,
}


def _refusal(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    if isinstance(exc, LineTooLong):
        return 431, "headers_too_large", f"a header line is over {MAX_HEADER_LINE} bytes"
    if isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
        return 431, "headers_too_large", f"more than {MAX_HEADERS} headers"
    if status < 500:
        return status, "invalid_request", f"malformed HTTP request: {exc or 'bad request'}"
    return 500, "internal_error", "internal error; see logs"


class JsonErrorRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's handler, answering the SPEC's JSON error body instead of text/plain."""
        if request.writer.output_size > 0:  # an answer already started: only closing is left
            raise ConnectionError("cannot send an error after the response started")
        status, code, text = _refusal(status, exc)
        if status >= 500:
            log.error("error handling request from %s", request.remote, exc_info=exc)
        else:  # the caller's mistake (or a scanner's garbage): not worth a traceback
            log.debug("refused request from %s: %s", request.remote, exc)
        response = error_response(status, code, text, new_request_id())
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


# After the listener closes, connections the kernel accepted just before may not have delivered
# their request yet: aiohttp would close them as idle and their callers would see "Server
# disconnected" for a request they had sent. This long a pause lets them arrive and be served.
ACCEPT_GRACE_S = 0.5


class RouterRunner(web.AppRunner):
    """An AppRunner whose connections answer parse errors with JSON, and whose shutdown serves the
    requests of connections accepted just before the listener closed."""

    async def cleanup(self) -> None:
        for site in list(self.sites):
            await site.stop()  # no new connections from here on
        server = self.server
        if server is not None and server.connections:
            await asyncio.sleep(min(ACCEPT_GRACE_S, self._shutdown_timeout / 4))
        await super().cleanup()  # closes idle connections, drains in-flight requests

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same state, our protocol handler (no aiohttp hook)
        return server


async def serve(app: web.Application, host: str, port: int, *, shutdown_timeout: float) -> None:
    """Serve ``app`` until cancelled or SIGINT/SIGTERM (GracefulExit), then drain in-flight requests."""
    runner = RouterRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("router listening on http://%s:%d", host, port)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, *, shutdown_timeout: float,
        loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
    """``web.run_app`` with our runner: serve on ``loop`` until a signal, then clean up."""
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve(app, host, port, shutdown_timeout=shutdown_timeout))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
