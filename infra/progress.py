"""The progress log of a generation: recorded in PostgreSQL, announced through Redis.

Each generation has an append-only log of events in ``generation_events``; an event's id
is its position (1, 2, 3, ...), so `Last-Event-ID` is simply "the events after this
position". The record is PostgreSQL's (migration 0007): ids are given out under the
generation row's lock, so they are never reused, even if Redis loses everything; an event
is appended at most once per caller-chosen dedupe key (an activity retried after a crash
does not repeat itself); nothing is appended after the terminal event, and the terminal
event is written in the same transaction as the generation's outcome.

Redis pub/sub carries each new event, whole, to every API process (``announce``), so a
stream normally never reads the log. The announcement is only a wake-up: it is sent after
the commit, best effort, and a lost one costs a delay, never an event (each API process
catches up from the log; see api/streams.py).

Progress is a side effect: ``publish`` never fails the activity that reports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from infra.database.records import Conn

# A generation's log: progress events, then one terminal event (its status).
EventType = Literal["progress", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
CHANNEL_PREFIX = "bitbuddies:progress:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"
ANNOUNCE_TIMEOUT_SECONDS = 2.0  # a hung Redis must not hold up the step that reports

log = logging.getLogger("bitbuddies.progress")


def channel(generation_id: str) -> str:
    return CHANNEL_PREFIX + generation_id


@dataclass(frozen=True)
class ProgressEvent:
    id: int
    event: EventType
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL

    @cached_property
    def data_json(self) -> str:
        """``data`` as a stream sends it, serialised once however many streams send it."""
        return json.dumps(self.data, separators=(",", ":"))

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "event": self.event, "data": self.data}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ProgressEvent | None:
        """An announcement as sent by ``announce``; None for anything else."""
        try:
            parsed = json.loads(raw)
            event = cls(id=int(parsed["id"]), event=parsed["event"], data=dict(parsed["data"]))
        except (ValueError, KeyError, TypeError):
            return None
        if event.id < 1 or event.event not in ("progress", *TERMINAL):
            return None
        return event


def _data(step: str, message: str, percent: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": step, "message": message, "percent": percent, **extra}


async def append(
    conn: Conn,
    generation_id: str,
    *,
    event: EventType,
    dedupe: str,
    step: str,
    message: str,
    percent: int,
    **extra: Any,
) -> ProgressEvent:
    """Record one event in the caller's transaction; returns the event that stands for
    it: the new one, the earlier one with this ``dedupe`` key, or the terminal event when
    the log has already ended. Announce it after the commit."""
    cur = await conn.execute(
        "SELECT event_id, event_kind, event_data FROM append_generation_event(%s, %s, %s, %s)",
        (UUID(generation_id), dedupe, event, Jsonb(_data(step, message, percent, extra))),
    )
    row = await cur.fetchone()
    assert row is not None
    return ProgressEvent(id=row["event_id"], event=row["event_kind"], data=row["event_data"])


async def announce(redis: Redis, generation_id: str, event: ProgressEvent) -> bool:
    """Tell every API process about a recorded event. Best effort: False (and a warning)
    when Redis cannot be reached; the streams catch up from the log instead."""
    try:
        await asyncio.wait_for(
            redis.publish(channel(generation_id), event.to_json()), ANNOUNCE_TIMEOUT_SECONDS
        )
    except Exception as err:  # any Redis or network failure: the record stands
        log.warning(
            "progress event %d not announced (%s); streams will catch up from the log",
            event.id,
            err.__class__.__name__,
            extra={"generation_id": generation_id},
        )
        return False
    return True


async def publish(
    db: AsyncConnectionPool[Any],
    redis: Redis,
    generation_id: str,
    *,
    event: EventType,
    dedupe: str,
    step: str,
    message: str,
    percent: int,
    **extra: Any,
) -> ProgressEvent | None:
    """Record and announce one event, never raising: progress must not fail the step
    that reports it. None when it could not be recorded (logged); a retry of the same
    step records it under the same ``dedupe`` key."""
    try:
        async with db.connection() as conn:
            recorded = await append(
                conn,
                generation_id,
                event=event,
                dedupe=dedupe,
                step=step,
                message=message,
                percent=percent,
                **extra,
            )
    except Exception:
        log.warning(
            "progress event %r not recorded",
            dedupe,
            exc_info=True,
            extra={"generation_id": generation_id},
        )
        return None
    await announce(redis, generation_id, recorded)
    return recorded


async def history(conn: Conn, generation_id: str, *, after: int = 0) -> list[ProgressEvent]:
    """Every event with an id greater than ``after``, in order."""
    found = await histories(conn, {generation_id: after})
    return found.get(generation_id, [])


async def histories(conn: Conn, positions: Mapping[str, int]) -> dict[str, list[ProgressEvent]]:
    """For each generation, the events after its position, in order: one query however
    many generations are asked about."""
    if not positions:
        return {}
    keys = {UUID(k): k for k in positions}
    cur = await conn.execute(
        "SELECT e.generation_id, e.id, e.kind, e.data"
        " FROM unnest(%s::uuid[], %s::bigint[]) AS w (generation_id, after)"
        " JOIN generation_events e ON e.generation_id = w.generation_id AND e.id > w.after"
        " ORDER BY e.generation_id, e.id",
        (list(keys), [positions[k] for k in keys.values()]),
    )
    found: dict[str, list[ProgressEvent]] = {}
    for row in await cur.fetchall():
        found.setdefault(keys[row["generation_id"]], []).append(
            ProgressEvent(id=row["id"], event=row["kind"], data=row["data"])
        )
    return found
