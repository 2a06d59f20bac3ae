"""A fast stand-in v2 (Open Inference Protocol) server: ``python -m bench.upstream --port P``; it
also answers SageMaker Runtime's InvokeEndpoint, so both endpoint kinds hit the same stub.

Every model counts as loaded. Inference reads the request body and answers a small fixed response,
so time measured through it is the HTTP stack's, not a model's.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import uvloop
from aiohttp import web

JSON = "application/json"
_MAX_MODELS = 1024  # bound the per-model response cache and the index

_responses: dict[str, bytes] = {}
_loaded: set[str] = set()


def infer_response(model: str) -> bytes:
    """The fixed inference answer for ``model`` (computed once per model)."""
    body = _responses.get(model)
    if body is None:
        body = orjson.dumps(
            {
                "model_name": model,
                "model_version": "1",
                "id": "bench",
                "parameters": {"content_type": "np"},
                "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [0]}],
            }
        )
        if len(_responses) < _MAX_MODELS:
            _responses[model] = body
            _loaded.add(model)
    return body


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=infer_response(request.match_info["model"]), content_type=JSON)


async def invoke_endpoint(request: web.Request) -> web.Response:
    """SageMaker Runtime InvokeEndpoint: the same fixed answer for the TargetModel (no auth check)."""
    await request.read()
    model = request.headers.get("X-Amzn-SageMaker-Target-Model", "")
    return web.Response(
        body=infer_response(model),
        content_type=JSON,
        headers={"X-Amzn-Invoked-Production-Variant": "AllTraffic"},
    )


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def load(request: web.Request) -> web.Response:
    if len(_loaded) < _MAX_MODELS:
        _loaded.add(request.match_info["model"])
    return web.Response(status=200)


async def unload(request: web.Request) -> web.Response:
    _loaded.discard(request.match_info["model"])
    return web.Response(status=200)


async def index(request: web.Request) -> web.Response:
    entries = [{"name": m, "version": "1", "state": "READY", "reason": ""} for m in sorted(_loaded)]
    return web.Response(body=orjson.dumps(entries), content_type=JSON)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/endpoints/{endpoint}/invocations", invoke_endpoint)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/health/live", ready)
    app.router.add_post("/v2/repository/models/{model}/load", load)
    app.router.add_post("/v2/repository/models/{model}/unload", unload)
    app.router.add_post("/v2/repository/index", index)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
