"""A tiny workflow and two activities for tests/infra/test_log_context.py and
test_tracing.py, logging the way our code and libraries do. In a module of their own,
importing little: the workflow sandbox re-imports the module a workflow is defined in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# Passed through the sandbox by every worker (infra.log_context.sandboxed_runner): the
# workflow's add_log_context is the real one, not a re-imported copy.
from infra.logging import add_log_context

WORKFLOW = "LogContextTest"
CHORE = "log_chore"
ANONYMOUS = "log_anonymous"

# A module logger of ours, as activities/models.py and workflows/*.py have.
MODULE_LOG = logging.getLogger("bitbuddies.tests.log_workflows")
# A library's logger: nothing of ours passes it any context.
LIBRARY_LOG = logging.getLogger("somelibrary.client")


@dataclass
class Order:
    """As BitBuddyInput: the workflow's input names its generation and user."""

    generation_id: str
    user_id: str


@dataclass
class Chore:
    """As ModelStepInput: an activity input that names them too."""

    generation_id: str
    user_id: str
    fail_first: bool = False


@dataclass
class Anonymous:
    """As SettleInput or TranscodeInput: one that does not."""

    what: str


@activity.defn(name=CHORE)
async def log_chore(chore: Chore) -> str:
    activity.logger.info("chore: activity.logger")
    MODULE_LOG.info("chore: module logger")
    LIBRARY_LOG.warning("chore: library logger")
    if chore.fail_first and activity.info().attempt == 1:
        raise RuntimeError("the first attempt fails")
    return "done"


@activity.defn(name=ANONYMOUS)
async def log_anonymous(job: Anonymous) -> None:
    MODULE_LOG.info("anonymous: module logger")


@workflow.defn(name=WORKFLOW)
class LogWorkflow:
    @workflow.run
    async def run(self, order: Order) -> str:
        workflow.logger.info("workflow: workflow.logger")
        MODULE_LOG.info("workflow: module logger")
        LIBRARY_LOG.warning("workflow: library logger")
        add_log_context(step="chores")
        MODULE_LOG.info("workflow: after add_log_context")
        retry = RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=3)
        done = await workflow.execute_activity(
            log_chore,
            Chore(order.generation_id, order.user_id, fail_first=True),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=retry,
        )
        await workflow.execute_activity(
            log_anonymous, Anonymous("settle"), start_to_close_timeout=timedelta(seconds=30)
        )
        return done
