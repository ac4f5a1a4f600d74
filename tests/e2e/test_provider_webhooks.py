"""Provider webhooks, with a check per period as the fallback, on the real stack: the local
model server signs its webhooks as fal does (Ed25519, its key served as a JWKS), the API
verifies them and signals the workflow, which fetches at once.

Forged, stale and replayed deliveries change nothing; a webhook that never comes costs
one period of latency, never the generation."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from activities.providers.local import APPS
from infra.modelserver.webhooks import KEY_FILE, WebhookSigner, encode_body
from tests.conftest import Stack, ledger_kinds
from tests.support.client import signup
from tests.support.faults import finished, wait_until
from tests.support.photos import photo
from workflows import contract

Pool = AsyncConnectionPool  # type: ignore[type-arg]
WEBHOOK = contract.PROVIDER_WEBHOOK_PATH


async def _activities(stack: Stack, generation_id: str) -> list[tuple[str, str]]:
    """(activity type, step) of every activity the workflow scheduled, in order."""
    temporal = await Client.connect(stack.cfg.temporal_address)
    history = await temporal.get_workflow_handle(generation_id).fetch_history()
    scheduled = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            payload = json.loads(attrs.input.payloads[0].data) if attrs.input.payloads else {}
            step = payload.get("step", "") if isinstance(payload, dict) else ""
            scheduled.append((attrs.activity_type.name, step))
    return scheduled


async def _signals(stack: Stack, generation_id: str) -> int:
    temporal = await Client.connect(stack.cfg.temporal_address)
    history = await temporal.get_workflow_handle(generation_id).fetch_history()
    return sum(
        1 for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
    )


async def _generate(http: httpx.AsyncClient) -> tuple[Any, str]:
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    return user, response.json()["id"]


def _signer(stack: Stack) -> WebhookSigner:
    """The model server's own key (it is ours, in the stack's data folder)."""
    return WebhookSigner.load_or_create(stack.cfg.data_dir / "modelserver" / KEY_FILE)


def _delivery(
    signer: WebhookSigner, request_id: str, *, timestamp: int | None = None, status: str = "OK"
) -> tuple[bytes, dict[str, str]]:
    body = encode_body(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": status,
            "payload": {},
        }
    )
    headers = signer.headers(request_id, body, timestamp or int(time.time()))
    return body, {**headers, "Content-Type": "application/json"}


async def _rows(db: Pool, request_id: str) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM provider_webhooks WHERE request_id = %s", (request_id,)
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def test_with_webhooks_a_generation_never_polls(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    _, generation_id = await _generate(http)
    assert (await finished(db, [generation_id]))[generation_id] == "completed"

    scheduled = await _activities(stack, generation_id)
    kinds = {name for name, _ in scheduled}
    assert contract.SUBMIT_MODEL_JOB in kinds and contract.FETCH_MODEL_RESULT in kinds
    assert contract.POLL_MODEL_JOB not in kinds
    assert contract.CHECK_MODEL_JOB not in kinds, scheduled
    # every job's webhook was delivered once, signed, and taken (200)
    deliveries = (await models.get("/_local/webhooks")).json()
    ours = [d for d in deliveries if f"generation_id={generation_id}" in d["url"]]
    submits = [s for name, s in scheduled if name == contract.SUBMIT_MODEL_JOB]
    assert len(ours) == len(submits) and all(d["status_code"] == 200 for d in ours), ours
    for delivery in ours:
        assert await _rows(db, delivery["request_id"]) == 1


async def test_a_lost_webhook_costs_a_period_and_one_check_not_the_generation(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    app = APPS[contract.SEGMENT_IMAGE.name]
    fault = {"app": app, "kind": "drop_webhook", "times": 1}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    user, generation_id = await _generate(http)
    assert (await finished(db, [generation_id]))[generation_id] == "completed"

    scheduled = await _activities(stack, generation_id)
    checks = [step for name, step in scheduled if name == contract.CHECK_MODEL_JOB]
    assert checks == [contract.SEGMENT_IMAGE.name]  # the step whose webhook was dropped
    assert await ledger_kinds(db, generation_id) == ["charge"]
    assert await user.balance() == 2


async def test_forged_stale_and_replayed_webhooks_change_nothing(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    # A generation held at animate, so its workflow is running and waits on a job.
    app = APPS[contract.ANIMATE.name]
    fault = {"app": app, "kind": "delay", "times": 1, "seconds": 30}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    _, generation_id = await _generate(http)
    url = f"{WEBHOOK}?generation_id={generation_id}"

    async def animate_job() -> str | None:
        for record in (await models.get("/_local/requests")).json():
            if record.get("app") == app and record.get("status") != "COMPLETED":
                return str(record["request_id"])
        return None

    await wait_until(animate_job, timeout=120)
    request_id = await animate_job()
    assert request_id
    signals_before = await _signals(stack, generation_id)
    signer = _signer(stack)

    # forged: signed by another key
    other = WebhookSigner.load_or_create(stack.cfg.data_dir / f"other-{uuid.uuid4().hex}.pem")
    body, headers = _delivery(other, request_id)
    forged = await http.post(url, content=body, headers=headers)
    assert forged.status_code == 400, forged.text
    assert forged.json()["error"]["code"] == "webhook_rejected"
    # tampered: the right key, another body
    body, headers = _delivery(signer, request_id)
    tampered = await http.post(url, content=body.replace(b'"OK"', b'"ERROR"'), headers=headers)
    assert tampered.status_code == 400
    # stale: the right key, signed six minutes ago
    body, headers = _delivery(signer, request_id, timestamp=int(time.time()) - 360)
    stale = await http.post(url, content=body, headers=headers)
    assert stale.status_code == 400 and "stale" in stale.json()["error"]["message"]
    # no signature at all
    bare = await http.post(url, content=body, headers={"Content-Type": "application/json"})
    assert bare.status_code == 400
    assert await _rows(db, request_id) == 0
    assert await _signals(stack, generation_id) == signals_before

    # genuine, then the same delivery again (fal retries; or a replay): one signal. (It
    # says ERROR: a signed OK is trusted to mean the result is there to fetch, and this
    # job is still running; an ERROR makes the workflow read the job's state itself.)
    body, headers = _delivery(signer, request_id, status="ERROR")
    first = await http.post(url, content=body, headers=headers)
    again = await http.post(url, content=body, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json()["signalled"], again.json()["signalled"]) == (True, False)
    assert await _rows(db, request_id) == 1
    assert await _signals(stack, generation_id) == signals_before + 1

    # The workflow checked, found the job still running, and waited on: the generation
    # completes when the job really ends (its own OK webhook).
    assert (await finished(db, [generation_id]))[generation_id] == "completed"
    scheduled = await _activities(stack, generation_id)
    assert (contract.CHECK_MODEL_JOB, contract.ANIMATE.name) in scheduled


async def test_a_webhook_for_a_generation_with_no_workflow_is_taken_and_ignored(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    request_id = f"req-{uuid.uuid4()}"
    body, headers = _delivery(_signer(stack), request_id)
    response = await http.post(
        f"{WEBHOOK}?generation_id={uuid.uuid4()}", content=body, headers=headers
    )
    assert response.status_code == 200 and response.json() == {"signalled": False}
    malformed = await http.post(f"{WEBHOOK}?generation_id=nope", content=body, headers=headers)
    assert malformed.status_code == 422
