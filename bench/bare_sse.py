"""The SSE baseline: one Redis pattern subscription fanned out to every open stream.

No authentication, no database, no event log: each published message is parsed once and
put on the queue of every stream of its key, and each stream sends what its queue holds
(sse-starlette, as the API does), ending after a terminal event. It is the least an
sse-starlette app can do to deliver the same events, so ``bench.sse_fanout`` prints the
API beside it. Run by the benchmark as ``uvicorn bench.bare_sse:create_app --factory``
with ``REDIS_URL`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

CHANNEL_PREFIX = "bench:bare:"
TERMINAL = frozenset({"completed", "failed", "cancelled"})

# (event name, data as sent, terminal)
Message = tuple[str, str, bool]


class Hub:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.queues: defaultdict[str, set[asyncio.Queue[Message]]] = defaultdict(set)

    async def listen(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.psubscribe(CHANNEL_PREFIX + "*")
            async for message in pubsub.listen():
                if message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                key = (channel.decode() if isinstance(channel, bytes) else channel)[
                    len(CHANNEL_PREFIX) :
                ]
                parsed = json.loads(message["data"])
                item: Message = (
                    parsed["event"],
                    json.dumps(parsed["data"], separators=(",", ":")),
                    parsed["event"] in TERMINAL,
                )
                for queue in self.queues.get(key, ()):
                    queue.put_nowait(item)


def create_app() -> Starlette:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    hub = Hub(redis)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.listen())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await redis.aclose()

    async def livez(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def events(request: Request) -> EventSourceResponse:
        key = request.path_params["key"]
        # Subscribed before the headers go out: a client that has them misses nothing.
        queue: asyncio.Queue[Message] = asyncio.Queue()
        hub.queues[key].add(queue)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                sent = 0
                while True:
                    event, data, terminal = await queue.get()
                    sent += 1
                    yield ServerSentEvent(data=data, event=event, id=str(sent))
                    if terminal:
                        return
            finally:
                hub.queues[key].discard(queue)
                if not hub.queues[key]:
                    del hub.queues[key]

        return EventSourceResponse(stream(), ping=15, send_timeout=30)

    routes = [Route("/livez", livez), Route("/streams/{key}", events)]
    return Starlette(routes=routes, lifespan=lifespan)
