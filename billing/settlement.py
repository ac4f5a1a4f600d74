"""How a generation ends: the one place that settles it.

A charged token ends as a delivered character (``deliver``) or as exactly one refund
(``settle``), and either way the generation's outcome and its terminal progress event
are written in the same transaction as the money, so no reader ever sees one without
the other. Three callers end generations that did not complete, all through ``settle``:

- the workflow's settle activity, when a step failed, the photo was refused, or the
  generation was cancelled;
- the API, when Temporal refused to start the workflow of a generation it just charged;
- housekeeping, for a generation whose workflow ended (or vanished) without settling.

Each is safe to repeat and safe to race: a charge is refunded at most once whatever key
the refund arrives with, the outcome is written once (the first one stands), and the log
takes one terminal event. The functions run in the caller's connection; announce the
returned event (``infra.progress.announce``) after the caller's commit.

A generation whose account was deleted is gone: ``deliver`` and ``settle`` lock its row
first and raise ``Gone`` when there is none, writing nothing, so a workflow still running
when its owner left can neither bring a row back nor fail over and over.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from billing import ledger
from infra import metrics, progress
from infra.database import records
from infra.database.records import Conn
from infra.progress import ProgressEvent
from workflows import contract
from workflows.contract import EndedBadly


class Gone(LookupError):
    """The generation no longer exists: its account was deleted. Nothing was written."""


async def _lock(conn: Conn, generation_id: UUID) -> bool:
    """Lock the generation; whether it was still open (not yet ended by anyone)."""
    status = await records.lock_generation(conn, generation_id)
    if status is None:
        raise Gone(str(generation_id))
    return status not in contract.TERMINAL_STATUSES


@dataclass(frozen=True)
class Ending:
    """How a generation that did not complete ended, as its owner is told."""

    status: EndedBadly
    step: str
    error_code: str
    message: str  # without the refund sentence: settle adds it when a refund was made
    percent: int = 0


@dataclass(frozen=True)
class Settled:
    refunded: bool
    event: ProgressEvent  # the terminal event that stands (the first one written)
    # This call ended the generation; False when another settler (or an earlier try of
    # the same one, retried after its commit) had ended it already.
    ended_here: bool = True


@dataclass(frozen=True)
class Delivered:
    event: ProgressEvent  # the terminal event that stands
    ended_here: bool  # as Settled's


async def deliver(conn: Conn, character: records.Character) -> Delivered:
    """Record the character, the generation's success and its terminal event; Gone
    when the generation's account was deleted."""
    async with conn.transaction():
        ended_here = await _lock(conn, character.generation_id)
        await records.insert_character(conn, character)
        await records.finish_generation(
            conn,
            character.generation_id,
            status="completed",
            step="completed",
            character_id=character.id,
        )
        event = await progress.append(
            conn,
            str(character.generation_id),
            event="completed",
            dedupe="terminal",
            step="completed",
            message=contract.READY,
            percent=100,
            character_id=str(character.id),
        )
    # Counted here, the one place a generation ends, in whichever process ended it, once
    # its transaction is done and only by the call that ended it: a retry after the commit
    # counts nothing; a crash between the commit and here loses that one count.
    if ended_here:
        metrics.generation_completed()
    return Delivered(event=event, ended_here=ended_here)


async def settle(
    conn: Conn, generation_id: UUID, ending: Ending, *, settled_by: str, reason: str
) -> Settled:
    """Refund the generation's charge (if it has one and it was not refunded yet), then
    record the ending and its terminal event, in one transaction. ``settled_by`` makes
    the refund's key (``ledger.refund_key``); ``reason`` goes into the ledger. Gone when
    the generation's account was deleted."""
    async with conn.transaction():
        ended_here = await _lock(conn, generation_id)
        refunded = await refund_charge(
            conn,
            generation_id,
            idempotency_key=ledger.refund_key(generation_id, settled_by),
            reason=reason,
        )
        event = await record_ending(
            conn,
            generation_id,
            ending,
            message=contract.settled_message(ending.message, refunded=refunded),
            refunded=refunded,
        )
    if ended_here:  # counted as a delivery is (above)
        metrics.generation_settled(ending.status, ending.step, ending.error_code, refunded=refunded)
    return Settled(refunded=refunded, event=event, ended_here=ended_here)


async def refund_charge(
    conn: Conn, generation_id: UUID, *, idempotency_key: str, reason: str
) -> bool:
    """Refund the generation's charge; False when it was never charged."""
    try:
        await ledger.refund(
            conn,
            charge_key=ledger.charge_key(generation_id),
            idempotency_key=idempotency_key,
            reason=reason[:500],
        )
    except ledger.NothingToRefund:
        return False
    return True


async def record_ending(
    conn: Conn, generation_id: UUID, ending: Ending, *, message: str, refunded: bool
) -> ProgressEvent:
    """Write the outcome and its terminal event (the halves of ``settle``; alone only
    for workflows that refund and record in two activities, see activities/legacy.py).
    Gone when the generation's account was deleted."""
    async with conn.transaction():
        await _lock(conn, generation_id)
        await records.finish_generation(
            conn,
            generation_id,
            status=ending.status,
            step=ending.step,
            error=message,
            error_code=ending.error_code,
        )
        return await progress.append(
            conn,
            str(generation_id),
            event=ending.status,
            dedupe="terminal",
            step=ending.step,
            message=message,
            percent=ending.percent,
            error_code=ending.error_code,
            status=ending.status,
            refunded=refunded,
        )
