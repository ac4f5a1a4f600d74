"""Live progress over Server-Sent Events.

The record of progress is PostgreSQL's (``infra.progress``); Redis pub/sub only carries
each new event to every API process. One ``ProgressHub`` per process keeps a ``Feed`` per
watched generation (its events from id 1 on, in order) and feeds it from two sources:

- the pub/sub announcement, which carries the event itself, so a stream normally sends it
  without reading anything;
- one catch-up query for the whole process: at once for a feed just opened or one that
  saw a gap in the ids, and every few seconds for every feed still open (every second
  while the subscription is down), so a lost announcement, a Redis outage or a Redis
  restarted empty costs a delay, never an event.

A stream only reads its feed: no database connection and no Redis round trip while it
streams. Its client resumes with `Last-Event-ID`; ids are positions in the durable log,
so they never name a different event, whatever happened to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Annotated, Any
from uuid import UUID

import anyio
from fastapi import APIRouter, Header, Query, Request
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import ConnDep, CurrentUser, RedisDep
from api.errors import documented
from api.limits import Limits
from api.services.errors import InvalidInput, RateLimited
from api.services.generations import owned_generation
from infra import metrics, progress
from infra.database import records
from workflows.contract import READY, TERMINAL_STATUSES

router = APIRouter(prefix="/v1/generations", tags=["generations"])
log = logging.getLogger("bitbuddies.streams")

CATCH_UP_SECONDS = 5.0  # every open feed is compared with the log this often
DEGRADED_CATCH_UP_SECONDS = 1.0  # ... and this often while the subscription is down
RESUBSCRIBE_SECONDS = 1.0
# Every stream wakes at least this often, news or not, to renew its place in the limit
# and to notice its time limit: one timer per process instead of one per stream.
TICK_SECONDS = 5.0
MAX_STREAM_SECONDS = 15 * 60  # then ask the client to reconnect (with Last-Event-ID)
RETRY_MILLISECONDS = 1000
# How long a stream has, once the server shuts down, to send its last word and end before
# sse-starlette cancels it (well under uvicorn's --timeout-graceful-shutdown).
SHUTDOWN_GRACE_SECONDS = 2.0
RENEW_SECONDS = 20.0  # a live stream renews its place in the per-user limit (60 s lease)
# Event ids are positions in the log: whole numbers the client echoes back. Anything else
# (a sign, a fraction, a non-ASCII digit, more than PostgreSQL's bigint) is refused with
# 422 before it reaches a query.
MAX_EVENT_ID = 2**63 - 1
RETRY_AFTER_STREAMS = 5  # seconds; a closed stream frees its place at once
_EVENT_ID = re.compile(r"[0-9]{1,19}")


class Feed:
    """What this process knows of one generation's log: its events from id 1 on, with
    no gap (an event that arrives ahead of a missing one waits for the catch-up)."""

    def __init__(self) -> None:
        self.events: list[progress.ProgressEvent] = []
        self.loaded = False  # the log has been read at least once since the feed opened
        self.watchers = 0
        self._changed = asyncio.Event()

    @property
    def last_id(self) -> int:
        return len(self.events)

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].terminal

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change; take it before reading, then wait on it."""
        return self._changed

    def after(self, position: int) -> list[progress.ProgressEvent]:
        return self.events[position:]  # ids are positions: event n is events[n - 1]

    def add(self, events: Iterable[progress.ProgressEvent]) -> bool:
        """Take in events in id order; True when one came ahead of a missing one."""
        grew = gap = False
        for event in events:
            if event.id == self.last_id + 1 and not self.ended:
                self.events.append(event)
                grew = True
            elif event.id > self.last_id + 1:
                gap = True
        if grew:
            self._notify()
        return gap

    def mark_loaded(self) -> None:
        if not self.loaded:
            self.loaded = True
            self._notify()

    def tick(self) -> None:
        """Wake the streams with no news, so they can keep their own time."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class ProgressHub:
    """One pub/sub subscription and one catch-up loop per process, feeding every stream
    the process serves."""

    def __init__(self, redis: Redis, db: AsyncConnectionPool[Any]) -> None:
        self._redis = redis
        self._db = db
        self._feeds: dict[str, Feed] = {}
        self._behind: set[str] = set()  # feeds to read from the log at the next wake-up
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="progress-subscription"),
            asyncio.create_task(self._catch_up_loop(), name="progress-catch-up"),
            asyncio.create_task(self._tick_loop(), name="progress-tick"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def watch(self, generation_id: str) -> Iterator[Feed]:
        feed = self._feeds.get(generation_id)
        if feed is None:
            feed = self._feeds[generation_id] = Feed()
            self._wake(generation_id)
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self._feeds.get(generation_id) is feed:
                del self._feeds[generation_id]
                self._behind.discard(generation_id)

    @property
    def watching(self) -> int:
        return sum(feed.watchers for feed in self._feeds.values())

    def _wake(self, *generation_ids: str) -> None:
        self._behind.update(generation_ids)
        self._poke.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(progress.CHANNEL_PATTERN)
                    self.subscribed = True
                    self._wake(*self._feeds)  # whatever was announced while we were away
                    async for message in pubsub.listen():
                        if message.get("type") == "pmessage":
                            self._deliver(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self.subscribed:
                    log.warning(
                        "progress subscription lost (%s); catching up from the log every %.0f s",
                        err.__class__.__name__,
                        DEGRADED_CATCH_UP_SECONDS,
                    )
                self.subscribed = False
                await asyncio.sleep(RESUBSCRIBE_SECONDS)

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()
        key = channel[len(progress.CHANNEL_PREFIX) :]
        feed = self._feeds.get(key)
        if feed is None:
            return
        event = progress.ProgressEvent.from_json(data)
        if event is None:
            log.warning("ignored an announcement that is not an event", extra={"channel": channel})
        elif feed.add([event]):
            self._wake(key)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for feed in list(self._feeds.values()):
                feed.tick()

    async def _catch_up_loop(self) -> None:
        while True:
            interval = CATCH_UP_SECONDS if self.subscribed else DEGRADED_CATCH_UP_SECONDS
            poked = True
            try:
                await asyncio.wait_for(self._poke.wait(), interval)
            except TimeoutError:
                poked = False
            self._poke.clear()
            if poked:
                keys, self._behind = self._behind & self._feeds.keys(), set()
            else:
                keys = {k for k, feed in self._feeds.items() if not feed.ended or not feed.loaded}
            if keys and not await self._read(keys):
                self._behind |= keys
                await asyncio.sleep(DEGRADED_CATCH_UP_SECONDS)
                self._poke.set()

    async def _read(self, keys: set[str]) -> bool:
        """Bring these feeds up to the log, in one query; False when it failed."""
        feeds = {k: self._feeds[k] for k in keys if k in self._feeds}
        try:
            async with self._db.connection() as conn:
                found = await progress.histories(
                    conn, {k: feed.last_id for k, feed in feeds.items()}
                )
        except Exception:
            log.warning("progress catch-up failed; retrying", exc_info=True)
            return False
        for key, feed in feeds.items():
            feed.add(found.get(key, []))
            feed.mark_loaded()
        return True


def resume_point(value: str | None, name: str) -> int:
    """The log position a client asks to resume after; 0 when it names none."""
    if value is None or value == "":
        return 0
    if _EVENT_ID.fullmatch(value) is None or int(value) > MAX_EVENT_ID:
        raise InvalidInput(f"{name} must be an event id: a whole number from 0 to {MAX_EVENT_ID}")
    return int(value)


def _sse(event: progress.ProgressEvent) -> ServerSentEvent:
    return ServerSentEvent(data=event.data_json, event=event.event, id=str(event.id))


def _from_record(generation: records.Generation) -> progress.ProgressEvent | None:
    """A terminal event rebuilt from the generation's row, for a generation whose log
    holds no terminal event (one that ended before the log moved to PostgreSQL)."""
    if generation.status not in TERMINAL_STATUSES:
        return None
    data: dict[str, Any] = {
        "step": generation.step or generation.status,
        "message": generation.error or READY,
        "percent": 100 if generation.status == "completed" else 0,
    }
    if generation.status == "completed":
        data["character_id"] = str(generation.character_id)
        return progress.ProgressEvent(id=0, event="completed", data=data)
    data.update(error_code=generation.error_code, status=generation.status)
    return progress.ProgressEvent(
        id=0, event="cancelled" if generation.status == "cancelled" else "failed", data=data
    )


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
        raise RateLimited(
            "You have too many progress streams open; close one and try again.",
            retry_after=RETRY_AFTER_STREAMS,
        )
    # Finish database work before streaming: no connection is held for the stream's life.
    fallback = _from_record(generation)

    # Set by sse-starlette when the server shuts down (a deploy's SIGTERM): the stream
    # ends with a last word, and the client reconnects, to another API process behind the
    # load balancer, resuming from its Last-Event-ID; uvicorn then stops without waiting
    # out its graceful timeout on streams that never end by themselves.
    shutdown = anyio.Event()

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            with metrics.OPEN_STREAMS.track_inprogress(), hub.watch(str(generation_id)) as feed:
                async for event in _events(feed, start, fallback, renew, shutdown):
                    yield event
        finally:
            # A client that goes away cancels the stream; the release must still run, or
            # its place would stay taken until the lease lapses.
            if limits.enabled:
                with anyio.CancelScope(shield=True):
                    await limits.streams_per_user.release(redis, identity, holder)

    async def renew() -> None:
        if limits.enabled:
            await limits.streams_per_user.claim(redis, identity, holder)

    return EventSourceResponse(
        stream(),
        ping=15,
        send_timeout=30,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _events(
    feed: Feed,
    start: int,
    fallback: progress.ProgressEvent | None,
    renew: Callable[[], Awaitable[None]],
    shutdown: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """One stream's events after ``start``, until the terminal one, the time limit or the
    server's shutdown (the last two end with a word asking the client to reconnect).
    ``renew`` keeps the stream's place in the per-user limit while it lives."""
    sent = start
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    renew_at = loop.time() + RENEW_SECONDS
    while (now := loop.time()) < deadline and not shutdown.is_set():
        if now >= renew_at:
            await renew()
            renew_at = now + RENEW_SECONDS
        changed = feed.changed
        events = feed.after(sent)
        if not events and feed.loaded:
            if feed.ended and sent >= feed.last_id:
                return  # the client already has the terminal event
            if not feed.ended and fallback is not None:
                events = [
                    progress.ProgressEvent(
                        max(sent, feed.last_id) + 1, fallback.event, fallback.data
                    )
                ]
        for event in events:
            yield _sse(event)
            sent = event.id
            if event.terminal:
                return
        # No timer per stream: the hub wakes every feed at least every TICK_SECONDS.
        await _first_of(changed, shutdown)
    # Still running after a long stream, or the server is going: the client reconnects
    # with Last-Event-ID.
    yield ServerSentEvent(comment="reconnect", retry=RETRY_MILLISECONDS)


async def _first_of(*events: asyncio.Event | anyio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with anyio.create_task_group() as waiting:

        async def wait(event: asyncio.Event | anyio.Event) -> None:
            await event.wait()
            waiting.cancel_scope.cancel()

        for event in events:
            waiting.start_soon(wait, event)
