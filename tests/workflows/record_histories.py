"""Record the histories that tests/workflows/test_replay.py replays.

Starts the real local stack exactly as the test session does (tests/conftest.py's
``stack`` fixture: ``StackConfig.throwaway`` with ``TEST_ENV``, then
``supervisor.running``), runs one generation per scenario through the public HTTP API,
waits for each workflow to close, and writes its history (``history.to_json()``) to
``tests/workflows/histories/<scenario>.json``.

Run it again whenever a change to workflows/bitbuddy.py is *meant* to be compatible with
runs in flight, and keep the old files too (rename them) so old runs stay covered:

    .venv/bin/python -m tests.workflows.record_histories --data-dir /tmp/bb-record
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from temporalio.client import Client, WorkflowFailureError

from activities.providers.local import APPS
from infra import supervisor
from tests.conftest import TEST_ENV
from tests.support.client import Event, User, signup
from tests.support.paths import FIXTURES, REPO
from tests.support.photos import photo
from workflows import contract

HISTORIES = Path(__file__).parent / "histories"
# Worker identities name the recording machine ("<pid>@<host>", also the prefix of each
# worker's sticky task queue); replay never reads them.
_IDENTITY = re.compile(r'"identity": "([^"]+)"')


def scrubbed(text: str) -> str:
    """A history with nothing of the recording machine in it: the stack traces of
    failures name files relative to the repository or to site-packages, identities are
    neutral. Replay compares commands, not these."""
    for site in sorted({p for p in sys.path if p.endswith("site-packages")}, key=len, reverse=True):
        text = text.replace(site.rstrip("/") + "/", "site-packages/")
    text = text.replace(str(REPO) + "/", "")
    for identity in set(_IDENTITY.findall(text)):
        text = text.replace(f'"{identity}"', '"recorder"').replace(f'"{identity}-', '"recorder-')
    return text


SCENARIOS = ("completed", "nsfw_refused", "cancelled", "transient_resubmit", "webhook_lost")
ANIMATE = APPS[contract.ANIMATE.name]
ANALYZE = APPS[contract.ANALYZE.name]
SEGMENT_IMAGE = APPS[contract.SEGMENT_IMAGE.name]


async def _wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        await asyncio.sleep(0.1)


async def _fault(
    models: httpx.AsyncClient, app: str, kind: str, times: int, seconds: float = 0
) -> None:
    body = {"app": app, "kind": kind, "times": times, "seconds": seconds}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def _statuses(models: httpx.AsyncClient, app: str) -> list[str]:
    requests = (await models.get("/_local/requests")).json()
    return [r["status"] for r in requests if r["app"] == app]


async def _run(user: User, generation_id: str) -> list[Event]:
    return await asyncio.wait_for(user.events(generation_id), 180)


async def completed(http: httpx.AsyncClient, models: httpx.AsyncClient, temporal: Client) -> str:
    user = await signup(http)
    generation_id = str((await user.generate(photo("astronaut.png"))).json()["id"])
    events = await _run(user, generation_id)
    assert events[-1].event == "completed", events[-1]
    return generation_id


async def nsfw_refused(http: httpx.AsyncClient, models: httpx.AsyncClient, temporal: Client) -> str:
    user = await signup(http)
    probe = (FIXTURES / "nsfw_probe.png").read_bytes()
    generation_id = str((await user.generate(probe)).json()["id"])
    events = await _run(user, generation_id)
    assert events[-1].data["error_code"] == "nsfw", events[-1]
    return generation_id


async def cancelled(http: httpx.AsyncClient, models: httpx.AsyncClient, temporal: Client) -> str:
    # As tests/e2e/test_resilience.py's _start_slow_generation: animate runs for a while.
    await _fault(models, ANIMATE, "delay", times=1, seconds=15)
    user = await signup(http)
    generation_id = str((await user.generate(photo("astronaut.png"))).json()["id"])

    async def animating() -> bool:
        return "IN_PROGRESS" in await _statuses(models, ANIMATE)

    await _wait_for(animating)
    await temporal.get_workflow_handle(generation_id).cancel()
    events = await _run(user, generation_id)
    assert events[-1].data["status"] == "cancelled", events[-1]
    return generation_id


async def transient_resubmit(
    http: httpx.AsyncClient, models: httpx.AsyncClient, temporal: Client
) -> str:
    # As tests/e2e/test_transient_faults.py: analyze cannot download its input, once.
    await _fault(models, ANALYZE, "download_error", times=1)
    user = await signup(http)
    generation_id = str((await user.generate(photo("astronaut.png"))).json()["id"])
    events = await _run(user, generation_id)
    assert events[-1].event == "completed", events[-1]
    assert any("trying again" in e.data.get("message", "") for e in events), events
    return generation_id


async def webhook_lost(http: httpx.AsyncClient, models: httpx.AsyncClient, temporal: Client) -> str:
    # As tests/e2e/test_provider_webhooks.py: one job's webhook never comes, so the
    # workflow checks the job itself after the period.
    await _fault(models, SEGMENT_IMAGE, "drop_webhook", times=1)
    user = await signup(http)
    generation_id = str((await user.generate(photo("astronaut.png"))).json()["id"])
    events = await _run(user, generation_id)
    assert events[-1].event == "completed", events[-1]
    return generation_id


RECORDERS = {
    "completed": completed,
    "nsfw_refused": nsfw_refused,
    "cancelled": cancelled,
    "transient_resubmit": transient_resubmit,
    "webhook_lost": webhook_lost,
}


async def record(cfg: supervisor.StackConfig, scenarios: list[str], out: Path) -> None:
    temporal = await Client.connect(cfg.temporal_address)
    out.mkdir(parents=True, exist_ok=True)
    async with (
        httpx.AsyncClient(base_url=cfg.api_url, timeout=60.0) as http,
        httpx.AsyncClient(base_url=cfg.model_server_url, timeout=30.0) as models,
    ):
        for name in scenarios:
            (await models.post("/_local/reset")).raise_for_status()
            started = time.monotonic()
            generation_id = await RECORDERS[name](http, models, temporal)
            handle = temporal.get_workflow_handle(generation_id)
            # The terminal event is written by an activity before the workflow closes:
            # wait for the close, so the history is whole (refused or cancelled: closed all
            # the same).
            with contextlib.suppress(WorkflowFailureError):
                await asyncio.wait_for(handle.result(), 120)
            history = await handle.fetch_history()
            path = out / f"{name}.json"
            text = scrubbed(history.to_json())
            json.loads(text)  # well-formed
            path.write_text(text + "\n")
            print(
                f"{name}: workflow {generation_id}, {len(history.events)} events,"
                f" {path.stat().st_size} bytes, {time.monotonic() - started:.1f}s -> {path}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--out", type=Path, default=HISTORIES)
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (all)")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bb-record-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = supervisor.StackConfig.throwaway(data_dir, env=TEST_ENV)
    for key, value in {**cfg.app_env(), **TEST_ENV}.items():
        os.environ[key] = value  # as tests/conftest.py: in-process helpers read the same
    print(f"starting the stack in {data_dir}")
    with supervisor.running(cfg):
        asyncio.run(record(cfg, list(args.scenarios) or list(SCENARIOS), args.out))
    # Processes using the Temporal SDK sometimes crash at interpreter exit (sdk-python#300).
    os._exit(0)


if __name__ == "__main__":
    main()
