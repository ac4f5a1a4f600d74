"""What the benchmarks share: a private local stack, a timed generation, a summary."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import supervisor
from tests.support.client import Event, User


@contextlib.contextmanager
def running_stack(
    *, env: dict[str, str], replay: bool, model_workers: int = 2
) -> Iterator[tuple[supervisor.StackConfig, list[supervisor.Managed]]]:
    """Every part of the service on free ports in a temporary folder, as the tests run it,
    with its running services (to find a process, e.g. the API's)."""
    with tempfile.TemporaryDirectory(prefix="bitbuddies-bench-") as tmp:
        cfg = supervisor.StackConfig.throwaway(
            Path(tmp),
            env={"BITBUDDIES_LOG_LEVEL": "WARNING", **env},
            model_workers=model_workers,
            replay=replay,
        )
        with supervisor.running(cfg) as started:
            yield cfg, started


@contextlib.contextmanager
def local_stack(
    *, env: dict[str, str], replay: bool, model_workers: int = 2
) -> Iterator[supervisor.StackConfig]:
    """As ``running_stack``, for callers that need only the configuration."""
    with running_stack(env=env, replay=replay, model_workers=model_workers) as (cfg, _):
        yield cfg


def bare_worker(cfg: supervisor.StackConfig) -> supervisor.Managed:
    """The baseline's worker (bench/bare.py) on the stack's Temporal server, not started."""
    ready = cfg.data_dir / "run" / "bare.ready"
    return supervisor.Managed(
        "bare-worker",
        [
            sys.executable,
            "-m",
            "bench.bare",
            "--temporal-address",
            cfg.temporal_address,
            "--ready-file",
            str(ready),
        ],
        ready=ready.exists,
        log_path=cfg.data_dir / "logs" / "bare-worker.log",
    )


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (NaN when there are no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) one process has used so far, from /proc (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (capped by the hard
    limit); the stack's processes, started afterwards, inherit it. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class Timed:
    generation_id: str
    accepted: float  # seconds until the API answered 202 (upload, charge, workflow start)
    seconds: float  # until the terminal event arrived
    events: list[tuple[float, Event]]  # (seconds since the request was sent, event)


async def timed_generation(user: User, photo: bytes) -> Timed:
    """POST a photo and follow its event stream to the end, timing every event."""
    start = time.perf_counter()
    response = await user.generate(photo)
    response.raise_for_status()
    generation_id = response.json()["id"]
    accepted = time.perf_counter() - start
    events = [(time.perf_counter() - start, event) async for event in user.follow(generation_id)]
    if not events or events[-1][1].event != "completed":
        raise RuntimeError(f"generation {generation_id} did not complete: {events[-1:]}")
    return Timed(generation_id, accepted, time.perf_counter() - start, events)


@dataclass(frozen=True)
class Summary:
    median: float
    p95: float
    per_second: float

    @classmethod
    def of(cls, latencies: list[float], wall_seconds: float) -> Summary:
        ordered = sorted(latencies)
        p95 = statistics.quantiles(ordered, n=20, method="inclusive")[-1]
        return cls(statistics.median(ordered), p95, len(ordered) / wall_seconds)


def sample_photo(size: int | None = None) -> bytes:
    """A public-domain portrait shipped in scikit-image's wheel, optionally resized."""
    import cv2
    import numpy as np

    from tests.support.photos import photo

    raw = photo("astronaut.png")
    if size is None:
        return raw
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError("could not decode the test photo")
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".png", resized)
    if not ok:
        raise RuntimeError("could not encode the test photo")
    return encoded.tobytes()
