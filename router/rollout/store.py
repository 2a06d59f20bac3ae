"""A rollout's state and windows in Redis.

Keys carry the hash tag ``{tenant:experiment}`` so both scripts touch one slot (Redis Cluster):
``wr:rollout:{t:e}:state`` (a hash: fp, seq, step, status, since, reason) and
``wr:rollout:{t:e}:win:<seq>`` (a hash of counts, see ``figures.field_names``). A window is named by
the state's ``seq``, so a new step starts counting from zero without deleting anything, and counts a
replica took under an older step are dropped instead of polluting the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from router.redis_conn import RedisClient
from router.redis_keys import tagged
from router.rollout.decision import STATUSES, RolloutState, Status
from router.rollout.figures import Window

# KEYS[1] state, KEYS[2] window of ARGV[1] (the seq the replica counted under); ARGV[2] window TTL,
# ARGV[3..] field, count pairs. Adds the counts when that seq is still current, then returns the
# state, the current window and the Redis clock: one round trip per tick.
SYNC = """
local seq = redis.call('HGET', KEYS[1], 'seq')
local window = {}
if seq and seq == ARGV[1] then
  if #ARGV > 2 then
    for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
    redis.call('EXPIRE', KEYS[2], ARGV[2])
  end
  window = redis.call('HGETALL', KEYS[2])
end
local t = redis.call('TIME')
return {redis.call('HGETALL', KEYS[1]), window, t[1], t[2]}
"""

# KEYS[1] state; ARGV: expected fp ('' none), expected seq ('0' none), new fp, step, status,
# reason. Compare-and-set: only the replica that read the current seq changes it, so two replicas
# judging the same window never take two steps. Returns the new seq, or false.
CAS = """
local cur = redis.call('HMGET', KEYS[1], 'fp', 'seq')
if (cur[1] or '') ~= ARGV[1] or (cur[2] or '0') ~= ARGV[2] then return false end
local seq = tonumber(cur[2] or '0') + 1
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'fp', ARGV[3], 'seq', seq, 'step', ARGV[4], 'status', ARGV[5],
  'reason', ARGV[6], 'since', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
return seq
"""


@dataclass(frozen=True, slots=True)
class RolloutKeys:
    state: str
    prefix: str

    @classmethod
    def of(cls, tenant: str, experiment: str) -> RolloutKeys:
        return cls(
            tagged("wr:rollout", f"{tenant}:{experiment}", "state"),
            tagged("wr:rollout", f"{tenant}:{experiment}", "win:"),
        )

    def window(self, seq: int) -> str:
        return f"{self.prefix}{seq}"


@dataclass(frozen=True, slots=True)
class Synced:
    state: RolloutState | None  # None: no rollout stored yet
    window: Window | None  # None: the seq counted under is no longer current
    now: float  # Redis clock, seconds


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def parse_state(fields: dict[str, str]) -> RolloutState | None:
    if "seq" not in fields or fields.get("status") not in STATUSES:
        return None
    return RolloutState(
        fingerprint=fields.get("fp", ""),
        seq=int(fields["seq"]),
        step=int(fields.get("step", "0")),
        status=cast(Status, fields["status"]),
        since=float(fields.get("since", "0")),
        reason=fields.get("reason", ""),
    )


class RolloutStore:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._sync = redis.register_script(SYNC)
        self._cas = redis.register_script(CAS)

    async def sync(
        self, keys: RolloutKeys, seq: int, pairs: Sequence[str | int], *, window_ttl_s: int
    ) -> Synced:
        """Flush ``pairs`` counted under ``seq``; read the state and its window."""
        raw = await self._sync(
            keys=[keys.state, keys.window(seq)], args=[seq, window_ttl_s, *pairs]
        )
        state_flat, window_flat, seconds, micros = raw
        state = parse_state(_pairs(state_flat))
        window = None
        if state is not None and state.seq == seq:
            window = Window.from_fields({k: int(v) for k, v in _pairs(window_flat).items()})
        return Synced(state, window, int(seconds) + int(micros) / 1e6)

    async def cas(
        self,
        keys: RolloutKeys,
        expected: RolloutState | None,
        *,
        fingerprint: str,
        step: int,
        status: Status,
        reason: str,
    ) -> int | None:
        """Set a new state if ``expected`` is still the stored one; the new seq, or None."""
        expected_fp, expected_seq = (
            (expected.fingerprint, expected.seq) if expected is not None else ("", 0)
        )
        args: list[str | int] = [expected_fp, expected_seq, fingerprint, step, status, reason]
        seq = await self._cas(keys=[keys.state], args=args)
        return None if seq is None else int(seq)

    async def read(self, keys: RolloutKeys) -> tuple[RolloutState | None, Window]:
        """The state and its current window (admin; two reads, not atomic: display only)."""
        state = parse_state(
            {_text(k): _text(v) for k, v in (await self.redis.hgetall(keys.state)).items()}
        )
        if state is None:
            return None, Window()
        counts = await self.redis.hgetall(keys.window(state.seq))
        return state, Window.from_fields({_text(k): int(v) for k, v in counts.items()})
