"""Providers behind adapters. The workflow names steps and what they need, in our words
(workflows/contract.py, the step table); an adapter maps each step to one of its
provider's apps, the arguments that app takes and its result, normalised to the same
``ModelOutput`` whoever made it. The model activities (activities/models.py) speak fal's
queue protocol to whichever provider the adapter names.

Two adapters: our local model server's (``local.py``), used without ``FAL_KEY``, and
hosted fal.ai's (``fal.py``), used with it, which follows the model map in the settings
(``Settings.fal_models``: endpoint, arguments, result, cost and timeout per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.settings import Settings


@dataclass(frozen=True)
class AppCall:
    """One submission: the provider's app and the arguments it takes."""

    app: str
    arguments: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # sent with the submission


@dataclass(frozen=True)
class OutputFile:
    """A file a result names, by our role, before it is copied into our storage."""

    url: str
    content_type: str
    facts: dict[str, Any] = field(default_factory=dict)  # what the provider said of it


@dataclass(frozen=True)
class StepResult:
    files: dict[str, OutputFile]  # role -> file
    data: dict[str, Any]  # the step's facts, in our words


class Adapter(Protocol):
    name: str

    def app(self, step: str) -> str:
        """The provider's app that runs ``step``."""

    def call(self, step: str, urls: dict[str, str], params: dict[str, Any]) -> AppCall:
        """The submission of ``step``: ``urls`` by role, ``params`` in our words (with
        ``image_size``, the input image's [width, height], when ``needs_image_size``)."""

    def needs_image_size(self, step: str) -> bool:
        """Whether ``call`` needs the real size of the step's input image."""

    def timeout_seconds(self, step: str) -> float | None:
        """How long the step's job may take from its submission (None: the workflow's
        allowance for its kind alone bounds it)."""

    def result(self, step: str, result: dict[str, Any]) -> StepResult:
        """The app's result, in our words."""

    def webhooks(self, step: str) -> bool:
        """Whether the step's provider signs its webhooks with the keys the API trusts
        (else the step is polled, not waited on)."""

    def cost(self, step: str) -> float:
        """What one call of ``step`` costs us, in USD (recorded per job fetched:
        infra/costs.py)."""


class UnknownStep(LookupError):
    """The adapter has no app for this step."""


def adapter_for(settings: Settings) -> Adapter:
    """fal.ai's models (by the model map) when ``FAL_KEY`` is set, else our local ones."""
    from activities.providers.fal import FalModels
    from activities.providers.local import LocalModels

    if settings.uses_local_models:
        return LocalModels(settings.local_model_costs)
    return FalModels(
        settings.fal_models,
        output_expiry_seconds=settings.fal_output_expiry_seconds,
        seconds=settings.animation_seconds,
    )
