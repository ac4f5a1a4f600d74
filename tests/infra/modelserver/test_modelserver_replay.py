"""``--replay`` (benchmarks only): every job after an app's first answers with its result."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from activities.providers.local import APPS
from infra.modelserver.server import create_app
from tests.infra.modelserver.ms_helpers import data_uri
from tests.support.photos import photo
from workflows import contract

APP = APPS[contract.NSFW_FILTER.name]


async def _run(client: httpx.AsyncClient, image: str) -> dict[str, Any]:
    submitted = (await client.post(f"/{APP}", json={"image_url": image})).json()
    status_url = f"/{APP}/requests/{submitted['request_id']}/status"
    for _ in range(600):
        status = (await client.get(status_url, params={"logs": 1})).json()
        if status["status"] == "COMPLETED":
            break
        await asyncio.sleep(0.05)
    result = (await client.get(f"/{APP}/requests/{submitted['request_id']}")).json()
    return {"result": result, "logs": [line["message"] for line in status["logs"]]}


async def test_replay_answers_every_later_job_with_the_first_result(tmp_path: Path) -> None:
    app = create_app(tmp_path, "http://models.test", workers=1, replay=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://models.test") as client:
        first = await _run(client, data_uri(photo("astronaut.png")))
        # a different photo: a real run would score it differently
        second = await _run(client, data_uri(photo("coffee.png")))
        records = (await client.get("/_local/requests")).json()
    assert second["result"] == first["result"]
    assert any("replaying" in line for line in second["logs"])
    assert not any("replaying" in line for line in first["logs"])
    assert [r["status"] for r in records] == ["COMPLETED", "COMPLETED"]
