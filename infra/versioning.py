"""Worker Versioning: rolling deploys that never break a running generation.

With ``BITBUDDIES_WORKER_BUILD_ID`` set (a deploy sets the image tag), every worker process
polls as the version ``<BITBUDDIES_WORKER_DEPLOYMENT>.<build id>`` of a Temporal Worker
Deployment. Temporal hands a versioned task queue's tasks to its deployment's *current*
version only, so a new build's workers take nothing until ``promote`` makes their version
current (``bitbuddies promote-version BUILD_ID``); until then the old version's workers go
on serving everything. Without a build id the workers are unversioned, as ``make dev`` and
the test stack run them.

Every workflow is AUTO_UPGRADE (the workers' default behaviour): once a new version is
current, a running workflow's next task, workflow or activity, goes to the new version's
workers, and the new code replays the history the old code wrote. That is safe because of
the project's rule that every workflow change replays the recorded histories
(``workflow.patched``; tests/workflows/test_replay.py). PINNED would keep each run on the
version that started it, which needs that version's workers up until its last run ends:
after every deploy, up to a generation's day-long deadline, a second fleet per release
that a plain Kubernetes rolling update does not keep.

Activities sent to a task queue that is not part of the workflow's version (a pool still
unversioned) go to that queue's own pollers: a versioned BitBuddy workflow can use an
unversioned media pool (tests/e2e/test_worker_versioning.py runs it so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from infra.settings import Settings

WORKFLOW = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
POLL_INTERVAL_SECONDS = 1.0


def version(settings: Settings) -> WorkerDeploymentVersion | None:
    """This build's version, or None for unversioned workers (no build id)."""
    if settings.worker_build_id is None:
        return None
    return WorkerDeploymentVersion(settings.worker_deployment, settings.worker_build_id)


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """What each pool's ``Worker`` is given: its version, AUTO_UPGRADE (see above)."""
    this = version(settings)
    if this is None:
        return None
    return WorkerDeploymentConfig(
        version=this,
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.AUTO_UPGRADE,
    )


class PromotionFailed(RuntimeError):
    pass


async def pollers(client: Client, name: str, kind: int) -> list[PollerInfo]:
    """The workers polling task queue ``name`` for tasks of ``kind`` (a TaskQueueType)
    lately, each with its deployment version (empty when unversioned)."""
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=name, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.ValueType(kind),
        )
    )
    return list(described.pollers)


async def unpolled(
    client: Client, target: WorkerDeploymentVersion, task_queues: Mapping[str, int]
) -> list[str]:
    """The task queues (name -> TaskQueueType) no worker of ``target`` polls yet."""
    missing = []
    for name, kind in task_queues.items():
        if not any(
            poller.deployment_options.deployment_name == target.deployment_name
            and poller.deployment_options.build_id == target.build_id
            for poller in await pollers(client, name, kind)
        ):
            missing.append(name)
    return missing


async def promote(
    client: Client,
    target: WorkerDeploymentVersion,
    task_queues: Mapping[str, int],
    *,
    identity: str,
) -> WorkerDeploymentVersion | None:
    """Make ``target`` its deployment's current version once its workers poll every one
    of ``task_queues`` (name -> TaskQueueType: the pools' queues), waiting as long as
    that takes (the caller bounds it). Returns the version it replaced (None: unversioned
    workers were current). Raises PromotionFailed when Temporal refuses.

    Temporal itself refuses a version no worker has polled yet, but not one whose workers
    poll only some of the queues (the first pool up would be promoted alone; the server
    checks only the queues the current version has, and unversioned workers name none).
    Hence the wait for every pool's pollers here."""
    while True:
        if not await unpolled(client, target, task_queues):
            break
        await asyncio.sleep(POLL_INTERVAL_SECONDS)
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace,
        deployment_name=target.deployment_name,
        build_id=target.build_id,
        identity=identity,
    )
    while True:
        try:
            response = await client.workflow_service.set_worker_deployment_current_version(request)
        except RPCError as err:
            # NOT_FOUND: the deployment has not registered the version's pollers yet.
            if err.status != RPCStatusCode.NOT_FOUND:
                raise PromotionFailed(
                    f"Temporal refused {target.to_canonical_string()}: {err.message}"
                ) from err
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
            continue
        previous = response.previous_deployment_version
        if not previous.build_id:
            return None
        return WorkerDeploymentVersion(previous.deployment_name, previous.build_id)
