"""The fal adapter's contract, without the network: for each endpoint of the model map, a
recorded request and result of that endpoint's documented shape (the fields fal's model
pages and its client's generated types give; tests/activities/fixtures/fal/) replayed
through the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from activities.providers import StepResult, UnknownStep, adapter_for
from activities.providers.fal import (
    FalModels,
    RoutedClient,
    UnexpectedResult,
    client_for,
    generation_cost,
)
from activities.providers.local import APPS, LocalModels
from infra.settings import OURS, VEED_SEGMENT_VIDEO, Settings
from workflows import contract

FIXTURES = Path(__file__).parent / "fixtures" / "fal"

# The data each step's local app gives (infra/modelserver/apps/*.py, beside its files),
# and what of it the pipeline reads (workflows/bitbuddy.py, activities/outputs.py). fps
# and num_frames are informational there: a fal video result does not say them.
LOCAL_DATA: dict[str, set[str]] = {
    "nsfw_filter": {"nsfw_probability"},
    "cartoonify": {"face", "expanded"},
    "expand": {"face", "expanded"},
    "segment_image": set(),
    "animate": {"fps", "num_frames"},
    "segment_video": {"fps", "num_frames"},
}
READ_BY_THE_PIPELINE: dict[str, set[str]] = {
    "nsfw_filter": {"nsfw_probability"},
    "cartoonify": {"face"},
    "expand": {"face"},
    "segment_image": set(),
    "animate": set(),
    "segment_video": set(),
}
# Our files by role, per step (workflows/contract.py's step table).
ROLES = {
    "nsfw_filter": set(),
    "cartoonify": {contract.IMAGE},
    "expand": {contract.IMAGE},
    "segment_image": {contract.MASK},
    "animate": {contract.VIDEO},
    "segment_video": {contract.MASK_VIDEO},
}


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def fal(monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any] | None = None) -> FalModels:
    monkeypatch.setenv("FAL_KEY", "test-key")
    if overrides is not None:
        monkeypatch.setenv("BITBUDDIES_FAL_MODELS", json.dumps(overrides))
    adapter = adapter_for(Settings())
    assert isinstance(adapter, FalModels)
    return adapter


def replay(adapter: FalModels, recorded: dict[str, Any]) -> StepResult:
    step = recorded["step"]
    call = adapter.call(step, recorded["urls"], recorded["params"])
    assert call.app == adapter.app(step) == recorded["endpoint"]
    assert call.arguments == recorded["request"]
    assert set(call.arguments) <= set(recorded["documented_arguments"])
    json.dumps(call.arguments)  # sent as JSON
    result = adapter.result(step, recorded["result"])
    expected = recorded["expected"]
    assert {
        role: {"url": f.url, "content_type": f.content_type} for role, f in result.files.items()
    } == expected["files"]
    assert result.data == expected["data"]
    return result


@pytest.mark.parametrize(
    "step", ["nsfw_filter", "cartoonify", "expand", "segment_image", "animate", "segment_video"]
)
def test_each_default_endpoint_gets_its_documented_arguments_and_gives_our_result(
    monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    adapter = fal(monkeypatch)
    result = replay(adapter, fixture(step))
    assert set(result.files) == ROLES[step]
    # The pipeline finds every fact it reads, and no fact the local apps do not give
    # (but the one that says whether the mask video carries its own alpha).
    assert READ_BY_THE_PIPELINE[step] <= set(result.data)
    assert set(result.data) <= LOCAL_DATA[step] | {"alpha_video"}
    assert isinstance(result.data.get("nsfw_probability", 0.0), float)


def test_the_nsfw_result_drives_the_workflows_refusal_as_the_local_one_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = fixture("nsfw_filter")
    hosted = fal(monkeypatch).result("nsfw_filter", recorded["result"])
    local = LocalModels().result("nsfw_filter", recorded["result"])
    assert hosted.data == local.data


def test_analysis_has_no_fal_endpoint_so_our_model_server_runs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(monkeypatch)
    assert adapter.model("analyze").endpoint == OURS
    assert adapter.app("analyze") == APPS["analyze"]
    assert adapter.our_apps() == {APPS["analyze"]}
    local = LocalModels()
    urls, params = {"image": "https://files/photo.jpg"}, {"size": 512}
    assert adapter.call("analyze", urls, params) == local.call("analyze", urls, params)
    result = {
        "image": {"url": "http://models/a.png", "content_type": "image/png", "width": 512},
        "rotation_applied": 0,
        "original_width": 1200,
        "original_height": 1600,
        "faces": [{"x": 1, "y": 2, "w": 30, "h": 30}],
    }
    assert adapter.result("analyze", result) == local.result("analyze", result)


def test_the_mask_video_step_swaps_to_veed_from_the_environment_without_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = fixture("segment_video_veed")
    adapter = fal(
        monkeypatch,
        {
            "segment_video": VEED_SEGMENT_VIDEO,  # one video with alpha
            "cartoonify": {"cost_usd": 0.05},  # one field of another step
        },
    )
    replay(adapter, recorded)
    assert adapter.model("cartoonify").endpoint == "fal-ai/flux-pro/kontext"
    assert adapter.model("cartoonify").cost_usd == 0.05
    assert adapter.model("animate").endpoint == fixture("animate")["endpoint"]


def test_cartoonify_swaps_to_nano_banana_with_its_list_of_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(
        monkeypatch,
        {
            "cartoonify": {
                "endpoint": "fal-ai/nano-banana/edit",
                "arguments": {
                    "prompt": "text:Make this person a cartoon. {prompt}",
                    "image_urls": "urls:image",  # a list of our one image
                },
                "fixed": {"num_images": 1, "output_format": "png"},
                "files": {"image": {"path": "images.0", "content_type": "image/png"}},
                "data_fixed": {"face": None, "expanded": False},
                "cost_usd": 0.039,
                "timeout_seconds": 600,
            }
        },
    )
    call = adapter.call("cartoonify", {"image": "https://f/p.png"}, {"prompt": "a pirate"})
    assert call.arguments == {
        "prompt": "Make this person a cartoon. a pirate",
        "image_urls": ["https://f/p.png"],
        "num_images": 1,
        "output_format": "png",
    }
    result = adapter.result(
        "cartoonify",
        {"images": [{"url": "https://v3.fal.media/x.png", "content_type": "image/png"}]},
    )
    assert result.files["image"].url == "https://v3.fal.media/x.png"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cartoonfy": {"cost_usd": 1}}, "unknown step"),
        ({"animate": {"endpoint": "fal-ai/some/other-video"}}, "does not give its"),
        ({"animate": {"cost_usd": -1}}, "greater than or equal to 0"),
        ({"animate": {"arguments": {"image_url": "file:image"}}}, "is not one of"),
        ({"animate": {"arguments": {"image_url": "url:picture"}}}, "is not a file role"),
        ({"animate": {"files": {"clip": {"path": "video", "content_type": "video/mp4"}}}}, "roles"),
        ({"animate": {"timeout": 30}}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_model_map_fails_at_startup_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("BITBUDDIES_FAL_MODELS", json.dumps(overrides))
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_a_result_without_what_the_map_expects_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(monkeypatch)
    with pytest.raises(UnexpectedResult, match=r"no 'images\.0'"):
        adapter.result("cartoonify", {"images": []})
    with pytest.raises(UnexpectedResult, match="not a file"):
        adapter.result("animate", {"video": "https://v3.fal.media/v.mp4"})


def test_every_step_has_an_endpoint_a_cost_and_a_timeout() -> None:
    models = Settings().fal_models
    assert set(models) == {step.name for step in contract.MODEL_STEPS}
    for step, model in models.items():
        assert model.endpoint, step
        assert model.cost_usd >= 0, step
        assert 0 < model.timeout_seconds <= contract.TIMEOUTS[_kind(step)].allowance.seconds


def _kind(step: str) -> contract.ModelKind:
    return next(s.kind for s in contract.MODEL_STEPS if s.name == step)


def test_what_a_generation_costs_per_the_map(capsys: pytest.CaptureFixture[str]) -> None:
    models = Settings().fal_models
    full = generation_cost(models)
    assert full.per_step == {
        "nsfw_filter": 0.001,
        "analyze": 0.0,
        "cartoonify": 0.04,
        "expand": 0.04,
        "segment_image": 0.002,
        "animate": 0.28,
        "segment_video": 0.06,
    }
    assert full.total == pytest.approx(0.423)
    assert generation_cost(models, expand=False).total == pytest.approx(0.383)
    with capsys.disabled():
        print(f"\nfal generation cost (USD): {full.per_step} total {full.total}")


async def test_with_a_fal_key_only_our_analyze_app_is_routed_to_our_model_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAL_KEY", "test-key")
    monkeypatch.setenv("BITBUDDIES_MODEL_SERVER_URL", "http://models.internal:8010")
    client = client_for(Settings())
    assert isinstance(client, RoutedClient)
    ours = await client.get_handle("bitbuddies/analyze", "req-1")
    assert ours.status_url == "http://models.internal:8010/bitbuddies/analyze/requests/req-1/status"
    theirs = await client.get_handle("fal-ai/flux-pro/kontext", "req-2")
    assert theirs.status_url.startswith("https://queue.fal.run/fal-ai/flux-pro/requests/req-2")


def test_a_fal_jobs_cost_is_its_steps_price_in_the_model_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(monkeypatch, {"animate": {"cost_usd": 0.31}})
    assert adapter.cost("animate") == 0.31  # an override, from the environment
    for step in contract.MODEL_STEPS:
        assert adapter.cost(step.name) == adapter.model(step.name).cost_usd
    # our model server's analysis is priced by the map too (nothing, by default), never
    # by the local prices
    monkeypatch.setenv("BITBUDDIES_LOCAL_MODEL_COSTS", json.dumps({"analyze": 9.0}))
    assert fal(monkeypatch).cost("analyze") == 0.0
    with pytest.raises(UnknownStep):
        adapter.cost("paint")


def test_local_jobs_cost_what_the_settings_price_them_else_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv("BITBUDDIES_LOCAL_MODEL_COSTS", json.dumps({"animate": 0.25}))
    adapter = adapter_for(Settings())
    assert isinstance(adapter, LocalModels)
    assert (adapter.cost("animate"), adapter.cost("cartoonify")) == (0.25, 0.0)
    assert LocalModels().cost("animate") == 0.0
    # a misspelt step would price nothing silently: refused at startup
    monkeypatch.setenv("BITBUDDIES_LOCAL_MODEL_COSTS", json.dumps({"animation": 0.25}))
    with pytest.raises(ValidationError, match="unknown step"):
        Settings()


def test_klings_duration_is_our_animation_length_to_the_nearest_clip_it_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(monkeypatch)
    urls = {"image": "https://f/c.png", "mask": "https://f/m.png"}
    asked = {
        seconds: adapter.call("animate", urls, {"prompt": "", "seconds": seconds}).arguments
        for seconds in (2, 5, 7.4, 7.6, 10, 30)
    }
    assert {s: a["duration"] for s, a in asked.items()} == {
        2: "5",
        5: "5",
        7.4: "5",
        7.6: "10",
        10: "10",
        30: "10",
    }
    # priced per 5 s clip: a 10 s clip costs twice (our length from the settings)
    assert adapter.cost("animate") == 0.28
    monkeypatch.setenv("BITBUDDIES_ANIMATION_SECONDS", "9")
    assert fal(monkeypatch).cost("animate") == pytest.approx(0.56)


def test_brias_canvas_is_computed_from_the_real_size_of_the_cartoon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = fal(monkeypatch)
    assert [s.name for s in contract.MODEL_STEPS if adapter.needs_image_size(s.name)] == ["expand"]
    urls = {"image": "https://f/c.png"}
    for size, canvas, location in (
        ((1024, 1024), [1365, 2048], [170, 0]),
        ((384, 576), [512, 1152], [64, 0]),
    ):
        arguments = adapter.call("expand", urls, {"prompt": "", "image_size": list(size)}).arguments
        assert arguments["canvas_size"] == canvas
        assert arguments["original_image_size"] == list(size)
        assert arguments["original_image_location"] == location
    with pytest.raises(ValueError, match="needs the input image's size"):
        adapter.call("expand", urls, {"prompt": ""})


def test_every_fal_submission_asks_its_outputs_to_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITBUDDIES_FAL_OUTPUT_EXPIRY_SECONDS", "600")
    adapter = fal(monkeypatch)
    urls = {role: f"https://f/{role}" for role in ("image", "mask", "video")}
    params = {"prompt": "", "seconds": 5, "image_size": [64, 64], "fps": 24, "size": 512}
    for step in contract.MODEL_STEPS:
        call = adapter.call(step.name, urls, params)
        if step is contract.ANALYZE:  # ours: no fal object to expire
            assert call.headers == {}
        else:
            assert json.loads(call.headers["X-Fal-Object-Lifecycle-Preference"]) == {
                "expiration_duration_seconds": 600
            }, step.name
    assert Settings().fal_output_expiry_seconds == 600
    monkeypatch.delenv("BITBUDDIES_FAL_OUTPUT_EXPIRY_SECONDS")
    assert Settings().fal_output_expiry_seconds == 86400


async def test_a_fal_base_url_sends_fal_calls_there_and_ours_to_our_model_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAL_KEY", "test-key")
    monkeypatch.setenv("BITBUDDIES_MODEL_SERVER_URL", "http://models.internal:8010")
    monkeypatch.setenv("BITBUDDIES_FAL_BASE_URL", "http://mimic.internal:8020")
    client = client_for(Settings())
    assert isinstance(client, RoutedClient)
    theirs = await client.get_handle("fal-ai/flux-pro/kontext", "req-2")
    assert theirs.status_url == "http://mimic.internal:8020/fal-ai/flux-pro/requests/req-2/status"
    ours = await client.get_handle("bitbuddies/analyze", "req-1")
    assert ours.status_url == "http://models.internal:8010/bitbuddies/analyze/requests/req-1/status"
    # without it, fal's own hosts again (the setting is only honoured when set)
    monkeypatch.delenv("BITBUDDIES_FAL_BASE_URL")
    real = await client_for(Settings()).get_handle("fal-ai/flux-pro/kontext", "req-3")
    assert real.status_url.startswith("https://queue.fal.run/fal-ai/flux-pro/requests/req-3")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"animate": {"arguments": {"duration": "nearest:seconds"}}}, "nearest:<param>"),
        ({"animate": {"arguments": {"duration": "nearest:seconds:five"}}}, "nearest:<param>"),
        ({"animate": {"arguments": {"canvas_size": "canvas:canvas_size"}}}, "the step's canvas"),
        ({"expand": {"arguments": {"canvas_size": "canvas:everything"}}}, "canvas:everything"),
        ({"animate": {"cost_scales_with": "length"}}, "is no argument"),
    ],
)
def test_a_bad_nearest_or_canvas_source_fails_at_startup(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("BITBUDDIES_FAL_MODELS", json.dumps(overrides))
    with pytest.raises(ValidationError, match=message):
        Settings()
