"""A killed server resumes its queue: queued and running jobs run again under the same
request ids, finished ones still answer. Its own server process, killed for real."""

from __future__ import annotations

from pathlib import Path

import fal_client
import httpx

from activities.providers.local import APPS
from infra.falclient import make_fal_client
from infra.supervisor import free_port
from tests.infra.modelserver.ms_helpers import add_fault, spawn, stop, wait_for
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]


async def test_a_server_killed_mid_queue_resumes_every_job_after_restart(
    tmp_path: Path, astronaut_uri: str
) -> None:
    port = free_port()
    proc, server = spawn(tmp_path, port)
    try:
        fal = make_fal_client(fal_key=None, model_server_url=server.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as local:
            done = await fal.submit(NSFW, {"image_url": astronaut_uri})
            finished = await done.get(interval=0.02)
            # Two workers: two jobs run (slowly), two wait in line.
            await add_fault(local, NSFW, "delay", times=4, seconds=3)
            handles = [await fal.submit(NSFW, {"image_url": astronaut_uri}) for _ in range(4)]
            await wait_for(handles[0], fal_client.InProgress)
            states = {
                r["request_id"]: r["status"] for r in (await local.get("/_local/requests")).json()
            }
            assert sorted(states[h.request_id] for h in handles) == [
                "IN_PROGRESS",
                "IN_PROGRESS",
                "IN_QUEUE",
                "IN_QUEUE",
            ]

            proc.kill()  # SIGKILL: nothing is saved on the way down
            proc.wait()
            proc, server = spawn(tmp_path, port)

            # The finished job still answers, with the same result.
            assert isinstance(await done.status(), fal_client.Completed)
            assert await done.get() == finished
            # Every unfinished job runs again under its request id and completes.
            for handle in handles:
                result = await handle.get(interval=0.05)
                assert "nsfw_probability" in result
            records = (await local.get("/_local/requests")).json()
            by_id = {r["request_id"]: r for r in records}
            assert by_id[done.request_id]["resumed"] == 0
            assert [by_id[h.request_id]["resumed"] for h in handles] == [1, 1, 1, 1]
            assert all(by_id[h.request_id]["status"] == "COMPLETED" for h in handles)
            assert len(records) == 5  # nothing was submitted twice
            stats = (await local.get("/_local/stats")).json()[NSFW]
            assert stats["submitted"] == 5 and stats["completed"] == 5
            assert stats["in_flight"] == 0
    finally:
        stop(proc)


async def test_a_reset_before_a_restart_stays_reset(tmp_path: Path, astronaut_uri: str) -> None:
    proc, server = spawn(tmp_path, free_port())
    port = int(server.url.rsplit(":", 1)[1])
    try:
        fal = make_fal_client(fal_key=None, model_server_url=server.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as local:
            handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
            await handle.get(interval=0.02)
            (await local.post("/_local/reset")).raise_for_status()
            stop(proc)
            proc, server = spawn(tmp_path, port)
            assert (await local.get("/_local/requests")).json() == []
            assert isinstance(await handle.status(), fal_client.Completed)  # still answers
    finally:
        stop(proc)
