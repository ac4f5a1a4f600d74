"""The model provider's webhooks: a job ended, so its generation's workflow should look
now instead of at its next check (workflows/bitbuddy.py ``_await_job``).

A delivery is acted on only when fal's Ed25519 signature over it verifies with fal's
published keys and it was signed within five minutes (infra/falwebhooks.py); then only
the first delivery for a job signals the workflow: fal retries a delivery for hours, and
a replay of a captured one must change nothing. The signal only says "look now": the
workflow reads the job's outcome from the provider itself, so even a valid delivery
routed to the wrong generation (the generation id is in the URL we gave the provider,
not under the signature) can do no more than make a workflow that does not know the job
ignore it.

Temporal unreachable: nothing is recorded and the answer is 503, so the provider
delivers again; the workflow's own check covers the meantime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client
from temporalio.service import RPCError

from api.services.errors import Busy, WebhookRefused
from infra.database import webhooks
from infra.falwebhooks import JwksCache, JwksUnavailable, WebhookRejected, verify
from workflows import lifecycle

log = logging.getLogger("bitbuddies.providers")


class ProviderWebhookService:
    def __init__(
        self,
        db: AsyncConnectionPool[Any],
        temporal: Client,
        keys: JwksCache,
    ) -> None:
        self.db = db
        self.temporal = temporal
        self.keys = keys

    async def deliver(self, generation_id: UUID, headers: Mapping[str, str], body: bytes) -> bool:
        """Act on one delivery. True when it signalled a running workflow; False for a
        repeat, or when no workflow runs for the generation (nothing waits for the job).
        WebhookRefused for a delivery that does not verify, Busy when it cannot be acted
        on now (the provider then delivers again)."""
        try:
            delivery = await verify(headers, body, keys=self.keys, now=time.time())
        except WebhookRejected as err:
            log.warning(
                "refused a provider webhook: %s", err.reason, extra={"generation_id": generation_id}
            )
            raise WebhookRefused(f"Webhook refused: {err.reason}") from err
        except JwksUnavailable as err:
            log.error("cannot check provider webhooks: the provider's keys are unavailable")
            raise Busy(
                "The provider's signing keys cannot be fetched now.", retry_after=30
            ) from err
        context = {"generation_id": generation_id, "provider_request_id": delivery.request_id}
        ok = delivery.status == "OK"
        async with self.db.connection() as conn, conn.transaction():
            if not await webhooks.record_delivery(conn, delivery.request_id, generation_id, ok):
                log.info("provider webhook repeated; already acted on", extra=context)
                return False
            try:
                signalled = await lifecycle.job_finished(
                    self.temporal, str(generation_id), delivery.request_id, ok=ok
                )
            except RPCError as err:
                # The transaction rolls back: the provider's next delivery tries again.
                log.warning("could not signal the workflow: %s", err.status.name, extra=context)
                raise Busy("The workflow could not be reached; deliver again.") from err
        log.info(
            "provider webhook %s: %s",
            delivery.status,
            "workflow signalled" if signalled else "no workflow is running",
            extra=context,
        )
        return signalled
