"""Deploys stop processes (SIGTERM) while people watch their generations.

An API process's open event streams end at once with a last word asking the client to
reconnect (``retry:``), the process exits without waiting out a timeout on streams that
never end by themselves, and the client, reconnecting to another API process with
``Last-Event-ID``, gets every remaining event exactly once.

A worker hands back a poll at once (the provider job goes on; the poll's next attempt
runs on the next worker), instead of holding the deploy for its graceful period, and the
generation completes with each step submitted once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from activities.providers.local import APPS
from infra import supervisor
from tests.conftest import Stack
from tests.support.client import signup
from tests.support.faults import job_running
from tests.support.photos import photo
from tests.support.steps import STEP_APPS
from workflows.contract import ANIMATE


@pytest.fixture
def second_api(stack: Stack) -> Iterator[tuple[supervisor.Managed, str]]:
    """Another API process of the stack, as a second replica behind a load balancer."""
    port = supervisor.free_port()
    cfg = dataclasses.replace(stack.cfg, ports=dataclasses.replace(stack.cfg.ports, api=port))
    api = supervisor.api(cfg)
    api.name = "second-api"
    api.log_path = stack.cfg.data_dir / "logs" / "second-api.log"
    api.start()
    try:
        yield api, f"http://127.0.0.1:{port}"
    finally:
        api.stop()


async def test_a_stopping_api_process_asks_its_streams_to_reconnect_and_loses_no_event(
    stack: Stack,
    http: httpx.AsyncClient,
    models: httpx.AsyncClient,
    second_api: tuple[supervisor.Managed, str],
) -> None:
    api, url = second_api
    user = await signup(http)
    slow = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 1, "seconds": 8}
    (await models.post("/_local/faults", json=slow)).raise_for_status()
    started = await user.generate(photo("astronaut.png"))
    assert started.status_code == 202, started.text
    generation_id = started.json()["id"]

    lines: list[str] = []
    ids: list[int] = []
    stopping: asyncio.Task[None] | None = None
    stopped_at = 0.0
    async with (
        asyncio.timeout(60),
        httpx.AsyncClient(base_url=url, timeout=60) as replica,
        replica.stream(
            "GET", f"/v1/generations/{generation_id}/events", headers=user.headers
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line.rstrip("\r"))
            if line.startswith("id:"):
                ids.append(int(line.removeprefix("id:").strip()))
            if stopping is None and len(ids) >= 2:
                stopped_at = time.monotonic()
                stopping = asyncio.create_task(asyncio.to_thread(api.stop))
    ended_after = time.monotonic() - stopped_at
    assert stopping is not None, "the stream ended before two events came"
    await stopping
    stop_took = time.monotonic() - stopped_at

    # The stream ended with the word to reconnect, promptly, before the generation did.
    assert "retry: 1000" in lines and ": reconnect" in lines, lines[-6:]
    assert not any(line.startswith("event: completed") for line in lines)
    assert ended_after < 5, ended_after
    assert stop_took < 8, stop_took

    # The client reconnects, here to the other API process, from its last event id.
    async with asyncio.timeout(120):
        rest = await user.watch(generation_id, last_event_id=ids[-1])
    assert [e.id for e in rest] == list(range(ids[-1] + 1, ids[-1] + 1 + len(rest)))
    assert rest[-1].event == "completed"


async def test_a_stopping_worker_hands_back_its_poll_at_once_and_the_generation_goes_on(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    # An interactive worker that polls (provider webhooks off): the poll is what a stop must not
    # wait for. Its graceful period is 20 s; the supervisor kills what is not gone in 15.
    polling_cfg = dataclasses.replace(
        stack.cfg, extra_env={**stack.cfg.extra_env, "BITBUDDIES_PROVIDER_WEBHOOKS": "false"}
    )
    stack.worker.stop()
    polling = supervisor.worker(polling_cfg, "interactive")
    polling.start()
    try:
        user = await signup(http)
        slow = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 1, "seconds": 14}
        (await models.post("/_local/faults", json=slow)).raise_for_status()
        started = await user.generate(photo("astronaut.png"))
        assert started.status_code == 202, started.text
        generation_id = started.json()["id"]

        async with asyncio.timeout(60):
            while not await job_running(models, APPS[ANIMATE.name], generation_id):
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # the poll waits between two looks
        stopped_at = time.monotonic()
        await asyncio.to_thread(polling.stop)
        stop_took = time.monotonic() - stopped_at
    finally:
        polling.stop()
        stack.worker = supervisor.worker(stack.cfg, "interactive")
        stack.worker.start()
    assert stop_took < 8, stop_took

    async with asyncio.timeout(120):
        events = await user.events(generation_id)
    assert events[-1].event == "completed", events[-1]
    requests = (await models.get("/_local/requests")).json()
    mine = Counter(r["app"] for r in requests if generation_id in str(r["arguments"]))
    steps = {e.data["step"] for e in events} & STEP_APPS.keys()
    assert mine == Counter(STEP_APPS[step] for step in steps)  # one submission a step
