"""Crashes through the money paths, against the whole local stack: the API, the main
worker and their database connections killed before, during and after a charge (POST
/v1/generations), a refund (a generation that fails) and a credit (a Stripe Checkout
webhook from the local stand-in). Each test ends with the ledger's invariant holding
(``billing.ledger.check_invariant``), every charge ending as a delivered character or
exactly one refund, and every paid checkout credited exactly once.

Nothing here is mocked: processes are SIGKILLed (or stopped as a deploy stops them) and
started again, backend connections are terminated from PostgreSQL, and clients recover
only as real ones do: a lost answer is retried with the same Idempotency-Key, and Stripe
redelivers a webhook that got no 2xx. The stack is shared by the session, so each test
leaves whatever it killed running and healthy again."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg import AsyncConnection

from activities.providers.local import APPS
from tests.billing.test_stripe import (
    PACK_TOKENS,
    SIGNUP_TOKENS,
    deliveries,
    open_session,
    pay,
    purchases,
    status_of,
)
from tests.conftest import Stack, ledger_kinds, permits_held
from tests.support.client import User, signup
from tests.support.faults import TERMINAL, assert_ledger_consistent
from tests.support.paths import FIXTURES
from tests.support.photos import photo
from workflows.contract import ANIMATE

# The session's pool (tests/conftest.py ``db``), rows as dicts. Any: the helpers used here
# annotate it both as the bare AsyncConnectionPool (tuple rows) and with dict rows.
Pool = Any

PORTRAIT = photo("astronaut.png")  # runs the whole pipeline and is delivered
NSFW = (FIXTURES / "nsfw_probe.png").read_bytes()  # refused by the first step: refunded
KILL_AT_CHARGES = 8  # of the 24 starts of the burst
CUT_EVERY_SECONDS = 2.0
CHAOS_SECONDS = 12.0


# --- helpers -----------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def stand_in(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.stripe_url, timeout=30.0) as client:
        yield client


@pytest.fixture
async def burst(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client for many requests at once (the ``http`` fixture's pool is small)."""
    async with httpx.AsyncClient(
        base_url=stack.cfg.api_url,
        timeout=30.0,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    ) as client:
        yield client


@contextlib.contextmanager
def stack_restored(stack: Stack) -> Iterator[None]:
    """Whatever happens in the block, the API and the main worker run afterwards."""
    try:
        yield
    finally:
        if not stack.api.alive:
            stack.api.stop()
            stack.api.start()
        if not stack.worker.alive:
            stack.restart_worker()


def crash_api(stack: Stack, down_seconds: float = 0.0) -> None:
    """SIGKILL the API (nothing runs on the way down), leave it down, start it again."""
    stack.api.kill()
    stack.api.stop()  # closes its log file; the process is gone already
    time.sleep(down_seconds)
    stack.api.start()


async def healthy(http: httpx.AsyncClient) -> None:
    async def ok() -> bool:
        try:
            return (await http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ok, 60, "/healthz to answer 200")


async def start_until_accepted(
    user: User, picture: bytes, key: str, *, timeout: float = 60.0
) -> tuple[str, int]:
    """POST /v1/generations as a careful client does: an answer lost (the connection
    dropped) or a server error is retried with the same Idempotency-Key until the
    generation is accepted. Its id, and how many attempts it took."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            response = await user.generate(picture, idempotency_key=key)
        except httpx.TransportError:
            pass
        else:
            if response.status_code == 202:
                return str(response.json()["id"]), attempts
            assert response.status_code >= 500, (response.status_code, response.text)
        assert time.monotonic() < deadline, f"{key} never accepted"
        await asyncio.sleep(0.2)


async def start_once(user: User, picture: bytes, key: str) -> str | None:
    """POST /v1/generations as a client that gives up when its answer is lost: the id,
    or None when no answer came (it may still have been charged)."""
    try:
        response = await user.generate(picture, idempotency_key=key)
    except httpx.TransportError:
        return None
    if response.status_code == 202:
        return str(response.json()["id"])
    assert response.status_code >= 500, (response.status_code, response.text)
    return None


async def generations_of(db: Pool, users: list[User]) -> dict[str, str]:
    """Every generation of these users (by id) and its status."""
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, status FROM generations WHERE user_id = ANY(%s)",
            ([uuid.UUID(u.id) for u in users],),
        )
        return {row["id"]: row["status"] for row in await cur.fetchall()}


async def entries_of(db: Pool, users: list[User], kind: str) -> int:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM ledger_entries WHERE kind = %s AND user_id = ANY(%s)",
            (kind, [uuid.UUID(u.id) for u in users]),
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def all_ended(db: Pool, users: list[User], timeout: float) -> dict[str, str]:
    """Wait (reading the database: no API needed) until every generation of these users
    has ended, and no provider permit is held; their statuses."""

    async def ended() -> bool:
        now = await generations_of(db, users)
        return all(s in TERMINAL for s in now.values()) and await permits_held(db) == 0

    try:
        await eventually(ended, timeout, "every generation to end")
    except AssertionError as err:
        now = Counter((await generations_of(db, users)).values())
        raise AssertionError(f"{err}: {now}") from err
    return await generations_of(db, users)


async def nudge_stranded(db: Pool, users: list[User]) -> int:
    """The sweeper starts a generation left ``queued`` (charged, no workflow: the API died
    between its commit and the workflow start) once it has not moved for
    ``stale_queued_seconds`` (30 minutes in the test stack): move theirs back an hour, as
    if that time had passed. Harmless for one whose workflow did start (the start is
    idempotent). How many there were."""
    async with db.connection() as conn:
        cur = await conn.execute(
            "UPDATE generations SET updated_at = now() - interval '1 hour'"
            " WHERE user_id = ANY(%s) AND status = 'queued'",
            ([uuid.UUID(u.id) for u in users],),
        )
        return int(cur.rowcount)


API_AND_WORKERS = ("api.app:create_app", "infra.worker")
MAIN_WORKER = ("infra.worker --pool interactive",)


def stack_db_ports(stack: Stack, processes: tuple[str, ...] = API_AND_WORKERS) -> list[int]:
    """The local ports of every PostgreSQL connection held by the stack's processes whose
    command line has one of ``processes`` in it (by default the API and the workers),
    never this test process's own."""
    postgres = stack.cfg.ports.postgres
    ports: list[int] = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if not any(p in command for p in processes):
                continue
            for conn in child.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == postgres:
                    ports.append(conn.laddr.port)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return ports


async def terminate_backends(
    admin: AsyncConnection[Any], stack: Stack, processes: tuple[str, ...] = API_AND_WORKERS
) -> int:
    """pg_terminate_backend for every connection of those processes; how many."""
    ports = stack_db_ports(stack, processes)
    if not ports:
        return 0
    cur = await admin.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND client_port = ANY(%s)",
        (ports,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# --- the charge: the API killed while starts are in flight ---------------------------


async def test_the_api_killed_during_a_burst_of_starts_charges_each_generation_once(
    stack: Stack,
    http: httpx.AsyncClient,
    burst: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,  # resets the model server: no fault left by another test
) -> None:
    """Twenty-four POST /v1/generations at once (eight users spending their three
    tokens); the API is SIGKILLed as soon as eight of them are charged (or the first is
    answered), and started again a second later. Half the clients retry a lost answer with its
    Idempotency-Key; the others give up, so a generation charged just before the crash
    is stranded ``queued`` until the sweeper starts it. Every generation ends delivered;
    each was charged exactly once; nothing is refunded; the invariant holds."""
    careful = [await signup(http) for _ in range(4)]
    careless = [await signup(http) for _ in range(4)]
    users = careful + careless
    for user in users:
        user.http = burst
    gate, answered_once = asyncio.Event(), asyncio.Event()

    async def careful_start(user: User, n: int) -> tuple[str, int]:
        await gate.wait()
        try:
            return await start_until_accepted(user, PORTRAIT, f"crash-{user.id}-{n}")
        finally:
            answered_once.set()

    async def careless_start(user: User, n: int) -> str | None:
        await gate.wait()
        try:
            return await start_once(user, PORTRAIT, f"crash-{user.id}-{n}")
        finally:
            answered_once.set()

    async def charges_under_way() -> None:
        async with await psycopg.AsyncConnection.connect(
            stack.cfg.database_url, autocommit=True
        ) as conn:
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM ledger_entries WHERE kind = 'charge'"
                    " AND user_id = ANY(%s)",
                    ([uuid.UUID(u.id) for u in users],),
                )
                row = await cur.fetchone()
                if row and row[0] >= KILL_AT_CHARGES:
                    return
                await asyncio.sleep(0.002)

    tokens = SIGNUP_TOKENS
    with stack_restored(stack):
        watching = asyncio.create_task(charges_under_way())
        retrying = [
            asyncio.create_task(careful_start(u, n)) for u in careful for n in range(tokens)
        ]
        giving_up = [
            asyncio.create_task(careless_start(u, n)) for u in careless for n in range(tokens)
        ]
        await asyncio.sleep(0.1)
        gate.set()
        answer = asyncio.create_task(answered_once.wait())
        async with asyncio.timeout(30):
            await asyncio.wait([watching, answer], return_when=asyncio.FIRST_COMPLETED)
        stack.api.kill()  # at once: the others are in flight
        watching.cancel()
        answer.cancel()
        await asyncio.to_thread(crash_api, stack, 1.0)
        accepted = await asyncio.gather(*retrying)
        answered = await asyncio.gather(*giving_up)
    await healthy(http)

    # The fault landed mid-burst: some clients lost their answer.
    lost = sum(attempts > 1 for _, attempts in accepted) + answered.count(None)
    assert lost >= 1, (accepted, answered)
    assert len({gid for gid, _ in accepted}) == len(retrying)  # one generation a key
    stranded = await nudge_stranded(db, careless)

    statuses = await all_ended(db, users, timeout=120)
    assert Counter(statuses.values()) == {"completed": len(statuses)}, statuses
    for gid, _ in accepted:
        assert statuses[gid] == "completed"
        assert await ledger_kinds(db, gid) == ["charge"]
    # A retried key made no second generation; a careless client's lost request made at
    # most one (charged before the crash) or none (rolled back with it).
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT user_id::text AS uid, idempotency_key, count(*) AS n FROM generations"
            " WHERE user_id = ANY(%s) GROUP BY 1, 2",
            ([uuid.UUID(u.id) for u in users],),
        )
        per_key = await cur.fetchall()
    assert all(row["n"] == 1 for row in per_key), per_key
    for user in careful:
        assert sum(row["uid"] == user.id for row in per_key) == tokens
    for user in users:
        user.http = http
        mine = sum(row["uid"] == user.id for row in per_key)
        assert await user.balance() == SIGNUP_TOKENS - mine  # one token per delivery
    await assert_ledger_consistent(db, users)
    made = len(statuses) - len(accepted)
    print(
        f"\nAPI crash: {lost} answers lost; the careless clients' requests made {made}"
        f" generations ({stranded} left queued, started by the sweeper)"
    )


# --- the refund: the worker killed while failures are settled -------------------------


async def test_the_worker_killed_while_failures_are_settled_refunds_each_exactly_once(
    stack: Stack,
    http: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    """Eight generations that fail (four NSFW photos, refused at the first step; four
    whose animate job fails at the provider); the main worker is SIGKILLed as soon as the
    first refund commits, while the rest are being failed and settled, and a new worker
    takes over. Each ends failed, refunded exactly once; the invariant holds."""
    late = 4
    fault = {"app": APPS[ANIMATE.name], "kind": "error", "times": late}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    users = [await signup(http) for _ in range(8)]
    pictures = [PORTRAIT] * late + [NSFW] * (len(users) - late)

    with stack_restored(stack):
        answers = await asyncio.gather(
            *(u.generate(p) for u, p in zip(users, pictures, strict=True))
        )
        assert [a.status_code for a in answers] == [202] * len(users)
        ids = [a.json()["id"] for a in answers]

        async def refunding() -> bool:
            return await entries_of(db, users, "refund") >= 1

        await eventually(refunding, 30, "the first refund")
        stack.worker.kill()  # SIGKILL: mid-settlement, mid-poll, whatever it was doing
        refunded_before = await entries_of(db, users, "refund")
        await asyncio.to_thread(stack.restart_worker)

    statuses = await all_ended(db, users, timeout=90)
    assert set(statuses) == set(ids)
    assert Counter(statuses.values()) == {"failed": len(ids)}, statuses
    assert refunded_before < len(ids), "the worker died after every refund: nothing tested"
    for user, gid in zip(users, ids, strict=True):
        assert await ledger_kinds(db, gid) == ["charge", "refund"]
        assert await user.balance() == SIGNUP_TOKENS
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, error_code FROM generations WHERE id = ANY(%s)",
            ([uuid.UUID(g) for g in ids],),
        )
        codes = {row["id"]: row["error_code"] for row in await cur.fetchall()}
    assert codes == {g: "internal" if g in ids[:late] else "nsfw" for g in ids}, codes
    await assert_ledger_consistent(db, users)
    await healthy(http)
    print(f"\nworker crash: {refunded_before} of {len(ids)} refunded before the kill")


# --- the database connections cut while charges, refunds and a credit are in flight ---


async def test_database_connections_cut_repeatedly_lose_no_charge_refund_or_credit(
    stack: Stack,
    http: httpx.AsyncClient,
    burst: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
    stand_in: httpx.AsyncClient,
) -> None:
    """While six generations start and run (two portraits to deliver, two NSFW photos
    refused, two portraits whose animate job fails at the provider) and a checkout is
    paid at the stand-in, every PostgreSQL connection of the API and the workers is
    terminated every two seconds, until all is settled or for at most CHAOS_SECONDS.
    Clients retry lost answers with their Idempotency-Key; Stripe redelivers the webhook.
    Each generation ends delivered or refunded exactly once (a portrait may be failed
    and refunded when its steps met too many dead connections; none that should fail is
    delivered), the pack is credited exactly once, and the invariant holds."""
    fault = {"app": APPS[ANIMATE.name], "kind": "error", "times": 2}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    pictures = [PORTRAIT, PORTRAIT, NSFW, NSFW, PORTRAIT, PORTRAIT]
    users = [await signup(http) for _ in pictures]
    buyer = users[0]
    session_id = await open_session(buyer)
    for user in users:
        user.http = burst

    cuts = 0
    stop = asyncio.Event()

    async def cut_connections() -> None:
        nonlocal cuts
        async with await psycopg.AsyncConnection.connect(
            stack.cfg.database_url, autocommit=True
        ) as admin:
            while not stop.is_set():
                cuts += await terminate_backends(admin, stack)
                # Often enough that the work in flight meets dead connections, seldom
                # enough that retries get through between cuts: each cut leaves every
                # pooled connection dead, and the pools hand each out once more (a
                # failed request each) before opening new ones.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CUT_EVERY_SECONDS)

    async def settled() -> bool:
        if await purchases(db, session_id) != [PACK_TOKENS]:
            return False
        return all(s in TERMINAL for s in (await generations_of(db, users)).values())

    cutter = asyncio.create_task(cut_connections())
    try:
        await asyncio.sleep(0.3)  # the first round of cuts has gone out
        paying = asyncio.create_task(pay(stand_in, f"{stack.cfg.stripe_url}/pay/{session_id}"))
        accepted = await asyncio.gather(
            *(
                start_until_accepted(u, p, f"cut-{u.id}")
                for u, p in zip(users, pictures, strict=True)
            )
        )
        paid = await paying
        assert paid.status_code == 303
        cuts_before_pipeline = cuts
        # Cutting on while the pipeline charges nothing more, refunds and delivers, and
        # the webhook is retried; at most CHAOS_SECONDS.
        with contextlib.suppress(AssertionError):
            await eventually(settled, CHAOS_SECONDS, "everything settled under the cuts")
        settled_under_cuts = await settled()
    finally:
        stop.set()
        await cutter
    assert cuts > cuts_before_pipeline > 0, "no connection cut while the pipeline ran"
    await healthy(http)

    async def credited() -> bool:
        return await purchases(db, session_id) == [PACK_TOKENS]

    await eventually(credited, 45, "the purchase to be credited")
    statuses = await all_ended(db, users, timeout=90)
    ids = [gid for gid, _ in accepted]
    assert set(statuses) == set(ids)  # one generation a user: no retry made a second
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, status, step, error_code FROM generations WHERE id = ANY(%s)",
            ([uuid.UUID(g) for g in ids],),
        )
        ended = {row["id"]: row for row in await cur.fetchall()}
    # The NSFW photos and the failed animate jobs are refunded, never delivered; a
    # portrait is delivered, or (its steps having met too many dead connections, see
    # test_one_cut_of_the_database_connections_fails_no_generation) failed and refunded.
    refused = [ended[g]["status"] for g, p in zip(ids, pictures, strict=True) if p is NSFW]
    assert refused == ["failed", "failed"], ended
    portraits = [ended[g]["status"] for g, p in zip(ids, pictures, strict=True) if p is PORTRAIT]
    assert Counter(portraits)["failed"] >= 2, ended  # the two animate faults at least
    for user, gid in zip(users, ids, strict=True):
        user.http = http
        delivered = statuses[gid] == "completed"
        kinds = await ledger_kinds(db, gid)
        assert kinds == (["charge"] if delivered else ["charge", "refund"]), (gid, kinds)
        bought = PACK_TOKENS if user is buyer else 0
        assert await user.balance() == SIGNUP_TOKENS - delivered + bought
    assert await status_of(db, session_id) == "paid"
    assert await purchases(db, session_id) == [PACK_TOKENS]
    await assert_ledger_consistent(db, users)
    found = await deliveries(stand_in, session_id)
    print(
        f"\nconnections cut: {cuts} ({cuts_before_pipeline} before every start was accepted);"
        f" settled under the cuts: {settled_under_cuts}; attempts: {[a for _, a in accepted]};"
        f" webhook attempts: {[d['attempts'] for d in found]}"
    )


# --- the credit: the API killed before, during and after the webhook ------------------


@pytest.mark.parametrize("moment", ["before", "during", "after"])
async def test_the_api_killed_around_a_checkout_webhook_credits_exactly_once(
    stack: Stack,
    http: httpx.AsyncClient,
    stand_in: httpx.AsyncClient,
    db: Pool,
    moment: str,
) -> None:
    """Three checkouts paid at the stand-in; the API is SIGKILLed (down for a second):
    before the payments (every first delivery fails), right after them (their webhooks
    in flight), or after they were credited (each event then resent). The stand-in
    retries; each session ends paid and credited exactly once."""
    buyers = [await signup(http) for _ in range(3)]
    sessions = [await open_session(b) for b in buyers]
    urls = [f"{stack.cfg.stripe_url}/pay/{s}" for s in sessions]

    async def credited() -> bool:
        return all([await purchases(db, s) == [PACK_TOKENS] for s in sessions])

    with stack_restored(stack):
        if moment == "before":
            stack.api.kill()
            stack.api.stop()
        paid = await asyncio.gather(*(pay(stand_in, u) for u in urls))
        if moment == "during":
            await asyncio.to_thread(crash_api, stack, 1.0)
        elif moment == "before":

            async def refused() -> bool:  # every session's first delivery bounced
                found = [d for s in sessions for d in await deliveries(stand_in, s)]
                return len(found) == len(sessions) and all(d["attempts"] for d in found)

            await eventually(refused, 10, "the first deliveries to fail")
            await asyncio.to_thread(stack.api.start)
        else:
            await eventually(credited, 20, "the purchases to be credited")
            await asyncio.to_thread(crash_api, stack, 1.0)
            for s in sessions:
                [delivery] = await deliveries(stand_in, s)
                resent = await stand_in.post(f"/_local/events/{delivery['event_id']}/redeliver")
                assert resent.status_code == 202
    assert [p.status_code for p in paid] == [303] * len(sessions)
    await healthy(http)

    await eventually(credited, 45, "the purchases to be credited")

    wanted = 2 if moment == "after" else 1  # the first delivery, and the one resent

    async def all_answered() -> bool:  # no delivery left retrying
        found = [d for s in sessions for d in await deliveries(stand_in, s)]
        return all(sum(str(a).startswith("2") for a in d["attempts"]) >= wanted for d in found)

    await eventually(all_answered, 45, "every delivery to succeed")
    found = [d for s in sessions for d in await deliveries(stand_in, s)]
    if moment == "before":
        assert all(not str(d["attempts"][0]).startswith("2") for d in found), found
    for buyer, session_id in zip(buyers, sessions, strict=True):
        assert await status_of(db, session_id) == "paid"
        assert await purchases(db, session_id) == [PACK_TOKENS]
        assert await buyer.balance() == SIGNUP_TOKENS + PACK_TOKENS
    await assert_ledger_consistent(db, buyers)
    print(f"\nwebhook attempts ({moment}): {[d['attempts'] for d in found]}")


# --- one cut of the worker's connections: a blip must not cost a delivery -----------


async def test_one_cut_of_the_workers_database_connections_fails_no_generation(
    stack: Stack,
    http: httpx.AsyncClient,
    burst: httpx.AsyncClient,
    db: Pool,
    models: httpx.AsyncClient,
) -> None:
    """A database blip (every connection of the main worker terminated once, as a
    PostgreSQL restart or failover does) while a generation's animate job runs. The
    worker's steps retry, reconnecting: the generation is delivered, charged once and
    never refunded. First a burst of generations grows the worker's pool past its one
    connection, as a busy hour does, so the blip leaves it several dead idle ones."""
    users = [await signup(http) for _ in range(8)]
    for user in users:
        user.http = burst
    warm = await asyncio.gather(*(u.generate(PORTRAIT) for u in users))
    assert [a.status_code for a in warm] == [202] * len(users)
    await all_ended(db, users, timeout=60)
    # One more, whose animate job runs for a few seconds: the blip comes meanwhile.
    slow = {"app": APPS[ANIMATE.name], "kind": "delay", "times": 1, "seconds": 3}
    (await models.post("/_local/faults", json=slow)).raise_for_status()
    user = users[0]
    user.http = http
    answer = await user.generate(PORTRAIT)
    assert answer.status_code == 202, answer.text
    gid = answer.json()["id"]

    async def animating() -> bool:
        jobs = (await models.get("/_local/requests")).json()
        return any(r["app"] == APPS[ANIMATE.name] and r["status"] == "IN_PROGRESS" for r in jobs)

    await eventually(animating, 30, "the animate job to run")
    async with await psycopg.AsyncConnection.connect(
        stack.cfg.database_url, autocommit=True
    ) as admin:
        cut = await terminate_backends(admin, stack, MAIN_WORKER)
    assert cut > 0

    statuses = await all_ended(db, [user], timeout=45)
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT status, step, error_code, error FROM generations WHERE id = %s",
            (uuid.UUID(gid),),
        )
        row = await cur.fetchone()
    print(f"\none cut: {cut} connections of the worker terminated; the generation: {row}")
    # Whatever its outcome, the money is right.
    await assert_ledger_consistent(db, users)
    assert statuses[gid] == "completed", row
    assert await ledger_kinds(db, gid) == ["charge"]


async def test_after_a_database_blip_the_api_answers_every_request(
    stack: Stack, http: httpx.AsyncClient, burst: httpx.AsyncClient
) -> None:
    """Every PostgreSQL connection of the API terminated at once (a restart, a failover)
    while its pool holds several idle ones: the requests after it are all answered,
    none with a 500 or a dropped connection (each connection is checked as it is handed
    out, and a dead one replaced)."""
    user = await signup(http)
    grown = await asyncio.gather(
        *(burst.get("/v1/me", headers=user.headers) for _ in range(16))
    )  # enough at once to open several connections
    assert {r.status_code for r in grown} == {200}
    async with await psycopg.AsyncConnection.connect(
        stack.cfg.database_url, autocommit=True
    ) as admin:
        cut = await terminate_backends(admin, stack, ("api.app:create_app",))
    assert cut > 1
    answers = []
    for _ in range(16):
        try:
            answers.append((await http.get("/v1/me", headers=user.headers)).status_code)
        except httpx.TransportError as err:
            answers.append(type(err).__name__)
    assert answers == [200] * 16
