"""Owner alerts' rules (infra/alerts.py) against the session's PostgreSQL and the local
Pushover stand-in, called in-process: dedupe, the digest, the log without keys, the
owner's command line, and the provider's account refusals."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path

import fal_client
import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from activities.models import provider_account_problem
from infra import alerts
from infra.database.alerts import NewAlert
from infra.settings import Settings
from tests.conftest import Stack
from tests.support.pushover import Pushover
from workflows.contract import AlertInput, failure_alert

Pool = AsyncConnectionPool  # type: ignore[type-arg]


def _settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def _alert(settings: Settings, kind: str, step: str, *, error_class: str) -> NewAlert:
    generation = str(uuid.uuid4())
    return alerts.generation_alert(
        settings,
        kind,
        source_key=f"test:{generation}",
        title=f"test {kind} at {step}",
        user_id=str(uuid.uuid4()),
        generation_id=generation,
        step=step,
        error_class=error_class,
        error="boom",
        refunded=True,
    )


async def _rows(db: Pool, dedupe_key: str) -> list[dict]:  # type: ignore[type-arg]
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, delivery, digest_count, digested_in FROM alerts"
            " WHERE dedupe_key = %s ORDER BY id",
            (dedupe_key,),
        )
        return await cur.fetchall()


async def test_repeats_within_the_window_are_suppressed_then_counted_in_one_digest(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    error_class = f"Err{uuid.uuid4().hex[:8]}"  # a group of this test's own
    sent = [
        await alerts.raise_alert(
            db, settings, _alert(settings, "generation_failed", "animate", error_class=error_class)
        )
        for _ in range(4)
    ]
    assert [a.delivery for a in sent] == ["sent", "suppressed", "suppressed", "suppressed"]
    assert len(pushover.messages(lambda m: error_class in m["message"])) == 1

    report = await alerts.send_digests(db, settings)
    assert report.digests_sent >= 1 and report.alerts_counted >= 3
    digests = pushover.messages(lambda m: error_class in m["message"] and "more" in m["message"])
    assert len(digests) == 1
    assert digests[0]["message"].startswith(
        "3 more generations failed at animate in the last minute"
    )
    assert digests[0]["priority"] == "0"
    assert digests[0]["url"] == alerts.failed_workflows_link(settings)
    # once: a second digest finds nothing left to count
    await alerts.send_digests(db, settings)
    assert len(pushover.messages(lambda m: error_class in m["message"])) == 2
    rows = await _rows(db, alerts.dedupe_key("generation_failed", "animate", error_class))
    assert [r["delivery"] for r in rows] == [
        "sent",
        "suppressed",
        "suppressed",
        "suppressed",
        "sent",
    ]
    assert rows[-1]["kind"] == "digest" and rows[-1]["digest_count"] == 3
    assert all(r["digested_in"] is not None for r in rows[1:4])


async def test_another_step_or_error_class_is_another_alert(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    error_class = f"Err{uuid.uuid4().hex[:8]}"
    first = await alerts.raise_alert(
        db, settings, _alert(settings, "generation_failed", "animate", error_class=error_class)
    )
    other_step = await alerts.raise_alert(
        db, settings, _alert(settings, "generation_failed", "cartoonify", error_class=error_class)
    )
    other_error = await alerts.raise_alert(
        db,
        settings,
        _alert(settings, "generation_failed", "animate", error_class=error_class + "X"),
    )
    assert (first.delivery, other_step.delivery, other_error.delivery) == ("sent",) * 3


async def test_the_same_source_is_recorded_and_sent_once(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    alert = _alert(settings, "stuck_generation", "analyze", error_class=uuid.uuid4().hex)
    first = await alerts.raise_alert(db, settings, alert)
    again = await alerts.raise_alert(db, settings, alert)  # a retried activity
    assert again.id == first.id and again.delivery == "sent"
    assert len(pushover.about(str(alert.generation_id))) == 1


async def test_a_failed_delivery_raises_and_the_digest_delivers_it_later(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    alert = _alert(settings, "generation_failed", "segment_image", error_class=uuid.uuid4().hex)
    pushover.fail_next(1, where=lambda fields: alert.error_class in fields.get("message", ""))
    with pytest.raises(Exception, match="injected outage"):
        await alerts.raise_alert(db, settings, alert)
    async with db.connection() as conn:
        await conn.execute(  # as if its sender had died a while ago
            "UPDATE alerts SET created_at = now() - interval '2 minutes' WHERE source_key = %s",
            (alert.source_key,),
        )
    report = await alerts.send_digests(db, settings)
    assert report.redelivered >= 1
    assert len(pushover.about(str(alert.generation_id))) == 1


async def test_a_failed_refund_is_an_emergency_with_retry_and_expire(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    alert = _alert(settings, "refund_failed", "animate", error_class=uuid.uuid4().hex)
    await alerts.raise_alert(db, settings, alert)
    [message] = pushover.about(str(alert.generation_id))
    assert message["priority"] == "2"
    assert message["retry"] == str(settings.alert_emergency_retry_seconds)
    assert message["expire"] == str(settings.alert_emergency_expire_seconds)


async def test_without_pushover_keys_the_alert_goes_to_the_log_and_the_table(
    stack: Stack, db: Pool, pushover: Pushover, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(pushover_token=None, pushover_user=None)
    alert = _alert(settings, "generation_failed", "animate", error_class=uuid.uuid4().hex)
    with caplog.at_level(logging.ERROR, logger="bitbuddies.alerts"):
        recorded = await alerts.raise_alert(db, settings, alert)
    assert recorded.delivery == "logged"
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        alert.title in line and str(alert.generation_id) in line and str(alert.link) in line
        for line in logged
    ), logged
    assert pushover.about(str(alert.generation_id)) == []


async def test_the_cli_lists_recent_alerts_with_their_links(
    stack: Stack, db: Pool, pushover: Pushover
) -> None:
    settings = _settings()
    error_class = uuid.uuid4().hex
    lead = _alert(settings, "provider_outage", "animate", error_class=error_class)
    repeat = _alert(settings, "provider_outage", "animate", error_class=error_class)
    await alerts.raise_alert(db, settings, lead)
    await alerts.raise_alert(db, settings, repeat)
    listed = subprocess.run(
        [sys.executable, "-m", "infra.cli", "alerts", "--since", "1h", "--limit", "200"],
        env=stack.cfg.app_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for alert, delivery in ((lead, "sent"), (repeat, "suppressed")):
        block = next(b for b in listed.split("\n#") if str(alert.generation_id) in b)
        assert f"provider_outage  priority 1  {delivery}" in block
        assert alert.title in block and str(alert.user_id) in block
        assert str(alert.link) in block
    # the installed console script is the same command
    script = subprocess.run(
        [str(Path(sys.executable).with_name("bitbuddies")), "alerts", "--limit", "1"],
        env=stack.cfg.app_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0 and "priority" in script.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "infra.cli", "alerts", "--since", "yesterday"],
        env=stack.cfg.app_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "not a duration" in bad.stderr


# --- without the stack ------------------------------------------------------------------


def _http_error(status: int, detail: str) -> fal_client.client.FalClientHTTPError:
    request = httpx.Request("POST", "https://queue.fal.run/x/y")
    return fal_client.client.FalClientHTTPError(
        detail, status, {}, response=httpx.Response(status, request=request)
    )


@pytest.mark.parametrize(
    ("status", "detail", "problem"),
    [
        (
            403,
            "User is locked. Reason: Exhausted balance. Top up your balance at"
            " fal.ai/dashboard/billing.",
            "balance_exhausted",
        ),
        (403, "User is locked.", "account_locked"),
        (403, "Forbidden", None),
        (422, "Exhausted balance", None),
    ],
)
def test_the_provider_refusing_our_account_is_told_apart(
    status: int, detail: str, problem: str | None
) -> None:
    assert provider_account_problem(_http_error(status, detail)) == problem


def test_a_step_that_kept_failing_transiently_is_a_provider_outage() -> None:
    settings = _settings()
    alert = failure_alert(
        what="failed",
        step="animate",
        detail="boom",
        refunded=True,
        workflow_id=str(uuid.uuid4()),
        run_id="r",
        user_id=str(uuid.uuid4()),
    )
    outage = alerts.from_workflow(
        settings, alert, source_key="s", error_class="ModelProviderUnavailable"
    )
    failed = alerts.from_workflow(settings, alert, source_key="s", error_class="ModelJobFailed")
    assert (outage.kind, outage.priority) == ("provider_outage", 1)
    assert (failed.kind, failed.priority) == ("generation_failed", 0)


def test_an_alert_from_a_history_before_the_new_fields_still_decodes_and_sends() -> None:
    old = AlertInput(
        title="BitBuddy failed at animate",
        message="boom",
        workflow_id="w",
        run_id=None,
        user_id="u",
    )
    new = alerts.from_workflow(_settings(), old, source_key="s", error_class=None)
    assert new.kind == "generation_failed" and "refunded: unknown" in new.message


def test_every_kind_has_a_pushover_priority() -> None:
    assert {k: v.priority for k, v in alerts.KINDS.items()} == {
        "refund_failed": 2,
        "provider_outage": 1,
        "stuck_generation": 1,
        "generation_failed": 0,
        "reconciliation": 0,
        "payment_disputed": 1,
        "daily_spend": 1,
    }
