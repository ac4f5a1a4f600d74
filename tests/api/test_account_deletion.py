"""Account deletion (DELETE /v1/me): running generations cancelled and refunded, rows and
files gone, ledger entries kept without identity, every credential ended, the email free
again; a wrong password or a device token deletes nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client, WorkflowExecutionStatus

from activities.providers.local import APPS
from billing import ledger, settlement
from infra.database import records
from tests.conftest import Stack, insert_generation
from tests.support.client import User, signup
from tests.support.faults import wait_until
from tests.support.photos import photo
from workflows.contract import ANIMATE

Pool = AsyncConnectionPool  # type: ignore[type-arg]
PASSWORD = "correct horse"
COOKIE = "bitbuddies_session"
ANIMATE_APP = APPS[ANIMATE.name]


async def _rows(db: Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        cur = await conn.execute(sql, args)
        return list(await cur.fetchall())


async def _count(db: Pool, sql: str, *args: Any) -> int:
    [row] = await _rows(db, sql, *args)
    return int(row["n"])


async def _log_in_browser(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post("/v1/auth/session", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


async def _delete(
    client: httpx.AsyncClient, password: str, headers: dict[str, str]
) -> httpx.Response:
    return await client.request("DELETE", "/v1/me", json={"password": password}, headers=headers)


async def _animating(models: httpx.AsyncClient) -> bool:
    jobs = (await models.get("/_local/requests")).json()
    return any(j["app"] == ANIMATE_APP and j["status"] == "IN_PROGRESS" for j in jobs)


async def test_deleting_an_account_cancels_refunds_and_erases_everything(
    stack: Stack, http: httpx.AsyncClient, db: Pool, models: httpx.AsyncClient
) -> None:
    user = await signup(http)
    user_id = uuid.UUID(user.id)
    done = (await user.generate(photo("astronaut.png"))).json()["id"]
    finished = await asyncio.wait_for(user.events(done), 120)
    assert finished[-1].event == "completed"
    character_id = finished[-1].data["character_id"]
    fault = {"app": ANIMATE_APP, "kind": "delay", "times": 1, "seconds": 120}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    running = (await user.generate(photo("astronaut.png"))).json()["id"]
    await wait_until(lambda: _animating(models), timeout=60)
    assert await user.balance() == 1
    storage = stack.cfg.data_dir / "storage"
    for folder in (f"generations/{done}", f"generations/{running}", f"characters/{character_id}"):
        assert (storage / folder).exists(), folder
    entry_ids = [
        r["id"]
        for r in await _rows(db, "SELECT id FROM ledger_entries WHERE user_id = %s", user_id)
    ]
    assert len(entry_ids) == 3  # the grant, two charges

    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=120) as browser:
        csrf = await _log_in_browser(browser, user.email)
        session_id = browser.cookies[COOKIE]
        gone = await _delete(browser, PASSWORD, {"X-CSRF-Token": csrf})
        assert gone.status_code == 204, gone.text
        [cookie] = [c for c in gone.headers.get_list("set-cookie") if c.startswith(COOKIE)]
        assert "max-age=0" in cookie.lower()  # the browser forgets its session

    # The running generation's workflow was cancelled, and its own cleanup refunded it.
    # (It settles before it closes: the deletion waits for the settle, not the close.)
    temporal = await Client.connect(stack.cfg.temporal_address)

    async def closed() -> bool:
        described = await temporal.get_workflow_handle(running).describe()
        return described.status != WorkflowExecutionStatus.RUNNING

    await wait_until(closed, timeout=30)
    described = await temporal.get_workflow_handle(running).describe()
    assert described.status == WorkflowExecutionStatus.CANCELED
    # The ledger keeps every entry, and a refund, with nothing that names the account.
    kept = await _rows(
        db,
        "SELECT * FROM ledger_entries WHERE id = ANY(%s) OR refund_of = ANY(%s) ORDER BY id",
        entry_ids,
        entry_ids,
    )
    assert [(e["kind"], e["delta"]) for e in kept] == [
        ("grant", 3),
        ("charge", -1),
        ("charge", -1),
        ("refund", 1),
    ]
    [stand_in] = {e["erased_account"] for e in kept}
    assert stand_in is not None and stand_in != user_id
    for entry in kept:
        assert entry["user_id"] is None and entry["generation_id"] is None, entry
        assert entry["reason"] is None and entry["idempotency_key"] == f"erased:{entry['id']}"
    async with db.connection() as conn:
        assert [e.id for e in await ledger.erased_entries(conn, stand_in)] == [
            e["id"] for e in kept
        ]
    # No row of theirs is left.
    generations = [uuid.UUID(done), uuid.UUID(running)]
    for table, column, value in (
        ("users", "id", user_id),
        ("balances", "user_id", user_id),
        ("sessions", "user_id", user_id),
        ("bearer_tokens", "user_id", user_id),
        ("email_tokens", "user_id", user_id),
        ("characters", "user_id", user_id),
        ("generations", "user_id", user_id),
    ):
        assert (
            await _count(db, f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", value) == 0
        )
    events = "SELECT count(*) AS n FROM generation_events WHERE generation_id = ANY(%s)"
    assert await _count(db, events, generations) == 0
    # Nor any file.
    for folder in (f"generations/{done}", f"generations/{running}", f"characters/{character_id}"):
        assert not (storage / folder).exists(), folder
    # The sweep watches the generations for a day, in case a workflow writes again.
    watched = "SELECT count(*) AS n FROM erased_generations WHERE generation_id = ANY(%s)"
    assert await _count(db, watched, generations) == 2
    # Every credential is over.
    assert (await http.get("/v1/me", headers=user.headers)).status_code == 401
    async with httpx.AsyncClient(
        base_url=stack.cfg.api_url, cookies={COOKIE: session_id}
    ) as replay:
        assert (await replay.get("/v1/me")).status_code == 401
    login = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert login.status_code == 401
    # The email is free for a new account.
    again = await http.post("/v1/auth/signup", json={"email": user.email, "password": PASSWORD})
    assert again.status_code == 201, again.text
    assert again.json()["user"]["id"] != user.id


async def test_a_wrong_password_a_device_token_or_a_missing_csrf_token_deletes_nothing(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    made = await http.post("/v1/tokens", headers=user.headers, json={"name": "extension"})
    device = User(http, made.json()["token"], user.id, user.email)

    by_device = await _delete(http, PASSWORD, device.headers)
    assert by_device.status_code == 403 and by_device.json()["error"]["code"] == "forbidden"
    wrong = await _delete(http, "not the password", user.headers)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    async with httpx.AsyncClient(base_url=stack.cfg.api_url) as browser:
        await _log_in_browser(browser, user.email)
        no_csrf = await _delete(browser, PASSWORD, {})
        assert no_csrf.status_code == 403 and no_csrf.json()["error"]["code"] == "csrf_failed"
        assert (await browser.get("/v1/me")).status_code == 200
    junk = await _delete(http, "tab\there", user.headers)
    assert junk.status_code == 422
    empty = await http.request("DELETE", "/v1/me", headers=user.headers)
    assert empty.status_code == 422

    assert await user.balance() == 3 and await device.balance() == 3
    users = "SELECT count(*) AS n FROM users WHERE id = %s"
    assert await _count(db, users, uuid.UUID(user.id)) == 1
    login = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert login.status_code == 200


async def test_a_generation_without_a_workflow_is_settled_by_the_deletion(
    http: httpx.AsyncClient, db: Pool
) -> None:
    # Charged but never started (the API died in between): nothing would refund it.
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    async with db.connection() as conn:
        [charge] = await ledger.entries_for_generation(conn, generation_id)
    assert await user.balance() == 2

    gone = await _delete(http, PASSWORD, user.headers)
    assert gone.status_code == 204, gone.text
    refunds = await _rows(db, "SELECT * FROM ledger_entries WHERE refund_of = %s", charge.id)
    assert [(r["delta"], r["user_id"]) for r in refunds] == [(1, None)]
    remaining = "SELECT count(*) AS n FROM generations WHERE id = %s"
    assert await _count(db, remaining, generation_id) == 0


async def test_nothing_a_late_workflow_writes_brings_a_deleted_generation_back(
    http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    assert (await _delete(http, PASSWORD, user.headers)).status_code == 204

    ending = settlement.Ending(status="cancelled", step="animate", error_code="c", message="m")
    character = records.Character(
        id=uuid.uuid4(),
        user_id=uuid.UUID(user.id),
        generation_id=generation_id,
        prompt="a knight",
        webm_key="k",
        webp_key="k",
        png_key="k",
        width=1,
        height=1,
        created_at=datetime.now(UTC),
    )
    async with db.connection() as conn:
        with pytest.raises(settlement.Gone):
            await settlement.settle(conn, generation_id, ending, settled_by="late", reason="r")
        with pytest.raises(settlement.Gone):
            await settlement.deliver(conn, character)
        assert await ledger.entries_for_generation(conn, generation_id) == []
        # The ledger is still append-only: only the erasure was allowed.
        [entry] = await _rows(db, "SELECT id FROM ledger_entries WHERE refund_of IS NULL LIMIT 1")
        for sql in (
            "UPDATE ledger_entries SET delta = 7 WHERE id = %s",
            "DELETE FROM ledger_entries WHERE id = %s",
        ):
            with pytest.raises(psycopg.errors.RaiseException):
                await conn.execute(sql, (entry["id"],))
    assert await _count(db, "SELECT count(*) AS n FROM characters WHERE id = %s", character.id) == 0
