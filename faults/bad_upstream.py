"""A misbehaving Open Inference Protocol upstream on loopback, one way of misbehaving per model.

The repository routes (index, load, unload, ready) answer like a healthy server, so the router and
preloader treat it as an ordinary instance; inference answers according to the model's name:

- ``slow``: answers only after ``--slow-s`` (past any sane timeout);
- ``html500``: an HTML 500 page, as a crashed proxy in front of a server would send;
- ``truncated``: a ``Content-Length`` larger than the body, then the connection closes;
- ``reset``: closes the connection after the status line, mid-response;
- ``ok``: a well-formed answer (the control).

Raw asyncio streams, not a web framework: a framework would not let the answer break.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import orjson

MODES = ("slow", "html500", "truncated", "reset", "ok")
READY_MODELS = [{"name": m, "version": "", "state": "READY", "reason": ""} for m in MODES]


def _answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _ok(model: str) -> bytes:
    body = {
        "model_name": model,
        "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [0]}],
    }
    return _answer("200 OK", orjson.dumps(body))


class BadUpstream:
    def __init__(self, *, slow_s: float = 30.0) -> None:
        self.slow_s = slow_s

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                if not await self._respond(method, path, writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _respond(self, method: str, path: str, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must close."""
        parts = path.strip("/").split("/")
        if path.startswith("/v2/repository/index"):
            writer.write(_answer("200 OK", orjson.dumps(READY_MODELS)))
        elif path.startswith("/v2/repository/models/"):
            writer.write(_answer("200 OK", b""))
        elif path.startswith("/v2/health") or path == "/healthz":
            writer.write(_answer("200 OK", b"{}"))
        elif len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models" and method == "POST":
            return await self._infer(parts[2], writer)
        else:
            writer.write(_answer("404 Not Found", b'{"error":"Model not found"}'))
        return True

    async def _infer(self, model: str, writer: asyncio.StreamWriter) -> bool:
        if model == "slow":
            await asyncio.sleep(self.slow_s)
            writer.write(_ok(model))
        elif model == "html500":
            page = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
            writer.write(_answer("500 Internal Server Error", page, "text/html"))
        elif model == "truncated":
            body = _ok(model)
            cut = body.replace(b"Content-Length: ", b"Content-Length: 9")  # claims far more
            writer.write(cut[: len(cut) - 10])
            await writer.drain()
            return False
        elif model == "reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            await writer.drain()
            return False
        else:
            writer.write(_ok(model))
        return True


async def serve(host: str, port: int, slow_s: float) -> None:
    upstream = BadUpstream(slow_s=slow_s)
    server = await asyncio.start_server(upstream.handle, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults.bad_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.slow_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
