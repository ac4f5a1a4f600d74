"""The whole pipeline through the real fal adapter: FAL_KEY set, fal_client pointed by
BITBUDDIES_FAL_BASE_URL at a model server mimicking fal's hosted endpoints (``--mimic
fal``), whose JWKS the API trusts for fal's webhooks (BITBUDDIES_FAL_JWKS_URL).

One set of extra processes for the module: the mimic, an API and an interactive worker on
a task queue of their own (the session's workers never take its tasks; the session's
media worker transcodes, as the workflow names the default media queue). Every model
step but analyze goes to a fal endpoint id, with fal's object lifecycle header, Kling's
duration from our animation length and Bria's canvas from the cartoon's real size."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg
import numpy as np
import pytest

from infra import supervisor
from infra.modelserver import mimic
from infra.settings import DEFAULT_FAL_MODELS, VEED_SEGMENT_VIDEO
from tests.conftest import Stack
from tests.support.client import User, signup
from tests.support.faults import drain_task_queue
from tests.support.photos import photo

TASK_QUEUE = "bitbuddies-fal-e2e"
EXPIRY_SECONDS = 3600
FAL_ENDPOINTS = {
    "nsfw_filter": mimic.NSFW,
    "cartoonify": mimic.KONTEXT,
    "expand": mimic.BRIA_EXPAND,
    "segment_image": mimic.BIREFNET,
    "animate": mimic.KLING,
    "segment_video": mimic.BIREFNET_VIDEO,
}
# segment_video swapped to veed (one VP9 WebM with alpha), and cartoonify given a short
# allowance, from the environment alone.
VEED_AND_SHORT_CARTOONIFY = {
    "segment_video": VEED_SEGMENT_VIDEO,
    "cartoonify": {"timeout_seconds": 4},
}


@dataclass
class FalStack:
    cfg: supervisor.StackConfig
    mimic_url: str
    api_url: str
    worker: supervisor.Managed
    started: list[supervisor.Managed] = field(default_factory=list)

    async def drain(self) -> None:
        """Let every workflow on the module's queue end before its worker stops."""
        await drain_task_queue(self.cfg.temporal_address, TASK_QUEUE)

    async def restart_worker(self, env: dict[str, str]) -> None:
        """The interactive worker again, with ``env`` on top of the module's."""
        await self.drain()
        await asyncio.to_thread(self.worker.stop)
        cfg = dataclasses.replace(self.cfg, extra_env={**self.cfg.extra_env, **env})
        self.worker = _worker(cfg)
        await asyncio.to_thread(self.worker.start)


def _worker(cfg: supervisor.StackConfig) -> supervisor.Managed:
    worker = supervisor.worker(cfg, "interactive")  # the workflow and the model steps
    worker.name = "fal-worker-interactive"
    return worker


@pytest.fixture(scope="module")
def fal_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalStack]:
    here = tmp_path_factory.mktemp("fal-stack")  # its logs, ready files and the mimic's data
    ports = dataclasses.replace(
        stack.cfg.ports,
        api=supervisor.free_port(),
        model_server=supervisor.free_port(),
        worker_metrics_base=0,
        worker_metrics={},
    )
    mimic_url = f"http://127.0.0.1:{ports.model_server}"
    env = {
        **stack.cfg.extra_env,
        "BITBUDDIES_DATA_DIR": str(stack.cfg.data_dir),  # the session's storage
        "FAL_KEY": "mimic-key",
        "BITBUDDIES_FAL_BASE_URL": mimic_url,
        "BITBUDDIES_FAL_JWKS_URL": f"{mimic_url}/.well-known/jwks.json",
        "BITBUDDIES_FAL_OUTPUT_EXPIRY_SECONDS": str(EXPIRY_SECONDS),
        "BITBUDDIES_TASK_QUEUE": TASK_QUEUE,
    }
    cfg = dataclasses.replace(stack.cfg, data_dir=here, ports=ports, extra_env=env)
    server = supervisor.model_server(cfg, mimic="fal")
    server.name = "fal-mimic"
    api = supervisor.api(cfg)
    api.name = "fal-api"
    fal = FalStack(cfg, mimic_url, cfg.api_url, _worker(cfg))
    try:
        for process in (server, api, fal.worker):
            process.start()
            fal.started.append(process)
        yield fal
        asyncio.run(fal.drain())
    finally:
        fal.worker.stop()
        for process in reversed(fal.started):
            process.stop()


@pytest.fixture
async def fal_http(fal_stack: FalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fal_stack.api_url, timeout=60.0) as client:
        yield client


@pytest.fixture
async def mimicked(fal_stack: FalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fal_stack.mimic_url, timeout=30.0) as client:
        (await client.post("/_local/reset")).raise_for_status()
        yield client


def _to_rgba(path: Path) -> list[str]:
    return ["-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgba", "-"]


def _rgba(webm: bytes) -> tuple[np.ndarray[Any, Any], int]:
    """Every frame's pixels as RGBA, decoded with libvpx (which keeps alpha), and how many
    pixels a frame has."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "v.webm"
        path.write_bytes(webm)
        reader = imageio_ffmpeg.read_frames(str(path))
        width, height = next(reader)["size"]
        reader.close()
        out = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-c:v", "libvpx-vp9", *_to_rgba(path)],
            capture_output=True,
            check=True,
        ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, 4), width * height


async def _generate(user: User) -> tuple[dict[str, Any], list[Any]]:
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    async with asyncio.timeout(240):
        events = await user.watch(generation_id)
    return await user.generation(generation_id), events


async def _character(
    http: httpx.AsyncClient, user: User, character_id: str
) -> tuple[np.ndarray[Any, Any], int]:
    """The character's WebM as RGBA pixels, and the pixels of one frame."""
    character = (await http.get(f"/v1/characters/{character_id}", headers=user.headers)).json()
    return _rgba((await http.get(character["assets"]["webm"])).content)


def _transparent_character(rgba: np.ndarray[Any, Any]) -> None:
    alpha = rgba[:, 3]
    assert (alpha < 16).mean() > 0.05, "background must be transparent"
    assert (alpha > 240).mean() > 0.05, "the character must be opaque"


async def test_a_generation_runs_on_fals_endpoints_with_their_arguments(
    fal_stack: FalStack, fal_http: httpx.AsyncClient, mimicked: httpx.AsyncClient
) -> None:
    user = await signup(fal_http)
    generation, events = await _generate(user)
    assert generation["status"] == "completed", (generation, events[-3:])
    _transparent_character((await _character(fal_http, user, events[-1].data["character_id"]))[0])

    requests = (await mimicked.get("/_local/requests")).json()
    by_app = {r["app"]: r for r in requests}
    # each model step at its fal endpoint, once; analyze alone on our own app
    assert sorted(r["app"] for r in requests) == sorted(
        [*FAL_ENDPOINTS.values(), "bitbuddies/analyze"]
    )
    for record in requests:
        if record["app"].startswith("bitbuddies/"):
            assert record["lifecycle"] is None
        else:
            assert record["lifecycle"] == {"expiration_duration_seconds": EXPIRY_SECONDS}
    # the test stack animates for 2 s: Kling's nearest clip is 5 s
    assert by_app[mimic.KLING]["arguments"]["duration"] == "5"
    # Bria's canvas from the size of the cartoon Kontext really drew
    kontext = by_app[mimic.KONTEXT]
    drawn = (await mimicked.get(f"/fal-ai/flux-pro/requests/{kontext['request_id']}")).json()
    width, height = drawn["images"][0]["width"], drawn["images"][0]["height"]
    bria = by_app[mimic.BRIA_EXPAND]["arguments"]
    canvas = [round(width * 4 / 3), height * 2]
    assert bria["canvas_size"] == canvas
    assert bria["original_image_size"] == [width, height]
    assert bria["original_image_location"] == [(canvas[0] - width) // 2, 0]
    assert bria["image_url"].startswith(fal_stack.api_url)  # our signed URL, not an upload
    # fal's webhooks, signed with the mimic's keys, verified by the API's JWKS
    deliveries = (await mimicked.get("/_local/webhooks")).json()
    assert {d["app"] for d in deliveries} == set(FAL_ENDPOINTS.values())
    assert all(d["status_code"] == 200 for d in deliveries), deliveries


async def test_veeds_video_with_alpha_is_the_character_and_a_step_past_its_timeout_fails(
    fal_stack: FalStack, fal_http: httpx.AsyncClient, mimicked: httpx.AsyncClient
) -> None:
    await fal_stack.restart_worker(
        {
            "BITBUDDIES_FAL_MODELS": json.dumps(VEED_AND_SHORT_CARTOONIFY),
            "BITBUDDIES_PROVIDER_WEBHOOKS": "false",  # polled: a timeout is seen at once
        }
    )
    user = await signup(fal_http)
    generation, events = await _generate(user)
    assert generation["status"] == "completed", (generation, events[-3:])
    requests = (await mimicked.get("/_local/requests")).json()
    veed = next(r for r in requests if r["app"] == mimic.VEED)
    assert veed["arguments"]["output_codec"] == "vp9"
    assert mimic.BIREFNET_VIDEO not in {r["app"] for r in requests}
    # The character's alpha is veed's own, frame for frame (the composed path would have
    # taken the grey of its colour for alpha).
    character, frame = await _character(fal_http, user, events[-1].data["character_id"])
    _transparent_character(character)
    result = await mimicked.get(f"/{mimic.VEED}/requests/{veed['request_id']}")
    theirs, their_frame = _rgba((await mimicked.get(result.json()["video"]["url"])).content)
    assert their_frame == frame
    first_ours, first_theirs = character[:frame, 3].astype(int), theirs[:frame, 3].astype(int)
    assert len(first_ours) == len(first_theirs) == frame
    assert np.abs(first_ours - first_theirs).mean() < 8

    # Kontext stuck past the map's 4 s for cartoonify: the step fails timed out, refunded.
    (await mimicked.post("/_local/reset")).raise_for_status()
    stuck = {"app": mimic.KONTEXT, "kind": "delay", "times": 1, "seconds": 30}
    (await mimicked.post("/_local/faults", json=stuck)).raise_for_status()
    balance = await user.balance()
    generation, events = await _generate(user)
    assert generation["status"] == "failed"
    assert events[-1].data["error_code"] == "timed_out", events[-1]
    assert events[-1].data["refunded"] is True
    assert await user.balance() == balance
    kontext = next(
        r for r in (await mimicked.get("/_local/requests")).json() if r["app"] == mimic.KONTEXT
    )
    assert kontext["status"] == "CANCELLED"  # stopped at the provider


def test_the_default_maps_endpoints_are_the_ones_mimicked() -> None:
    assert VEED_SEGMENT_VIDEO["endpoint"] == mimic.VEED
    assert {m["endpoint"] for m in DEFAULT_FAL_MODELS.values()} - {"ours"} == set(
        FAL_ENDPOINTS.values()
    )
    assert set(FAL_ENDPOINTS.values()) | {mimic.VEED} == set(mimic.FAL_APPS)
