"""Provider costs through the whole stack: each job a generation's steps ran records its
step, endpoint, time and price (the local model server's jobs are priced by
BITBUDDIES_LOCAL_MODEL_COSTS in tests/conftest.py), `bitbuddies costs` sums them, and a
day's spend past BITBUDDIES_DAILY_SPEND_ALERT_USD alerts the owner once that day."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from infra.database import costs
from tests.conftest import TEST_ENV, Stack, insert_generation
from tests.support.cli import bitbuddies
from tests.support.client import User, signup
from tests.support.faults import finished, wait_until
from tests.support.photos import photo
from tests.support.pushover import Pushover

Pool = AsyncConnectionPool  # type: ignore[type-arg]
PRICES: dict[str, float] = json.loads(TEST_ENV["BITBUDDIES_LOCAL_MODEL_COSTS"])
THRESHOLD = Decimal(TEST_ENV["BITBUDDIES_DAILY_SPEND_ALERT_USD"])


async def _generate(http: httpx.AsyncClient, db: Pool) -> tuple[User, str]:
    """One generation, to its end: completed."""
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    assert await finished(db, [generation_id]) == {generation_id: "completed"}
    return user, generation_id


async def _rows(db: Pool, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def _today(db: Pool) -> date:
    [row] = await _rows(db, "SELECT (now() AT TIME ZONE 'UTC')::date AS today")
    today: date = row["today"]
    return today


async def test_a_generation_records_each_jobs_price_once_and_its_total_is_their_sum(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user, generation_id = await _generate(http, db)
    gid = uuid.UUID(generation_id)
    jobs = await _rows(
        db, "SELECT step, app, request_id FROM provider_jobs WHERE generation_id = %s", gid
    )
    costs = await _rows(
        db,
        "SELECT step, app, request_id, seconds, cost_usd FROM provider_costs"
        " WHERE generation_id = %s",
        gid,
    )
    # every job the generation submitted ended with its result fetched: one cost each
    assert sorted((c["step"], c["app"], c["request_id"]) for c in costs) == sorted(
        (j["step"], j["app"], j["request_id"]) for j in jobs
    )
    assert {c["step"] for c in costs} >= set(PRICES) - {"expand"}
    for cost in costs:
        assert cost["cost_usd"] == Decimal(str(PRICES[cost["step"]])), cost
        assert cost["seconds"] > 0, cost  # from submission to fetch
    total = sum(Decimal(str(PRICES[c["step"]])) for c in costs)

    inspected = bitbuddies(stack, "inspect", generation_id)
    assert inspected.returncode == 0, inspected.stderr
    section = inspected.stdout.split("\ncosts\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(section) == len(costs) + 1, inspected.stdout
    assert section[-1].split() == ["total", f"${total:.4f}", f"({len(costs)}", "jobs)"]

    # The account's deletion erases the generation, not the spend: anonymous from then on.
    deleted = await http.request(
        "DELETE", "/v1/me", json={"password": "correct horse"}, headers=user.headers
    )
    assert deleted.status_code == 204, deleted.text
    kept = await _rows(
        db,
        "SELECT generation_id FROM provider_costs WHERE request_id = ANY(%s)",
        [c["request_id"] for c in costs],
    )
    assert [row["generation_id"] for row in kept] == [None] * len(costs)


def _sections(out: str, day: date) -> dict[str, dict[str, tuple[int, str]]]:
    """`bitbuddies costs`' day block: its per step and per endpoint lines, by name."""
    block = out.split(f"\n{day.isoformat()}  ", 1)[1].split("\n\n", 1)[0].splitlines()
    found: dict[str, dict[str, tuple[int, str]]] = {"head": {"day": (0, block[0])}}
    current = ""
    for line in block[1:]:
        if not line.startswith("    "):
            current = line.strip()
            found[current] = {}
            continue
        name, jobs, _, cost = line.split()
        found[current][name] = (int(jobs), cost)
    return found


async def _expected(db: Pool, day: date, column: str) -> dict[str, tuple[int, str]]:
    rows = await _rows(
        db,
        f"SELECT {column} AS name, count(*) AS jobs, sum(cost_usd) AS cost FROM provider_costs"
        " WHERE (recorded_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1",
        day,
    )
    return {r["name"]: (r["jobs"], f"${r['cost']:.4f}") for r in rows}


async def test_bitbuddies_costs_sums_the_day_per_step_and_per_endpoint(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    await _generate(http, db)
    day = await _today(db)
    # Read the database before and after the command: equal, nothing recorded between
    # (a job of an earlier test's generation may still end meanwhile: then again).
    for _ in range(5):
        steps, apps = await _expected(db, day, "step"), await _expected(db, day, "app")
        done = await asyncio.to_thread(bitbuddies, stack, "costs", "--days", "2")
        if (steps, apps) == (await _expected(db, day, "step"), await _expected(db, day, "app")):
            break
    print(done.stdout)  # shown when the test fails
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("provider spend, last 2 days (UTC): $")
    found = _sections(done.stdout, day)
    assert found["per step"] == steps
    assert found["per endpoint"] == apps
    jobs = sum(n for n, _ in steps.values())
    total = sum(Decimal(cost[1:]) for _, cost in steps.values())
    assert found["head"]["day"][1] == f"${total:.4f}  {jobs} jobs"
    assert {"animate", "cartoonify", "segment_video"} <= set(steps)
    assert "per generation: $" in done.stdout

    refused = bitbuddies(stack, "costs", "--days", "0")
    assert refused.returncode == 2


async def test_the_daily_spend_alert_is_raised_once_a_day_whatever_runs_after(
    stack: Stack, http: httpx.AsyncClient, db: Pool, pushover: Pushover
) -> None:
    day = await _today(db)
    # This session's generations pass the threshold within a few (one each, if need be).
    for _ in range(3):
        [spent] = await _rows(
            db,
            "SELECT coalesce(sum(cost_usd), 0) AS total FROM provider_costs"
            " WHERE (recorded_at AT TIME ZONE 'UTC')::date = %s",
            day,
        )
        if spent["total"] > THRESHOLD:
            break
        await _generate(http, db)

    async def raised() -> bool:
        return bool(await _spend_alerts(db, day))

    await wait_until(raised, timeout=30)
    await _generate(http, db)  # more spend, the same day: no second alert
    [alert] = await _spend_alerts(db, day)
    assert (alert["kind"], alert["priority"]) == ("daily_spend", 1)
    assert alert["delivery"] == "sent"
    lines = dict(line.split(": ", 1) for line in alert["message"].splitlines()[1:])
    assert lines["day"] == f"{day.isoformat()} (UTC)"
    assert Decimal(lines["total"].lstrip("$")) > THRESHOLD
    assert lines["threshold"] == f"${THRESHOLD:.2f}"
    assert lines["top steps"].startswith("animate $")  # the priciest step
    assert "bitbuddies/animate $" in lines["top endpoints"]
    assert alert["generation_id"] is None and alert["user_id"] is None  # spend, nobody's
    # on the phone (again only if an earlier test cleared the alerts table meanwhile)
    assert pushover.messages(lambda m: m["title"] == alert["title"])


async def _spend_alerts(db: Pool, day: date) -> list[dict[str, Any]]:
    return await _rows(
        db,
        "SELECT * FROM alerts WHERE kind = 'daily_spend'"
        " AND (created_at AT TIME ZONE 'UTC')::date = %s",
        day,
    )


async def test_a_retried_fetch_records_its_job_once_and_a_gone_generation_anonymously(
    http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = await insert_generation(db, uuid.UUID(user.id))
    job = {"idempotency_key": f"k-{uuid.uuid4()}", "step": "animate", "app": "bitbuddies/animate"}
    async with db.connection() as conn:
        first = await costs.record(
            conn,
            request_id="r-1-" + job["idempotency_key"],
            generation_id=str(generation_id),
            cost_usd=0.0,
            **job,
        )
        again = await costs.record(
            conn,
            request_id="r-1-" + job["idempotency_key"],
            generation_id=str(generation_id),
            cost_usd=0.0,
            **job,
        )
        # a fetch that ends after the account's deletion erased the generation
        gone = await costs.record(
            conn,
            request_id="r-2-" + job["idempotency_key"],
            generation_id=str(uuid.uuid4()),
            cost_usd=0.0,
            **job,
        )
    assert (first.inserted, again.inserted, gone.inserted) == (True, False, True)
    assert first.day == again.day == await _today(db)
    rows = await _rows(
        db,
        "SELECT request_id, generation_id, seconds FROM provider_costs WHERE request_id LIKE %s"
        " ORDER BY request_id",
        "%" + job["idempotency_key"],
    )
    assert [(r["request_id"][:3], r["generation_id"]) for r in rows] == [
        ("r-1", generation_id),
        ("r-2", None),
    ]
    assert [r["seconds"] for r in rows] == [0, 0]  # no submission recorded for these
