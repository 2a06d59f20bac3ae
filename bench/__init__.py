"""``make bench``: what warmroute costs on the hot path, against a direct call and a bare proxy.

Processes (all on loopback, each its own OS process, started by ``python -m bench``):

- ``bench.upstream``  — a fast stand-in v2 server (aiohttp + uvloop, fixed tiny response);
- ``bench.bare_proxy`` — the minimal honest proxy: read the body, POST it with one pooled
  ClientSession, return the answer (aiohttp + uvloop);
- ``python -m router`` — warmroute, with a generated config: a tenant with an API key and limits
  (high enough never to refuse), and a canary tenant for the assignment measurements;
- the load generator — ``wrk`` (``bench/post.lua``), or ``bench.pyload`` when wrk is unavailable.

Sharing the cores. Nothing is pinned by default (``--pin`` pins the upstream and wrk to CPU 0 and the
proxy or router to CPU 1). One request at a time the processes take turns, so sharing costs little
beyond cross-core wake-ups. At 32 connections every process wants a core: direct runs have wrk and the
upstream, proxied runs have wrk, the proxy/router and the upstream, all on the same cores. So the
req/s numbers of (b) and (c) are each "what this machine does with the upstream on it too", which is
the same handicap for both: compare (c) with (b), never with (a).
"""
