"""What every app shares: the registry entry type, the job error taxonomy, file outputs.

An app is a pydantic input model plus a plain function ``run(inputs, work_dir, log)``
returning a JSON-able dict. Files in that dict are ``OutputFile`` values; the server
moves them into its file store and turns them into fal-style ``{"url", ...}`` objects, so
the app functions never need to know the server's public URL and stay testable alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

LogFn = Callable[[str], None]
"""Append one line to the job's logs. Raises ``JobCancelled`` once the job is cancelled,
so long loops that log their progress also stop promptly when abandoned."""

InT = TypeVar("InT", bound=BaseModel)
InT_contra = TypeVar("InT_contra", bound=BaseModel, contravariant=True)

SIZE_FIELD = Field(512, ge=64, le=2048, description="Output max side in pixels")
URL_PATTERN = r"^(https?://|data:)"


class JobError(Exception):
    """A job failure the caller should see, with a stable machine-readable type."""

    error_type = "model_error"
    http_status = 500

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type


class InputDownloadError(JobError):
    """An input URL could not be fetched (network, status, size limit, bad data: URI)."""

    error_type = "input_download_failed"
    http_status = 422


class InvalidInputError(JobError):
    """An input was fetched but is not usable (not an image, not a video, ...)."""

    error_type = "invalid_input"
    http_status = 422


class JobCancelled(Exception):
    """Raised inside a running job once it has been cancelled; its result is discarded."""


@dataclass(frozen=True)
class OutputFile:
    """A file an app produced in its work dir; becomes a fal file object in the result."""

    path: Path
    content_type: str
    width: int | None = None
    height: int | None = None


class Box(BaseModel):
    """An axis-aligned box in pixels of the image it refers to."""

    model_config = ConfigDict(extra="ignore")

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)


class RunFn(Protocol[InT_contra]):
    def __call__(self, inputs: InT_contra, work_dir: Path, log: LogFn) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AppSpec(Generic[InT]):
    """One registry entry: how to validate arguments and what to run."""

    input_model: type[InT]
    run: RunFn[InT]
    description: str
