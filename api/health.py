"""Liveness (the process answers) and health (everything it depends on answers)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 2.0
POLLER_FRESH_SECONDS = 90.0  # pollers re-poll at least every ~60 s


@router.get("/livez")
async def livez() -> dict[str, bool]:
    return {"ok": True}


async def _postgres(request: Request) -> None:
    async with request.app.state.db.connection() as conn:
        await conn.execute("SELECT 1")


async def _redis(request: Request) -> None:
    await request.app.state.redis.ping()


async def _pollers(request: Request, queue: str, kind: TaskQueueType.ValueType) -> None:
    client = request.app.state.temporal
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    now = time.time()
    fresh = [p for p in answer.pollers if now - p.last_access_time.seconds < POLLER_FRESH_SECONDS]
    if not fresh:
        raise RuntimeError(f"no worker polls task queue {queue!r}")


@router.get("/healthz", responses={503: {"description": "something is missing"}})
async def healthz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    checks: dict[str, Any] = {
        "postgres": _postgres(request),
        "redis": _redis(request),
        "worker": _pollers(request, settings.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        "media_worker": _pollers(
            request, settings.media_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        ),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(c, CHECK_TIMEOUT_SECONDS) for c in checks.values()),
        return_exceptions=True,
    )
    status = {
        name: "ok"
        if not isinstance(result, BaseException)
        else f"{type(result).__name__}: {result}"
        for name, result in zip(checks, results, strict=True)
    }
    if isinstance(results[2], BaseException) and "RPCError" in status["worker"]:
        status["temporal"] = status["worker"]
    missing = [name for name, value in status.items() if value != "ok"]
    body = {"ok": not missing, "checks": status, "missing": missing}
    return JSONResponse(body, status_code=503 if missing else 200)
