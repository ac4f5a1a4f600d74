"""One settings object for every process (API, worker, model server, dev supervisor).

Values come from the environment (prefix ``BITBUDDIES_`` unless named otherwise) or a
``.env`` file. Secrets are ``SecretStr`` so they never print; in production mode
placeholder secrets are refused at start-up.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows.contract import HOUSEKEEPING_TASK_QUEUE, MAIN_TASK_QUEUE, MEDIA_TASK_QUEUE

LOCAL_SECRET = "local-development-only"  # noqa: S105 - a placeholder, refused in production


class TokenPack(BaseModel):
    """A pack of tokens for sale: ``price`` in the currency's minor units (cents)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=80)
    tokens: int = Field(gt=0)
    price: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    stripe_price_id: str | None = None


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
    task_queue: str = MAIN_TASK_QUEUE
    media_task_queue: str = MEDIA_TASK_QUEUE
    housekeeping_task_queue: str = HOUSEKEEPING_TASK_QUEUE
    # Activities each worker process runs at once, per pool (infra/worker.py). The main
    # pool mostly waits on the network; media encodes (0: one per core).
    worker_main_activities: int = Field(200, ge=1)
    worker_media_activities: int = Field(0, ge=0)
    worker_housekeeping_activities: int = Field(1, ge=1)

    # Models: fal.ai when FAL_KEY is set, else our local queue-protocol server.
    fal_key: SecretStr | None = Field(None, validation_alias="FAL_KEY")
    model_server_url: str = "http://127.0.0.1:8010"
    model_concurrency: int = 2  # jobs in flight per model, across all workers
    # Lease of a permit not yet used for a submit; a submitted job's permit never expires.
    model_permit_ttl_seconds: float = 60.0
    # Ask the provider to call {public_url}/v1/providers/fal/webhook when a job ends, so
    # the workflow fetches at once instead of polling (it still checks the job once per
    # period when no webhook comes). Needs public_url reachable by the provider.
    provider_webhooks: bool = True
    # The keys that sign the provider's webhooks (a JWKS of Ed25519 keys). fal publishes
    # its own here; with local models the local model server's is used.
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"

    # Storage: the local folder unless a GCS bucket is named.
    gcs_bucket: str | None = None
    # A service-account JSON key that signs download URLs. Without it the client's own
    # credentials sign, which works only when they are a service-account key themselves.
    gcs_signing_key_file: Path | None = None
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
