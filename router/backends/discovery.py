"""Instances of a v2 endpoint from DNS (a Kubernetes headless service: one A/AAAA record per pod)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from tenancy.models import Discovery


async def resolve_instances(discovery: Discovery) -> list[str]:
    """Base URLs of every address the name resolves to, sorted (stable across calls)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        discovery.dns, discovery.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    urls = set()
    for _family, _type, _proto, _name, sockaddr in infos:
        host = str(sockaddr[0])
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        urls.add(f"{discovery.scheme}://{host}:{discovery.port}")
    return sorted(urls)
