"""GET /v1/billing/ledger: the signed-in user's entries, newest first, page by page; no
idempotency keys; another user's entries never; bad parameters 422 with the error body."""

from __future__ import annotations

import uuid

import httpx
from psycopg_pool import AsyncConnectionPool

from billing import ledger, settlement
from tests.conftest import Stack, insert_generation
from tests.support.client import User, signup

Pool = AsyncConnectionPool  # type: ignore[type-arg]
FIELDS = {"id", "kind", "delta", "created_at", "generation_id", "payment_id", "reason"}


async def _ledger(user: User, **params: str | int) -> httpx.Response:
    return await user.http.get("/v1/billing/ledger", headers=user.headers, params=params)


async def _charged_and_refunded(db: Pool, user: User) -> uuid.UUID:
    """A generation charged and then settled as failed (refunded), as the workflow does."""
    generation_id = await insert_generation(db, uuid.UUID(user.id), charged=True)
    async with db.connection() as conn:
        await settlement.settle(
            conn,
            generation_id,
            settlement.Ending("failed", "cartoonify", "model_failed", "It failed."),
            settled_by="test",
            reason="test: failed at cartoonify",
        )
    return generation_id


async def test_the_ledger_pages_newest_first_with_kinds_and_generations(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)  # the sign-up grant
    uid = uuid.UUID(user.id)
    async with db.connection() as conn, conn.transaction():
        for n in range(3):
            await ledger.admin_grant(conn, uid, n + 1, key=f"route-{uid}-{n}", reason=f"gift {n}")
    generation_id = await _charged_and_refunded(db, user)
    assert await user.balance() == 3 + 6

    whole = await _ledger(user, limit=100)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["next_before"] is None
    entries = body["entries"]
    assert all(set(e) == FIELDS for e in entries)  # no idempotency key, nothing else
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert [(e["kind"], e["delta"]) for e in entries] == [
        ("refund", 1),
        ("charge", -1),
        ("admin_grant", 3),
        ("admin_grant", 2),
        ("admin_grant", 1),
        ("signup_grant", 3),
    ]
    assert entries[0]["generation_id"] == entries[1]["generation_id"] == str(generation_id)
    # our own reason for a refund (what broke) is never shown; a description is
    assert entries[0]["reason"] == "Refund: that BitBuddy was not made"
    assert "cartoonify" not in str(entries)
    assert entries[2]["reason"] == "gift 2" and entries[2]["generation_id"] is None
    assert sum(e["delta"] for e in entries) == await user.balance()

    # Two at a time: the pages join up to the whole, each next_before the last id shown.
    paged: list[dict[str, object]] = []
    before: int | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if before is not None:
            params["before"] = before
        response = await _ledger(user, **params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["entries"]) <= 2
        paged += page["entries"]
        before = page["next_before"]
        if before is None:
            break
        assert before == page["entries"][-1]["id"]
    assert pages == 3 and paged == entries
    # The default page holds them all; a page before the oldest is empty.
    assert (await _ledger(user)).json() == body
    empty = (await _ledger(user, before=entries[-1]["id"])).json()
    assert empty == {"entries": [], "next_before": None}


async def test_another_user_sees_only_their_own_and_nobody_sees_it_anonymously(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    owner = await signup(http)
    generation_id = await _charged_and_refunded(db, owner)
    other = await signup(http)
    owners = (await _ledger(owner)).json()["entries"]
    # Paged from just above the owner's newest entry, the other user gets none of them.
    for params, expected in (
        ({}, [("signup_grant", 3)]),
        ({"limit": 100}, [("signup_grant", 3)]),
        ({"before": owners[0]["id"] + 1}, []),
    ):
        response = await _ledger(other, **params)
        assert response.status_code == 200
        theirs = response.json()["entries"]
        assert [(e["kind"], e["delta"]) for e in theirs] == expected
        assert owner.id not in response.text and str(generation_id) not in response.text
        assert not {e["id"] for e in theirs} & {e["id"] for e in owners}
    anonymous = await http.get("/v1/billing/ledger")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"


async def test_bad_parameters_are_422_with_the_error_body(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"before": 0},
        {"before": -5},
        {"before": "x"},
        {"before": str(2**63)},
    ):
        response = await _ledger(user, **params)
        assert response.status_code == 422, (params, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request", params
        assert error["message"] and error["details"][0]["field"] == next(iter(params))
