"""The adapter of hosted fal.ai models, driven by the model map in the settings
(``Settings.fal_models``, defaults in infra/settings.py): for each step, the endpoint,
how our inputs become its arguments and how its result becomes our normalised
``StepResult``, with the same data keys the local adapter's results carry.

The analysis step has no fal endpoint (its map entry says ``ours``): our model server's
analyze app runs it, at ``model_server_url``, with the local adapter's arguments and
result. Its app id (``bitbuddies/analyze``) is ours, not fal's; ``RoutedClient`` sends
the calls of such apps to the model server and every other call to fal.

Every fal submission asks fal, by its object lifecycle header, to expire the request's
output files after ``Settings.fal_output_expiry_seconds`` instead of keeping them public
on its CDN: our fetch copies them into our storage as soon as the job ends. Inputs are
never uploaded to fal: each is a short-lived signed URL of our own storage
(activities/models.py, INPUT_URL_TTL) that the endpoint downloads from.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

import fal_client
import fal_client.client as fal_module
import httpx

from activities.providers import AppCall, OutputFile, StepResult, UnknownStep
from activities.providers.local import LocalModels
from infra.falclient import fal_client_from_settings
from infra.settings import OURS, FalStepModel, Settings, nearest_choice
from workflows import contract


class UnexpectedResult(ValueError):
    """A result lacks what the model map says it holds."""


class _Params(dict[str, Any]):
    """Our parameters for a text template: one we were not given reads as nothing."""

    def __missing__(self, key: str) -> str:
        return ""


# fal's header asking for a request's stored outputs to expire (its "object lifecycle").
LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"
DEFAULT_OUTPUT_EXPIRY_SECONDS = 86400


class FalModels:
    name = "fal"

    def __init__(
        self,
        models: dict[str, FalStepModel],
        *,
        output_expiry_seconds: int = DEFAULT_OUTPUT_EXPIRY_SECONDS,
        seconds: float = 5.0,
    ) -> None:
        """``seconds``: our animation length (Settings.animation_seconds), which prices
        a step whose cost scales with it."""
        self.models = models
        self.output_expiry_seconds = output_expiry_seconds
        self.seconds = seconds
        self._local = LocalModels()

    def model(self, step: str) -> FalStepModel:
        try:
            return self.models[step]
        except KeyError:
            raise UnknownStep(f"the fal model map has no step {step!r}") from None

    def runs_on_ours(self, step: str) -> bool:
        """Whether our model server runs ``step`` (fal has no model for it)."""
        return self.model(step).endpoint == OURS

    def webhooks(self, step: str) -> bool:
        """fal signs its webhooks with the keys of its JWKS, which the API trusts with
        FAL_KEY set; our model server signs with its own, so a step it runs here is
        polled (waiting out a webhook that cannot verify would cost the step's whole
        webhook period)."""
        return not self.runs_on_ours(step)

    def our_apps(self) -> frozenset[str]:
        """The app ids that go to our model server, not to fal."""
        return frozenset(self._local.app(s) for s in self.models if self.runs_on_ours(s))

    def app(self, step: str) -> str:
        if self.runs_on_ours(step):
            return self._local.app(step)
        return self.model(step).endpoint

    def call(self, step: str, urls: dict[str, str], params: dict[str, Any]) -> AppCall:
        if self.runs_on_ours(step):
            return self._local.call(step, urls, params)
        model = self.model(step)
        arguments: dict[str, Any] = {}
        for name, source in model.arguments.items():
            kind, _, what = source.partition(":")
            if kind in ("url", "urls"):
                if what not in urls:
                    raise ValueError(f"{step}: {model.endpoint} needs the {what} file")
                arguments[name] = urls[what] if kind == "url" else [urls[what]]
            elif kind == "param":
                if params.get(what) is not None:
                    arguments[name] = params[what]
            elif kind == "nearest":
                param = what.partition(":")[0]
                if params.get(param) is not None:
                    arguments[name] = nearest_choice(what, float(params[param]))
            elif kind == "canvas":
                arguments[name] = _canvas(model, what, params.get("image_size"), step)
            else:  # text
                arguments[name] = string.Formatter().vformat(what, (), _Params(params)).strip()
        arguments.update(model.fixed)
        lifecycle = json.dumps({"expiration_duration_seconds": self.output_expiry_seconds})
        return AppCall(model.endpoint, arguments, {LIFECYCLE_HEADER: lifecycle})

    def needs_image_size(self, step: str) -> bool:
        """Whether the step's arguments come from its input image's real size."""
        if self.runs_on_ours(step):
            return False
        return any(s.startswith("canvas:") for s in self.model(step).arguments.values())

    def result(self, step: str, result: dict[str, Any]) -> StepResult:
        if self.runs_on_ours(step):
            return self._local.result(step, result)
        model = self.model(step)
        files: dict[str, OutputFile] = {}
        for role, out in model.files.items():
            found = _at(result, out.path, step)
            if not isinstance(found, dict) or not isinstance(found.get("url"), str):
                raise UnexpectedResult(f"{step}: {out.path!r} in the result is not a file")
            facts = {k: v for k, v in found.items() if k not in ("url", "content_type")}
            files[role] = OutputFile(
                found["url"], found.get("content_type") or out.content_type, facts
            )
        data = {fact: _at(result, path, step) for fact, path in model.data.items()}
        data.update(model.data_fixed)
        return StepResult(files, data)

    def timeout_seconds(self, step: str) -> float:
        return self.model(step).timeout_seconds

    def cost(self, step: str) -> float:
        """The map's price of a call, ours included (a step our model server runs is
        priced there too: 0 unless the map says otherwise). A price per unit of an
        argument (Kling's per 5 s of video) is scaled by the value our settings ask."""
        model = self.model(step)
        if model.cost_scales_with is None:
            return model.cost_usd
        # Our only parameter fixed for every generation by the settings is its length.
        argument = model.cost_scales_with
        kind, _, what = model.arguments.get(argument, "").partition(":")
        value: Any = model.fixed.get(argument)
        if kind == "nearest" and what.partition(":")[0] == "seconds":
            value = nearest_choice(what, self.seconds)
        elif kind == "param" and what == "seconds":
            value = self.seconds
        try:
            units = float(value) / model.cost_unit if value is not None else 1.0
        except (TypeError, ValueError):
            units = 1.0
        return round(model.cost_usd * units, 6)


def _canvas(model: FalStepModel, what: str, size: Any, step: str) -> list[int]:
    """Outpainting geometry: the input image at its real size, at the top of the step's
    canvas (its multiples of the image's width and height), centred across."""
    if model.canvas is None or not (isinstance(size, list | tuple) and len(size) == 2):
        raise ValueError(f"{step}: {model.endpoint} needs the input image's size")
    width, height = int(size[0]), int(size[1])
    canvas_w, canvas_h = round(width * model.canvas.width), round(height * model.canvas.height)
    if what == "canvas_size":
        return [canvas_w, canvas_h]
    if what == "image_size":
        return [width, height]
    return [(canvas_w - width) // 2, 0]  # image_location


def _at(result: dict[str, Any], path: str, step: str) -> Any:
    value: Any = result
    for part in path.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise UnexpectedResult(f"{step}: the result has no {path!r}") from None
    return value


@dataclass(frozen=True)
class GenerationCost:
    per_step: dict[str, float]  # USD per call, each step the workflow runs
    total: float


def generation_cost(models: dict[str, FalStepModel], *, expand: bool = True) -> GenerationCost:
    """What one generation costs per the map: every step once (``expand``: the photo did
    not show the whole body, so the expand step runs too). Resubmissions are extra."""
    per_step = {
        step.name: models[step.name].cost_usd
        for step in contract.MODEL_STEPS
        if expand or step is not contract.EXPAND
    }
    return GenerationCost(per_step, round(sum(per_step.values()), 6))


class RoutedClient(fal_client.AsyncClient):
    """fal's client, except that the apps in ``ours`` run on our model server at
    ``base_url``. fal_client takes its hosts from module constants (infra/falclient.py),
    so our calls build their URLs here, in fal's queue layout, which our server speaks."""

    def __init__(self, *, key: str, ours: frozenset[str], base_url: str) -> None:
        super().__init__(key=key)
        self.ours = ours
        self.base_url = base_url.rstrip("/") + "/"
        self._http = httpx.AsyncClient(
            headers={"Authorization": "Key local"}, timeout=fal_module.QUEUE_POLL_TIMEOUT
        )

    def _our_handle(self, application: str, request_id: str) -> fal_client.AsyncRequestHandle:
        base = f"{self.base_url}{application}/requests/{request_id}"
        return fal_client.AsyncRequestHandle(
            request_id=request_id,
            response_url=base,
            status_url=base + "/status",
            cancel_url=base + "/cancel",
            client=self._http,
        )

    async def submit(  # type: ignore[override]
        self, application: str, arguments: dict[str, Any], **kwargs: Any
    ) -> fal_client.AsyncRequestHandle:
        if application not in self.ours:
            return await super().submit(application, arguments, **kwargs)
        # Our server's webhooks are signed with its keys, not fal's: none is asked for,
        # and the workflow polls once its webhook wait is over.
        response = await self._http.post(self.base_url + application, json=arguments)
        if response.is_error:
            raise fal_client.client.FalClientHTTPError(
                response.text, response.status_code, dict(response.headers), response=response
            )
        body = response.json()
        return fal_client.AsyncRequestHandle(
            request_id=body["request_id"],
            response_url=body["response_url"],
            status_url=body["status_url"],
            cancel_url=body["cancel_url"],
            client=self._http,
        )

    async def get_handle(self, application: str, request_id: str) -> fal_client.AsyncRequestHandle:
        if application in self.ours:
            return self._our_handle(application, request_id)
        return await super().get_handle(application, request_id)


def client_for(settings: Settings) -> fal_client.AsyncClient:
    """The worker's model client: local, fal, or fal with our apps routed to our server.
    (``status`` and ``cancel`` go through ``get_handle``, so they follow it.)"""
    client = fal_client_from_settings(settings)
    if settings.fal_key is None:
        return client
    ours = FalModels(settings.fal_models).our_apps()
    if not ours:
        return client
    return RoutedClient(
        key=settings.fal_key.get_secret_value(), ours=ours, base_url=settings.model_server_url
    )
