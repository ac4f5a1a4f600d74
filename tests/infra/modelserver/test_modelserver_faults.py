"""Injected faults behave like the provider failures they stand in for."""

from __future__ import annotations

import asyncio
import io
import time

import fal_client
import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from activities.models import provider_account_problem
from activities.providers.local import APPS
from tests.infra.modelserver.ms_helpers import SIZE, add_fault, download, wait_for
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]
ANALYZE = APPS[contract.ANALYZE.name]


async def test_error_fault_completes_the_job_with_a_model_error(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "error")
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    status = await wait_for(handle, fal_client.Completed)
    assert status.error == "injected failure"
    assert status.error_type == "model_error"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await handle.get()
    assert err.value.status_code == 500
    assert err.value.error_type == "model_error"
    assert str(err.value) == "injected failure"
    # Only the next submission was affected.
    assert "nsfw_probability" in await fal.subscribe(NSFW, {"image_url": astronaut_uri})
    stats = (await clean.get("/_local/stats")).json()[NSFW]
    assert stats["failed"] == 1 and stats["completed"] == 1 and stats["in_flight"] == 0


async def test_submit_500_refuses_the_submission_itself(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "submit_500", times=2)
    for _ in range(2):
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            await fal.submit(NSFW, {"image_url": astronaut_uri})
        assert err.value.status_code == 500
    stats = (await clean.get("/_local/stats")).json()[NSFW]
    assert stats["submitted"] == 0 and stats["in_flight"] == 0
    records = (await clean.get("/_local/requests")).json()
    assert [r["status"] for r in records] == ["REJECTED", "REJECTED"]
    assert "nsfw_probability" in await fal.subscribe(NSFW, {"image_url": astronaut_uri})


async def test_corrupt_fault_returns_garbage_files_of_plausible_size(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    arguments = {"image_url": astronaut_uri, "size": SIZE}
    good = await fal.subscribe(ANALYZE, arguments)
    await add_fault(clean, ANALYZE, "corrupt")
    bad = await fal.subscribe(ANALYZE, arguments)
    assert bad["faces"] == good["faces"] and bad["faces"]  # the JSON part looks fine...
    body = (await download(bad["image"]["url"])).content
    assert len(body) == bad["image"]["file_size"] == good["image"]["file_size"]
    with pytest.raises(UnidentifiedImageError):  # ...but the file is noise
        Image.open(io.BytesIO(body))
    assert (await clean.get("/_local/stats")).json()[ANALYZE]["completed"] == 2


async def test_delay_fault_keeps_the_job_in_progress_and_logging(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "delay", seconds=2)
    started = time.monotonic()
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri})
    await wait_for(handle, fal_client.InProgress)
    result = await handle.get(interval=0.05)
    assert time.monotonic() - started >= 2
    assert "nsfw_probability" in result
    done = await handle.status(with_logs=True)
    assert isinstance(done, fal_client.Completed) and done.logs is not None
    logs = done.logs
    assert [line["message"] for line in logs[:2]] == [
        "injected delay 1/2 s",
        "injected delay 2/2 s",
    ]


async def test_unreachable_input_completes_with_input_download_failed(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient
) -> None:
    for url in (
        "http://127.0.0.1:9/photo.png",  # nothing listens on the discard port
        f"{clean.base_url}/files/0123456789abcdef0123456789abcdef.png",  # 404
        "data:image/png;base64,@@@not-base64",
    ):
        handle = await fal.submit(NSFW, {"image_url": url})
        status = await wait_for(handle, fal_client.Completed)
        assert status.error_type == "input_download_failed", url
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            await handle.get()
        assert err.value.status_code == 422


async def test_input_that_is_not_an_image_is_an_invalid_input(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient
) -> None:
    handle = await fal.submit(NSFW, {"image_url": "data:text/plain,hello"})
    status = await wait_for(handle, fal_client.Completed)
    assert status.error_type == "invalid_input"


async def test_a_stall_holds_protocol_requests_until_it_ends(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    """Like a provider that accepts connections and answers nothing; the hooks still answer."""
    (await clean.post("/_local/stall", json={"seconds": 60})).raise_for_status()
    submit = asyncio.create_task(fal.submit(NSFW, {"image_url": astronaut_uri}))

    async def held() -> bool:
        return bool((await clean.get("/_local/stall")).json()["waiting"] == 1)

    deadline = time.monotonic() + 10
    while not await held():
        assert time.monotonic() < deadline, "the submission never reached the server"
        await asyncio.sleep(0.05)
    assert not submit.done()
    assert (await clean.get("/_local/stats")).json()[NSFW]["submitted"] == 0
    (await clean.post("/_local/stall", json={"seconds": 0})).raise_for_status()
    handle = await asyncio.wait_for(submit, 10)  # released at once, not after 60 s
    await wait_for(handle, fal_client.Completed)
    assert (await clean.get("/_local/stall")).json() == {"remaining": 0.0, "waiting": 0}


async def test_submit_403_refuses_as_fal_refuses_a_locked_account(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    await add_fault(clean, NSFW, "submit_403")
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await fal.submit(NSFW, {"image_url": astronaut_uri})
    assert err.value.status_code == 403
    assert str(err.value) == (
        "User is locked. Reason: Exhausted balance. Top up your balance at"
        " fal.ai/dashboard/billing."
    )
    assert provider_account_problem(err.value) == "balance_exhausted"  # what the pipeline sees
    records = (await clean.get("/_local/requests")).json()
    assert [(r["app"], r["status"]) for r in records] == [(NSFW, "REJECTED")]
    assert (await clean.get("/_local/stats")).json()[NSFW]["submitted"] == 0
    assert "nsfw_probability" in await fal.subscribe(NSFW, {"image_url": astronaut_uri})
