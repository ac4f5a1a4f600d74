"""Rate limits kept in Redis, so they hold across every API process.

Two kinds:

- ``Quota``: at most ``limit`` events per ``period`` with bursts up to ``limit``, by the
  generic cell rate algorithm (one key per identity holding the "theoretical arrival
  time"; one Lua script, so the check and the update are atomic). Time comes from
  Redis's own clock, so API processes with skewed clocks agree.
- ``Concurrency``: at most ``limit`` things open at once per identity (event streams):
  a sorted set of holders scored by when their claim lapses; holders renew while they
  live, and a process that dies without releasing loses its claims within ``lease``.

If Redis is unreachable the limiter lets the request through and logs it: a rate limit
protects the service, it must not become the reason the service is down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("bitbuddies.ratelimit")
PREFIX = "bitbuddies:rl:"

# KEYS[1]: the identity's key. ARGV: emission interval (ms), burst tolerance (ms), cost.
# Returns {allowed (0/1), retry after (ms)}.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance - interval
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""

# KEYS[1]: the identity's set. ARGV: holder, lease (ms), limit. Returns 1 if held.
_CLAIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until one more would be allowed

    @property
    def retry_after_header(self) -> int:
        return max(1, int(self.retry_after + 0.999))


@dataclass(frozen=True)
class Quota:
    name: str
    limit: int
    period_seconds: float

    async def hit(self, redis: Redis, identity: str, *, cost: int = 1) -> Decision:
        if self.limit <= 0:
            return Decision(True)
        interval_ms = self.period_seconds * 1000 / self.limit
        tolerance_ms = interval_ms * (self.limit - 1)  # a burst of exactly `limit`
        try:
            allowed, retry_ms = await redis.eval(  # type: ignore[misc]
                _GCRA, 1, f"{PREFIX}{self.name}:{identity}", interval_ms, tolerance_ms, cost
            )
        except RedisError:
            log.warning("rate limit %s not checked: Redis unavailable", self.name)
            return Decision(True)
        return Decision(bool(allowed), float(retry_ms) / 1000)

    async def reset(self, redis: Redis, identity: str) -> None:
        try:
            await redis.delete(f"{PREFIX}{self.name}:{identity}")
        except RedisError:
            log.warning("rate limit %s not reset: Redis unavailable", self.name)


@dataclass(frozen=True)
class Concurrency:
    name: str
    limit: int
    lease_seconds: float = 60.0

    def _key(self, identity: str) -> str:
        return f"{PREFIX}{self.name}:{identity}"

    async def claim(self, redis: Redis, identity: str, holder: str) -> bool:
        """Take (or renew) ``holder``'s place; False when ``limit`` others hold one."""
        if self.limit <= 0:
            return True
        try:
            held = await redis.eval(  # type: ignore[misc]
                _CLAIM, 1, self._key(identity), holder, int(self.lease_seconds * 1000), self.limit
            )
        except RedisError:
            log.warning("limit %s not checked: Redis unavailable", self.name)
            return True
        return bool(held)

    async def release(self, redis: Redis, identity: str, holder: str) -> None:
        try:
            await redis.zrem(self._key(identity), holder)
        except RedisError:
            log.warning("limit %s not released (lapses by itself): Redis unavailable", self.name)


# KEYS[1]: the identity's hash. ARGV: failures allowed before slowing down, first delay
# (ms), longest delay (ms), memory (ms). Returns the wait (ms) before the next try is
# allowed (0: go ahead).
_BACKOFF_CHECK = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local failures = tonumber(redis.call('HGET', KEYS[1], 'n') or 0)
local last = tonumber(redis.call('HGET', KEYS[1], 'at') or 0)
local free = tonumber(ARGV[1])
if failures < free then return 0 end
local delay = math.min(tonumber(ARGV[2]) * 2 ^ (failures - free), tonumber(ARGV[3]))
local wait = last + delay - now
if wait > 0 then return math.ceil(wait) end
return 0
"""
_BACKOFF_FAIL = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class FailureBackoff:
    """Failed attempts slow the next ones down: after ``free`` failures, each further try
    waits ``first_delay`` seconds after the last failure, doubling up to ``max_delay``;
    the count is forgotten ``memory_seconds`` after the last failure, or on success."""

    name: str
    free: int
    first_delay: float = 1.0
    max_delay: float = 900.0
    memory_seconds: float = 3600.0

    def _key(self, identity: str) -> str:
        return f"{PREFIX}{self.name}:{identity}"

    async def check(self, redis: Redis, identity: str) -> Decision:
        if self.free <= 0:
            return Decision(True)
        try:
            wait_ms = await redis.eval(  # type: ignore[misc]
                _BACKOFF_CHECK,
                1,
                self._key(identity),
                self.free,
                int(self.first_delay * 1000),
                int(self.max_delay * 1000),
            )
        except RedisError:
            log.warning("backoff %s not checked: Redis unavailable", self.name)
            return Decision(True)
        return Decision(int(wait_ms) == 0, int(wait_ms) / 1000)

    async def failed(self, redis: Redis, identity: str) -> None:
        try:
            await redis.eval(  # type: ignore[misc]
                _BACKOFF_FAIL, 1, self._key(identity), int(self.memory_seconds * 1000)
            )
        except RedisError:
            log.warning("backoff %s not recorded: Redis unavailable", self.name)

    async def succeeded(self, redis: Redis, identity: str) -> None:
        try:
            await redis.delete(self._key(identity))
        except RedisError:
            log.warning("backoff %s not reset: Redis unavailable", self.name)
