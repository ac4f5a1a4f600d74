"""The adapter of our local model server (infra/modelserver): its app ids, the argument
names its apps take (``<role>_url`` for a file) and their results, whose file fields are
already named by role."""

from __future__ import annotations

from typing import Any, Final

from activities.providers import AppCall, OutputFile, StepResult, UnknownStep
from workflows import contract

APPS: Final[dict[str, str]] = {
    contract.NSFW_FILTER.name: "bitbuddies/nsfw-filter",
    contract.ANALYZE.name: "bitbuddies/analyze",
    contract.CARTOONIFY.name: "bitbuddies/cartoonify",
    # The same app draws the body a photo cut off, asked to.
    contract.EXPAND.name: "bitbuddies/cartoonify",
    contract.SEGMENT_IMAGE.name: "bitbuddies/segment-image",
    contract.ANIMATE.name: "bitbuddies/animate",
    contract.SEGMENT_VIDEO.name: "bitbuddies/segment-video",
}
# Arguments fixed by the step, whatever the workflow asks.
_FIXED: Final[dict[str, dict[str, Any]]] = {
    contract.CARTOONIFY.name: {"expand_to_full_body": False},
    contract.EXPAND.name: {"expand_to_full_body": True},
}
# Our parameter name -> the apps' (the rest are the same).
_RENAMED: Final = {"seconds": "duration_seconds"}
_ROLES: Final = frozenset({contract.IMAGE, contract.MASK, contract.VIDEO, contract.MASK_VIDEO})


class LocalModels:
    name = "local"

    def __init__(self, costs: dict[str, float] | None = None) -> None:
        # step -> USD a call (Settings.local_model_costs): our CPU bills nothing per call,
        # but staging and the tests price it to see costs recorded as in production.
        self.costs = dict(costs or {})

    def app(self, step: str) -> str:
        try:
            return APPS[step]
        except KeyError:
            raise UnknownStep(f"the local model server has no app for step {step!r}") from None

    def call(self, step: str, urls: dict[str, str], params: dict[str, Any]) -> AppCall:
        arguments = {_RENAMED.get(name, name): value for name, value in params.items()}
        arguments.update({f"{role}_url": url for role, url in urls.items()})
        arguments.update(_FIXED.get(step, {}))
        return AppCall(self.app(step), arguments)

    def needs_image_size(self, step: str) -> bool:
        return False

    def timeout_seconds(self, step: str) -> float | None:
        return None  # the workflow's allowance per kind of step bounds our jobs

    def webhooks(self, step: str) -> bool:
        """Our model server signs its webhooks with the key the API is told to trust."""
        return True

    def cost(self, step: str) -> float:
        return self.costs.get(step, 0.0)

    def result(self, step: str, result: dict[str, Any]) -> StepResult:
        files: dict[str, OutputFile] = {}
        data: dict[str, Any] = {}
        for name, value in result.items():
            if name in _ROLES and isinstance(value, dict) and isinstance(value.get("url"), str):
                facts = {k: v for k, v in value.items() if k not in ("url", "content_type")}
                content_type = value.get("content_type") or "application/octet-stream"
                files[name] = OutputFile(value["url"], content_type, facts)
            else:
                data[name] = value
        return StepResult(files, data)
