"""``infra.falclient``: which hosts the unmodified fal_client ends up talking to, and our
two shortcuts over its API (one-request results, cancellation), against the server."""

from __future__ import annotations

import fal_client
import fal_client.client as fal_module
import httpx
import pytest

from activities.providers.local import APPS
from infra.falclient import cancel_job, check_no_backup_for, make_fal_client, read_result
from tests.infra.modelserver.ms_helpers import ModelServer, add_fault, wait_for, wait_idle
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]


def hosts() -> dict[str, str]:
    names = ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL")
    return {name: getattr(fal_module, name) for name in names}


def test_local_client_points_every_host_at_the_model_server(model_server: ModelServer) -> None:
    try:
        client = make_fal_client(fal_key="key-id:secret", model_server_url=model_server.url)
        assert client.key == "key-id:secret"
        assert hosts() == {
            "QUEUE_URL_FORMAT": "https://queue.fal.run/",
            "RUN_URL_FORMAT": "https://fal.run/",
            "REST_URL": "https://rest.fal.ai",
            "CDN_URL": "https://v3.fal.media",
        }

        for _ in range(2):  # idempotent
            local = make_fal_client(fal_key=None, model_server_url=model_server.url + "/")
        assert local.key == "local"
        base = model_server.url
        assert hosts() == {
            "QUEUE_URL_FORMAT": base + "/",
            "RUN_URL_FORMAT": base + "/",
            "REST_URL": base,  # fal_client appends "/storage/..." and "/files/..."
            "CDN_URL": base,
        }
    finally:
        make_fal_client(fal_key=None, model_server_url=model_server.url)


async def test_backup_transport_never_redirects_local_requests() -> None:
    """A refused local connection fails as such; it is not retried on a fal domain."""
    check_no_backup_for("http://127.0.0.1:8010/")
    with pytest.raises(RuntimeError, match="backup host"):
        check_no_backup_for("https://queue.fal.run/")
    async with httpx.AsyncClient(transport=fal_module.AsyncBackupDomainTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/nothing-listens-here")


async def test_the_key_header_is_sent_and_ignored(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    handle = await fal.submit(APPS[contract.NSFW_FILTER.name], {"image_url": astronaut_uri})
    assert handle.client.headers["authorization"] == "Key local"
    assert "nsfw_probability" in await handle.get(interval=0.02)


async def test_read_result_answers_like_fal_clients_result_in_one_request(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    await wait_for(handle, fal_client.Completed)

    assert await read_result(fal, NSFW, handle.request_id) == await fal.result(
        NSFW, handle.request_id
    )
    with pytest.raises(fal_client.client.FalClientHTTPError) as unknown:
        await read_result(fal, NSFW, "no-such-request")
    assert unknown.value.status_code == 404


async def _running_job(
    fal: fal_client.AsyncClient, local: httpx.AsyncClient, image_url: str, seconds: float
) -> fal_client.AsyncRequestHandle:
    """An nsfw-filter job held IN_PROGRESS for ``seconds`` by an injected delay."""
    await add_fault(local, NSFW, "delay", seconds=seconds)
    handle = await fal.submit(NSFW, {"image_url": image_url})
    await wait_for(handle, fal_client.InProgress)
    return handle


async def test_read_result_of_a_running_or_failed_job_raises_fal_clients_error(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    running = await _running_job(fal, clean, astronaut_uri, seconds=2)
    with pytest.raises(fal_client.client.FalClientHTTPError) as early:
        await read_result(fal, NSFW, running.request_id)
    assert early.value.status_code == 400

    await add_fault(clean, NSFW, "error")
    failed = await fal.submit(NSFW, {"image_url": astronaut_uri})
    await wait_for(failed, fal_client.Completed)
    with pytest.raises(fal_client.client.FalClientHTTPError) as broken:
        await read_result(fal, NSFW, failed.request_id)
    assert broken.value.error_type == "model_error"
    assert "injected failure" in str(broken.value)
    await wait_idle(clean)


async def test_cancel_job_says_whether_there_was_anything_to_stop(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    running = await _running_job(fal, clean, astronaut_uri, seconds=5)
    assert await cancel_job(fal, NSFW, running.request_id) is True
    assert await cancel_job(fal, NSFW, running.request_id) is False  # already over
    assert await cancel_job(fal, NSFW, "no-such-request") is False
    records = {r["request_id"]: r["status"] for r in (await clean.get("/_local/requests")).json()}
    assert records[running.request_id] == "CANCELLED"
