"""The end of a generation: package the character, deliver it or settle the generation
(billing/settlement.py), tell the owner. Each activity is idempotent, so Temporal may
retry it freely. One whose account was deleted meanwhile is gone: delivering or settling
it writes nothing and succeeds (its new assets are deleted), so the workflow ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from uuid import UUID

from temporalio import activity
from temporalio.service import RPCError

from activities.media import transcode_character
from activities.runtime import Runtime
from billing import settlement
from infra import alerts, metrics, progress
from infra.database import records
from infra.storage import keys
from workflows import contract
from workflows.contract import (
    AlertInput,
    CharacterAssets,
    CompleteInput,
    SettleInput,
    SettleResult,
    TranscodeInput,
)


class GenerationActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @activity.defn(name=contract.TRANSCODE)
    async def transcode(self, job: TranscodeInput) -> CharacterAssets:
        await progress.publish(
            self.rt.db,
            self.rt.redis,
            job.generation_id,
            event="progress",
            dedupe="transcode:start",
            step="transcode",
            message="Packaging your BitBuddy",
            percent=job.percent,
        )
        async with self.rt.db.connection() as conn:
            await records.set_generation_step(conn, UUID(job.generation_id), "transcode")
        began = time.monotonic()
        files = await transcode_character(
            self.rt.storage,
            video_key=job.video_key,
            mask_key=job.mask_key,
            out_prefix=keys.character_assets(job.character_id),
            fps=job.fps,
            heartbeat=activity.heartbeat,
        )
        metrics.step_took("transcode", time.monotonic() - began)
        return CharacterAssets(
            webm_key=files.webm_key,
            webp_key=files.webp_key,
            png_key=files.png_key,
            width=files.width,
            height=files.height,
        )

    @activity.defn(name=contract.COMPLETE_GENERATION)
    async def complete_generation(self, done: CompleteInput) -> None:
        """Record the character, the generation's success and its terminal event in one
        transaction, then announce it."""
        assets = done.assets
        try:
            async with self.rt.db.connection() as conn:
                delivered = await settlement.deliver(
                    conn,
                    records.Character(
                        id=UUID(done.character_id),
                        user_id=UUID(done.user_id),
                        generation_id=UUID(done.generation_id),
                        prompt=done.prompt,
                        webm_key=assets.webm_key,
                        webp_key=assets.webp_key,
                        png_key=assets.png_key,
                        width=assets.width,
                        height=assets.height,
                        created_at=datetime.now(UTC),
                    ),
                )
        except settlement.Gone:
            # Its owner deleted their account while it ran: nothing is recorded, and the
            # assets just made go too.
            await self.rt.storage.delete_prefix(keys.character_assets(done.character_id))
            activity.logger.info("not delivered: the account was deleted; assets deleted")
            return
        await progress.announce(self.rt.redis, done.generation_id, delivered.event)

    @activity.defn(name=contract.SETTLE_GENERATION)
    async def settle_generation(self, ending: SettleInput) -> SettleResult:
        """Refund, record the ending and its terminal event in one transaction, then
        announce it (billing/settlement.py)."""
        try:
            async with self.rt.db.connection() as conn:
                settled = await settlement.settle(
                    conn,
                    UUID(ending.generation_id),
                    settlement.Ending(
                        status=ending.status,
                        step=ending.step,
                        error_code=ending.error_code,
                        message=ending.message,
                        percent=ending.percent,
                    ),
                    settled_by=ending.settle_id,
                    reason=ending.reason,
                )
        except settlement.Gone:
            # Its owner deleted their account, which settled it (billing/settlement.py).
            activity.logger.info("not settled: the account was deleted")
            return SettleResult(refunded=False)
        activity.logger.info(
            "settled: %s at %s (%s)",
            ending.error_code,
            ending.step,
            "refunded" if settled.refunded else "nothing to refund",
        )
        await progress.announce(self.rt.redis, ending.generation_id, settled.event)
        return SettleResult(refunded=settled.refunded)

    @activity.defn(name=contract.SEND_ALERT)
    async def send_alert(self, alert: AlertInput) -> None:
        """Record the owner's alert (deduplicated: infra/alerts.py) and deliver it. A
        delivery that fails raises, so Temporal retries it; the workflow sends this only
        once the generation is settled, so it never holds up a refund."""
        info = activity.info()
        try:
            error_class = await alerts.ending_error_class(
                activity.client(), alert.workflow_id, alert.run_id
            )
        except RPCError:  # the alert goes out all the same, its error class unknown
            activity.logger.warning("could not read the workflow's history", exc_info=True)
            error_class = None
        source = f"activity:{info.workflow_id}:{info.workflow_run_id}:{info.activity_id}"
        await alerts.raise_alert(
            self.rt.db,
            self.rt.settings,
            alerts.from_workflow(
                self.rt.settings, alert, source_key=source, error_class=error_class
            ),
        )
