"""One settings object for every process (API, worker, model server, dev supervisor).

Values come from the environment (prefix ``BITBUDDIES_`` unless named otherwise) or a
``.env`` file. Secrets are ``SecretStr`` so they never print; in production mode
placeholder secrets are refused at start-up.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows import contract
from workflows.contract import (
    BATCH_TASK_QUEUE,
    HOUSEKEEPING_TASK_QUEUE,
    INTERACTIVE_TASK_QUEUE,
    MEDIA_TASK_QUEUE,
)

LOCAL_SECRET = "local-development-only"  # noqa: S105 - a placeholder, refused in production


class TokenPack(BaseModel):
    """A pack of tokens for sale: ``price`` in the currency's minor units (cents)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=80)
    tokens: int = Field(gt=0)
    price: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    stripe_price_id: str | None = None


# --- hosted fal.ai models: the model map ----------------------------------------------
#
# One entry per model step (workflows/contract.py): the fal endpoint that runs it, how our
# inputs become its arguments, how its result becomes our normalised StepResult, what a
# call costs and how long it may take. activities/providers/fal.py reads it. Override any
# step with JSON in BITBUDDIES_FAL_MODELS, e.g.
#   {"cartoonify": {"cost_usd": 0.05}}                      (one field of one step)
#   {"segment_video": {"endpoint": "veed/video-background-removal", "arguments": ...}}
# A step whose endpoint changes must bring its whole mapping (arguments, files, cost_usd,
# timeout_seconds): the old endpoint's would not fit the new one.
#
# Argument sources, by prefix:  url:<role>  the input file's URL;  urls:<role>  a list of
# that one URL;  param:<name>  our parameter as is (left out when we have none);
# text:<template>  a string, our parameters filled in with str.format ({prompt});
# nearest:<name>:<a>,<b>  the allowed value nearest our numeric parameter, as the string
# the endpoint's choice takes ("nearest:seconds:5,10": 2 s asked -> "5");
# canvas:<what>  outpainting geometry from the input image's real size (read from the
# file at submit) and the step's ``canvas``: canvas_size [w, h], image_size (the
# image's own [w, h]: it is not scaled) or image_location ([x, y]: top, centred).
# Result paths are dotted, list items by index: "images.0", "video", "nsfw_probability".
OURS = "ours"  # the endpoint of a step fal has no model for: our model server runs it
ARGUMENT_SOURCES = ("url", "urls", "param", "text", "nearest", "canvas")
CANVAS_VALUES = ("canvas_size", "image_size", "image_location")
OUTPUT_ROLES = (contract.IMAGE, contract.MASK, contract.VIDEO, contract.MASK_VIDEO)


class FalOutputFile(BaseModel):
    """Where a result names one of our files, and its type if the result does not say."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    content_type: str = Field(pattern=r"^[a-z]+/[a-z0-9.+-]+$")


class FalCanvas(BaseModel):
    """An outpainting canvas, in multiples of the input image's width and height."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(ge=1, le=4)
    height: float = Field(ge=1, le=4)


class FalStepModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(min_length=1)  # fal's app id, or OURS
    arguments: dict[str, str] = {}  # fal's argument name -> a source (see above)
    fixed: dict[str, Any] = {}  # arguments whatever the step is asked
    files: dict[str, FalOutputFile] = {}  # our role -> where the result names it
    data: dict[str, str] = {}  # our fact -> where the result says it
    data_fixed: dict[str, Any] = {}  # facts the endpoint implies (None: not known)
    cost_usd: float = Field(ge=0)  # per call, at our render settings
    cost_basis: str = ""  # where cost_usd comes from
    # cost_usd buys cost_unit of this argument (e.g. seconds of video); a call asking
    # for more costs in proportion. None: a flat price per call.
    cost_scales_with: str | None = None
    cost_unit: float = Field(1.0, gt=0)
    # the job's allowance at the provider, from its submission: past it the step fails
    # timed out (activities/models.py), whatever the workflow's own allowance for its kind
    timeout_seconds: float = Field(gt=0)
    canvas: FalCanvas | None = None  # for canvas:<what> arguments

    @model_validator(mode="after")
    def _check_mapping(self) -> FalStepModel:
        for name, source in self.arguments.items():
            kind, sep, rest = source.partition(":")
            if not sep or kind not in ARGUMENT_SOURCES or not rest:
                raise ValueError(
                    f"argument {name!r}: source {source!r} is not one of"
                    f" {', '.join(k + ':...' for k in ARGUMENT_SOURCES)}"
                )
            if kind in ("url", "urls") and rest not in OUTPUT_ROLES:
                raise ValueError(f"argument {name!r}: {rest!r} is not a file role")
            if kind == "nearest":
                _nearest_choices(name, rest)
            if kind == "canvas" and (rest not in CANVAS_VALUES or self.canvas is None):
                raise ValueError(
                    f"argument {name!r}: canvas:{rest} needs one of {', '.join(CANVAS_VALUES)}"
                    " and the step's canvas"
                )
        scaled = self.cost_scales_with
        if scaled is not None and scaled not in self.arguments and scaled not in self.fixed:
            raise ValueError(f"cost_scales_with: {self.cost_scales_with!r} is no argument")
        if unknown := set(self.files) - set(OUTPUT_ROLES):
            raise ValueError(f"files: {sorted(unknown)} are not roles ({', '.join(OUTPUT_ROLES)})")
        if self.endpoint != OURS and not self.files and not self.data:
            raise ValueError("a fal endpoint's result must give files or data")
        return self


def _nearest_choices(name: str, rest: str) -> tuple[str, list[str]]:
    """``<param>:<a>,<b>,...`` of a nearest:... source: our parameter and the choices."""
    param, _, listed = rest.partition(":")
    choices = [c.strip() for c in listed.split(",") if c.strip()]
    try:
        [float(c) for c in choices]
    except ValueError:
        choices = []
    if not param or not choices:
        raise ValueError(f"argument {name!r}: nearest:{rest} is not nearest:<param>:<a>,<b>")
    return param, choices


def nearest_choice(rest: str, value: float) -> str:
    """The choice of a ``nearest:<param>:<a>,<b>`` source nearest ``value`` (the
    first of two as near)."""
    _, choices = _nearest_choices("", rest)
    return min(choices, key=lambda c: abs(float(c) - value))


_PNG = {"content_type": "image/png"}
# The defaults, from fal's documented endpoints (their input and output fields, as fal's
# model pages and its client's generated types give them, 2026) and its listed prices.
DEFAULT_FAL_MODELS: dict[str, dict[str, Any]] = {
    contract.NSFW_FILTER.name: {
        "endpoint": "fal-ai/imageutils/nsfw",
        "arguments": {"image_url": "url:image"},
        "data": {"nsfw_probability": "nsfw_probability"},
        "cost_usd": 0.001,
        "cost_basis": "estimate: fal bills this utility by compute, about a second",
        "timeout_seconds": 120,
    },
    # fal has no face/figure finder: our model server's analyze app runs it (at
    # model_server_url), with the local adapter's arguments and result.
    contract.ANALYZE.name: {
        "endpoint": OURS,
        "cost_usd": 0.0,
        "cost_basis": "our own model server",
        "timeout_seconds": 120,
    },
    contract.CARTOONIFY.name: {
        "endpoint": "fal-ai/flux-pro/kontext",
        "arguments": {
            "prompt": "text:Redraw this photo as a cute cartoon character: flat colours,"
            " bold clean ink outlines, same person, pose, face and clothes, plain"
            " light background. {prompt}",
            "image_url": "url:image",
        },
        "fixed": {"output_format": "png"},
        "files": {contract.IMAGE: {"path": "images.0", **_PNG}},
        # Kontext picks its own output size: a face found in its input is not in the
        # same place in its output.
        "data_fixed": {"face": None, "expanded": False},
        "cost_usd": 0.04,
        "cost_basis": "fal/BFL price list: $0.04 an image",
        "timeout_seconds": 600,
    },
    contract.EXPAND.name: {
        "endpoint": "fal-ai/bria/expand",
        # Our cartoon, at its real size (Kontext picks it: about 1024 px a side), sits
        # at the top of a canvas a third wider and twice as tall, centred; the model
        # draws the body below it and the scenery beside.
        "arguments": {
            "image_url": "url:image",
            "canvas_size": "canvas:canvas_size",
            "original_image_size": "canvas:image_size",
            "original_image_location": "canvas:image_location",
        },
        "canvas": {"width": 4 / 3, "height": 2.0},
        "files": {contract.IMAGE: {"path": "image", **_PNG}},
        "data_fixed": {"face": None, "expanded": True},
        "cost_usd": 0.04,
        "cost_basis": "estimate: no listed price; Bria's image tools are about $0.04",
        "timeout_seconds": 600,
    },
    contract.SEGMENT_IMAGE.name: {
        "endpoint": "fal-ai/birefnet/v2",
        "arguments": {"image_url": "url:image"},
        "fixed": {"output_format": "png", "output_mask": True},
        "files": {contract.MASK: {"path": "mask_image", **_PNG}},
        "cost_usd": 0.002,
        "cost_basis": "estimate: billed by compute, a few GPU seconds",
        "timeout_seconds": 300,
    },
    contract.ANIMATE.name: {
        "endpoint": "fal-ai/kling-video/v2.1/standard/image-to-video",
        "arguments": {
            "prompt": "text:The cartoon character moves in place, whole body in view,"
            " still camera, still background. {prompt}",
            "image_url": "url:image",
            # Kling makes 5 or 10 s clips: our animation length, to the nearest.
            "duration": "nearest:seconds:5,10",
        },
        "fixed": {"negative_prompt": "camera movement, zoom, cut, blur"},
        "files": {contract.VIDEO: {"path": "video", "content_type": "video/mp4"}},
        "cost_usd": 0.28,
        "cost_scales_with": "duration",
        "cost_unit": 5,
        "cost_basis": "fal: $0.28 per 5 s clip (a 10 s clip: twice that)",
        "timeout_seconds": 1200,
    },
    # birefnet's mask video is the grey matte our transcode merges as alpha. The other
    # documented choice, VEED_SEGMENT_VIDEO below, gives one video with alpha instead.
    contract.SEGMENT_VIDEO.name: {
        "endpoint": "fal-ai/birefnet/v2/video",
        "arguments": {"video_url": "url:video"},
        "fixed": {"video_output_type": "VP9 (.webm)", "output_mask": True},
        "files": {contract.MASK_VIDEO: {"path": "mask_video", "content_type": "video/webm"}},
        "data_fixed": {"alpha_video": False},
        "cost_usd": 0.06,
        "cost_basis": "estimate: no listed price; veed's listed $0.015 per 30 frames x 120 frames",
        "timeout_seconds": 900,
    },
}

# The alternative for segment_video: veed's background removal with output_codec vp9 gives
# ONE VP9 WebM with alpha, which the transcode takes as the character as it is. Switch to
# it without code: BITBUDDIES_FAL_MODELS='{"segment_video": <this, as JSON>}'.
VEED_SEGMENT_VIDEO: dict[str, Any] = {
    "endpoint": "veed/video-background-removal",
    "arguments": {"video_url": "url:video"},
    "fixed": {"output_codec": "vp9", "subject_is_person": False},
    "files": {contract.MASK_VIDEO: {"path": "video", "content_type": "video/webm"}},
    "data_fixed": {"alpha_video": True},
    "cost_usd": 0.0675,
    "cost_basis": "estimate: veed lists $0.015-0.0225 per 30 frames; 5 s is 120 frames",
    "timeout_seconds": 900,
}


def merge_fal_models(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default model map with ``overrides`` (step -> some of its fields) laid over it.
    Unknown steps, and a new endpoint without its own mapping, are refused."""
    steps = [step.name for step in contract.MODEL_STEPS]
    if unknown := sorted(set(overrides) - set(steps)):
        raise ValueError(
            f"BITBUDDIES_FAL_MODELS names unknown step(s) {unknown}; steps: {', '.join(steps)}"
        )
    merged = {step: dict(DEFAULT_FAL_MODELS[step]) for step in steps}
    for step, fields in overrides.items():
        if not isinstance(fields, dict):
            raise ValueError(f"BITBUDDIES_FAL_MODELS[{step!r}] must be an object")
        new_endpoint = fields.get("endpoint", merged[step]["endpoint"])
        if new_endpoint != merged[step]["endpoint"]:
            needed = ["cost_usd", "timeout_seconds"]
            if new_endpoint != OURS:
                needed += ["arguments", "files" if "data" not in fields else "data"]
            if missing := [name for name in needed if name not in fields]:
                raise ValueError(
                    f"BITBUDDIES_FAL_MODELS[{step!r}] swaps the endpoint to {new_endpoint!r}"
                    f" but does not give its {', '.join(missing)}: the old endpoint's would"
                    " not fit"
                )
            merged[step] = dict(fields)
        else:
            merged[step].update(fields)
    return merged


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BITBUDDIES_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["local", "production"] = "local"
    data_dir: Path = Path(".data")

    # Where the public reaches the API. Every absolute URL the API hands out (events_url,
    # signed local file URLs) is built from this, never from a request's Host header.
    public_url: str = "http://127.0.0.1:8000"
    # Host names the API answers to besides public_url's; in production any other Host
    # header is refused (400). Locally every host is accepted.
    allowed_hosts: list[str] = []
    # Origins allowed to call the API from a browser (CORS). None by default: the web
    # app is served by the API itself, so it needs none.
    cors_origins: list[str] = []
    # The Chrome extension's ids: its origin, chrome-extension://<id>, gets CORS on the few
    # routes it calls (api/extension.py), and the web app messages it by id to pair it.
    # The default is our unpacked build's (fixed by its manifest's key); production sets
    # the Chrome Web Store's.
    extension_ids: list[str] = ["ighhgfpcngbokfoplnnjnpnnngdebald"]
    temporal_ui_url: str = "http://127.0.0.1:8233"

    # Services. Standard names (no prefix) so hosted deployments need no translation.
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:54329/bitbuddies", validation_alias="DATABASE_URL"
    )
    redis_url: str = Field("redis://127.0.0.1:63790/0", validation_alias="REDIS_URL")
    temporal_address: str = Field("127.0.0.1:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", validation_alias="TEMPORAL_NAMESPACE")
    # Temporal Cloud, or any Temporal behind TLS (infra/temporal.py); the names are the ones
    # Temporal's own CLI and SDKs read. Connect over TLS, verifying the server against the
    # system's roots (implied by a client certificate or an API key).
    temporal_tls: bool = Field(False, validation_alias="TEMPORAL_TLS")
    # mTLS: the client certificate (PEM file) presented to the server; needs the key too.
    temporal_tls_client_cert_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_CLIENT_CERT_PATH"
    )
    # mTLS: the client certificate's private key (PEM file); needs the certificate too.
    temporal_tls_client_key_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_CLIENT_KEY_PATH"
    )
    # The CA (PEM file) the server's certificate is checked against, instead of the
    # system's roots (a self-hosted server with its own CA; Temporal Cloud needs none).
    temporal_tls_server_ca_cert_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_SERVER_CA_CERT_PATH"
    )
    # The name the server's certificate must carry (and the TLS SNI) when it is not
    # TEMPORAL_ADDRESS's host.
    temporal_tls_server_name: str | None = Field(None, validation_alias="TEMPORAL_TLS_SERVER_NAME")
    # A Temporal Cloud API key, sent as a bearer token over TLS (instead of, or besides,
    # a client certificate).
    temporal_api_key: SecretStr | None = Field(None, validation_alias="TEMPORAL_API_KEY")

    @field_validator(
        "temporal_tls_client_cert_path",
        "temporal_tls_client_key_path",
        "temporal_tls_server_ca_cert_path",
        "temporal_tls_server_name",
        "temporal_api_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """``NAME=`` (a blank line of .env, an empty key of a Secret) means not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_temporal_tls(self) -> Settings:
        """A client certificate without its key, or a key without its certificate, is
        refused at start: the connection would otherwise fail later, or go out without
        the identity the server expects. So is a file that cannot be read."""
        cert, key = self.temporal_tls_client_cert_path, self.temporal_tls_client_key_path
        if (cert is None) != (key is None):
            given, missing = (
                ("TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH")
                if key is None
                else ("TEMPORAL_TLS_CLIENT_KEY_PATH", "TEMPORAL_TLS_CLIENT_CERT_PATH")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: mTLS to Temporal needs both the"
                " client certificate and its private key"
            )
        files = {
            "TEMPORAL_TLS_CLIENT_CERT_PATH": cert,
            "TEMPORAL_TLS_CLIENT_KEY_PATH": key,
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": self.temporal_tls_server_ca_cert_path,
        }
        for variable, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{variable}: no such file {str(path)!r}")
        return self

    @property
    def temporal_uses_tls(self) -> bool:
        return bool(
            self.temporal_tls
            or self.temporal_api_key
            or self.temporal_tls_client_cert_path
            or self.temporal_tls_server_ca_cert_path
            or self.temporal_tls_server_name
        )

    # Task queues (infra/worker.py's pools). The interactive pool's: generations people
    # wait for (the workflow and its model steps).
    task_queue: str = INTERACTIVE_TASK_QUEUE
    # The batch pool's: the same workflow and steps for generations started in bulk, at a
    # lower priority.
    batch_task_queue: str = BATCH_TASK_QUEUE
    # The media pool's: every generation's transcode (ffmpeg), batch ones behind.
    media_task_queue: str = MEDIA_TASK_QUEUE
    # The housekeeping pool's: the schedules' workflows and their activities.
    housekeeping_task_queue: str = HOUSEKEEPING_TASK_QUEUE
    # Activities each worker process runs at once, per pool (infra/worker.py). The
    # interactive pool mostly waits on the network (its old name,
    # BITBUDDIES_WORKER_MAIN_ACTIVITIES, is still read).
    worker_interactive_activities: int = Field(
        200,
        ge=1,
        validation_alias=AliasChoices(
            "BITBUDDIES_WORKER_INTERACTIVE_ACTIVITIES",
            "BITBUDDIES_WORKER_MAIN_ACTIVITIES",
            "worker_interactive_activities",
        ),
    )
    # The batch pool's: model steps wait on the network too, but this pool should use
    # only what the interactive one leaves (see README, Task queues and worker pools).
    worker_batch_activities: int = Field(50, ge=1)
    # The media pool's: encodes (0: one per core).
    worker_media_activities: int = Field(0, ge=0)
    worker_housekeeping_activities: int = Field(1, ge=1)
    # How long a stopping worker (SIGTERM, a deploy) lets its running activities finish
    # before cancelling them (they are retried elsewhere); polls hand back at once. Keep
    # it below the orchestrator's kill deadline (Kubernetes: terminationGracePeriodSeconds).
    worker_shutdown_grace_seconds: float = Field(20.0, ge=0)

    # Worker Versioning (infra/versioning.py): the Temporal Worker Deployment every pool's
    # workers belong to (no dots in it).
    worker_deployment: str = Field("bitbuddies", pattern=r"^[^.\s]+$")
    # This build's id in that deployment (a deploy sets the image tag). With one, each
    # worker polls as that version and gets tasks once `bitbuddies promote-version` makes
    # it current; running generations then move to it. None: unversioned workers (local).
    worker_build_id: str | None = Field(None, pattern=r"^\S+$")

    # Models: fal.ai when FAL_KEY is set, else our local queue-protocol server.
    fal_key: SecretStr | None = Field(None, validation_alias="FAL_KEY")
    model_server_url: str = "http://127.0.0.1:8010"
    model_concurrency: int = 2  # jobs in flight per model, across all workers
    # Of those, how many a generation started in bulk (the batch pool) can never take:
    # they stay free for generations someone waits for. Less than model_concurrency.
    model_permits_kept_for_interactive: int = Field(1, ge=0)

    @field_validator("model_permits_kept_for_interactive")
    @classmethod
    def _batch_keeps_a_permit(cls, kept: int, info: ValidationInfo) -> int:
        total = info.data.get("model_concurrency")
        if total is not None and kept >= total:
            raise ValueError(
                f"must be less than BITBUDDIES_MODEL_CONCURRENCY ({total}): bulk generations"
                " would never get a model"
            )
        return kept

    # Hosted models, step by step (the model map above); a JSON object of overrides.
    fal_models: dict[str, FalStepModel] = Field(
        default_factory=lambda: {
            step: FalStepModel.model_validate(fields) for step, fields in DEFAULT_FAL_MODELS.items()
        }
    )
    # What a call of each step costs on our local model server, in USD (a JSON object,
    # step -> price): nothing by default, as our own CPU is not billed per call, but
    # staging and the tests price local jobs to exercise the cost records and the spend
    # alert as production would. Unknown steps are refused.
    local_model_costs: dict[str, float] = {}
    # Lease of a permit not yet used for a submit; a submitted job's permit never expires.
    model_permit_ttl_seconds: float = 60.0
    # Ask the provider to call {public_url}/v1/providers/fal/webhook when a job ends, so
    # the workflow fetches at once instead of polling (it still checks the job once per
    # period when no webhook comes). Needs public_url reachable by the provider.
    provider_webhooks: bool = True
    # The keys that sign the provider's webhooks (a JWKS of Ed25519 keys). fal publishes
    # its own here; with local models the local model server's is used.
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # Where fal's queue is reached with FAL_KEY set; unset: fal's own hosts. For staging
    # and the tests: a model server started with --mimic fal serves fal's endpoint ids
    # (point fal_jwks_url at its /.well-known/jwks.json too, so its webhooks verify).
    fal_base_url: str | None = None
    # How long fal keeps each request's output files (its object lifecycle header), in
    # seconds: our fetch copies them into our storage at once, so they need not stay
    # public on fal's CDN for long.
    fal_output_expiry_seconds: int = Field(86400, ge=1)

    # Storage: the local folder unless a GCS bucket is named.
    gcs_bucket: str | None = None
    # A service-account JSON key that signs download URLs. Without it the client's own
    # credentials sign, which works only when they are a service-account key themselves.
    gcs_signing_key_file: Path | None = None
    # A CDN in front of the bucket (e.g. https://cdn.example.com, Cloud CDN on a load
    # balancer): finished characters' assets are then linked as <this>/<key>. Working
    # files sent to model providers always stay short-lived signed bucket URLs.
    gcs_cdn_url: str | None = Field(None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    # The Cloud CDN signed-URL key, as <key name>:<base64 key>: CDN links are then signed
    # and expire like the bucket's. Unset: plain links, for objects readable via the CDN.
    gcs_cdn_signing_key: SecretStr | None = None

    @field_validator("gcs_cdn_signing_key")
    @classmethod
    def _check_cdn_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from infra.storage.cdn import parse_signing_key

            parse_signing_key(value.get_secret_value())
        return value

    signing_secret: SecretStr = SecretStr(LOCAL_SECRET)

    # Recovery: a generation charged but never started (the API died in between) is
    # started by the sweeper once it has been queued this long.
    stale_queued_seconds: float = 120.0
    sweep_interval_seconds: float = 60.0
    # Billing's reconciliation (billing/reconcile.py) runs this often: refunds charges its
    # settlers missed, credits paid Checkout Sessions whose webhook never came.
    reconcile_interval_seconds: float = Field(900.0, gt=0)
    # A generation's working files (the uploaded photo, every intermediate result) are
    # deleted by the sweep this long after it ended; only the character's assets stay.
    files_retention_seconds: float = Field(default=0.0, ge=0)

    # Accounts and billing.
    signup_tokens: int = 3
    bearer_token_days: int = 30  # how long a token from sign-up or log-in is valid
    device_token_days: int = 365  # how long a named device token lasts unless revoked
    session_days: int = 14  # how long a browser session lasts (its cookie's Max-Age too)
    # How long a mailed link works: the email verification link, the password reset link.
    email_verification_hours: float = Field(48.0, gt=0)
    password_reset_minutes: float = Field(60.0, gt=0)
    # Account deletion cancels the account's running generations and waits this long at
    # most for their workflows to settle (refund) before it settles what is left itself.
    account_deletion_wait_seconds: float = Field(30.0, ge=0)

    # Token packs sold with Stripe Checkout (billing/payments.py), a JSON list in
    # BITBUDDIES_TOKEN_PACKS. A pack without stripe_price_id is priced inline (price_data).
    token_packs: list[TokenPack] = Field(
        default_factory=lambda: [
            TokenPack(id="pack-10", name="10 tokens", tokens=10, price=500, currency="eur"),
            TokenPack(id="pack-30", name="30 tokens", tokens=30, price=1200, currency="eur"),
        ],
        min_length=1,
    )
    # Stripe. Without STRIPE_SECRET_KEY, local mode uses the local stand-in
    # (infra/stripe_local/) at stripe_api_url; production then refuses checkouts (503).
    stripe_secret_key: SecretStr | None = Field(None, validation_alias="STRIPE_SECRET_KEY")
    stripe_api_url: str = "http://127.0.0.1:8011"  # local only: the stand-in
    # Signs Stripe's webhooks (whsec_...); without it every webhook is refused.
    stripe_webhook_secret: SecretStr | None = None

    # Mail (verification and reset links): smtp://[user:password@]host:port (STARTTLS when
    # the server offers it) or smtps://... (TLS from the start). Without it the link is
    # logged at WARNING instead, which is for local mode only: a production API refuses
    # to start without it (infra/mail.py).
    smtp_url: SecretStr | None = None
    mail_from: str = "BitBuddies <no-reply@bitbuddies.local>"

    # Product knobs passed into each workflow (so a run never reads config mid-flight).
    render_size: int = 512
    animation_fps: int = 24
    animation_seconds: float = 5.0
    nsfw_threshold: float = 0.5
    max_upload_bytes: int = 20 * 1024 * 1024
    # Read from the image header before any pixel is decoded: a small file that claims
    # huge dimensions (a decompression bomb) is refused without allocating them.
    max_photo_pixels: int = 50_000_000
    max_prompt_chars: int = 500
    # Every route but the photo upload takes a small JSON body or none.
    max_body_bytes: int = 64 * 1024

    # Argon2 runs in at most this many threads per API process; a burst queues, and a
    # request that waited this long is answered 503 with Retry-After.
    password_hash_concurrency: int = 2
    password_hash_max_wait_seconds: float = 10.0
    # Redis connections per API process (streams, rate limits, health share them).
    api_redis_connections: int = 64

    # A model step that failed for a transient reason (see activities/model_errors.py) is
    # resubmitted this many times at most, waiting this long before the first try again
    # and twice as long before each next one.
    model_resubmits: int = 3
    model_resubmit_backoff_seconds: float = 2.0

    # Owner alerts.
    pushover_token: SecretStr | None = Field(None, validation_alias="PUSHOVER_TOKEN")
    pushover_user: SecretStr | None = Field(None, validation_alias="PUSHOVER_USER")
    pushover_api_url: str = "https://api.pushover.net/1/"
    # Alerts of one kind, step and error class within this window are one alert: the first
    # is sent, the rest are recorded as suppressed and counted in a digest, which runs
    # this often (a Temporal Schedule; infra/alerts.py).
    alert_dedupe_seconds: float = Field(300.0, gt=0)
    alert_digest_interval_seconds: float = Field(300.0, gt=0)
    # An emergency alert (a refund that failed) repeats this often until acknowledged on
    # the phone, for this long at most (Pushover's retry, at least 30 s, and expire).
    alert_emergency_retry_seconds: int = Field(60, ge=30)
    alert_emergency_expire_seconds: int = Field(3600, gt=0, le=10800)
    # Alert the owner once a day when that day's (UTC) provider spend passes this many USD
    # (the provider_costs table, recorded by activities/models.py). None: no spend alert.
    daily_spend_alert_usd: float | None = Field(None, ge=0)

    # Rate limits, kept in Redis so they hold across API processes. "off" switches them
    # all off (load tests). A limit of 0 switches that one off.
    rate_limits: Literal["on", "off"] = "on"
    signups_per_ip_per_hour: int = 20
    logins_per_ip_per_minute: int = 30
    # Failed logins of one account: this many free, then each try waits 1 s after the
    # last failure, doubling up to 15 minutes.
    login_failures_before_backoff: int = 5
    generation_starts_per_user_per_minute: int = 10
    # Checkout Sessions a user opens: each is a call to Stripe, and a script opening them
    # in a loop would spend our API quota and fill the table.
    checkouts_per_user_per_hour: int = 20
    # Verification and reset mails to one address, whoever asks: nobody can flood an
    # inbox from many addresses of their own.
    mails_per_address_per_hour: int = 5
    # Pairing codes redeemed from one address: a code is 8 of 31 characters and lives 10
    # minutes, so 10 tries a minute leave a guesser one chance in billions per live code.
    pairing_attempts_per_ip_per_minute: int = 10
    open_streams_per_user: int = 20

    # Metrics (infra/metrics.py): the API's GET /metrics, and each worker process's own
    # endpoint at this host:port (off when unset; `make dev` and the tests give each pool
    # a loopback port). With a token, both answer only `Authorization: Bearer <token>`
    # (401 otherwise); without one, nobody in production (404) and, locally, loopback
    # callers only.
    metrics_token: SecretStr | None = None
    worker_metrics_address: str | None = None

    log_level: str = "INFO"
    # json: one object per line (production's default); text: key=value after the message.
    log_format: Literal["text", "json"] = Field(
        default_factory=lambda data: "json" if data.get("environment") == "production" else "text"
    )
    # Traces (infra/telemetry.py): the OTLP/HTTP collector's base URL; none: no exporter.
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )

    @field_validator("fal_models", mode="before")
    @classmethod
    def _merge_fal_models(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("BITBUDDIES_FAL_MODELS must be a JSON object: step -> fields")
        if all(isinstance(v, FalStepModel) for v in value.values()) and set(value) == set(
            DEFAULT_FAL_MODELS
        ):
            return value  # a whole map, already validated
        return merge_fal_models(
            {k: v.model_dump() if isinstance(v, FalStepModel) else v for k, v in value.items()}
        )

    @field_validator("local_model_costs")
    @classmethod
    def _known_steps_priced(cls, value: dict[str, float]) -> dict[str, float]:
        """A misspelt step would price nothing and say nothing: refused at startup."""
        steps = [step.name for step in contract.MODEL_STEPS]
        if unknown := sorted(set(value) - set(steps)):
            raise ValueError(
                f"BITBUDDIES_LOCAL_MODEL_COSTS names unknown step(s) {unknown};"
                f" steps: {', '.join(steps)}"
            )
        if negative := sorted(step for step, cost in value.items() if cost < 0):
            raise ValueError(f"BITBUDDIES_LOCAL_MODEL_COSTS has negative prices for {negative}")
        return value

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment == "production":
            if self.signing_secret.get_secret_value() == LOCAL_SECRET:
                raise ValueError("BITBUDDIES_SIGNING_SECRET must be set in production")
            if self.fal_key is None:
                raise ValueError("FAL_KEY must be set in production")
            self._check_stripe()
        return self

    def _check_stripe(self) -> None:
        """With payments on, both Stripe secrets, each of its kind: a key pasted into the
        other's place would sign nothing we can verify, and every purchase would be paid
        and never credited. (Without STRIPE_SECRET_KEY, purchases are off: 503.)"""
        if self.stripe_secret_key is None:
            return
        if not self.stripe_secret_key.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("STRIPE_SECRET_KEY must be a Stripe secret key (sk_... or rk_...)")
        secret = self.stripe_webhook_secret
        if secret is None or not secret.get_secret_value().startswith("whsec_"):
            raise ValueError(
                "BITBUDDIES_STRIPE_WEBHOOK_SECRET must be the webhook endpoint's signing"
                " secret (whsec_...) when STRIPE_SECRET_KEY is set: without it no purchase"
                " is ever credited"
            )

    @property
    def uses_placeholder_secret(self) -> bool:
        return self.signing_secret.get_secret_value() == LOCAL_SECRET

    @cached_property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def uses_local_stripe(self) -> bool:
        """Checkouts go to the local stand-in (infra/stripe_local/), never in production."""
        return self.stripe_secret_key is None and self.environment == "local"

    @property
    def uses_local_models(self) -> bool:
        return self.fal_key is None

    @property
    def webhook_jwks_url(self) -> str:
        """The key set the provider's webhooks are checked against."""
        if self.uses_local_models:
            return self.model_server_url.rstrip("/") + "/.well-known/jwks.json"
        return self.fal_jwks_url


def get_settings() -> Settings:
    return Settings()
