"""A TCP proxy on loopback that holds every answer for a fixed delay: a Redis that answers, but late.

Runs on the test's loop. Requests go through at once; each chunk the server sends back reaches the
client ``delay_s`` later (in order), as with a Redis slower than the router's budget.
"""

from __future__ import annotations

import asyncio
import contextlib


class SlowProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay_s: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        forward = asyncio.create_task(self._pipe(reader, up_writer, 0.0))
        back = asyncio.create_task(self._pipe(up_reader, writer, self.delay_s))
        self._tasks.update((forward, back))
        try:
            await asyncio.wait((forward, back), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (forward, back):
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
                queue.task_done()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + delay_s, chunk))
            await queue.join()  # the peer closed: deliver what is on its way, then stop
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
