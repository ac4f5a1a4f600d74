"""What the benchmarks share: a private local stack, a timed generation, a summary."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from api.client import Event, User
from infra import services


@contextlib.contextmanager
def local_stack(
    *, env: dict[str, str], replay: bool, model_workers: int = 2
) -> Iterator[services.StackConfig]:
    """Every part of the service on free ports in a temporary folder, as the tests run it."""
    with tempfile.TemporaryDirectory(prefix="bitbuddies-bench-") as tmp:
        cfg = services.StackConfig.throwaway(
            Path(tmp),
            env={"BITBUDDIES_LOG_LEVEL": "WARNING", **env},
            model_workers=model_workers,
            replay=replay,
        )
        with services.running(cfg):
            yield cfg


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

    raw = (resources.files("skimage") / "data" / "astronaut.png").read_bytes()
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
