"""The end of a generation: package the character, record the outcome, refund on
failure, tell the owner. Each activity is idempotent, so Temporal may retry it freely."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from temporalio import activity

from activities.media import transcode_character
from activities.runtime import Runtime
from billing import ledger
from infra import progress
from infra.alerts import send_owner_alert, workflow_link
from infra.database import records
from infra.storage import keys
from workflows import contract
from workflows.contract import (
    AlertInput,
    CharacterAssets,
    CompleteInput,
    FailInput,
    RefundInput,
    RefundResult,
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
        files = await transcode_character(
            self.rt.storage,
            video_key=job.video_key,
            mask_key=job.mask_key,
            out_prefix=keys.character_assets(job.character_id),
            fps=job.fps,
            heartbeat=activity.heartbeat,
        )
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
        async with self.rt.db.connection() as conn, conn.transaction():
            await records.insert_character(
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
            await records.finish_generation(
                conn,
                UUID(done.generation_id),
                status="completed",
                step="completed",
                character_id=UUID(done.character_id),
            )
            terminal = await progress.append(
                conn,
                done.generation_id,
                event="completed",
                dedupe="terminal",
                step="completed",
                message=contract.READY,
                percent=100,
                character_id=done.character_id,
            )
        await progress.announce(self.rt.redis, done.generation_id, terminal)

    @activity.defn(name=contract.REFUND_TOKEN)
    async def refund_token(self, refund: RefundInput) -> RefundResult:
        async with self.rt.db.connection() as conn, conn.transaction():
            try:
                entry = await ledger.refund(
                    conn,
                    charge_key=ledger.charge_key(UUID(refund.generation_id)),
                    idempotency_key=refund.idempotency_key,
                    reason=refund.reason[:500],
                )
            except ledger.NothingToRefund:
                activity.logger.warning("no charge to refund for %s", refund.generation_id)
                return RefundResult(refunded=False, ledger_entry_id=None)
        activity.logger.info("refunded generation %s (entry %s)", refund.generation_id, entry.id)
        return RefundResult(refunded=True, ledger_entry_id=entry.id)

    @activity.defn(name=contract.FAIL_GENERATION)
    async def fail_generation(self, failure: FailInput) -> None:
        """Record the failure and the one terminal event together, then announce it."""
        async with self.rt.db.connection() as conn, conn.transaction():
            await records.finish_generation(
                conn,
                UUID(failure.generation_id),
                status=failure.status,
                step=failure.step,
                error=failure.message,
                error_code=failure.error_code,
            )
            terminal = await progress.append(
                conn,
                failure.generation_id,
                event="failed",
                dedupe="terminal",
                step=failure.step,
                message=failure.message,
                percent=failure.percent,
                error_code=failure.error_code,
                status=failure.status,
                refunded=failure.refunded,
            )
        await progress.announce(self.rt.redis, failure.generation_id, terminal)

    @activity.defn(name=contract.SEND_ALERT)
    async def send_alert(self, alert: AlertInput) -> None:
        settings = self.rt.settings
        url = workflow_link(settings, alert.workflow_id, alert.run_id)
        await asyncio.to_thread(
            send_owner_alert,
            settings,
            title=alert.title,
            message=f"{alert.message}\nuser: {alert.user_id}\nworkflow: {alert.workflow_id}",
            url=url,
        )


def all_activities(runtime: Runtime) -> tuple[list[Any], list[Any]]:
    """(activities for the main task queue, activities for the media task queue)."""
    from activities.models import ModelActivities

    models = ModelActivities(runtime)
    generations = GenerationActivities(runtime)
    main = [
        models.submit_model_job,
        models.poll_model_job,
        models.fetch_model_result,
        models.release_model_job,
        generations.complete_generation,
        generations.refund_token,
        generations.fail_generation,
        generations.send_alert,
    ]
    return main, [generations.transcode]
