"""Time per step of a generation on the local stack, with the real CPU models.

A 1024x1024 photo goes through the public API at the service's default render settings
(512 px, 24 fps, 5 s unless overridden). A step's time runs from its first event to the
next step's first event, as the user watching the stream sees it; "accept" is the HTTP
request itself (upload, validation, charge, workflow start).

    .venv/bin/python -m bench.pipeline_steps [--runs 3] [--photo-size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections import defaultdict

import httpx

from bench.harness import Timed, local_stack, sample_photo, timed_generation
from infra import supervisor
from infra.settings import Settings
from tests.support.client import signup


def step_times(timed: Timed) -> dict[str, float]:
    """Seconds per step: from a step's first event to the next step's (or the end)."""
    firsts: dict[str, float] = {}
    for at, event in timed.events:
        if event.event == "progress":
            firsts.setdefault(event.data["step"], at)
    steps = list(firsts.items())
    ends = [at for _, at in steps[1:]] + [timed.seconds]
    # "queued": from the 202 to the first event (the workflow's first task and submit)
    times = {"accept": timed.accepted, "queued": steps[0][1] - timed.accepted}
    for (name, at), end in zip(steps, ends, strict=True):
        times[name] = end - at
    return times


async def run(cfg: supervisor.StackConfig, runs: int, photo_size: int) -> None:
    photo = sample_photo(photo_size)
    per_step: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    async with httpx.AsyncClient(base_url=cfg.api_url, timeout=300.0) as http:
        user = await signup(http)
        await timed_generation(user, photo)  # warm-up: loads every model once
        for _ in range(runs):
            timed = await timed_generation(user, photo)
            totals.append(timed.seconds)
            for name, seconds in step_times(timed).items():
                per_step[name].append(seconds)

    settings = Settings()
    print(
        f"\nOne generation, {photo_size}x{photo_size} photo, render {settings.render_size} px"
        f" at {settings.animation_fps} fps for {settings.animation_seconds:g} s"
        f" (median of {runs} runs, after one warm-up)\n"
    )
    print(f"{'step':<15} {'median':>9} {'min':>9} {'max':>9}")
    order = ["accept", "queued", *(n for n in per_step if n not in ("accept", "queued"))]
    for name in order:
        values = per_step[name]
        print(
            f"{name:<15} {statistics.median(values) * 1000:>6.0f} ms"
            f" {min(values) * 1000:>6.0f} ms {max(values) * 1000:>6.0f} ms"
        )
    print(f"{'total':<15} {statistics.median(totals) * 1000:>6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--photo-size", type=int, default=1024)
    args = parser.parse_args()
    with local_stack(env={"BITBUDDIES_SIGNUP_TOKENS": "1000"}, replay=False) as cfg:
        asyncio.run(run(cfg, args.runs, args.photo_size))


if __name__ == "__main__":
    main()
