"""The server speaks fal's queue protocol as fal_client uses it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fal_client
import httpx
import pytest

from activities.providers.local import APPS
from tests.infra.modelserver.ms_helpers import ModelServer, add_fault, wait_for
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]
ANALYZE = APPS[contract.ANALYZE.name]


async def test_healthz(local: httpx.AsyncClient) -> None:
    response = await local.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_submit_returns_absolute_urls_under_the_public_url(
    fal: fal_client.AsyncClient, model_server: ModelServer, astronaut_uri: str
) -> None:
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    base = f"{model_server.url}/{NSFW}/requests/{handle.request_id}"
    assert handle.response_url == base
    assert handle.status_url == f"{base}/status"
    assert handle.cancel_url == f"{base}/cancel"
    await handle.get(interval=0.02)


async def test_unknown_app_is_404(fal: fal_client.AsyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit("bitbuddies/no-such-model", {"image_url": "data:,x"})
    assert err.value.status_code == 404


async def test_invalid_arguments_are_422_with_pydantic_detail(
    fal: fal_client.AsyncClient,
) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit(ANALYZE, {"image_url": "ftp://example.com/x.png", "size": 5})
    assert err.value.status_code == 422
    detail = err.value.response.json()["detail"]
    locations = {tuple(item["loc"]) for item in detail}
    assert locations == {("image_url",), ("size",)}
    assert all("msg" in item and "type" in item for item in detail)

    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit(ANALYZE, {})
    assert err.value.status_code == 422
    assert err.value.response.json()["detail"][0]["type"] == "missing"


async def test_unknown_request_id_is_404_everywhere(fal: fal_client.AsyncClient) -> None:
    for call in (
        fal.status(NSFW, "00000000-0000-0000-0000-000000000000"),
        fal.result(NSFW, "00000000-0000-0000-0000-000000000000"),
        fal.cancel(NSFW, "00000000-0000-0000-0000-000000000000"),
    ):
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            await call
        assert err.value.status_code == 404


async def test_request_id_under_another_app_is_404(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.status(ANALYZE, handle.request_id)
    assert err.value.status_code == 404
    await handle.get(interval=0.02)


async def test_result_before_completion_is_400_still_in_progress(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "delay", seconds=1.5)
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    response = await handle.client.get(handle.response_url)
    assert response.status_code == 400
    assert response.json()["detail"] == "Request is still in progress"
    assert "nsfw_probability" in await handle.get(interval=0.05)


async def test_status_logs_and_metrics_follow_fal_shapes(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "delay", seconds=1)
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    running = await wait_for(handle, fal_client.InProgress)
    raw = (await handle.client.get(handle.status_url, params={"logs": 1})).json()
    assert raw["request_id"] == handle.request_id
    assert raw["response_url"] == handle.response_url
    done = await wait_for(handle, fal_client.Completed)
    assert running.logs is not None
    line = done.logs[0]
    assert set(line) == {"message", "level", "source", "timestamp"}
    assert any("nsfw_probability" in entry["message"] for entry in done.logs)
    assert done.error is None and done.error_type is None
    assert done.metrics["inference_time"] >= 1.0
    without_logs = (await handle.client.get(handle.status_url)).json()
    assert without_logs["logs"] is None
    await handle.get()


async def test_queue_positions_and_cancelling_a_queued_job(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    # Two slow jobs occupy both workers; the next two must wait, in order.
    await add_fault(clean, NSFW, "delay", times=2, seconds=2)
    busy = [await fal.submit(NSFW, {"image_url": astronaut_uri}) for _ in range(2)]
    for handle in busy:
        await wait_for(handle, fal_client.InProgress)
    waiting = [await fal.submit(NSFW, {"image_url": astronaut_uri}) for _ in range(2)]
    positions = [(await h.status()) for h in waiting]
    assert positions == [fal_client.Queued(position=0), fal_client.Queued(position=1)]

    await waiting[0].cancel()
    assert await waiting[1].status() == fal_client.Queued(position=0)
    cancelled = await waiting[0].status(with_logs=True)
    assert isinstance(cancelled, fal_client.Completed)
    assert cancelled.error_type == "request_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await waiting[0].get()
    assert err.value.error_type == "request_cancelled"

    for handle in [*busy, waiting[1]]:
        assert "nsfw_probability" in await handle.get(interval=0.05)
    # The cancelled job never started: no logs, and it was never counted as finished.
    never_started = await waiting[0].status(with_logs=True)
    assert isinstance(never_started, fal_client.Completed) and never_started.logs == []
    stats = (await clean.get("/_local/stats")).json()[NSFW]
    assert stats == {
        "submitted": 4,
        "completed": 3,
        "failed": 0,
        "cancelled": 1,
        "in_flight": 0,
        "max_in_flight": 4,
    }
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await busy[0].cancel()
    assert err.value.status_code == 400
    assert err.value.response.json() == {"status": "ALREADY_COMPLETED"}


async def test_cancelling_a_running_job_discards_its_result(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, ANALYZE, "delay", seconds=1.5)
    handle = await fal.submit(ANALYZE, {"image_url": astronaut_uri, "size": 256})
    await wait_for(handle, fal_client.InProgress)
    response = await handle.client.put(handle.cancel_url)
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}
    await asyncio.sleep(2.0)  # past the point where the job would have finished
    status = await handle.status()
    assert isinstance(status, fal_client.Completed)
    assert status.error_type == "request_cancelled"
    records = (await clean.get("/_local/requests")).json()
    assert [r["status"] for r in records] == ["CANCELLED"]
    stats = (await clean.get("/_local/stats")).json()[ANALYZE]
    assert stats["cancelled"] == 1 and stats["completed"] == 0 and stats["in_flight"] == 0


async def test_in_flight_lasts_until_the_result_is_fetched(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "delay", times=3, seconds=0.5)
    handles = [await fal.submit(NSFW, {"image_url": astronaut_uri}) for _ in range(3)]
    for handle in handles:
        await wait_for(handle, fal_client.Completed)
    stats = (await clean.get("/_local/stats")).json()[NSFW]
    assert stats["completed"] == 3
    assert stats["in_flight"] == 3  # done but not yet collected
    for handle in handles:
        await handle.get()
        await handle.get()  # fetching twice is harmless
    stats = (await clean.get("/_local/stats")).json()[NSFW]
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 3


async def test_requests_lists_every_submission(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    marker = astronaut_uri + "#marker-7f3a"  # a fragment is ignored by the decoder
    for _ in range(2):
        await fal.submit(NSFW, {"image_url": marker})
    await fal.submit(ANALYZE, {"image_url": astronaut_uri})
    records = (await clean.get("/_local/requests")).json()
    mine = [r for r in records if "marker-7f3a" in json.dumps(r["arguments"])]
    assert len(mine) == 2
    assert {r["app"] for r in mine} == {NSFW}
    assert set(mine[0]) == {
        "request_id",
        "app",
        "arguments",
        "submitted_at",
        "status",
        "resumed",
        "lifecycle",
    }
    assert len(records) == 3


async def test_reset_clears_records_stats_and_faults(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "error")
    await clean.post("/_local/reset")
    result = await fal.subscribe(NSFW, {"image_url": astronaut_uri}, interval=0.02)
    assert "nsfw_probability" in result  # the fault was forgotten
    assert (await clean.get("/_local/stats")).json()[NSFW]["submitted"] == 1


async def test_faults_for_unknown_apps_are_refused(clean: httpx.AsyncClient) -> None:
    response = await clean.post("/_local/faults", json={"app": "x/y", "kind": "error"})
    assert response.status_code == 404
    response = await clean.post("/_local/faults", json={"app": NSFW, "kind": "explode"})
    assert response.status_code == 422


async def test_unknown_file_is_404(local: httpx.AsyncClient) -> None:
    assert (await local.get("/files/0123456789abcdef0123456789abcdef.png")).status_code == 404
    assert (await local.get("/files/..%2Fjobs")).status_code == 404


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        body["_request_id_header"] = self.headers["X-Fal-Webhook-Request-Id"]
        self.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    finally:
        server.shutdown()
        server.server_close()


async def test_webhook_receives_results_and_errors(
    fal: fal_client.AsyncClient,
    clean: httpx.AsyncClient,
    astronaut_uri: str,
    webhook_receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook_receiver
    ok = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=url)
    await add_fault(clean, NSFW, "error")
    bad = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=url)
    for _ in range(200):
        if len(received) == 2:
            break
        await asyncio.sleep(0.05)
    by_id = {body["request_id"]: body for body in received}
    assert by_id[ok.request_id]["status"] == "OK"
    assert "nsfw_probability" in by_id[ok.request_id]["payload"]
    assert by_id[ok.request_id]["_request_id_header"] == ok.request_id
    assert by_id[bad.request_id]["status"] == "ERROR"
    assert by_id[bad.request_id]["error"] == "injected failure"
    assert by_id[bad.request_id]["gateway_request_id"] == bad.request_id


async def test_load_counts_every_job_waiting_or_running_even_after_a_reset(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    assert (await clean.get("/_local/load")).json() == {"queued": 0, "running": 0}
    await add_fault(clean, NSFW, "delay", times=3, seconds=1.5)
    handles = [await fal.submit(NSFW, {"image_url": astronaut_uri}) for _ in range(3)]
    for handle in handles[:2]:  # two workers
        await wait_for(handle, fal_client.InProgress)
    (await clean.post("/_local/reset")).raise_for_status()  # records forget them...
    assert (await clean.get("/_local/requests")).json() == []
    # ...the load does not.
    assert (await clean.get("/_local/load")).json() == {"queued": 1, "running": 2}
    for handle in handles:
        await handle.get(interval=0.05)
    # A job's thread lets go a moment after its status says COMPLETED.
    deadline = time.monotonic() + 5
    while (load := (await clean.get("/_local/load")).json()) != {"queued": 0, "running": 0}:
        assert time.monotonic() < deadline, load
        await asyncio.sleep(0.02)
