"""Orchestration overhead: BitBuddy generations beside a bare workflow, in one run.

The model server replays each model's first answer at once (``--replay``) and the render
is tiny; everything else is real: the API, the charge, PostgreSQL, Redis, SSE, permits,
storage, fal-client, Temporal and ffmpeg. The bare workflow runs on the same Temporal
server with as many no-op activities as one generation schedules (counted from its
history), so the ratio is what our code costs on top of Temporal itself.

    .venv/bin/python -m bench.pipeline_overhead [-n 20] [--concurrency 1 8] [--no-webhooks]

By default each job's end reaches the workflow through the model server's signed webhook
(no polling activity at all); ``--no-webhooks`` measures the polling path instead.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from bench import cpu
from bench.bare import TASK_QUEUE, BareWorkflow
from bench.harness import Summary, bare_worker, local_stack, sample_photo, timed_generation
from infra import supervisor
from tests.support.client import signup
from workflows import contract

ENV = {
    "BITBUDDIES_RENDER_SIZE": "256",
    "BITBUDDIES_ANIMATION_FPS": "8",
    "BITBUDDIES_ANIMATION_SECONDS": "1",
    "BITBUDDIES_MODEL_CONCURRENCY": "64",  # measure our overhead, not a queue
    "BITBUDDIES_SIGNUP_TOKENS": "100000",
    "BITBUDDIES_RATE_LIMITS": "off",  # one user starts them all, faster than 10 a minute
}
ROUNDS = 5  # the two sides alternate this many times per measurement


async def batch(
    once: Callable[[], Awaitable[float]], count: int, concurrency: int
) -> tuple[list[float], float, dict[str, float]]:
    """Run ``once`` count times, at most ``concurrency`` at a time.

    Returns the latencies, the wall time and the CPU each part of the stack used."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> float:
        async with gate:
            return await once()

    cpu_before = cpu.snapshot()
    start = time.perf_counter()
    latencies = await asyncio.gather(*(one() for _ in range(count)))
    wall = time.perf_counter() - start
    return list(latencies), wall, cpu.used_since(cpu_before)


@dataclass
class Side:
    """One side of the comparison: its latencies, wall time and CPU, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def summary(self) -> Summary:
        return Summary.of(self.latencies, self.wall)


async def measure_side_by_side(
    ours: Callable[[], Awaitable[float]],
    bare: Callable[[], Awaitable[float]],
    n: int,
    concurrency: int,
    rounds: int,
) -> tuple[Side, Side]:
    """n runs of each, at most ``concurrency`` at a time, in alternating rounds.

    Alternating (ours, bare, ours, bare...) rather than all of one then all of the other
    means a slow minute on a shared machine slows both sides, not just one.
    """
    sides = {"ours": (ours, Side()), "bare": (bare, Side())}
    for index in range(rounds):
        count = n // rounds + (1 if index < n % rounds else 0)
        for once, side in sides.values():
            latencies, wall, used = await batch(once, count, concurrency)
            side.latencies += latencies
            side.wall += wall
            for part, seconds in used.items():
                side.cpu[part] += seconds
    return sides["ours"][1], sides["bare"][1]


def _transcode_seconds(history: WorkflowHistory) -> float:
    """How long the transcode activity ran (started to completed) in one generation."""
    scheduled: dict[int, str] = {}
    started: dict[int, float] = {}
    for event in history.events:
        when = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[event.activity_task_started_event_attributes.scheduled_event_id] = when
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled_id = event.activity_task_completed_event_attributes.scheduled_event_id
            if scheduled.get(scheduled_id) == contract.TRANSCODE:
                return when - started[scheduled_id]
    raise RuntimeError("no completed transcode activity in this history")


async def run(cfg: supervisor.StackConfig, n: int, concurrencies: list[int]) -> None:
    photo = sample_photo()
    client = await Client.connect(cfg.temporal_address)
    async with httpx.AsyncClient(base_url=cfg.api_url, timeout=120.0) as http:
        user = await signup(http)
        # The first generation runs the real models once; from then on they are replays.
        first = await timed_generation(user, photo)
        await timed_generation(user, photo)
        history = await client.get_workflow_handle(first.generation_id).fetch_history()
        scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        activities = sum(1 for e in history.events if e.event_type == scheduled)
        runs: list[tuple[str, float]] = []  # (generation id, latency)

        async def pipeline_once() -> float:
            timed = await timed_generation(user, photo)
            runs.append((timed.generation_id, timed.seconds))
            return timed.seconds

        async def minus_transcode() -> list[float]:
            """Each run's latency less its transcode activity's time, read from its
            history once the measurement is over (so the reads load nothing measured)."""
            result = []
            for generation_id, latency in runs:
                history = await client.get_workflow_handle(generation_id).fetch_history()
                result.append(latency - _transcode_seconds(history))
            return result

        async def bare_once() -> float:
            start = time.perf_counter()
            await client.execute_workflow(
                BareWorkflow.run, activities, id=f"bare-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
            return time.perf_counter() - start

        worker = bare_worker(cfg)
        worker.start()
        try:
            await bare_once()
            rows = []
            for concurrency in concurrencies:
                runs.clear()
                # Each round runs at least two full waves, so the concurrency is really reached.
                rounds = max(1, min(ROUNDS, n // (2 * concurrency)))
                ours, bare = await measure_side_by_side(
                    pipeline_once, bare_once, n, concurrency, rounds
                )
                minus_ffmpeg = await minus_transcode()
                rows.append((concurrency, ours, Summary.of(minus_ffmpeg, 1.0), bare))
        finally:
            worker.stop()

    print(
        f"\nBitBuddy pipeline vs a bare workflow of {activities} no-op activities"
        f" ({n} runs each, in alternating rounds; models answering instantly)\n"
    )
    print(f"{'':<34} {'median':>9} {'p95':>9} {'per s':>7}")
    for concurrency, ours_side, without, bare_side in rows:
        mine, theirs = ours_side.summary(), bare_side.summary()
        print(f"concurrency {concurrency}")
        print(_line("  pipeline", mine.median, mine.p95, f"{mine.per_second:7.2f}"))
        print(_line("  pipeline without ffmpeg", without.median, without.p95, ""))
        print(_line("  bare workflow", theirs.median, theirs.p95, f"{theirs.per_second:7.2f}"))
        print(
            f"  {'ratio, pipeline / bare':<32} {mine.median / theirs.median:>8.2f}x"
            f" {mine.p95 / theirs.p95:>8.2f}x {theirs.per_second / mine.per_second:>6.2f}x"
        )
        print(
            f"  {'ratio, without ffmpeg / bare':<32} {without.median / theirs.median:>8.2f}x"
            f" {without.p95 / theirs.p95:>8.2f}x"
        )
        if cpu.available():
            print("  CPU per generation (ms)          pipeline      bare")
            parts = sorted(set(ours_side.cpu) | set(bare_side.cpu), key=lambda p: -ours_side.cpu[p])
            for part in [*parts, "total"]:
                ours_ms, bare_ms = (
                    (sum(side.cpu.values()) if part == "total" else side.cpu[part])
                    * 1000
                    / len(side.latencies)
                    for side in (ours_side, bare_side)
                )
                print(f"    {part:<30} {ours_ms:>8.0f} {bare_ms:>9.0f}")
    print(
        "\n'without ffmpeg' subtracts each generation's transcode activity (VP9 + WebP + PNG"
        " encoding, work the bare workflow does not do).\ntarget: within 1.3x of the bare"
        " workflow"
    )


def _line(label: str, median: float, p95: float, rate: str) -> str:
    return f"{label:<34} {median * 1000:>6.0f} ms {p95 * 1000:>6.0f} ms {rate:>7}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20, help="generations per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--no-webhooks", action="store_true", help="poll each job instead of its webhook"
    )
    args = parser.parse_args()
    env = {**ENV, "BITBUDDIES_PROVIDER_WEBHOOKS": "false" if args.no_webhooks else "true"}
    print(f"provider webhooks: {'off (polling)' if args.no_webhooks else 'on'}")
    with local_stack(env=env, replay=True, model_workers=8) as cfg:
        asyncio.run(run(cfg, args.n, args.concurrency))


if __name__ == "__main__":
    main()
