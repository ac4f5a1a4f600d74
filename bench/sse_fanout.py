"""Server-Sent Events fan-out: N progress streams open on one API process, beside a bare
sse-starlette app serving as many streams from one Redis subscription, in one run.

Each stream is ``GET /v1/generations/{id}/events`` with its owner's bearer token; the
generations are rows inserted directly (no workflow runs) and their events are published
through ``infra.progress``, each carrying its publish time, so the client measures
publish-to-client latency. Meanwhile another user polls ``GET /v1/me`` from a process of
its own. Memory per stream is the API process's RSS before and after the streams open,
divided by N. The bare app (bench/bare_sse.py) is measured the same way, with the same
client, right after.

    .venv/bin/python -m bench.sse_fanout [--streams 1000] [--events 20] [--generations 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvloop
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from bench import bare_sse
from bench.harness import cpu_seconds, percentile, raise_open_files_limit, rss_bytes, running_stack
from infra import progress, supervisor
from infra.database import open_pool, records
from tests.support.client import User, signup

ENV = {
    "BITBUDDIES_RATE_LIMITS": "off",  # the poller and the streams are not abuse
    "BITBUDDIES_STALE_QUEUED_SECONDS": "86400",  # the sweeper leaves our rows alone
}
OPEN_CONCURRENCY = 64  # streams being opened at once (connect + headers)
ME_TARGET_P99 = 0.200


# --- publishing: the one place that calls the API's progress module ---------------


async def publish_event(
    db: AsyncConnectionPool[Any], redis: Redis, generation_id: str, number: int, *, last: bool
) -> None:
    """Publish event ``number`` of a generation as the workflow would (recorded, then
    announced; the last one is terminal, which ends its streams). The data carries the
    publish time, taken before the record is written."""
    await progress.publish(
        db,
        redis,
        generation_id,
        event="completed" if last else "progress",
        dedupe=f"bench:{number}",
        step="bench",
        message=f"event {number}",
        percent=min(100, number),
        sent_at=time.time(),
    )


async def publish_bare(redis: Redis, key: str, number: int, *, last: bool) -> None:
    """The same event for the bare app: one PUBLISH, no log."""
    data = {"step": "bench", "message": f"event {number}", "percent": min(100, number)}
    body = {"event": "completed" if last else "progress", "data": {**data, "sent_at": time.time()}}
    await redis.publish(bare_sse.CHANNEL_PREFIX + key, json.dumps(body, separators=(",", ":")))


# --- a lean SSE client: raw asyncio streams, so 1,000 of them fit in one process -----


@dataclass
class StreamResult:
    status: int | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, publish to parsed
    ended: bool = False  # the server closed the stream (after the terminal event)
    error: str | None = None


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def follow(
    url: str, path: str, headers: dict[str, str], result: StreamResult, opened: Callable[[], None]
) -> None:
    """Open one stream and record each event's latency until the server ends it.
    ``opened`` is called once, when the response headers are in (or the attempt failed)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    writer: asyncio.StreamWriter | None = None
    announced = False
    try:
        reader, writer = await asyncio.open_connection(host, port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = await reader.readline()
        result.status = int(status_line.split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        opened()
        announced = True
        if result.status != 200:
            result.error = f"HTTP {result.status}"
            return
        buffer, data_lines = b"", []
        async for chunk in _body(reader, chunked):
            *complete, buffer = (buffer + chunk).split(b"\n")
            for raw in complete:
                line = raw.rstrip(b"\r")
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].lstrip(b" "))
                elif not line and data_lines:
                    event = json.loads(b"\n".join(data_lines))
                    result.latencies.append(time.time() - event["sent_at"])
                    data_lines = []
        result.ended = True
    except (OSError, ValueError, IndexError, KeyError, asyncio.IncompleteReadError) as err:
        result.error = f"{type(err).__name__}: {str(err)[:60]}"
    finally:
        if not announced:
            opened()
        if writer is not None:
            writer.close()


# --- the /v1/me poller, in a process of its own so our client's load does not skew it


def poll_me(api_url: str, token: str, interval: float, stop: ProcessEvent, out: Connection) -> None:
    """GET /v1/me every ``interval`` seconds until ``stop``; send (time, seconds, status)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    samples: list[tuple[float, float, int]] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, timeout=30.0) as http:
        while not stop.is_set():
            at, start = time.time(), time.perf_counter()
            try:
                status = http.get("/v1/me", headers=headers).status_code
            except httpx.HTTPError:
                status = 0
            samples.append((at, time.perf_counter() - start, status))
            time.sleep(interval)
    out.send(samples)
    out.close()


# --- one side of the comparison --------------------------------------------------


@dataclass
class Target:
    """What a measurement needs to know about the server under test."""

    name: str
    url: str
    pid: int
    keys: list[str]  # one per generation; stream i follows keys[i % len(keys)]
    path: Callable[[str], str]
    headers: Callable[[str], dict[str, str]]
    publish: Callable[[str, int, bool], Awaitable[None]]  # (key, number, last)


@dataclass
class Measured:
    streams: int
    opened: int  # streams that answered 200
    open_seconds: float
    results: list[StreamResult]
    rss_per_stream: float  # bytes
    cpu_per_open: float  # seconds of the server's CPU per stream opened (auth, lookups)
    cpu_per_delivery: float  # seconds of the server's CPU per event, once all are open
    # wall-clock spans, to pick the /me samples: opening the streams, then streaming
    opening: tuple[float, float]
    streaming: tuple[float, float]

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.results for x in r.latencies]

    @property
    def delivered(self) -> int:
        return sum(len(r.latencies) for r in self.results)


async def measure(
    target: Target,
    streams: int,
    events: int,
    interval: float,
    open_timeout: float,
    drain_timeout: float,
) -> Measured:
    started_at = time.time()
    rss_before, cpu_before = rss_bytes(target.pid), cpu_seconds(target.pid)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    results = [StreamResult() for _ in range(streams)]
    pending_opens = streams
    all_open = asyncio.Event()

    def opened() -> None:
        nonlocal pending_opens
        gate.release()
        pending_opens -= 1
        if pending_opens == 0:
            all_open.set()

    async def one(index: int) -> None:
        key = target.keys[index % len(target.keys)]
        await gate.acquire()
        await follow(target.url, target.path(key), target.headers(key), results[index], opened)

    start = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    try:
        try:
            await asyncio.wait_for(all_open.wait(), open_timeout)
        except TimeoutError:
            print(f"  {target.name}: {pending_opens} streams not open after {open_timeout:.0f}s")
        open_seconds = time.perf_counter() - start
        opened_ok = sum(1 for r in results if r.status == 200 and r.error is None)
        await asyncio.sleep(1.0)  # let the open streams settle before reading memory
        rss_after, cpu_open = rss_bytes(target.pid), cpu_seconds(target.pid)
        streaming_at = time.time()
        for number in range(1, events + 1):
            for key in target.keys:
                await target.publish(key, number, number == events)
            await asyncio.sleep(interval)
        _, late = await asyncio.wait(tasks, timeout=drain_timeout)
        if late:
            print(f"  {target.name}: {len(late)} streams still open {drain_timeout:.0f}s later")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    delivered = sum(len(r.latencies) for r in results)
    return Measured(
        streams=streams,
        opened=opened_ok,
        open_seconds=open_seconds,
        results=results,
        rss_per_stream=(rss_after - rss_before) / max(opened_ok, 1),
        cpu_per_open=(cpu_open - cpu_before) / max(opened_ok, 1),
        cpu_per_delivery=(cpu_seconds(target.pid) - cpu_open) / max(delivered, 1),
        opening=(started_at, streaming_at),
        streaming=(streaming_at, time.time()),
    )


# --- the run ---------------------------------------------------------------------


async def new_generations(
    db: AsyncConnectionPool[Any], owners: list[User], count: int
) -> dict[str, User]:
    """``count`` queued generation rows (no workflow), spread over ``owners``."""
    made: dict[str, User] = {}
    async with db.connection() as conn:
        for index in range(count):
            owner = owners[index % len(owners)]
            generation_id = uuid.uuid4()
            await records.insert_generation(
                conn,
                generation_id=generation_id,
                user_id=uuid.UUID(owner.id),
                prompt="a benchmark",
                photo_key=f"bench/{generation_id}.png",
                idempotency_key=None,
            )
            made[str(generation_id)] = owner
    return made


@dataclass
class Row:
    label: str
    ours: Measured
    bare: Measured


async def run(cfg: supervisor.StackConfig, api_pid: int, args: argparse.Namespace) -> None:
    bare_port = supervisor.free_port()
    bare_url = f"http://127.0.0.1:{bare_port}"
    bare_app = supervisor.Managed(
        "bare-sse",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare_sse:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        ready=lambda: supervisor.http_ok(bare_url + "/livez"),
        env={"REDIS_URL": cfg.redis_url},
        log_path=cfg.data_dir / "logs" / "bare-sse.log",
    )
    db = open_pool(cfg.database_url, max_size=10)
    await db.open(wait=True)
    redis = Redis.from_url(cfg.redis_url)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    poller: multiprocessing.process.BaseProcess | None = None
    bare_app.start()
    try:
        async with httpx.AsyncClient(base_url=cfg.api_url, timeout=60.0) as http:
            owners = [await signup(http) for _ in range(args.generations)]
            watcher = await signup(http)
        poller = context.Process(
            target=poll_me,
            args=(cfg.api_url, watcher.token, args.me_interval, stop, send),
            daemon=True,
        )
        poller.start()

        def api_target(generations: dict[str, User]) -> Target:
            return Target(
                name="API",
                url=cfg.api_url,
                pid=api_pid,
                keys=list(generations),
                path=lambda key: f"/v1/generations/{key}/events",
                headers=lambda key: generations[key].headers,
                publish=lambda key, number, last: publish_event(db, redis, key, number, last=last),
            )

        def bare_target(count: int) -> Target:
            assert bare_app.process is not None
            return Target(
                name="bare",
                url=bare_url,
                pid=bare_app.process.pid,
                keys=[uuid.uuid4().hex for _ in range(count)],
                path=lambda key: f"/streams/{key}",
                headers=lambda key: {},
                publish=lambda key, number, last: publish_bare(redis, key, number, last=last),
            )

        async def both(count: int, streams: int, events: int) -> tuple[Measured, Measured]:
            timing = (args.interval, args.open_timeout, args.drain_timeout)
            ours = await measure(
                api_target(await new_generations(db, owners, count)), streams, events, *timing
            )
            bare = await measure(bare_target(count), streams, events, *timing)
            return ours, bare

        await both(1, min(4, args.streams), 2)  # warm up both servers' code paths
        idle_from = time.time()
        await asyncio.sleep(3.0)
        idle = (idle_from, time.time())
        rows = []
        cases = [args.generations] + ([1] if args.single and args.generations > 1 else [])
        for count in cases:
            label = f"{args.streams} streams over {count} generation{'s' * (count > 1)}"
            print(f"measuring {label} ...", flush=True)
            ours, bare = await both(count, args.streams, args.events)
            rows.append(Row(label, ours, bare))
        stop.set()
        samples: list[tuple[float, float, int]] = await asyncio.to_thread(receive.recv)
    finally:
        stop.set()
        if poller is not None:
            poller.join(timeout=35)
            if poller.is_alive():
                poller.terminate()
        bare_app.stop()
        await redis.aclose()
        await db.close()
    report(rows, samples, idle, args)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def _ratio(ours: float, bare: float) -> str:
    if math.isnan(ours) or math.isnan(bare) or bare <= 0:
        return "-"
    return f"{ours / bare:.2f}x"


def report(
    rows: list[Row],
    samples: list[tuple[float, float, int]],
    idle: tuple[float, float],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nSSE fan-out: one API process vs a bare sse-starlette app, {args.events} events"
        f" per stream (one per generation every {args.interval:g} s)\n"
    )

    def me(window: tuple[float, float]) -> tuple[list[float], Counter[int]]:
        inside = [(s, status) for at, s, status in samples if window[0] <= at <= window[1]]
        return [s for s, _ in inside], Counter(status for _, status in inside)

    for row in rows:
        ours, bare = row.ours, row.bare
        expected = ours.streams * args.events
        print(f"{row.label}")
        print(f"  {'':<30} {'API':>14} {'bare':>14} {'ratio':>8}")
        lines = [
            (
                "streams open (200)",
                f"{ours.opened}/{ours.streams}",
                f"{bare.opened}/{bare.streams}",
            ),
            ("time to open them all", f"{ours.open_seconds:.1f} s", f"{bare.open_seconds:.1f} s"),
            ("events delivered", f"{ours.delivered}/{expected}", f"{bare.delivered}/{expected}"),
        ]
        for label, a, b in lines:
            print(f"  {label:<30} {a:>14} {b:>14}")
        ratios = [
            ("latency p50", percentile(ours.latencies, 50), percentile(bare.latencies, 50)),
            ("latency p99", percentile(ours.latencies, 99), percentile(bare.latencies, 99)),
        ]
        for label, a_s, b_s in ratios:
            print(f"  {label:<30} {_ms(a_s):>14} {_ms(b_s):>14} {_ratio(a_s, b_s):>8}")
        a_kib, b_kib = ours.rss_per_stream / 1024, bare.rss_per_stream / 1024
        print(
            f"  {'memory per stream (RSS)':<30} {a_kib:>10.1f} KiB {b_kib:>10.1f} KiB"
            f" {_ratio(a_kib, b_kib):>8}"
        )
        for label, a_cpu, b_cpu in (
            ("server CPU per stream opened", ours.cpu_per_open, bare.cpu_per_open),
            ("server CPU per event delivered", ours.cpu_per_delivery, bare.cpu_per_delivery),
        ):
            print(
                f"  {label:<30} {a_cpu * 1e6:>11.0f} us {b_cpu * 1e6:>11.0f} us"
                f" {_ratio(a_cpu, b_cpu):>8}"
            )
        for name, side in (("API", ours), ("bare", bare)):
            problems = Counter(r.error for r in side.results if r.error)
            short = sum(
                1 for r in side.results if r.error is None and len(r.latencies) < args.events
            )
            if problems or short:
                detail = ", ".join(f"{n}x {e}" for e, n in problems.most_common())
                print(f"  {name} problems: {detail or 'none'}; {short} streams missed events")
        for name, side in (("API", ours), ("bare", bare)):
            for phase, window in (("opens", side.opening), ("streams", side.streaming)):
                during = f"while the {name} {phase}"
                print(f"  GET /v1/me {during:<23} {_me_line(*me(window))}")
    print(f"GET /v1/me with no streams open:  {_me_line(*me(idle))}")
    print(
        f"\ntargets: latency and memory within 1.5x of the bare app; GET /v1/me p99 under"
        f" {ME_TARGET_P99 * 1000:.0f} ms while the streams are open\n(opening them is a"
        " burst of authenticated requests). Memory per stream is the server's RSS growth\nover"
        " the open streams (the first case is the telling one: RSS does not shrink afterwards)."
    )


def _me_line(latencies: list[float], statuses: Counter[int]) -> str:
    answers = ", ".join(
        f"{n} x {'error' if status == 0 else status}" for status, n in sorted(statuses.items())
    )
    return f"p50 {_ms(percentile(latencies, 50))}, p99 {_ms(percentile(latencies, 99))} ({answers})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20, help="events per stream")
    parser.add_argument("--generations", type=int, default=10, help="the streams spread over")
    parser.add_argument(
        "--no-single", dest="single", action="store_false", help="skip the one-generation case"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between events")
    parser.add_argument("--me-interval", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--open-timeout", type=float, default=90.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()
    # Each stream is a socket here and one in the server (and maybe one to Redis).
    limit = raise_open_files_limit(3 * args.streams + 1024)
    if limit < 2 * args.streams + 256:
        parser.error(f"the open-files limit ({limit}) is too low for {args.streams} streams")
    with running_stack(env=ENV, replay=True) as (cfg, started):
        api = next(service for service in started if service.name == "api")
        assert api.process is not None
        uvloop.run(run(cfg, api.process.pid, args))


if __name__ == "__main__":
    main()
