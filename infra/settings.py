"""One settings object for every process (API, worker, model server, dev supervisor).

Values come from the environment (prefix ``BITBUDDIES_`` unless named otherwise) or a
``.env`` file. Secrets are ``SecretStr`` so they never print; in production mode
placeholder secrets are refused at start-up.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_SECRET = "local-development-only"  # noqa: S105 - a placeholder, refused in production


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BITBUDDIES_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["local", "production"] = "local"
    data_dir: Path = Path(".data")

    # Where the public reaches the API (used in events_url and signed local file URLs).
    public_url: str = "http://127.0.0.1:8000"
    temporal_ui_url: str = "http://127.0.0.1:8233"

    # Services. Standard names (no prefix) so hosted deployments need no translation.
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:54329/bitbuddies", validation_alias="DATABASE_URL"
    )
    redis_url: str = Field("redis://127.0.0.1:63790/0", validation_alias="REDIS_URL")
    temporal_address: str = Field("127.0.0.1:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", validation_alias="TEMPORAL_NAMESPACE")
    task_queue: str = "bitbuddies"
    media_task_queue: str = "bitbuddies-media"

    # Models: fal.ai when FAL_KEY is set, else our local queue-protocol server.
    fal_key: SecretStr | None = Field(None, validation_alias="FAL_KEY")
    model_server_url: str = "http://127.0.0.1:8010"
    model_concurrency: int = 2  # jobs in flight per model, across all workers
    # Lease of a permit not yet used for a submit; a submitted job's permit never expires.
    model_permit_ttl_seconds: float = 60.0

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

    # Accounts and billing.
    signup_tokens: int = 3
    session_days: int = 30

    # Product knobs passed into each workflow (so a run never reads config mid-flight).
    render_size: int = 512
    animation_fps: int = 24
    animation_seconds: float = 5.0
    nsfw_threshold: float = 0.5
    max_upload_bytes: int = 20 * 1024 * 1024
    max_prompt_chars: int = 500

    # Owner alerts.
    pushover_token: SecretStr | None = Field(None, validation_alias="PUSHOVER_TOKEN")
    pushover_user: SecretStr | None = Field(None, validation_alias="PUSHOVER_USER")
    pushover_api_url: str = "https://api.pushover.net/1/"

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment == "production":
            if self.signing_secret.get_secret_value() == LOCAL_SECRET:
                raise ValueError("BITBUDDIES_SIGNING_SECRET must be set in production")
            if self.fal_key is None:
                raise ValueError("FAL_KEY must be set in production")
        return self

    @cached_property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def uses_local_models(self) -> bool:
        return self.fal_key is None


def get_settings() -> Settings:
    return Settings()
