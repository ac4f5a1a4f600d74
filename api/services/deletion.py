"""Account deletion: the account's holder, with their password, ends everything that is
theirs.

In this order, so nothing is left charged, running or stored:

1. Their running generations are cancelled (Temporal: the workflow whose id is the
   generation id). The workflow's own cleanup stops the provider job, frees its permit
   and refunds the token. If Temporal cannot be asked, nothing is deleted (503, retry).
2. We wait, at most ``account_deletion_wait_seconds``, for those workflows to settle.
3. One transaction: whatever is still open (its workflow gone, or slower than the wait) is
   settled here (billing/settlement.py: refunded at most once, whoever else refunds), the
   ledger's entries lose their identity but stay (``ledger.erase_account``), and the
   rows go: characters, generations and their event logs, the user and, by cascade, the
   balance, browser sessions, bearer tokens and email link tokens.
4. The files go: each generation's working files (``generations/<id>/``) and each
   character's assets (``characters/<id>/``).

A workflow still running after that cannot bring anything back: delivering or settling
a generation that is gone writes nothing (``settlement.Gone``), progress events for it
are refused by the database, and for a day the housekeeping sweep deletes again whatever
it writes to storage (``erased_generations``, activities/housekeeping.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client
from temporalio.service import RPCError

from api.services.errors import Busy, WrongPassword
from api.services.passwords import Passwords
from billing import ledger, settlement
from infra.database import records
from infra.settings import Settings
from infra.storage import Storage, keys
from workflows import contract, lifecycle

log = logging.getLogger("bitbuddies.accounts")

POLL_SECONDS = 0.2
# A generation started or settled at the very moment of the deletion can make its
# transaction collide with ours (a deadlock, or a row that appeared between statements);
# the deletion then runs again, from a fresh look at the account.
ERASE_ATTEMPTS = 3
_DELETED = settlement.Ending(
    status="cancelled", step="queued", error_code="cancelled", message=contract.CANCELLED
)


class AccountDeletion:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        temporal: Client,
        storage: Storage,
        settings: Settings,
        passwords: Passwords,
    ) -> None:
        self.pool = pool
        self.temporal = temporal
        self.storage = storage
        self.settings = settings
        self.passwords = passwords

    async def delete(self, user: records.User, password: str) -> None:
        if not await self.passwords.verify(user.password_hash, password):
            raise WrongPassword("The password is wrong; nothing was deleted.")
        context = {"user_id": user.id}
        async with self.pool.connection() as conn:
            running = await records.open_generations(conn, user.id)
        cancelled = [g.id for g in running if await self._cancel(g)]
        await self._wait_settled(user.id, set(cancelled))
        erased = await self._erase(user.id)
        await self._delete_files(erased)
        log.info(
            "account deleted: %d generations (%d were still open)",
            len(erased),
            len(running),
            extra=context,
        )

    async def _cancel(self, generation: records.Generation) -> bool:
        """Stop the generation (workflows/lifecycle.py ``cancel``); False when it had no
        workflow running and was settled here. Busy when Temporal cannot be asked:
        nothing is deleted then."""
        try:
            async with self.pool.connection() as conn:
                return await lifecycle.cancel(conn, self.temporal, generation)
        except lifecycle.CancelUnavailable as err:
            log.warning(
                "could not cancel a generation of an account being deleted: %s",
                err,
                extra={"generation_id": generation.id},
            )
            raise Busy(
                "We could not stop your running BitBuddies; nothing was deleted. Try again"
                " in a minute.",
                retry_after=30,
            ) from err

    async def _wait_settled(self, user_id: uuid.UUID, waiting: set[uuid.UUID]) -> None:
        """Until none of ``waiting`` is open any more, or the wait is over."""
        deadline = time.monotonic() + self.settings.account_deletion_wait_seconds
        while waiting:
            async with self.pool.connection() as conn:
                still = {g.id for g in await records.open_generations(conn, user_id)}
            waiting &= still
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        if waiting:
            log.warning(
                "%d generations had not settled when their account was deleted; settling them here",
                len(waiting),
                extra={"user_id": user_id},
            )

    async def _erase(self, user_id: uuid.UUID) -> list[records.ErasedGeneration]:
        for attempt in range(1, ERASE_ATTEMPTS + 1):
            try:
                return await self._erase_once(user_id)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.ForeignKeyViolation):
                if attempt == ERASE_ATTEMPTS:
                    raise
                log.info("account deletion collided with a generation; again", exc_info=True)
        raise AssertionError("unreachable")

    async def _erase_once(self, user_id: uuid.UUID) -> list[records.ErasedGeneration]:
        settled_here: list[uuid.UUID] = []
        async with self.pool.connection() as conn, conn.transaction():
            # Locked first: a settle or delivery of one of them waits for us, then finds
            # it gone.
            for generation in await records.lock_user_generations(conn, user_id):
                if generation.status in ("queued", "running"):
                    await settlement.settle(
                        conn,
                        generation.id,
                        dataclasses.replace(_DELETED, step=generation.step or "queued"),
                        settled_by="account-deleted",
                        reason="cancelled: the account was deleted",
                    )
                    settled_here.append(generation.id)
            await ledger.erase_account(conn, user_id, uuid.uuid4())
            erased = await records.erase_account(conn, user_id)
        for generation_id in settled_here:  # one started meanwhile, or slower than the wait
            with contextlib.suppress(RPCError):
                await self.temporal.get_workflow_handle(str(generation_id)).cancel()
        return erased

    async def _delete_files(self, erased: list[records.ErasedGeneration]) -> None:
        """The housekeeping sweep deletes these prefixes again for a day, so a failure
        here (logged) is repaired there."""
        for generation in erased:
            prefixes = [keys.working_files(generation.generation_id)]
            if generation.character_id is not None:
                prefixes.append(keys.character_assets(generation.character_id))
            for prefix in prefixes:
                try:
                    await self.storage.delete_prefix(prefix)
                except Exception:
                    log.warning(
                        "could not delete %s now; the sweep will",
                        prefix,
                        exc_info=True,
                        extra={"generation_id": generation.generation_id},
                    )
