"""The provider adapters: the workflow's steps, in our words, become each provider's app
calls and come back as the same normalised results."""

from __future__ import annotations

import pytest

from activities.providers import UnknownStep, adapter_for
from activities.providers.fal import FalModels
from activities.providers.local import APPS, LocalModels
from infra.modelserver.apps import REGISTRY
from infra.settings import Settings
from workflows import contract


def test_the_local_adapter_runs_every_model_step_on_an_app_the_model_server_has() -> None:
    local = LocalModels()
    for step in contract.MODEL_STEPS:
        assert local.app(step.name) in REGISTRY, step.name
    with pytest.raises(UnknownStep):
        local.app("no_such_step")


def test_our_words_become_the_local_apps_arguments() -> None:
    local = LocalModels()
    call = local.call(
        "animate",
        {"image": "http://files/cartoon.png", "mask": "http://files/mask.png"},
        {"prompt": "a knight", "fps": 12, "seconds": 2.0},
    )
    assert call.app == APPS["animate"] == "bitbuddies/animate"
    assert call.arguments == {
        "image_url": "http://files/cartoon.png",
        "mask_url": "http://files/mask.png",
        "prompt": "a knight",
        "fps": 12,
        "duration_seconds": 2.0,
    }
    # Drawing the rest of the body is the cartoon app again, asked to.
    expand = local.call("expand", {"image": "http://f/c.png"}, {"prompt": "p", "size": 256})
    draw = local.call("cartoonify", {"image": "http://f/a.png"}, {"prompt": "p", "size": 256})
    assert expand.app == draw.app
    assert expand.arguments["expand_to_full_body"] is True
    assert draw.arguments["expand_to_full_body"] is False


def test_a_result_comes_back_by_role_with_its_facts_apart() -> None:
    result = LocalModels().result(
        "cartoonify",
        {
            "image": {"url": "http://m/c.png", "content_type": "image/png", "width": 256},
            "face": {"x": 1, "y": 2, "w": 3, "h": 4},
        },
    )
    assert set(result.files) == {"image"}
    assert (result.files["image"].url, result.files["image"].content_type) == (
        "http://m/c.png",
        "image/png",
    )
    assert result.files["image"].facts == {"width": 256}
    assert result.data == {"face": {"x": 1, "y": 2, "w": 3, "h": 4}}


def test_a_fal_key_picks_the_fal_adapter_and_none_the_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAL_KEY", "test-key")
    adapter = adapter_for(Settings())
    assert isinstance(adapter, FalModels)
    # Our local app ids never go to fal: only the step fal has no model for runs on ours.
    assert {s.name for s in contract.MODEL_STEPS if adapter.app(s.name) in APPS.values()} == {
        contract.ANALYZE.name
    }
    # fal's steps report by webhook; the one on our server (whose webhooks fal's keys do
    # not sign) is polled, not waited on for a webhook that cannot verify.
    assert {s.name for s in contract.MODEL_STEPS if not adapter.webhooks(s.name)} == {
        contract.ANALYZE.name
    }
    monkeypatch.delenv("FAL_KEY")
    local = adapter_for(Settings())
    assert isinstance(local, LocalModels)
    assert all(local.webhooks(s.name) for s in contract.MODEL_STEPS)
