"""The progress log of a generation, kept in Redis.

Each generation has an append-only list of events; an event's id is its position
(1, 2, 3, ...), so `Last-Event-ID` is simply "the events after this position". Appending
and announcing happen in one Lua script: the event is deduplicated by a caller-chosen key
(an activity retried after a crash does not repeat itself), nothing is appended after the
terminal event, and the id is published on the generation's channel so every API
process wakes its streams. Pub/sub is only the wake-up; the list is the truth, so a
subscriber that missed a message loses nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

EventType = Literal["progress", "completed", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed"})
HISTORY_TTL_SECONDS = 7 * 24 * 3600
CHANNEL_PREFIX = "bitbuddies:progress:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"


def _events_key(generation_id: str) -> str:
    return f"bitbuddies:generation:{generation_id}:events"


def _dedupe_key(generation_id: str) -> str:
    return f"bitbuddies:generation:{generation_id}:dedupe"


def channel(generation_id: str) -> str:
    return CHANNEL_PREFIX + generation_id


# KEYS: events list, dedupe hash. ARGV: dedupe key, event JSON, is_terminal, ttl, channel.
# Returns the event's id (the earlier one for a duplicate or anything after the end).
_APPEND = """
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen then return tonumber(seen) end
local ended = redis.call('HGET', KEYS[2], '__terminal__')
if ended then return tonumber(ended) end
local id = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], id)
if ARGV[3] == '1' then redis.call('HSET', KEYS[2], '__terminal__', id) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], id)
return id
"""


@dataclass(frozen=True)
class ProgressEvent:
    id: int
    event: EventType
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL


async def publish(
    redis: Redis,
    generation_id: str,
    *,
    event: EventType,
    dedupe: str,
    step: str,
    message: str,
    percent: int,
    **extra: Any,
) -> int:
    """Append one event (at most once per ``dedupe`` key) and wake its listeners."""
    data = {"step": step, "message": message, "percent": percent, **extra}
    body = json.dumps({"event": event, "data": data}, separators=(",", ":"))
    result = await redis.eval(  # type: ignore[misc]
        _APPEND,
        2,
        _events_key(generation_id),
        _dedupe_key(generation_id),
        dedupe,
        body,
        "1" if event in TERMINAL else "0",
        HISTORY_TTL_SECONDS,
        channel(generation_id),
    )
    return int(result)


async def history(redis: Redis, generation_id: str, *, after: int = 0) -> list[ProgressEvent]:
    """Every event with an id greater than ``after``, in order."""
    raw: list[bytes | str] = await redis.lrange(  # type: ignore[misc]
        _events_key(generation_id), max(after, 0), -1
    )
    events = []
    for offset, item in enumerate(raw):
        parsed = json.loads(item)
        events.append(
            ProgressEvent(id=after + offset + 1, event=parsed["event"], data=parsed["data"])
        )
    return events


@dataclass(frozen=True)
class LogState:
    exists: bool  # False once the log has expired (or before its first event)
    terminal_id: int | None  # the id of the terminal event, once there is one


async def log_state(redis: Redis, generation_id: str) -> LogState:
    """Whether the log exists and where it ended: a stream that has sent up to
    ``terminal_id`` has sent everything there will ever be."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(_dedupe_key(generation_id))
        pipe.hget(_dedupe_key(generation_id), "__terminal__")
        exists, terminal = await pipe.execute()
    return LogState(exists=bool(exists), terminal_id=int(terminal) if terminal else None)
