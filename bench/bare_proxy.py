"""The minimal honest proxy to compare warmroute against: ``python -m bench.bare_proxy --port P
--upstream URL``.

Reads the body, POSTs it to the same path on the upstream with one pooled ClientSession (the same
connector settings as the router's), returns the upstream's status, body and Content-Type. No auth,
limits, metrics, ids or routing: whatever warmroute costs beyond this is the price of its features.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
URLS = web.AppKey("urls", dict[str, URL])


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    app = request.app
    path = request.raw_path
    url = app[URLS].get(path)
    if url is None:
        url = URL(app[UPSTREAM] + path, encoded=True)
        if len(app[URLS]) < 1024:
            app[URLS][path] = url
    headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
    async with app[SESSION].post(url, data=body, headers=headers) as resp:
        data = await resp.read()
        content_type = resp.headers.get("Content-Type", "application/octet-stream")
        return web.Response(status=resp.status, body=data, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=512, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=False
    ) as session:
        app[SESSION] = session
        yield


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[URLS] = {}
    app.cleanup_ctx.append(_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{path:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
