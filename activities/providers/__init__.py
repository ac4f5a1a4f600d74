"""Providers behind adapters. The workflow names steps and what they need, in our words
(workflows/contract.py, the step table); an adapter maps each step to one of its
provider's apps, the arguments that app takes and its result, normalised to the same
``ModelOutput`` whoever made it. The model activities (activities/models.py) speak fal's
queue protocol to whichever provider the adapter names.

Today there is one adapter, for our local model server (``local.py``). Hosted fal.ai
needs its own (its endpoints, their argument names and their result shapes); until it
exists a worker with ``FAL_KEY`` set refuses to start rather than send our local app ids
to fal.
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
        """The submission of ``step``: ``urls`` by role, ``params`` in our words."""

    def result(self, step: str, result: dict[str, Any]) -> StepResult:
        """The app's result, in our words."""


class UnknownStep(LookupError):
    """The adapter has no app for this step."""


class NoAdapter(RuntimeError):
    """The configured provider has no adapter yet."""


def adapter_for(settings: Settings) -> Adapter:
    from activities.providers.local import LocalModels

    if not settings.uses_local_models:
        raise NoAdapter(
            "FAL_KEY is set, but hosted fal.ai models have no adapter yet: the local app ids"
            " (bitbuddies/...) do not exist at fal. Unset FAL_KEY to use the local model"
            " server."
        )
    return LocalModels()
