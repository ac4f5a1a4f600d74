"""Owner alerts: what went wrong, for whom, where, and a link to the workflow in the
Temporal UI, on the owner's phone (Pushover) or, without Pushover keys, in the log.

Every alert is recorded first (the ``alerts`` table, infra/database/alerts.py), then
delivered; ``bitbuddies alerts`` lists them. The rules, all here:

- **Kinds and priorities**: ``KINDS`` below. A refund that failed is an emergency
  (Pushover priority 2: repeated every ``alert_emergency_retry_seconds`` until
  acknowledged, for ``alert_emergency_expire_seconds``). A refused photo is no alert at
  all (the workflow sends none).
- **Dedupe**: an alert whose kind, step and error class (its ``dedupe_key``) match one
  delivered within ``alert_dedupe_seconds`` is recorded as suppressed, not sent: one
  outage, one alert.
- **Digest**: ``send_digests``, run by the ``bitbuddies-alert-digest`` Temporal Schedule
  every ``alert_digest_interval_seconds``, sends one message per group of suppressed
  alerts ("37 more generations failed at animate in the last 5 minutes"), counting each
  suppressed alert once. It also delivers alerts recorded but never delivered (their
  sender died or Pushover was down), so no alert is lost.

Senders: the ``send_alert`` activity (a generation that failed, from the workflow, after
it settled, so an alert never holds up a refund; retried by Temporal when delivery
fails), the housekeeping sweep (a stuck generation, a refund that failed), the model
activities (the provider refusing our account: ``provider_account_problem`` in
activities/models.py; and a day's provider spend passing ``daily_spend_alert_usd``:
``spend_alert``), and billing's reconciliation (``reconciliation_alert``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote
from uuid import UUID

from psycopg_pool import AsyncConnectionPool
from pushover_complete import PushoverAPI
from temporalio.api.enums.v1 import TimeoutType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client

from activities.model_errors import TRANSIENT_MODEL_ERRORS
from infra.database import alerts as repo
from infra.database.alerts import Alert, NewAlert
from infra.settings import Settings
from workflows import contract
from workflows.contract import AlertInput, DigestReport

log = logging.getLogger("bitbuddies.alerts")
TIMEOUT_SECONDS = 10.0
# Pushover's limits: longer text is cut.
TITLE_CHARS, MESSAGE_CHARS, URL_CHARS = 250, 1024, 512
ERROR_CHARS = 700
# An alert recorded this long ago and still not delivered lost its sender: the digest
# delivers it.
REDELIVER_AFTER = timedelta(minutes=1)


@dataclass(frozen=True)
class Kind:
    priority: int  # Pushover's: -2 (silent) .. 2 (emergency)
    what: str  # the alert, in a few words
    repeats: str  # the digest's "N more <repeats> at <step>"


KINDS: Final[dict[str, Kind]] = {
    "refund_failed": Kind(2, "a refund failed", "refunds failed"),
    "provider_outage": Kind(1, "the model provider is failing", "provider failures"),
    "stuck_generation": Kind(1, "a generation was stuck", "generations were stuck"),
    "generation_failed": Kind(0, "a generation failed", "generations failed"),
    "reconciliation": Kind(0, "a reconciliation fixed something", "reconciliation fixes"),
    "payment_disputed": Kind(1, "a payment was disputed", "payments disputed"),
    "daily_spend": Kind(1, "a day's provider spend passed its alert", "spend alerts"),
}
DIGEST: Final = "digest"  # the kind of a digest's own record


def priority_of(kind: str) -> int:
    return KINDS[kind].priority if kind in KINDS else 1


def dedupe_key(kind: str, step: str, error_class: str) -> str:
    return f"{kind}:{step or '-'}:{error_class or '-'}"


def workflow_link(settings: Settings, workflow_id: str, run_id: str | None = None) -> str:
    """The Temporal UI page of a workflow (of one run, when known): where to look first."""
    base = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
    return f"{base}/workflows/{workflow_id}" + (f"/{run_id}/history" if run_id else "")


def failed_workflows_link(settings: Settings) -> str:
    """The Temporal UI's list of failed BitBuddy workflows (a digest's link)."""
    query = f'WorkflowType="{contract.WORKFLOW_NAME}" AND ExecutionStatus="Failed"'
    base = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
    return f"{base}/workflows?query={quote(query)}"


def _refunded(refunded: bool | None) -> str:
    if refunded is None:
        return "unknown: check the ledger"
    return "yes" if refunded else "NO: check the ledger"


def generation_alert(
    settings: Settings,
    kind: str,
    *,
    source_key: str,
    title: str,
    user_id: str | None,
    generation_id: str | None,
    step: str,
    error_class: str,
    error: str,
    refunded: bool | None,
    workflow_id: str | None = None,
    run_id: str | None = None,
) -> NewAlert:
    """An alert about one generation, with every field the owner needs on the phone."""
    workflow_id = workflow_id or generation_id
    lines = [
        KINDS[kind].what if kind in KINDS else kind,
        f"user: {user_id or '-'}",
        f"generation: {generation_id or '-'}",
        f"step: {step or '-'}",
        f"refunded: {_refunded(refunded)}",
        # last, and cut, so the message fits Pushover's limit with every line above
        f"error: {error_class}: {error}"[:ERROR_CHARS],
    ]
    return NewAlert(
        source_key=source_key,
        kind=kind,
        dedupe_key=dedupe_key(kind, step, error_class),
        title=title,
        message="\n".join(lines),
        priority=priority_of(kind),
        user_id=_uuid(user_id),
        generation_id=_uuid(generation_id),
        workflow_id=workflow_id,
        run_id=run_id,
        step=step or None,
        error_class=error_class,
        refunded=refunded,
        link=workflow_link(settings, workflow_id, run_id) if workflow_id else None,
    )


def payment_alert(
    settings: Settings,
    *,
    source_key: str,
    title: str,
    user_id: str | None,
    payment_intent: str | None,
    error_class: str,
    detail: str,
) -> NewAlert:
    """A payment disputed at Stripe: who, what it took back, and where to answer it
    (Stripe's dashboard, within the dispute's deadline)."""
    kind = "payment_disputed"
    lines = [KINDS[kind].what, f"user: {user_id or '-'}", f"payment: {payment_intent or '-'}"]
    lines.append(f"{error_class}: {detail}"[:ERROR_CHARS])
    return NewAlert(
        source_key=source_key,
        kind=kind,
        dedupe_key=dedupe_key(kind, "payment", error_class),
        title=title,
        message="\n".join(lines),
        priority=priority_of(kind),
        user_id=_uuid(user_id),
        step="payment",
        error_class=error_class,
        link=f"{STRIPE_DASHBOARD}/payments/{payment_intent}" if payment_intent else None,
    )


STRIPE_DASHBOARD = "https://dashboard.stripe.com"


def spend_alert(
    day: date,
    total: Decimal,
    threshold: float,
    top_steps: list[tuple[str, int, Decimal]],
    top_apps: list[tuple[str, int, Decimal]],
) -> NewAlert:
    """The day's (UTC) provider spend passed ``daily_spend_alert_usd``: once per day (its
    source key names the day), with where the money went (step or endpoint, jobs, USD)."""
    kind = "daily_spend"

    def spent(rows: list[tuple[str, int, Decimal]]) -> str:
        return ", ".join(f"{name} ${cost:.2f} ({jobs} jobs)" for name, jobs, cost in rows) or "-"

    lines = [
        KINDS[kind].what,
        f"day: {day.isoformat()} (UTC)",
        f"total: ${total:.2f}",
        f"threshold: ${threshold:.2f}",
        f"top steps: {spent(top_steps)}",
        f"top endpoints: {spent(top_apps)}"[:ERROR_CHARS],
    ]
    return NewAlert(
        source_key=f"daily-spend:{day.isoformat()}",
        kind=kind,
        dedupe_key=dedupe_key(kind, "-", day.isoformat()),
        title=f"Provider spend on {day.isoformat()} passed ${threshold:.2f}: ${total:.2f}",
        message="\n".join(lines),
        priority=priority_of(kind),
        error_class=day.isoformat(),
    )


def from_workflow(
    settings: Settings, alert: AlertInput, *, source_key: str, error_class: str | None
) -> NewAlert:
    """The record of an alert the BitBuddy workflow sent (workflows/contract.py's
    failure_alert). A step that failed for a transient reason through every retry and
    resubmission means the provider keeps failing: a provider outage."""
    error_class = error_class or "unknown"
    kind = alert.kind if alert.kind in KINDS else "generation_failed"
    if kind == "generation_failed" and error_class in TRANSIENT_MODEL_ERRORS:
        kind = "provider_outage"
    return generation_alert(
        settings,
        kind,
        source_key=source_key,
        title=alert.title,
        user_id=alert.user_id,
        generation_id=alert.workflow_id,
        step=alert.step,
        error_class=error_class,
        error=alert.error or alert.message,
        refunded=alert.refunded,
        workflow_id=alert.workflow_id,
        run_id=alert.run_id,
    )


def reconciliation_alert(
    settings: Settings,
    *,
    source_key: str,
    what: str,
    fixed: str,
    user_id: str | None = None,
    generation_id: str | None = None,
    title: str | None = None,
) -> NewAlert:
    """A reconciliation (billing) that found something wrong and fixed it: ``what`` it
    checked (the dedupe's step), ``fixed``, what it changed; ``title`` when the phone
    should say more than "Reconciliation fixed <what>"."""
    return generation_alert(
        settings,
        "reconciliation",
        source_key=source_key,
        title=title or f"Reconciliation fixed {what}",
        user_id=user_id,
        generation_id=generation_id,
        step=what,
        error_class="fixed",
        error=fixed,
        refunded=None,
    )


async def raise_alert(db: AsyncConnectionPool[Any], settings: Settings, alert: NewAlert) -> Alert:
    """Record the alert (once per ``source_key``, whoever asks again), deduplicated, and
    deliver it unless suppressed. Raises when delivery fails: the record stays pending,
    so a retry (or the digest) delivers it."""
    recorded = await record(db, settings, alert)
    if recorded.delivery == "pending":
        return await deliver(db, settings, recorded)
    return recorded


async def record(db: AsyncConnectionPool[Any], settings: Settings, alert: NewAlert) -> Alert:
    """Record it, suppressed when one of its dedupe key was delivered within the window."""
    window = timedelta(seconds=settings.alert_dedupe_seconds)
    async with db.connection() as conn, conn.transaction():
        existing = await repo.by_source(conn, alert.source_key)
        if existing is not None:
            return existing
        await repo.lock_dedupe_key(conn, alert.dedupe_key)
        repeat = await repo.lead_within(conn, alert.dedupe_key, window)
        recorded = await repo.insert(conn, alert, "suppressed" if repeat else "pending")
    if repeat:
        log.warning(
            "alert suppressed (a %s alert was sent within %.0f s): %s",
            alert.dedupe_key,
            settings.alert_dedupe_seconds,
            alert.title,
            extra={"generation_id": alert.generation_id, "user_id": alert.user_id},
        )
    return recorded


async def deliver(db: AsyncConnectionPool[Any], settings: Settings, alert: Alert) -> Alert:
    """Send it to Pushover, or to the log without keys; mark it so."""
    if settings.pushover_token is None or settings.pushover_user is None:
        log.error(
            "ALERT (Pushover not configured: set PUSHOVER_TOKEN and PUSHOVER_USER to get it on"
            " your phone) %s: %s %s",
            alert.title,
            alert.message.replace("\n", " | "),
            alert.link or "",
            extra={"generation_id": alert.generation_id, "user_id": alert.user_id},
        )
        delivery: repo.Delivery = "logged"
    else:
        await asyncio.to_thread(_push, settings, alert)
        log.info("alert sent to the owner's phone: %s", alert.title)
        delivery = "sent"
    async with db.connection() as conn:
        await repo.mark_delivered(conn, alert.id, delivery)
    return await _reread(db, alert)


async def send_digests(db: AsyncConnectionPool[Any], settings: Settings) -> DigestReport:
    """Deliver alerts left undelivered, then one digest per group of suppressed alerts
    not yet counted. A digest that could not be delivered stays pending: the next run
    delivers it (each suppressed alert is counted in one digest only)."""
    report = DigestReport()
    failures: list[BaseException] = []
    async with db.connection() as conn:
        stranded = await repo.undelivered(conn, REDELIVER_AFTER)
        groups = await repo.suppressed_groups(conn)
    for alert in stranded:
        try:
            await deliver(db, settings, alert)
            report.redelivered += 1
        except Exception as err:  # the others still go; raised below, to be retried
            log.warning("could not deliver alert %d", alert.id, exc_info=True)
            failures.append(err)
    now = datetime.now(UTC)
    for group in groups:
        async with db.connection() as conn, conn.transaction():
            await repo.lock_dedupe_key(conn, group.dedupe_key)
            ids = await repo.undigested_ids(conn, group.dedupe_key)  # a digest at once
            if not ids:
                continue
            digest = await repo.insert(conn, _digest(settings, group, ids, now), "pending")
            report.alerts_counted += await repo.mark_digested(conn, ids, digest.id)
        try:
            await deliver(db, settings, digest)
            report.digests_sent += 1
        except Exception as err:
            log.warning("could not deliver digest %d", digest.id, exc_info=True)
            failures.append(err)
    if failures:
        raise failures[0]
    return report


def _digest(
    settings: Settings, group: repo.SuppressedGroup, ids: list[int], now: datetime
) -> NewAlert:
    kind = KINDS.get(group.kind)
    repeats = kind.repeats if kind else f"{group.kind} alerts"
    minutes = max(1, math.ceil((now - group.first_at).total_seconds() / 60))
    period = "minute" if minutes == 1 else f"{minutes} minutes"
    step = group.step or "-"
    text = f"{len(ids)} more {repeats} at {step} in the last {period}"
    return NewAlert(
        source_key=f"digest:{ids[0]}",
        kind=DIGEST,
        dedupe_key=group.dedupe_key,
        title=f"BitBuddies: {len(ids)} more at {step}",
        message=f"{text}\nerror: {group.error_class or '-'}\nkind: {group.kind}",
        # a follow-up to an alert already on the phone: never an emergency again
        priority=min(priority_of(group.kind), 1),
        step=group.step,
        error_class=group.error_class,
        link=failed_workflows_link(settings),
        digest_count=len(ids),
    )


async def ending_error_class(client: Client, workflow_id: str, run_id: str | None) -> str | None:
    """The error type of the activity failure that ended a workflow run: the innermost
    ApplicationError's type (e.g. ``ModelJobFailed``, ``TranscodeError``), or the kind of
    timeout. Read from the run's history, as the workflow's alert names only the step."""
    last: Failure | None = None
    async for event in client.get_workflow_handle(
        workflow_id, run_id=run_id
    ).fetch_history_events():
        if event.HasField("activity_task_failed_event_attributes"):
            last = event.activity_task_failed_event_attributes.failure
        elif event.HasField("activity_task_timed_out_event_attributes"):
            last = event.activity_task_timed_out_event_attributes.failure
    return None if last is None else failure_class(last)


def failure_class(failure: Failure) -> str:
    found = "ActivityFailure"
    seen: Failure | None = failure
    while seen is not None:
        if seen.HasField("application_failure_info") and seen.application_failure_info.type:
            found = seen.application_failure_info.type
        elif seen.HasField("timeout_failure_info"):
            found = TimeoutType.Name(seen.timeout_failure_info.timeout_type).removeprefix(
                "TIMEOUT_TYPE_"
            )
        seen = seen.cause if seen.HasField("cause") else None
    return found


async def _reread(db: AsyncConnectionPool[Any], alert: Alert) -> Alert:
    async with db.connection() as conn:
        return await repo.by_source(conn, alert.source_key) or alert


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


class _PushoverWithTimeout(PushoverAPI):  # type: ignore[misc]
    """pushover_complete posts to a module-level URL with no timeout; give it both."""

    def __init__(self, token: str, base_url: str) -> None:
        super().__init__(token)
        self._base_url = base_url.rstrip("/") + "/"

    def _generic_post(
        self,
        endpoint: str,
        url_parameter: str | None = None,
        payload: dict[str, Any] | None = None,
        session: Any = None,
        files: Any = None,
    ) -> Any:
        import requests
        from pushover_complete.error import BadAPIRequestError

        body = dict(payload or {})
        body["token"] = self.token
        post = session.post if session else requests.post
        response = post(
            self._base_url + endpoint.format(url_parameter),
            data=body,
            files=files,
            timeout=TIMEOUT_SECONDS,
        )
        answer = response.json()
        if answer.get("status") != 1:
            raise BadAPIRequestError(f"{response.status_code}: {answer.get('errors')}")
        return answer


def _push(settings: Settings, alert: Alert) -> None:
    """One Pushover message (blocking: run it in a thread). Raises when Pushover refuses
    it or cannot be reached."""
    assert settings.pushover_token is not None and settings.pushover_user is not None
    api = _PushoverWithTimeout(
        settings.pushover_token.get_secret_value(), settings.pushover_api_url
    )
    emergency = alert.priority == 2
    api.send_message(
        settings.pushover_user.get_secret_value(),
        alert.message[:MESSAGE_CHARS],
        title=alert.title[:TITLE_CHARS],
        url=(alert.link or "")[:URL_CHARS] or None,
        url_title="Open in Temporal" if alert.link else None,
        priority=alert.priority,
        retry=settings.alert_emergency_retry_seconds if emergency else None,
        expire=settings.alert_emergency_expire_seconds if emergency else None,
    )
