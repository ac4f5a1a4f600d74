"""How a model step can fail, in one place: the ApplicationError types the model
activities raise, and which of them the workflow answers by resubmitting the job.

Two kinds of failure, decided here and nowhere else:

- **Transient**: says nothing about the user's photo or prompt, so the same request may
  well succeed when sent again. The provider lost the job (404 for its request id, as
  after a restart that lost its queue), the job could not download its inputs (our file
  route was down), or the provider itself kept failing (5xx, connection errors, fal's
  infrastructure error types) until the activity's own retries ran out. The workflow
  resubmits such a step under a new idempotency key, a bounded number of times.
- **Permanent**: the request or its content was refused (a 4xx validation refusal), or
  the model ran on the input and failed. Sending the same input again would fail the
  same way, so it is never resubmitted. (Content refusals decided by the workflow itself,
  NSFW and photo usability, are ``PhotoRejected`` errors raised outside any model step,
  so they never meet this classification at all.)

This module is imported by the workflow (passed through the sandbox), so it does no I/O.
"""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError

# --- permanent (never resubmitted) ----------------------------------------------------

# The provider refused the request (4xx at submit): it fails identically every time.
MODEL_REQUEST_REJECTED = "ModelRequestRejected"
# The provider ran the job and the model failed on it (or refused its input).
MODEL_JOB_FAILED = "ModelJobFailed"
# A poll found its generation already settled by someone else (the sweeper): nothing is
# left to do for the job.
MODEL_STEP_SETTLED = "ModelStepSettled"
# The job completed, but an output is not what its step promises (an image that does not
# decode, an empty mask, a video without frames: activities/outputs.py). Not resubmitted:
# a provider that returns garbage for this input is likely to again, and each try costs.
MODEL_OUTPUT_INVALID = "ModelOutputInvalid"
# The job ran past its step's allowance (workflows/contract.py TIMEOUTS) with no result:
# stuck at the provider. Not resubmitted; the owner is alerted.
MODEL_STEP_TIMED_OUT = "ModelStepTimedOut"

# --- transient (the workflow resubmits) -----------------------------------------------

# The provider does not know the job (404 on status or result), e.g. it restarted and
# lost its queue.
MODEL_JOB_LOST = "ModelJobLost"
# The job failed because it could not download one of its inputs.
MODEL_INPUT_UNAVAILABLE = "ModelInputUnavailable"
# The provider answered 5xx / 408 / 409 / 429 or could not be reached, or the job failed
# with one of the provider's infrastructure error types. Raised *retryable*: the activity
# retries it itself first, and only once those retries run out does the workflow see it.
MODEL_PROVIDER_UNAVAILABLE = "ModelProviderUnavailable"

# Errors the activities' retry policies must not retry: each fails the same way again
# under the same request id (a transient one needs a new submission, not a retry).
NON_RETRYABLE_MODEL_ERRORS = [
    MODEL_REQUEST_REJECTED,
    MODEL_JOB_FAILED,
    MODEL_STEP_SETTLED,
    MODEL_OUTPUT_INVALID,
    MODEL_STEP_TIMED_OUT,
    MODEL_JOB_LOST,
    MODEL_INPUT_UNAVAILABLE,
]
TRANSIENT_MODEL_ERRORS = frozenset(
    {MODEL_JOB_LOST, MODEL_INPUT_UNAVAILABLE, MODEL_PROVIDER_UNAVAILABLE}
)

# ``error_type`` of a job that completed with an error, as the provider reports it in
# the job's status and result. The local model server reports a failed input download
# as "input_download_failed" (infra/modelserver/apps/base.py: InputDownloadError). The
# others are fal's request error types for infrastructure failures (timeouts, runner
# crashes and scheduling failures), documented by fal as not caused by the input.
INPUT_DOWNLOAD_ERROR_TYPES = frozenset({"input_download_failed"})
PROVIDER_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
    }
)


def job_error_type(provider_error_type: str | None) -> str:
    """Our ApplicationError type for a job the provider reports as failed."""
    if provider_error_type in INPUT_DOWNLOAD_ERROR_TYPES:
        return MODEL_INPUT_UNAVAILABLE
    if provider_error_type in PROVIDER_ERROR_TYPES:
        return MODEL_PROVIDER_UNAVAILABLE
    return MODEL_JOB_FAILED


def is_transient(err: BaseException) -> bool:
    """Whether a model step that failed with ``err`` is worth resubmitting.

    Only a model activity's failure qualifies (an ``ActivityError``, not a cancellation
    or a timeout of the whole step), and only when the error it carries is one of the
    transient types above.
    """
    if not isinstance(err, ActivityError):
        return False
    cause = err.cause
    return isinstance(cause, ApplicationError) and cause.type in TRANSIENT_MODEL_ERRORS
