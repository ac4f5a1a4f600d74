"""The BitBuddy workflow's contract: what goes in and out of it and of each activity,
its names (workflow, activities, task queues), its status vocabulary, its step table,
the options each activity runs with, and every message a user reads.

The API, the workers and the workflow all import this module and nothing heavier: it
loads no activity, model, media or provider library (tests/api/test_import_boundary.py
holds it to that), so the API can start workflows and read their outcomes without
them. Payloads are plain dataclasses, serialised by field name: moving one between
modules changes nothing in a recorded history; renaming a field does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

from activities.model_errors import NON_RETRYABLE_MODEL_ERRORS

# --- names -----------------------------------------------------------------------

WORKFLOW_NAME: Final = "BitBuddy"
# The interactive pool's queue: the workflow and the model steps of generations people
# wait for. Still named "bitbuddies" (the pool was once called "main"): a workflow's
# history names its task queue, so a queue renamed under workflows in flight would leave
# them with no worker.
INTERACTIVE_TASK_QUEUE: Final = "bitbuddies"
# The same workflow and model steps for generations started in bulk, in a pool of their
# own, so a bulk job never takes an interactive worker's slots.
BATCH_TASK_QUEUE: Final = "bitbuddies-batch"
MEDIA_TASK_QUEUE: Final = "bitbuddies-media"  # ffmpeg work, in its own worker
# Background work: the Housekeeping workflow, run by a Temporal Schedule.
HOUSEKEEPING_TASK_QUEUE: Final = "bitbuddies-housekeeping"
HOUSEKEEPING_WORKFLOW: Final = "Housekeeping"
HOUSEKEEPING_SCHEDULE: Final = "bitbuddies-housekeeping"  # the schedule's id
# The owner alerts' digest (infra/alerts.py), on the housekeeping queue, by its own schedule.
ALERT_DIGEST_WORKFLOW: Final = "AlertDigest"
ALERT_DIGEST_SCHEDULE: Final = "bitbuddies-alert-digest"  # the schedule's id
# Billing's reconciliation (billing/reconcile.py), on the housekeeping queue, by its own
# schedule.
RECONCILE_WORKFLOW: Final = "Reconcile"
RECONCILE_SCHEDULE: Final = "bitbuddies-reconcile"  # the schedule's id

# Activity names, as registered by the workers (activities/) and called by the workflow.
SUBMIT_MODEL_JOB: Final = "submit_model_job"
POLL_MODEL_JOB: Final = "poll_model_job"
CHECK_MODEL_JOB: Final = "check_model_job"  # one status check (when a webhook is awaited)
FETCH_MODEL_RESULT: Final = "fetch_model_result"
RELEASE_MODEL_JOB: Final = "release_model_job"
TRANSCODE: Final = "transcode"
COMPLETE_GENERATION: Final = "complete_generation"
SETTLE_GENERATION: Final = "settle_generation"
SEND_ALERT: Final = "send_alert"
# Registered for workflows whose histories predate SETTLE_GENERATION, which refund and
# record in two activities (activities/legacy.py).
REFUND_TOKEN: Final = "refund_token"  # noqa: S105 (an activity, not a secret)
FAIL_GENERATION: Final = "fail_generation"
SWEEP: Final = "sweep"
SEND_ALERT_DIGEST: Final = "send_alert_digest"
RECONCILE: Final = "reconcile"

# --- statuses ---------------------------------------------------------------------

# A generation's status, as stored (migration 0001's CHECK), returned and announced.
Status = Literal["queued", "running", "completed", "failed", "cancelled"]
STATUSES: Final[tuple[Status, ...]] = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES: Final[frozenset[Status]] = frozenset({"completed", "failed", "cancelled"})
# How a generation that did not complete ended.
EndedBadly = Literal["failed", "cancelled"]

# --- messages a user reads --------------------------------------------------------

READY: Final = "Your BitBuddy is ready!"
REFUNDED: Final = "Your token has been refunded."
NSFW_REFUSED: Final = "This photo can't be used: it looks like it isn't safe for work."
UNUSABLE_PHOTO: Final = "This photo can't be used."  # followed by the problems found
CANCELLED: Final = "Cancelled."
TOOK_TOO_LONG: Final = "This took far longer than it should, so we stopped."
INTERNAL_FAILURE: Final = "Something went wrong while making your BitBuddy."
START_FAILED: Final = "We couldn't start your BitBuddy. Try again."


def settled_message(message: str, *, refunded: bool) -> str:
    """What the owner of a generation that did not complete reads: why, then whether
    their token came back (the only place that says so)."""
    return f"{message} {REFUNDED}" if refunded else message


def resubmitting(attempt: int, resubmits: int) -> str:
    """Shown when a model step is sent again after a transient failure."""
    return f"The model hiccuped; trying again ({attempt} of {resubmits})…"


# --- the steps --------------------------------------------------------------------


# What a step's model makes, which says how long it may take (TIMEOUTS below).
ModelKind = Literal["image", "mask", "video"]


@dataclass(frozen=True)
class Step:
    """A model step, named for what it makes, never for who makes it: a provider adapter
    (activities/providers/) maps each to one of its apps, its arguments and its result."""

    name: str
    message: str
    percent: int  # shown when the step starts
    kind: ModelKind = "image"


# What each step needs and gives, in our words. Files by role (the keys of
# ModelStepInput.files and ModelOutput.files), each a storage key:
#   nsfw_filter    image                      -> data: nsfw_probability (0..1)
#   analyze        image; size                -> image (upright, at most size a side);
#                                                data: faces, figure, full_body, usable,
#                                                problems (our rules: infra/photo_rules.py)
#   cartoonify     image; prompt, size, face  -> image; data: face
#   expand         image; prompt, size, face  -> image, the figure drawn in full; data: face
#   segment_image  image; size, face          -> mask (the image's size, not empty)
#   animate        image, mask; prompt, fps, seconds -> video (with frames)
#   segment_video  video; fps                 -> mask_video (with frames)
IMAGE: Final = "image"
MASK: Final = "mask"
VIDEO: Final = "video"
MASK_VIDEO: Final = "mask_video"

NSFW_FILTER = Step("nsfw_filter", "Checking your photo", 0)
ANALYZE = Step("analyze", "Finding you in the photo", 10)
CARTOONIFY = Step("cartoonify", "Drawing your cartoon", 20)
EXPAND = Step("expand", "Drawing the rest of you", 32)
SEGMENT_IMAGE = Step("segment_image", "Cutting out your character", 40, "mask")
ANIMATE = Step("animate", "Bringing it to life", 50, "video")
SEGMENT_VIDEO = Step("segment_video", "Tracing every frame", 75, "video")
MODEL_STEPS: Final = (
    NSFW_FILTER,
    ANALYZE,
    CARTOONIFY,
    EXPAND,
    SEGMENT_IMAGE,
    ANIMATE,
    SEGMENT_VIDEO,
)
TRANSCODE_STEP: Final = "transcode"
TRANSCODE_PERCENT: Final = 85


# The pictures a person sees while their BitBuddy is made, long before the animation:
# after the step named here, a ``progress`` event of that step carries
# ``picture: <name>`` and GET /v1/generations/{id}/pictures/{name} serves it (a PNG, at
# most PICTURE_SIDE a side) to the generation's owner until its working files are gone.
@dataclass(frozen=True)
class Picture:
    name: str
    message: str
    mask: bool = False  # the step's mask over its input image (a cut-out), not its image


PICTURE_SIDE: Final = 512
PICTURES: Final[dict[str, Picture]] = {
    ANALYZE.name: Picture("photo", "Here's the photo we'll draw"),
    CARTOONIFY.name: Picture("cartoon", "Here's your cartoon"),
    EXPAND.name: Picture("full_body", "Here's all of you"),
    SEGMENT_IMAGE.name: Picture("cutout", "Cut out and ready to move", mask=True),
}
PICTURE_NAMES: Final = frozenset(p.name for p in PICTURES.values())

# The ApplicationError type of a photo the workflow refused (NSFW, unusable).
PHOTO_REJECTED: Final = "PhotoRejected"
# The ApplicationError type of a generation that ran past GENERATION_TIMEOUT.
GENERATION_TIMED_OUT: Final = "GenerationTimedOut"

# --- the workflow's input and output -----------------------------------------------


@dataclass
class RenderSpec:
    size: int = 512
    fps: int = 24
    seconds: float = 5.0
    nsfw_threshold: float = 0.5


@dataclass
class RetrySpec:
    """How a model step that failed for a transient reason is resubmitted (the defaults
    are Settings.model_resubmits and Settings.model_resubmit_backoff_seconds)."""

    resubmits: int = 3  # new submissions after the first, at most
    backoff_seconds: float = 2.0  # wait before the first; doubled before each next one


@dataclass
class BitBuddyInput:
    generation_id: str
    user_id: str
    prompt: str
    photo_key: str
    render: RenderSpec
    media_task_queue: str
    # A default, so inputs written before this field existed still decode.
    retry: RetrySpec = field(default_factory=RetrySpec)


@dataclass
class BitBuddyResult:
    character_id: str


@dataclass
class GenerationStatus:
    """The workflow's ``status`` query."""

    step: str
    percent: int


# --- model steps: submit, poll, fetch, release ------------------------------------


@dataclass
class ModelStepInput:
    generation_id: str
    user_id: str
    step: str
    # role (IMAGE, MASK, VIDEO) -> storage key; the adapter turns each into a URL the
    # provider can fetch, under the argument name its app takes
    files: dict[str, str]
    params: dict[str, Any]  # in our words (see the step table); the adapter maps them
    idempotency_key: str
    message: str
    percent: int
    # 0 for the step's first submission; n for its n-th resubmission after a transient
    # failure, announced to the user with ``retry_message`` instead of ``message``.
    attempt: int = 0
    retry_message: str = ""


@dataclass
class ModelJob:
    generation_id: str
    user_id: str
    step: str
    app: str  # the provider's app the adapter chose; opaque to the workflow
    request_id: str
    idempotency_key: str
    message: str
    percent: int
    attempt: int = 0  # as in ModelStepInput
    # The step's input files, by role: fetch checks outputs against them (a mask has its
    # image's size).
    inputs: dict[str, str] = field(default_factory=dict)
    # The provider was asked to call our webhook when the job ends (the API then signals
    # JOB_FINISHED_SIGNAL), so the workflow waits for that before it polls.
    webhook: bool = False


# The signal the API sends a generation's workflow when the provider's signed webhook
# says one of its jobs ended (api/providers.py). It only says "look now": the workflow
# reads the outcome from the provider itself, as it does after polling.
JOB_FINISHED_SIGNAL: Final = "model_job_finished"
# Where the provider delivers its webhooks, under the API's public URL.
PROVIDER_WEBHOOK_PATH: Final = "/v1/providers/fal/webhook"


@dataclass
class JobFinished:
    request_id: str
    ok: bool  # the provider's webhook said OK (else ERROR: the poll reads the error)


@dataclass
class ModelOutput:
    """A step's result, the same whichever provider made it."""

    # role (IMAGE, MASK, VIDEO, MASK_VIDEO) -> storage key of the file, checked: an
    # image that decodes, a mask of its image's size and not empty, a video with frames
    files: dict[str, str] = field(default_factory=dict)
    # the step's facts (see the step table), small JSON only
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReleaseInput:
    idempotency_key: str
    request_id: str | None = None
    step: str = ""  # the adapter finds the app from it
    app: str = ""  # written by histories from before the adapters; wins when set


# --- the end of a generation --------------------------------------------------------


@dataclass
class TranscodeInput:
    generation_id: str
    character_id: str
    video_key: str
    mask_key: str
    fps: int
    percent: int


@dataclass
class CharacterAssets:
    webm_key: str
    webp_key: str
    png_key: str
    width: int
    height: int


@dataclass
class CompleteInput:
    generation_id: str
    user_id: str
    character_id: str
    prompt: str
    assets: CharacterAssets


@dataclass
class SettleInput:
    """A generation that did not complete, to settle: refund, record, announce."""

    generation_id: str
    status: EndedBadly
    step: str
    error_code: str
    message: str  # without the refund sentence (settled_message adds it)
    percent: int
    # A workflow.uuid4(): the same on every retry of the activity; the ledger makes the
    # refund's key of it.
    settle_id: str
    reason: str  # for the ledger: what broke, where


@dataclass
class SettleResult:
    refunded: bool


@dataclass
class RefundInput:
    generation_id: str
    idempotency_key: str
    reason: str


@dataclass
class RefundResult:
    refunded: bool
    ledger_entry_id: int | None


@dataclass
class FailInput:
    generation_id: str
    status: EndedBadly
    step: str
    error_code: str
    message: str
    refunded: bool
    percent: int


@dataclass
class AlertInput:
    title: str
    message: str
    workflow_id: str
    run_id: str | None
    user_id: str
    # Defaults, so alerts recorded in histories before these fields existed still decode.
    kind: str = "generation_failed"  # a kind of infra/alerts.py's KINDS
    step: str = ""
    error: str = ""  # what broke (the innermost causes)
    refunded: bool | None = None  # None: not known (histories from before this field)


def failure_alert(
    *,
    what: str,
    step: str,
    detail: str,
    refunded: bool,
    workflow_id: str,
    run_id: str | None,
    user_id: str,
) -> AlertInput:
    """The owner's alert for a generation that failed (``what``: "failed"; "stuck" or
    "abandoned", which are ``stuck_generation`` alerts)."""
    return AlertInput(
        title=f"BitBuddy {what} at {step}",
        message=f"{detail}\n" + ("token refunded" if refunded else "NO REFUND: check the ledger"),
        workflow_id=workflow_id,
        run_id=run_id,
        user_id=user_id,
        kind="stuck_generation" if what in ("abandoned", "stuck") else "generation_failed",
        step=step,
        error=detail,
        refunded=refunded,
    )


# --- the options the workflow runs each activity with ----------------------------

# The model error types are defined, and classified transient or permanent, in
# activities/model_errors.py (pure: the workflow imports it too). A failed job is never
# retried by its activity: resubmitting it is the workflow's decision.

SUBMIT_OPTIONS: dict[str, Any] = {
    # Waiting for a free permit can take a while under load; the heartbeat proves liveness.
    "start_to_close_timeout": timedelta(minutes=30),
    # On cancellation, wait until submit has really stopped, so that cleanup finds the job
    # it may have just created (release_model_job looks it up by the step's key).
    "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=10,
        non_retryable_error_types=NON_RETRYABLE_MODEL_ERRORS,
    ),
}


@dataclass(frozen=True)
class StepTimeouts:
    """How long one model step may take, for one kind of model."""

    # After submitting with a webhook, wait this long for it before polling ourselves: a
    # lost webhook costs at most this much latency, never the generation.
    webhook_wait: timedelta
    # The job's whole allowance at the provider, queue included (the poll's
    # schedule-to-close): past it the step fails, the generation is refunded and the
    # owner alerted as stuck. Each attempt of the poll gets ``poll_attempt``.
    allowance: timedelta
    poll_attempt: timedelta
    # A poll heartbeats on every status check: a dead worker's poll resumes on another
    # worker this soon, without resubmitting.
    heartbeat: timedelta = timedelta(seconds=5)


# One entry per kind of model. Hosted image models (an image edit, an outpaint) answer
# in seconds to tens of seconds and background removal in a few seconds; a 5-second
# image-to-video job takes minutes (fal documents its Kling pro model at "about 5
# min"), and a video's background removal tens of seconds to minutes, depending on the
# provider's queue. The local CPU models take well under a second for a picture and
# about a second for a video (python -m bench.pipeline_steps). Each allowance is several
# times the slowest we expect, so only a job that is really stuck runs out of it.
TIMEOUTS: Final[dict[ModelKind, StepTimeouts]] = {
    "image": StepTimeouts(
        webhook_wait=timedelta(seconds=20),
        allowance=timedelta(minutes=15),
        poll_attempt=timedelta(minutes=5),
    ),
    "mask": StepTimeouts(
        webhook_wait=timedelta(seconds=20),
        allowance=timedelta(minutes=15),
        poll_attempt=timedelta(minutes=5),
    ),
    "video": StepTimeouts(
        webhook_wait=timedelta(seconds=60),
        allowance=timedelta(minutes=30),
        poll_attempt=timedelta(minutes=10),
    ),
}
# The whole generation, from the workflow's start to its character recorded, including
# waits for a permit, resubmissions and the transcode: past it the workflow stops its
# provider job, refunds and alerts the owner (stuck). A workflow still running well past
# it cannot run its own code (its workflow task keeps failing, or no worker serves its
# queue), so the sweep terminates and settles it (activities/housekeeping.py).
GENERATION_TIMEOUT: Final = timedelta(hours=2)
STUCK_AFTER: Final = GENERATION_TIMEOUT + timedelta(minutes=15)


def poll_options(kind: ModelKind) -> dict[str, Any]:
    """The poll's options for a step of this kind: retried forever (a dead worker's poll
    resumes within its heartbeat timeout) until the step's allowance runs out."""
    timeouts = TIMEOUTS[kind]
    return {
        "heartbeat_timeout": timeouts.heartbeat,
        "start_to_close_timeout": timeouts.poll_attempt,
        "schedule_to_close_timeout": timeouts.allowance,
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            maximum_interval=timedelta(seconds=5),
            maximum_attempts=0,
            non_retryable_error_types=NON_RETRYABLE_MODEL_ERRORS,
        ),
    }


# One status check of a job whose webhook is awaited; retried (the provider may be down
# for a moment) within the step's allowance, which the workflow also watches.
CHECK_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=0,
        non_retryable_error_types=NON_RETRYABLE_MODEL_ERRORS,
    ),
}
FETCH_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE_MODEL_ERRORS
    ),
}
RELEASE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=10, maximum_interval=timedelta(seconds=10)),
}
TRANSCODE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=20),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=3, non_retryable_error_types=["TranscodeError"]),
}
RECORD_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=0),
    "schedule_to_close_timeout": timedelta(hours=24),
}
# A refund must land: retry (safely, it is idempotent) for up to a day before giving up
# and telling the owner. Settling is a refund.
REFUND_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=0),
    "schedule_to_close_timeout": timedelta(hours=24),
}
SETTLE_OPTIONS: dict[str, Any] = REFUND_OPTIONS
ALERT_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30)),
}

# One sweep at a time (the schedule skips a run while one is going); a sweep that fails
# is not retried, the next run sweeps again. The heartbeat notices a dead worker.
SWEEP_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=1),
}


# The alert digest: one at a time (its schedule skips a run while one goes), retried a
# few times; whatever it still could not send, the next run sends.
ALERT_DIGEST_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=10)),
}


# The reconciliation: one at a time (its schedule skips a run while one goes); not
# retried (each fix is idempotent, and the next run looks again). The heartbeat notices
# a dead worker.
RECONCILE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=1),
}


# --- housekeeping -------------------------------------------------------------------


@dataclass
class SweepReport:
    looked_at: int = 0  # stale open generations
    permits_freed: int = 0
    files_discarded: int = 0  # generations whose working files were deleted


@dataclass
class DigestReport:
    digests_sent: int = 0  # one per group of suppressed alerts
    alerts_counted: int = 0  # suppressed alerts those digests counted
    redelivered: int = 0  # alerts recorded earlier whose delivery had not happened


@dataclass
class ReconcileReport:
    """What one reconciliation (billing/reconcile.py) found and fixed."""

    refunded: list[str] = field(default_factory=list)  # generation ids refunded now
    credited: list[str] = field(default_factory=list)  # Checkout Session ids credited now
    # paid Checkout Sessions of deleted accounts, their money refunded at Stripe now
    returned: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # the ledger invariant's, as text
    sessions_checked: int = 0  # paid sessions Stripe listed
    # False: Stripe could not be asked (or payments are off); the refunds still ran
    stripe_checked: bool = True

    @property
    def fixed_anything(self) -> bool:
        return bool(self.refunded or self.credited or self.returned)
