"""Live progress over Server-Sent Events.

One Redis pattern subscription per API process (`ProgressHub`) wakes every stream that
process serves; each stream then reads the generation's event log from where its client
left off. The log, not the pub/sub message, is the source of truth: a client that joins
late or reconnects with `Last-Event-ID` gets every event it missed, in order, and a
dropped pub/sub message costs at most one re-read on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

import anyio
from fastapi import APIRouter, Header, Query, Request
from redis.asyncio import Redis
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import ConnDep, CurrentUser, RedisDep
from api.errors import Invalid, TooManyRequests, documented
from api.generations import owned_generation
from api.limits import Limits
from infra import progress
from infra.database import records

router = APIRouter(prefix="/v1/generations", tags=["generations"])
log = logging.getLogger("bitbuddies.streams")

RECHECK_SECONDS = 1.0  # read the log at least this often even without a wake-up
MAX_STREAM_SECONDS = 15 * 60  # then ask the client to reconnect (with Last-Event-ID)
RETRY_MILLISECONDS = 1000
RENEW_SECONDS = 20.0  # a live stream renews its place in the per-user limit (60 s lease)
# Event ids are positions in the log: whole numbers the client echoes back. Anything else
# (a sign, a fraction, a non-ASCII digit, more than Redis's 64-bit range) is refused
# with 422 instead of reaching Redis.
MAX_EVENT_ID = 2**63 - 1
RETRY_AFTER_STREAMS = 5  # seconds; a closed stream frees its place at once
_EVENT_ID = re.compile(r"[0-9]{1,19}")


class ProgressHub:
    """Fans one pub/sub subscription out to every waiting stream in this process."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="progress-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def watch(self, generation_id: str) -> Any:
        event = asyncio.Event()
        self._waiters[generation_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(generation_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[generation_id]

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(progress.CHANNEL_PATTERN)
                    async for message in pubsub.listen():
                        if message.get("type") != "pmessage":
                            continue
                        channel = message["channel"]
                        if isinstance(channel, bytes):
                            channel = channel.decode()
                        for event in self._waiters.get(channel[len(progress.CHANNEL_PREFIX) :], ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Streams keep re-reading the log every second meanwhile; nothing is lost.
                log.exception("progress subscription dropped; reconnecting")
                await asyncio.sleep(1.0)


def resume_point(value: str | None, name: str) -> int:
    """The log position a client asks to resume after; 0 when it names none."""
    if value is None or value == "":
        return 0
    if _EVENT_ID.fullmatch(value) is None or int(value) > MAX_EVENT_ID:
        raise Invalid(f"{name} must be an event id: a whole number from 0 to {MAX_EVENT_ID}")
    return int(value)


def _sse(event: progress.ProgressEvent) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(event.data, separators=(",", ":")), event=event.event, id=str(event.id)
    )


def _from_record(generation: records.Generation) -> progress.ProgressEvent | None:
    """A terminal event rebuilt from the database when the Redis log is gone (expired)."""
    if generation.status not in records.TERMINAL_STATUSES:
        return None
    data: dict[str, Any] = {
        "step": generation.step or generation.status,
        "message": generation.error or "Your BitBuddy is ready!",
        "percent": 100 if generation.status == "completed" else 0,
    }
    if generation.status == "completed":
        data["character_id"] = str(generation.character_id)
        return progress.ProgressEvent(id=0, event="completed", data=data)
    data.update(error_code=generation.error_code, status=generation.status)
    return progress.ProgressEvent(id=0, event="failed", data=data)


@router.get(
    "/{generation_id}/events",
    name="generation_events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events"},
        **documented(401, 404, 422, 429),
    },
)
async def generation_events(
    request: Request,
    generation_id: UUID,
    user: CurrentUser,
    conn: ConnDep,
    redis: RedisDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None,
        Query(description="Same as Last-Event-ID: resume after this event id", max_length=19),
    ] = None,
) -> EventSourceResponse:
    generation = await owned_generation(conn, generation_id, user.id)
    start = max(resume_point(after, "after"), resume_point(last_event_id, "Last-Event-ID"))
    hub: ProgressHub = request.app.state.hub
    limits: Limits = request.app.state.limits
    holder, identity = uuid.uuid4().hex, str(user.id)
    if limits.enabled and not await limits.streams_per_user.claim(redis, identity, holder):
        raise TooManyRequests(
            "You have too many progress streams open; close one and try again.",
            retry_after=RETRY_AFTER_STREAMS,
        )
    key = str(generation_id)
    # Finish database work before streaming: no connection is held for the stream's life.
    fallback = _from_record(generation)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in _events(hub, redis, key, start, fallback, renew):
                yield event
        finally:
            if limits.enabled:
                # A client that goes away cancels the stream; the release must still run,
                # or its place would stay taken until the lease lapses.
                with anyio.CancelScope(shield=True):
                    await limits.streams_per_user.release(redis, identity, holder)

    async def renew() -> None:
        if limits.enabled:
            await limits.streams_per_user.claim(redis, identity, holder)

    return EventSourceResponse(stream(), ping=15, send_timeout=30)


async def _events(
    hub: ProgressHub,
    redis: Redis,
    key: str,
    start: int,
    fallback: progress.ProgressEvent | None,
    renew: Callable[[], Awaitable[None]],
) -> AsyncIterator[ServerSentEvent]:
    """One stream's events from ``start`` on, until the terminal one or the time limit.
    ``renew`` keeps the stream's place in the per-user limit while it lives."""
    sent = start
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    renew_at = loop.time() + RENEW_SECONDS
    with hub.watch(key) as wake:
        while loop.time() < deadline:
            if loop.time() >= renew_at:
                await renew()
                renew_at = loop.time() + RENEW_SECONDS
            wake.clear()
            events = await progress.history(redis, key, after=sent)
            if not events:
                state = await progress.log_state(redis, key)
                if state.terminal_id is not None and sent >= state.terminal_id:
                    return  # the client already has the terminal event
                if not state.exists and fallback is not None:
                    events = [dataclasses.replace(fallback, id=sent + 1)]
            for event in events:
                yield _sse(event)
                sent = event.id
                if event.terminal:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), RECHECK_SECONDS)
    # Still running after a long stream: the client reconnects with Last-Event-ID.
    yield ServerSentEvent(comment="reconnect", retry=RETRY_MILLISECONDS)
