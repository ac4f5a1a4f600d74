"""Webhooks as fal sends them: signed with the server's Ed25519 key (served as a JWKS
document, kept across restarts), retried until answered 2xx, logged for the tests at
``/_local/webhooks``, and dropped on request (a lost webhook).

Every delivery is checked with our verifier (infra/falwebhooks.py), which is written
separately from the server's signer, against the key set the server serves."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fal_client
import httpx
import pytest

from activities.providers.local import APPS
from infra.falwebhooks import JwksCache, WebhookDelivery, verify
from infra.supervisor import free_port
from tests.infra.modelserver.ms_helpers import ModelServer, add_fault, spawn, stop
from workflows import contract

NSFW = APPS[contract.NSFW_FILTER.name]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: answers each delivery with the next of ``answers`` (then 200)."""

    url: str
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} deliveries"
            await asyncio.sleep(0.05)
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            state.received.append(Received(dict(self.headers), self.rfile.read(length)))
            self.send_response(state.answers.pop(0) if state.answers else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fal?generation=g-1"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def keys(model_server: ModelServer) -> JwksCache:
    return JwksCache(f"{model_server.url}/.well-known/jwks.json")


async def verified(delivery: Received, keys: JwksCache) -> WebhookDelivery:
    return await verify(delivery.headers, delivery.body, keys=keys, now=time.time())


async def webhook_log(local: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await local.get("/_local/webhooks")
    response.raise_for_status()
    attempts: list[dict[str, Any]] = response.json()
    return attempts


async def test_the_key_set_is_served_in_fals_shape_and_kept_across_a_restart(
    tmp_path: Path,
) -> None:
    proc, server = spawn(tmp_path, free_port())
    port = int(server.url.rsplit(":", 1)[1])
    try:
        first = httpx.get(f"{server.url}/.well-known/jwks.json").json()
        [key] = first["keys"]
        assert set(key) == {"kty", "crv", "x", "kid"}
        assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
        assert "=" not in key["x"] and key["kid"]
        assert len(base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))) == 32
        stop(proc)
        proc, server = spawn(tmp_path, port)
        assert httpx.get(f"{server.url}/.well-known/jwks.json").json() == first
    finally:
        stop(proc)
    [key_file] = [p for p in server.data_dir.iterdir() if p.suffix == ".pem"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # the owner's only
    secret = key_file.read_text().splitlines()[1:-1]  # the PEM's base64 lines
    assert secret and not [line for line in secret if line in server.log()]  # never logged
    assert key["kid"] in server.log()  # the key is named by its kid instead


async def test_each_delivery_is_signed_as_fal_signs_it(
    fal: fal_client.AsyncClient,
    clean: httpx.AsyncClient,
    astronaut_uri: str,
    receiver: Receiver,
    keys: JwksCache,
) -> None:
    ok = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    await receiver.wait_for(1)
    await add_fault(clean, NSFW, "error")
    bad = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    first, second = await receiver.wait_for(2)

    delivered = await verified(first, keys)
    assert (delivered.request_id, delivered.user_id, delivered.status) == (
        ok.request_id,
        "local",
        "OK",
    )
    assert delivered.payload == await ok.get()  # the result, as polling gets it
    assert abs(delivered.timestamp - time.time()) < 60
    failed = await verified(second, keys)
    assert (failed.request_id, failed.status, failed.error) == (
        bad.request_id,
        "ERROR",
        "injected failure",
    )
    assert json.loads(second.body)["gateway_request_id"] == bad.request_id
    assert keys.fetches == 1

    attempts = await webhook_log(clean)
    assert [(a["request_id"], a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (ok.request_id, 1, 200, None),
        (bad.request_id, 1, 200, None),
    ]
    assert {(a["app"], a["url"]) for a in attempts} == {(NSFW, receiver.url)}


async def test_a_delivery_not_answered_2xx_is_tried_again_signed_afresh(
    fal: fal_client.AsyncClient,
    clean: httpx.AsyncClient,
    astronaut_uri: str,
    receiver: Receiver,
    keys: JwksCache,
) -> None:
    receiver.answers = [500, 401]
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    tries = await receiver.wait_for(3)
    await asyncio.sleep(1)
    assert len(receiver.received) == 3  # answered 200 the third time: no fourth
    assert {t.body for t in tries} == {tries[0].body}  # the same delivery each time
    for delivery in tries:
        assert (await verified(delivery, keys)).request_id == handle.request_id
    stamps = [int(t.headers["X-Fal-Webhook-Timestamp"]) for t in tries]
    assert stamps[2] > stamps[0]  # re-signed when sent (1.5 s of backoff between)
    attempts = await webhook_log(clean)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 401), (3, 200)]


async def test_an_unreachable_receiver_is_tried_a_few_times_then_given_up(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str
) -> None:
    url = "http://127.0.0.1:9/hook"  # nothing listens on the discard port
    handle = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=url)
    assert "nsfw_probability" in await handle.get(interval=0.05)  # polling still works
    deadline = time.monotonic() + 30
    while len(attempts := await webhook_log(clean)) < 4:
        assert time.monotonic() < deadline, attempts
        await asyncio.sleep(0.1)
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in attempts)
    await asyncio.sleep(5)  # past a fifth try's backoff
    assert len(await webhook_log(clean)) == 4


async def test_a_dropped_webhook_is_never_delivered_but_polling_sees_the_result(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str, receiver: Receiver
) -> None:
    await add_fault(clean, NSFW, "drop_webhook")
    lost = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    assert "nsfw_probability" in await lost.get(interval=0.05)
    kept = await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    [delivery] = await receiver.wait_for(1)  # the fault was for one submission only
    assert delivery.headers["X-Fal-Webhook-Request-Id"] == kept.request_id
    await asyncio.sleep(1)
    assert len(receiver.received) == 1
    attempts = await webhook_log(clean)
    assert [(a["request_id"], a["attempt"], a["status_code"]) for a in attempts] == [
        (lost.request_id, 0, None),
        (kept.request_id, 1, 200),
    ]
    assert attempts[0]["error"].startswith("dropped")


async def test_a_reset_clears_the_webhook_log(
    fal: fal_client.AsyncClient, clean: httpx.AsyncClient, astronaut_uri: str, receiver: Receiver
) -> None:
    await fal.submit(NSFW, {"image_url": astronaut_uri}, webhook_url=receiver.url)
    await receiver.wait_for(1)
    assert len(await webhook_log(clean)) == 1
    (await clean.post("/_local/reset")).raise_for_status()
    assert await webhook_log(clean) == []
