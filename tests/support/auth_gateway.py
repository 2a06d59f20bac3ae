"""An authenticating gateway in front of MLServer, as an Istio/Envoy sidecar or an API gateway is.

Requests without the expected ``Authorization`` get what Envoy answers: 401 ``Jwt is missing`` when
there is none, 403 ``RBAC: access denied`` when it is wrong (plain text, as Envoy sends them).
Authorized requests are forwarded to the MLServer instance unchanged; when it cannot be reached the
gateway answers Envoy's 503 ``upstream connect error ...``. The router has no credentials
for v2 endpoints, so through this gateway every request meets the 401/403 of a misconfigured mesh.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web


class AuthGateway:
    def __init__(
        self, upstream: str, *, token: str | None, deny_status: int = 401, prefix: str = ""
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token  # None: an open gateway
        self.prefix = prefix  # prepended to the forwarded path (a misrouting gateway)
        self.deny_status = deny_status  # 401: as if no token was sent; 403: a token was refused
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.Response:
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            text = "Jwt is missing" if self.deny_status == 401 else "RBAC: access denied"
            return web.Response(status=self.deny_status, text=text)
        assert self._http is not None
        try:
            async with self._http.request(
                request.method,
                f"{self.upstream}{self.prefix}{request.rel_url}",
                data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as upstream:
                return web.Response(
                    status=upstream.status,
                    body=await upstream.read(),
                    content_type=upstream.content_type,
                )
        except aiohttp.ClientConnectorError:
            # Envoy's own words when the workload behind it is down.
            return web.Response(
                status=503,
                text="upstream connect error or disconnect/reset before headers. "
                "reset reason: connection failure",
            )
