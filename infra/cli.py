"""``bitbuddies``: the owner's command line. One subcommand per job, each a function that
takes its parsed arguments and the settings (DATABASE_URL and the rest, as every process
reads them: infra/settings.py) and returns the exit status. ``COMMANDS`` registers them.

    bitbuddies alerts [--since 1h] [--limit 50]   recent owner alerts, newest first
    bitbuddies inspect GENERATION_ID              one generation, from a user's complaint to
                                                  the failing step: its row, its workflow's
                                                  timeline (infra/inspect.py) and the Temporal
                                                  UI link, its ledger entries, provider jobs
                                                  and their costs, and owner alerts
    bitbuddies grant EMAIL TOKENS --reason TEXT [--key KEY]
                                                  an owner's grant, once per key (one is
                                                  made and printed when none is given)
    bitbuddies ledger EMAIL [--limit 50]          a user's balance and entries, newest first
    bitbuddies check-ledger                       the ledger's invariant; each violation
    bitbuddies reconcile [--timeout 5m]           billing's reconciliation now: triggers its
                                                  schedule, waits for that run, prints what
                                                  it refunded, credited and found
    bitbuddies costs [--days 7]                   provider spend: per day, step and endpoint
                                                  (jobs, USD, time), and the average per
                                                  generation
    bitbuddies promote-version BUILD_ID [--pool P] [--timeout 10m]
                                                  a deploy's step: once that build's workers
                                                  poll every pool's task queue (an optional
                                                  pool's only while any worker polls it, or
                                                  the pools named), make it the
                                                  Worker Deployment's current version (new
                                                  generations and the next step of running
                                                  ones go to it; infra/versioning.py); an
                                                  older build id rolls back

``inspect`` exits 1 for an id no generation has, or when Temporal could not be read (what
the database holds is printed all the same), and 2 for an id that is not a UUID.
``grant`` and ``ledger`` exit 1 for an email no account has (``grant`` also for a key that
granted another amount or to another user); ``check-ledger`` exits 1 when the invariant
is broken (``billing.ledger.check_invariant``), printing each violation; ``reconcile``
exits 1 when the run found violations, or could not be started or waited for;
``promote-version`` exits 1 when the build's workers did not all poll in time or Temporal
refused the version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from billing import ledger
from infra import inspect
from infra.alerts import workflow_link
from infra.database import alerts as alerts_repo
from infra.database import costs as costs_repo
from infra.database import permits as permits_repo
from infra.database import records
from infra.settings import Settings, get_settings
from infra.temporal import connect
from workflows import contract
from workflows.contract import ReconcileReport

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 1h or 7d")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


# --- alerts ---------------------------------------------------------------------------


def _alerts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=duration, default=timedelta(hours=24), help="how far back (24h)"
    )
    parser.add_argument("--limit", type=int, default=50, help="at most this many (50)")


async def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        found = await alerts_repo.recent(conn, args.since, limit=args.limit)
    if not found:
        print(f"no alerts in the last {args.since}")
        return 0
    for alert in found:
        counted = f" ({alert.digest_count} counted)" if alert.digest_count is not None else ""
        print(
            f"#{alert.id}  {alert.created_at:%Y-%m-%d %H:%M:%S %Z}  {alert.kind}"
            f"  priority {alert.priority}  {alert.delivery}{counted}"
        )
        print(f"    {alert.title}")
        print(f"    user {alert.user_id or '-'}  generation {alert.generation_id or '-'}")
        print(f"    {alert.link or '-'}")
    return 0


# --- inspect --------------------------------------------------------------------------

TEMPORAL_TIMEOUT = timedelta(seconds=15)
NO_WORKFLOW = (
    "no workflow with this id in Temporal: it never started (or its history is past the"
    " namespace's retention)"
)


def generation_id(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a generation id (a UUID)") from None


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "generation_id",
        type=generation_id,
        metavar="GENERATION_ID",
        help="the generation's id, which is also its workflow's id",
    )


@dataclass(frozen=True)
class _Workflow:
    timeline: inspect.Timeline | None  # None: no run in Temporal, or Temporal unreadable
    problem: str | None = None  # why Temporal could not be read


async def _inspect(args: argparse.Namespace, settings: Settings) -> int:
    gid: UUID = args.generation_id
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        generation = await records.generation(conn, gid)
        if generation is None:
            print(f"no generation {gid}", file=sys.stderr)
            return 1
        entries = await ledger.entries_for_generation(conn, gid)
        jobs = await permits_repo.jobs_for_generation(conn, gid)
        job_costs = await costs_repo.for_generation(conn, gid)
        alerts = await alerts_repo.for_generation(conn, gid)
    workflow = await _read_workflow(settings, str(gid))

    _print_generation(generation)
    _print_workflow(settings, str(gid), workflow)
    _print_ledger(entries)
    _print_jobs(jobs)
    _print_costs(job_costs)
    _print_alerts(alerts)
    return 1 if workflow.problem else 0


async def _read_workflow(settings: Settings, workflow_id: str) -> _Workflow:
    """The latest run's timeline (with a running run's pending activities), or why none."""
    rpc_timeout = TEMPORAL_TIMEOUT
    try:
        client = await asyncio.wait_for(connect(settings), rpc_timeout.total_seconds())
        description = await client.get_workflow_handle(workflow_id).describe(
            rpc_timeout=rpc_timeout
        )
        run = client.get_workflow_handle(workflow_id, run_id=description.run_id)
        history = await run.fetch_history(rpc_timeout=rpc_timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return _Workflow(None)
        return _Workflow(None, f"Temporal at {settings.temporal_address} answered: {err}")
    except (RuntimeError, TimeoutError, OSError) as err:
        return _Workflow(None, f"could not reach Temporal at {settings.temporal_address}: {err}")
    if not history.events:
        return _Workflow(None)
    return _Workflow(
        inspect.timeline(
            history.events,
            workflow_id=workflow_id,
            run_id=description.run_id,
            pending=description.raw_description.pending_activities,
        )
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S %Z}"


def _flat(text: str) -> str:
    """One line: a message may hold newlines (an HTTP error's advice, a traceback)."""
    return " ".join(text.split())


def _span(span: timedelta | None) -> str:
    if span is None:
        return "-"
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _print_generation(generation: records.Generation) -> None:
    print(f"generation {generation.id}")
    print(f"  user       {generation.user_id}")
    print(f"  status     {generation.status}  step {generation.step or '-'}")
    print(f"  created    {_when(generation.created_at)}")
    print(f"  updated    {_when(generation.updated_at)}")
    if generation.error_code or generation.error:
        print(f"  error      {generation.error_code or '-'}: {generation.error or '-'}")
    if generation.character_id:
        print(f"  character  {generation.character_id}")


def _print_workflow(settings: Settings, workflow_id: str, workflow: _Workflow) -> None:
    print()
    timeline = workflow.timeline
    if timeline is None:
        print("workflow")
        print(f"  {workflow.problem or NO_WORKFLOW}")
        return
    print(f"workflow {timeline.workflow_type}")
    print(f"  run        {timeline.run_id}")
    ended = f" after {_span(timeline.duration)}" if timeline.duration is not None else ""
    print(f"  status     {timeline.status}{ended}  (started {_when(timeline.started_at)})")
    if timeline.ending is not None:
        print(f"  ending     {timeline.ending.type}: {_flat(timeline.ending.message)}")
    print(f"  link       {workflow_link(settings, workflow_id, timeline.run_id)}")
    print()
    print("timeline (at: after the workflow started; took: until it closed, retries included)")
    print(f"  {'at':>9}  {'took':>7}  {'activity':<20} {'step':<28} {'attempt':>7}  outcome")
    for row in timeline.rows:
        _print_row(row)


def _print_row(row: inspect.Row) -> None:
    at = f"+{_span(row.at)}"
    if isinstance(row, inspect.ActivityRow):
        step = row.step or "-"
        if row.resubmission:
            step += f" (resubmission {row.resubmission})"
        flag = "!" if row.outcome in ("failed", "timed out") else " "
        attempt = str(row.attempt) if row.attempt else "-"
        print(
            f"{flag} {at:>9}  {_span(row.duration):>7}  {row.activity_type:<20} {step:<28}"
            f" {attempt:>7}  {row.outcome}"
        )
        if row.error is not None:
            why = f" (not retried: {row.retry_state})" if row.retry_state else ""
            print(f"{'':14}error: {row.error.type}: {_flat(row.error.message)}{why}")
        if row.last_failure is not None and row.attempt > 1:
            print(
                f"{'':14}attempt {row.attempt - 1} failed: {row.last_failure.type}:"
                f" {_flat(row.last_failure.message)}"
            )
    elif isinstance(row, inspect.TimerRow):
        wait = f"sleep {_span(row.fire_after)}"
        print(
            f"  {at:>9}  {_span(row.duration):>7}  {'timer ' + row.timer_id:<20} {wait:<28}"
            f" {'':>7}  {row.outcome}"
        )
    elif isinstance(row, inspect.SignalRow):
        print(
            f"  {at:>9}  {'':>7}  {'signal':<20} {row.name:<28} {'':>7}  by {row.identity or '?'}"
        )
    elif isinstance(row, inspect.CancelRequestRow):
        print(
            f"  {at:>9}  {'':>7}  {'cancel requested':<20} {row.cause or '-':<28} {'':>7}"
            f"  by {row.identity or '?'}"
        )
    else:
        print(f"! {at:>9}  {'':>7}  {'workflow task':<20} {row.cause:<28} {'':>7}  failed")
        print(f"{'':14}error: {_flat(row.message)}")


def _print_ledger(entries: list[ledger.LedgerEntry]) -> None:
    print()
    print("ledger")
    if not entries:
        print("  no entries")
    for entry in entries:
        refund_of = f"  refund of #{entry.refund_of}" if entry.refund_of is not None else ""
        print(
            f"  #{entry.id}  {_when(entry.created_at)}  {entry.kind:<8} {entry.delta:+d}"
            f"{refund_of}  key {entry.idempotency_key}"
        )
        if entry.reason:
            print(f"      reason: {_flat(entry.reason)}")


def _print_jobs(jobs: list[permits_repo.ProviderJob]) -> None:
    print()
    print("provider jobs")
    if not jobs:
        print("  none recorded")
    for job in jobs:
        print(f"  {_when(job.created_at)}  {job.step:<14} {job.app:<28} request {job.request_id}")


def _print_costs(job_costs: list[costs_repo.JobCost]) -> None:
    """What each fetched job cost (a job that never returned a result costs nothing we
    record), and the generation's total."""
    print()
    print("costs")
    if not job_costs:
        print("  none recorded")
        return
    for cost in job_costs:
        print(
            f"  {_when(cost.recorded_at)}  {cost.step:<14} {cost.app:<28}"
            f" {_span(timedelta(seconds=cost.seconds)):>7}  ${cost.cost_usd:.4f}"
            f"  request {cost.request_id}"
        )
    print(f"  total ${sum(c.cost_usd for c in job_costs):.4f}  ({len(job_costs)} jobs)")


def _print_alerts(alerts: list[alerts_repo.Alert]) -> None:
    print()
    print("alerts")
    if not alerts:
        print("  none")
    for alert in alerts:
        print(
            f"  #{alert.id}  {_when(alert.created_at)}  {alert.kind}  priority {alert.priority}"
            f"  {alert.delivery}"
        )
        print(f"      {alert.title}")
        refunded = {True: "yes", False: "NO", None: "unknown"}[alert.refunded]
        print(
            f"      step {alert.step or '-'}  error {alert.error_class or '-'}  refunded {refunded}"
        )
        print(f"      {alert.link or '-'}")


# --- the ledger: grants, a user's statement, the invariant --------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _grant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("email", metavar="EMAIL", help="the account's email")
    parser.add_argument("tokens", metavar="TOKENS", type=_positive, help="how many to add")
    parser.add_argument("--reason", required=True, help="why (the user sees it in their ledger)")
    parser.add_argument(
        "--key",
        help="makes the command safe to repeat: a repeat with the same key grants nothing"
        " more (one is made, and printed, when none is given)",
    )


async def _connect(settings: Settings) -> psycopg.AsyncConnection[dict[str, Any]]:
    return await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, row_factory=dict_row
    )


async def _grant(args: argparse.Namespace, settings: Settings) -> int:
    key: str = args.key or f"cli-{secrets.token_hex(8)}"
    if not args.key:
        # Printed before anything is written: if this command dies, the owner repeats it
        # with this key and it grants at most once.
        print(f"key {key}  (repeat with --key {key}: it grants once)", flush=True)
    async with await _connect(settings) as conn:
        user = await records.user_by_email(conn, args.email)
        if user is None:
            print(f"no account with the email {args.email!r}", file=sys.stderr)
            return 1
        try:
            async with conn.transaction():
                granted = await ledger.admin_grant(
                    conn, user.id, args.tokens, key=key, reason=args.reason
                )
        except ledger.LedgerError as err:
            print(f"not granted: {err}", file=sys.stderr)
            return 1
        balance = await ledger.balance(conn, user.id)
    entry = granted.entry
    if granted.made:
        print(f"granted {entry.delta:+d} to {user.email} ({user.id}): entry #{entry.id}")
    else:
        print(
            f"already granted under key {key}: entry #{entry.id}, {entry.delta:+d} to"
            f" {user.email} at {_when(entry.created_at)}; nothing more granted"
        )
    print(f"balance {balance}")
    return 0


def _ledger_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("email", metavar="EMAIL", help="the account's email")
    parser.add_argument("--limit", type=_positive, default=50, help="at most this many (50)")


async def _ledger(args: argparse.Namespace, settings: Settings) -> int:
    async with await _connect(settings) as conn:
        user = await records.user_by_email(conn, args.email)
        if user is None:
            print(f"no account with the email {args.email!r}", file=sys.stderr)
            return 1
        balance = await ledger.balance(conn, user.id)
        owed = await ledger.owed(conn, user.id)
        entries = await ledger.entries_for_user(conn, user.id, limit=args.limit)
    print(f"user {user.email} ({user.id})")
    print(f"balance {balance}")
    if owed:
        print(f"owed {owed} (a payment refunded or disputed after its tokens were spent)")
    print()
    print(f"entries, newest first (at most {args.limit})")
    if not entries:
        print("  none")
    for entry in entries:
        refund_of = f"  refund of #{entry.refund_of}" if entry.refund_of is not None else ""
        of = (
            f"payment {entry.payment_id}"
            if entry.payment_id
            else f"generation {entry.generation_id or '-'}"
        )
        print(
            f"  #{entry.id}  {_when(entry.created_at)}  {ledger.statement_kind(entry):<13}"
            f" {entry.delta:+d}  {of}{refund_of}"
        )
        if entry.reason:
            print(f"      reason: {_flat(entry.reason)}")
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


async def _check_ledger(args: argparse.Namespace, settings: Settings) -> int:
    async with await _connect(settings) as conn:
        violations = await ledger.check_invariant(conn)
    if not violations:
        print("the ledger's invariant holds")
        return 0
    print(f"{len(violations)} violation(s) of the ledger's invariant:")
    for violation in violations:
        print(f"  {violation}")
    return 1


# --- reconcile now ------------------------------------------------------------------

RECONCILE_POLL_SECONDS = 0.5


def _reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=duration, default=timedelta(minutes=5), help="how long to wait (5m)"
    )


async def reconcile_now(client: Client) -> tuple[str, ReconcileReport]:
    """Trigger the reconciliation's schedule (``temporal schedule trigger``; a run still
    going finishes first, then this one runs) and wait for the run it started: its
    workflow id and report. The caller bounds the wait."""
    handle = client.get_schedule_handle(contract.RECONCILE_SCHEDULE)

    async def started() -> set[tuple[str, str]]:
        """(workflow id, run id) of each run the schedule started lately. Run ids, as
        two runs a second apart share a workflow id (it ends with the time in seconds)."""
        info = (await handle.describe()).info
        actions = [r.action for r in info.recent_actions] + list(info.running_actions)
        return {
            (a.workflow_id, a.first_execution_run_id)
            for a in actions
            if isinstance(a, ScheduleActionExecutionStartWorkflow)
        }

    before = await started()
    await handle.trigger(overlap=ScheduleOverlapPolicy.BUFFER_ONE)
    while True:
        if new := await started() - before:
            break
        await asyncio.sleep(RECONCILE_POLL_SECONDS)
    workflow_id, run_id = sorted(new)[-1]  # workflow ids end with the run's time
    run = client.get_workflow_handle(workflow_id, run_id=run_id, result_type=ReconcileReport)
    report = await run.result()
    return workflow_id, report


async def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    try:
        async with asyncio.timeout(args.timeout.total_seconds()):
            client = await connect(settings)
            workflow_id, report = await reconcile_now(client)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            print(
                f"no schedule {contract.RECONCILE_SCHEDULE}: the housekeeping worker makes it"
                " when it starts",
                file=sys.stderr,
            )
        else:
            print(f"Temporal at {settings.temporal_address} answered: {err}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"the reconciliation did not end within {args.timeout}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as err:
        print(f"could not reach Temporal at {settings.temporal_address}: {err}", file=sys.stderr)
        return 1
    print(f"reconciliation {workflow_id}")
    print(f"  {workflow_link(settings, workflow_id)}")
    print(f"  refunded {len(report.refunded)}: {', '.join(report.refunded) or '-'}")
    print(f"  credited {len(report.credited)}: {', '.join(report.credited) or '-'}")
    stripe = "" if report.stripe_checked else " (Stripe could NOT be asked)"
    print(f"  paid sessions checked {report.sessions_checked}{stripe}")
    if not report.violations:
        print("  the ledger's invariant holds")
        return 0
    print(f"  {len(report.violations)} violation(s) of the ledger's invariant:")
    for violation in report.violations:
        print(f"    {violation}")
    return 1


# --- costs ----------------------------------------------------------------------------


def _costs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=_positive, default=7, help="the last this many UTC days, today too (7)"
    )


async def _costs(args: argparse.Namespace, settings: Settings) -> int:
    async with await _connect(settings) as conn:
        rows = await costs_repo.per_day(conn, args.days)
        generations = await costs_repo.per_generation(conn, args.days)
    if not rows:
        print(f"no provider jobs recorded in the last {args.days} days")
        return 0
    total = sum(row.cost_usd for row in rows)
    print(f"provider spend, last {args.days} days (UTC): ${total:.4f}, {_jobs(rows)} jobs")
    for day in sorted({row.day for row in rows}, reverse=True):
        of_day = [row for row in rows if row.day == day]
        print()
        print(f"{day.isoformat()}  ${sum(r.cost_usd for r in of_day):.4f}  {_jobs(of_day)} jobs")
        print("  per step")
        for name, jobs, cost in _grouped(of_day, lambda row: row.step):
            print(f"    {name:<28} {jobs:>6} jobs  ${cost:.4f}")
        print("  per endpoint")
        for name, jobs, cost in _grouped(of_day, lambda row: row.app):
            print(f"    {name:<28} {jobs:>6} jobs  ${cost:.4f}")
    print()
    if generations.generations:
        average = generations.cost_usd / generations.generations
        print(f"per generation: ${average:.4f} on average over {generations.generations}")
    if generations.anonymous_usd:
        print(f"of deleted accounts' generations: ${generations.anonymous_usd:.4f}")
    return 0


def _jobs(rows: list[costs_repo.DaySum]) -> int:
    return sum(row.jobs for row in rows)


def _grouped(
    rows: list[costs_repo.DaySum], key: Callable[[costs_repo.DaySum], str]
) -> list[tuple[str, int, Decimal]]:
    """(name, jobs, USD) per ``key`` of the rows, costliest first."""
    sums: dict[str, tuple[int, Decimal]] = {}
    for row in rows:
        jobs, cost = sums.get(key(row), (0, Decimal(0)))
        sums[key(row)] = (jobs + row.jobs, cost + row.cost_usd)
    return sorted(
        ((name, jobs, cost) for name, (jobs, cost) in sums.items()), key=lambda s: (-s[2], s[0])
    )


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("build_id", help="the build's id (its image tag)")
    parser.add_argument(
        "--pool",
        action="append",
        default=None,
        help="a pool whose queue the build's workers must poll first (repeatable);"
        " default: every pool",
    )
    parser.add_argument(
        "--timeout",
        type=duration,
        default=timedelta(minutes=10),
        help="how long to wait for the build's workers (10m)",
    )


async def _promote_version(args: argparse.Namespace, settings: Settings) -> int:
    from temporalio.common import WorkerDeploymentVersion

    from infra import versioning
    from infra.worker import POOLS

    if unknown := sorted(set(args.pool or []) - set(POOLS)):
        print(f"unknown pool(s) {unknown}; pools: {', '.join(POOLS)}", file=sys.stderr)
        return 2
    client = await connect(settings)
    # A pool with workflows polls both kinds of task; one without, activity tasks only.
    queues = {
        pool.task_queue(settings): versioning.WORKFLOW if pool.workflows else versioning.ACTIVITY
        for name, pool in POOLS.items()
        if name in (args.pool or POOLS)
    }
    if not args.pool:
        # An optional pool counts only while it runs (any build polls its queue): one
        # scaled to nothing would hold the promotion until the timeout.
        for pool in POOLS.values():
            queue = pool.task_queue(settings)
            if pool.optional and not await versioning.pollers(client, queue, queues[queue]):
                del queues[queue]
    target = WorkerDeploymentVersion(settings.worker_deployment, args.build_id)
    print(f"waiting for {target.to_canonical_string()} to poll {', '.join(queues)} ...")
    try:
        async with asyncio.timeout(args.timeout.total_seconds()):
            previous = await versioning.promote(
                client, target, queues, identity="bitbuddies promote-version"
            )
    except versioning.PromotionFailed as err:
        print(f"not promoted: {err}", file=sys.stderr)
        return 1
    except TimeoutError:
        missing = await versioning.unpolled(client, target, queues)
        print(
            f"not promoted: after {args.timeout}, no worker of {target.to_canonical_string()}"
            f" polls {', '.join(missing) or '(all polled by now: run it again)'}",
            file=sys.stderr,
        )
        return 1
    was = previous.to_canonical_string() if previous else "unversioned workers"
    print(f"current version: {target.to_canonical_string()} (was {was})")
    return 0


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "alerts",
            "recent owner alerts: kind, priority, sent or suppressed, title, user, generation"
            " and the link to the workflow",
            _alerts_arguments,
            _alerts,
        ),
        Command(
            "inspect",
            "one generation: its row, its workflow's timeline and link, its ledger entries,"
            " provider jobs and alerts",
            _inspect_arguments,
            _inspect,
        ),
        Command(
            "grant",
            "an owner's grant of tokens to an account, with a reason; once per --key",
            _grant_arguments,
            _grant,
        ),
        Command(
            "ledger",
            "an account's balance and ledger entries, newest first, with their generations",
            _ledger_arguments,
            _ledger,
        ),
        Command(
            "check-ledger",
            "check the ledger's invariant; exit 1 and print each violation when broken",
            _no_arguments,
            _check_ledger,
        ),
        Command(
            "reconcile",
            "billing's reconciliation now (its schedule, triggered): refunds missed, paid"
            " sessions credited, the invariant; exit 1 on a violation",
            _reconcile_arguments,
            _reconcile,
        ),
        Command(
            "costs",
            "provider spend per day, per step and per endpoint (jobs and USD), and the"
            " average per generation",
            _costs_arguments,
            _costs,
        ),
        Command(
            "promote-version",
            "make a build the Worker Deployment's current version once its workers poll"
            " every pool's task queue (a deploy's last step; an older build rolls back)",
            _promote_arguments,
            _promote_version,
        ),
    )
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bitbuddies", description="The BitBuddies owner's tools.")
    sub = top.add_subparsers(dest="command", required=True, metavar="command")
    for command in COMMANDS.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. As the program (no ``argv``: the ``bitbuddies`` script, ``python -m
    infra.cli``), end the process here with the command's status, skipping the
    interpreter's teardown: a process that used the Temporal client can crash in it
    (SIGABRT, "PyGILState_Release: thread state must be current", temporalio/sdk-python#300)
    after all its work is done and printed."""
    args = parser().parse_args(argv)
    status = asyncio.run(COMMANDS[args.command].run(args, get_settings()))
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
