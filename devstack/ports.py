"""Loopback port helpers shared by the local stack, the tests and the benchmark."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from typing import cast

__all__ = ["free_port", "urlopen_direct", "wait_http"]

# Loopback services must never be reached through an HTTP(S)_PROXY from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen_direct(
    request: str | urllib.request.Request, timeout: float
) -> http.client.HTTPResponse:
    """``urllib.request.urlopen`` without proxies; raises ``urllib.error.HTTPError`` on >= 400."""
    return cast(http.client.HTTPResponse, _DIRECT.open(request, timeout=timeout))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float, *, interval: float = 0.05) -> None:
    """Poll ``GET url`` until it answers 200; raise ``TimeoutError`` after ``timeout`` seconds.

    Connection refusals and non-200 answers are retried; the last one is named in the error.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        try:
            with urlopen_direct(url, max(0.2, min(2.0, timeout))) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            last = f"{type(reason).__name__}: {reason}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.1f}s (last: {last})")
        time.sleep(interval)
