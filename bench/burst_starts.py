"""A burst of generation starts: N ``POST /v1/generations`` within a short window, beside
as many bare workflow starts straight on Temporal, in one run.

The model server answers instantly (``--replay``) and the render is tiny, so the burst
measures the API (upload, charge, workflow start) and then the stack draining the work.
The requests are spread evenly over the window and over several users with tokens to
spare. Every accepted generation is polled (``GET /v1/generations/{id}``) until it ends.
The baseline starts as many bare workflows (bench/bare.py, as many no-op activities as a
generation schedules) over the same window and waits for them all.

    .venv/bin/python -m bench.burst_starts [--starts 200] [--window 1.0] [--users 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from bench.bare import TASK_QUEUE, BareWorkflow
from bench.harness import bare_worker, local_stack, percentile, sample_photo, timed_generation
from infra import supervisor
from tests.support.client import User, signup
from workflows.contract import TERMINAL_STATUSES

ENV = {
    "BITBUDDIES_RENDER_SIZE": "256",
    "BITBUDDIES_ANIMATION_FPS": "8",
    "BITBUDDIES_ANIMATION_SECONDS": "1",
    "BITBUDDIES_MODEL_CONCURRENCY": "64",  # the burst, not a model queue, is measured
    "BITBUDDIES_SIGNUP_TOKENS": "100000",
}
POLL_SECONDS = 1.0
POLL_CONCURRENCY = 16


@dataclass
class Burst:
    """What a burst of starts got back."""

    accepted: list[float] = field(default_factory=list)  # seconds to each acceptance
    refused: Counter[str] = field(default_factory=Counter)  # answer -> how many
    ids: list[str] = field(default_factory=list)
    seconds: float = 0.0  # from the first request sent to the last answer

    @property
    def rate(self) -> float:
        return len(self.accepted) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Drain:
    finished: Counter[str] = field(default_factory=Counter)  # terminal status -> how many
    unfinished: int = 0
    seconds: float = 0.0  # from the first request sent until the last one ended


async def burst(
    starts: int, window: float, once: Callable[[int], Awaitable[str | None]], result: Burst
) -> float:
    """Call ``once(i)`` for i in 0..starts-1, evenly over ``window`` seconds. ``once``
    returns the accepted id, or None (having counted the refusal). Returns the moment
    (perf_counter) the first was sent."""
    loop_start = time.perf_counter()

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, loop_start + index * window / starts - time.perf_counter()))
        sent = time.perf_counter()
        accepted = await once(index)
        if accepted is not None:
            result.accepted.append(time.perf_counter() - sent)
            result.ids.append(accepted)

    await asyncio.gather(*(one(i) for i in range(starts)))
    result.seconds = time.perf_counter() - loop_start
    return loop_start


async def ours(
    http: httpx.AsyncClient, users: list[User], photo: bytes, args: argparse.Namespace
) -> tuple[Burst, Drain]:
    result = Burst()
    owners: dict[str, User] = {}

    async def once(index: int) -> str | None:
        user = users[index % len(users)]
        try:
            response = await user.generate(photo, idempotency_key=f"burst-{uuid.uuid4()}")
        except httpx.HTTPError as err:
            result.refused[type(err).__name__] += 1
            return None
        if response.status_code != 202:
            result.refused[f"HTTP {response.status_code}"] += 1
            return None
        generation_id = str(response.json()["id"])
        owners[generation_id] = user
        return generation_id

    started = await burst(args.starts, args.window, once, result)
    return result, await poll_until_terminal(http, owners, started, args.drain_timeout)


async def poll_until_terminal(
    http: httpx.AsyncClient, owners: dict[str, User], started: float, give_up_after: float
) -> Drain:
    """Poll each generation (as its owner) until it ends, for at most ``give_up_after`` seconds."""
    drain = Drain()
    gate = asyncio.Semaphore(POLL_CONCURRENCY)

    async def status_of(generation_id: str) -> str | None:
        async with gate:
            try:
                found = await owners[generation_id].generation(generation_id)
            except httpx.HTTPError:
                return None  # asked again next round
            return str(found["status"])

    waiting = sorted(owners)
    deadline = time.perf_counter() + give_up_after
    while waiting and time.perf_counter() < deadline:
        round_start = time.perf_counter()
        statuses = await asyncio.gather(*(status_of(g) for g in waiting))
        still = []
        for generation_id, status in zip(waiting, statuses, strict=True):
            if status in TERMINAL_STATUSES:
                drain.finished[status] += 1
                drain.seconds = time.perf_counter() - started
            else:
                still.append(generation_id)
        waiting = still
        if waiting:
            await asyncio.sleep(max(0.0, POLL_SECONDS - (time.perf_counter() - round_start)))
    drain.unfinished = len(waiting)
    return drain


async def bare(client: Client, activities: int, args: argparse.Namespace) -> tuple[Burst, Drain]:
    result = Burst()
    handles: list[WorkflowHandle[BareWorkflow, int]] = []

    async def once(_index: int) -> str | None:
        try:
            handle = await client.start_workflow(
                BareWorkflow.run, activities, id=f"bare-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
        except RPCError as err:
            result.refused[err.status.name] += 1
            return None
        handles.append(handle)
        return handle.id

    started = await burst(args.starts, args.window, once, result)
    drain = Drain()
    try:
        async with asyncio.timeout(args.drain_timeout):
            for finished in asyncio.as_completed([h.result() for h in handles]):
                try:
                    await finished
                    drain.finished["completed"] += 1
                except Exception:
                    drain.finished["failed"] += 1
                drain.seconds = time.perf_counter() - started
    except TimeoutError:
        pass
    drain.unfinished = len(handles) - sum(drain.finished.values())
    return result, drain


async def run(cfg: supervisor.StackConfig, args: argparse.Namespace) -> None:
    photo = sample_photo(args.photo_size)
    client = await Client.connect(cfg.temporal_address)
    limits = httpx.Limits(max_connections=args.starts + 32, max_keepalive_connections=args.starts)
    async with httpx.AsyncClient(base_url=cfg.api_url, timeout=120.0, limits=limits) as http:
        users = [await signup(http) for _ in range(args.users)]
        # The first generation runs the real models once; from then on they are replays.
        first = await timed_generation(users[0], photo)
        await timed_generation(users[0], photo)
        history = await client.get_workflow_handle(first.generation_id).fetch_history()
        scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        activities = sum(1 for e in history.events if e.event_type == scheduled)
        worker = bare_worker(cfg)
        worker.start()
        try:
            await client.execute_workflow(
                BareWorkflow.run, activities, id=f"bare-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
            print(f"bare burst: {args.starts} workflow starts ...", flush=True)
            bare_burst, bare_drain = await bare(client, activities, args)
        finally:
            worker.stop()
        print(f"pipeline burst: {args.starts} generation starts ...", flush=True)
        our_burst, our_drain = await ours(http, users, photo, args)
    report(args, activities, our_burst, our_drain, bare_burst, bare_drain)


def report(
    args: argparse.Namespace,
    activities: int,
    our_burst: Burst,
    our_drain: Drain,
    bare_burst: Burst,
    bare_drain: Drain,
) -> None:
    print(
        f"\n{args.starts} starts within {args.window:g} s across {args.users} users"
        f" (models answering instantly), beside as many bare workflows of {activities}"
        f" no-op activities\n"
    )
    print(f"{'':<34} {'pipeline':>12} {'bare':>12} {'ratio':>8}")

    def row(label: str, a: str, b: str, ratio: str = "") -> None:
        print(f"{label:<34} {a:>12} {b:>12} {ratio:>8}")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 and not (math.isnan(a) or math.isnan(b)) else "-"

    row(
        "accepted",
        f"{len(our_burst.accepted)}/{args.starts}",
        f"{len(bare_burst.accepted)}/{args.starts}",
    )
    for label, a_s, b_s in (
        (
            "time to accept p50",
            percentile(our_burst.accepted, 50),
            percentile(bare_burst.accepted, 50),
        ),
        (
            "time to accept p99",
            percentile(our_burst.accepted, 99),
            percentile(bare_burst.accepted, 99),
        ),
    ):
        row(label, f"{a_s * 1000:.0f} ms", f"{b_s * 1000:.0f} ms", ratio(a_s, b_s))
    row(
        "accepted per second of burst",
        f"{our_burst.rate:.0f}",
        f"{bare_burst.rate:.0f}",
        ratio(bare_burst.rate, our_burst.rate),
    )
    row(
        "completed / failed",
        f"{our_drain.finished['completed']} / {our_drain.finished['failed']}",
        f"{bare_drain.finished['completed']} / {bare_drain.finished['failed']}",
    )
    row(
        "all ended after (from first start)",
        f"{our_drain.seconds:.1f} s",
        f"{bare_drain.seconds:.1f} s",
        ratio(our_drain.seconds, bare_drain.seconds),
    )
    for name, result, drain in (
        ("pipeline", our_burst, our_drain),
        ("bare", bare_burst, bare_drain),
    ):
        if result.refused:
            refusals = ", ".join(f"{n} x {why}" for why, n in result.refused.most_common())
            print(f"{name} refused: {refusals}")
        others = {k: n for k, n in drain.finished.items() if k not in ("completed", "failed")}
        if others or drain.unfinished:
            print(f"{name}: {others or ''} {drain.unfinished} not ended after the drain timeout")
    print(
        f"\n'time to accept' is the 202 (the photo stored, the token charged, the workflow"
        f" started) or Temporal's start acknowledgement;\nthe ratio of rates is bare /"
        f" pipeline. Generations are polled every {POLL_SECONDS:g} s, so their end is known"
        f" to within that."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--window", type=float, default=1.0, help="seconds the starts spread over")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--photo-size", type=int, default=128, help="pixels a side")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="start the API with BITBUDDIES_RATE_LIMITS=off (default: its own limits)",
    )
    args = parser.parse_args()
    env = {**ENV, **({"BITBUDDIES_RATE_LIMITS": "off"} if args.no_rate_limits else {})}
    with local_stack(env=env, replay=True, model_workers=8) as cfg:
        asyncio.run(run(cfg, args))


if __name__ == "__main__":
    main()
