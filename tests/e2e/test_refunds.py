"""Every charged token ends as a delivered character or exactly one refund."""

from __future__ import annotations

import uuid

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from activities.providers.local import APPS
from billing import ledger
from tests.conftest import Stack, insert_generation, ledger_kinds, permits_held
from tests.support.client import User, signup
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from tests.support.steps import model_steps
from workflows.contract import (
    ANALYZE,
    ANIMATE,
    CARTOONIFY,
    NSFW_FILTER,
    SEGMENT_IMAGE,
    SEGMENT_VIDEO,
)


async def _run(user: User, picture: bytes) -> tuple[dict, list]:  # type: ignore[type-arg]
    response = await user.generate(picture)
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    events = await user.events(generation_id)
    return await user.generation(generation_id), events


async def test_nsfw_photo_fails_with_a_clear_message_and_is_refunded(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,
    models: httpx.AsyncClient,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation, events = await _run(user, (FIXTURES / "nsfw_probe.png").read_bytes())
    assert generation["status"] == "failed"
    assert "safe for work" in generation["error"]
    assert events[-1].event == "failed"
    assert events[-1].data["error_code"] == "nsfw" and events[-1].data["refunded"] is True
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation["id"]) == ["charge", "refund"]
    # rejected before spending on anything else
    submitted = {r["app"] for r in (await models.get("/_local/requests")).json()}
    assert submitted == {APPS[NSFW_FILTER.name]}


async def test_photo_without_a_face_fails_with_a_clear_message_and_is_refunded(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation, events = await _run(user, photo("coffee.png"))
    assert generation["status"] == "failed"
    assert "face" in generation["error"].lower()
    assert events[-1].data["error_code"] == "unusable_photo"
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation["id"]) == ["charge", "refund"]


# A failing job at each step's app fails that step. Not expand: it runs only for a photo
# that is not full-body, and its app is cartoonify's, whose failure comes first.
FAULTS = [
    *((APPS[step.name], "error", step.name) for step in model_steps(expand=False)),
    # A provider that "succeeds" with noise instead of a file: each output is checked
    # before the next step uses it, so the step that made it fails (a picture that does
    # not decode, a mask or a video that does not read), never a later one.
    *(
        (APPS[step.name], "corrupt", step.name)
        for step in (ANALYZE, CARTOONIFY, SEGMENT_IMAGE, ANIMATE, SEGMENT_VIDEO)
    ),
]


@pytest.mark.parametrize(("app", "kind", "step"), FAULTS, ids=[f[2] + "-" + f[1] for f in FAULTS])
async def test_a_failure_at_each_step_refunds_exactly_once(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    models: httpx.AsyncClient,
    app: str,
    kind: str,
    step: str,
) -> None:
    (
        await models.post("/_local/faults", json={"app": app, "kind": kind, "times": 1})
    ).raise_for_status()
    user = await signup(http)
    generation, events = await _run(user, photo("astronaut.png"))
    assert generation["status"] == "failed"
    assert generation["step"] == step
    assert generation["character_id"] is None
    terminal = [e for e in events if e.event in ("completed", "failed")]
    assert len(terminal) == 1 and terminal[0] is events[-1]
    assert events[-1].data["error_code"] == "internal"
    assert events[-1].data["refunded"] is True
    assert await user.balance() == 3
    assert await ledger_kinds(db, generation["id"]) == ["charge", "refund"]
    # no permit is left behind by the failed step
    assert await permits_held(db) == 0


async def test_a_refund_retried_with_any_key_moves_money_once(
    stack: Stack,
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    assert await user.balance() == 2
    for key in ("refund:a", "refund:a", "refund:b"):
        async with db.connection() as conn, conn.transaction():
            await ledger.refund(
                conn, charge_key=ledger.charge_key(generation_id), idempotency_key=key, reason="t"
            )
    assert await user.balance() == 3
    assert await ledger_kinds(db, str(generation_id)) == ["charge", "refund"]
