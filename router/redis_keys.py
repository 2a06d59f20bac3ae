"""Every Redis key warmroute uses, each with a hash tag (``{...}``).

Redis Cluster puts a key in the slot of its hash tag, so keys that share a tag share a slot: a Lua
script or a MULTI over them works on Cluster as on one server. Rule for new keys: build them here (or
with ``tagged``), tag them with the unit that scripts and transactions group by (an endpoint, a
tenant, a tenant experiment), and never let one script or transaction touch two tags.

| key | tag | written by |
|---|---|---|
| ``wr:warmmap:{ENDPOINT}`` (hash) | endpoint | preloader (warm map) |
| ``wr:warm:{ENDPOINT}`` | endpoint | preloader (warm flag, same MULTI as the map) |
| ``wr:traffic:{ENDPOINT}:MINUTE`` (hash) | endpoint | router (per-model counts) |
| ``wr:preloader:lock:{ENDPOINT}`` | endpoint | preloader (leader lock) |
| ``wr:asg:{TENANT:EXPERIMENT}:SALT:UNIT`` | tenant experiment | router (sticky buckets) |
| ``wr:rate:{TENANT}`` (hash) | tenant | router (global rate bucket) |
| ``wr:rollout:{TENANT:EXPERIMENT}:state`` (hash) | tenant experiment | router (rollout state) |
| ``wr:rollout:{TENANT:EXPERIMENT}:win:SEQ`` (hash) | tenant experiment | router (rollout counts) |
| ``wr:replicas:{router}`` (sorted set) | fixed | router (replica heartbeats) |
"""

from __future__ import annotations


def tagged(prefix: str, tag: str, suffix: str = "") -> str:
    """``PREFIX:{TAG}[:SUFFIX]``: the key lands in TAG's slot."""
    key = f"{prefix}:{{{tag}}}"
    return f"{key}:{suffix}" if suffix else key


def warm_map_key(endpoint: str) -> str:
    return tagged("wr:warmmap", endpoint)


def warm_flag_key(endpoint: str) -> str:
    return tagged("wr:warm", endpoint)


def traffic_key(endpoint: str, minute: int) -> str:
    return tagged("wr:traffic", endpoint, str(minute))


def preloader_lock_key(endpoint: str) -> str:
    return tagged("wr:preloader:lock", endpoint)


def rate_key(tenant: str) -> str:
    return tagged("wr:rate", tenant)


def replicas_key(group: str = "router") -> str:
    """One sorted set per fleet (one slot): member = replica id, score = its last heartbeat."""
    return tagged("wr:replicas", group)
