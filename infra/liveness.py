"""Which workers are alive, per task queue, as seen through Redis.

Each worker process beats every BEAT_SECONDS into one sorted set per task queue (member:
its identity, score: the time). A worker killed with SIGKILL simply stops beating, so
``/healthz`` notices within ALIVE_SECONDS; Temporal's own poller list keeps showing a dead
poller for a minute or more. A clean stop removes the member at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from redis.asyncio import Redis

BEAT_SECONDS = 3.0
ALIVE_SECONDS = 10.0

log = logging.getLogger(__name__)


def _key(task_queue: str) -> str:
    return f"bitbuddies:workers:{task_queue}"


async def beat(redis: Redis, task_queues: Sequence[str], identity: str) -> None:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for queue in task_queues:
            pipe.zadd(_key(queue), {identity: now})
            pipe.zremrangebyscore(_key(queue), "-inf", now - ALIVE_SECONDS)
        await pipe.execute()


async def alive(redis: Redis, task_queue: str) -> int:
    """How many workers beat on ``task_queue`` within the last ALIVE_SECONDS."""
    count: int = await redis.zcount(_key(task_queue), time.time() - ALIVE_SECONDS, "+inf")
    return count


@contextlib.asynccontextmanager
async def beating(redis: Redis, task_queues: Sequence[str], identity: str) -> AsyncIterator[None]:
    """Beat in the background for as long as the block runs; leave cleanly at the end."""

    async def loop() -> None:
        while True:
            try:
                await beat(redis, task_queues, identity)
            except Exception:
                log.warning("liveness beat failed; retrying", exc_info=True)
            await asyncio.sleep(BEAT_SECONDS)

    await beat(redis, task_queues, identity)  # alive from the moment the block starts
    task = asyncio.create_task(loop(), name="liveness")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            async with redis.pipeline(transaction=False) as pipe:
                for queue in task_queues:
                    pipe.zrem(_key(queue), identity)
                await pipe.execute()
