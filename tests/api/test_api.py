"""The HTTP contract: accounts, validation, idempotency, isolation between users."""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
import pytest
from PIL import Image

from tests.conftest import Stack
from tests.support.client import signup
from tests.support.photos import photo


def _stored_inputs(stack: Stack) -> set[str]:
    root = stack.cfg.data_dir / "storage" / "generations"
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


async def test_signup_login_and_me(stack: Stack, http: httpx.AsyncClient) -> None:
    user = await signup(http)
    me = (await http.get("/v1/me", headers=user.headers)).json()
    assert me == {
        "id": user.id,
        "email": user.email,
        "balance": 3,
        "owed": 0,
        "email_verified": False,
    }

    again = await http.post(
        "/v1/auth/signup", json={"email": user.email.upper(), "password": "another fine password"}
    )
    assert again.status_code == 409

    wrong = await http.post("/v1/auth/login", json={"email": user.email, "password": "nope nope"})
    assert wrong.status_code == 401
    right = await http.post(
        "/v1/auth/login", json={"email": user.email, "password": "correct horse"}
    )
    assert right.status_code == 200
    token = right.json()["token"]
    assert (
        await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long enough"},
        {"email": "a@b.co", "password": "short"},
    ],
)
async def test_signup_rejects_bad_input(
    stack: Stack, http: httpx.AsyncClient, body: dict[str, str]
) -> None:
    response = await http.post("/v1/auth/signup", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_every_v1_route_needs_a_token(stack: Stack, http: httpx.AsyncClient) -> None:
    some_id = uuid.uuid4()
    for path in (
        "/v1/me",
        f"/v1/generations/{some_id}",
        f"/v1/generations/{some_id}/events",
        "/v1/characters",
        f"/v1/characters/{some_id}",
    ):
        assert (await http.get(path)).status_code == 401, path
        bad = await http.get(path, headers={"Authorization": "Bearer forged"})
        assert bad.status_code == 401, path


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "prompt", "status", "says"),
    [
        (b"hello, not an image at all", "a prompt", 415, "JPEG, PNG or WebP"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "a prompt", 422, "could not be read"),
        (_png(32, 32), "a prompt", 422, "too small"),
        (_png(200, 200), "   ", 422, "prompt is empty"),
        (_png(200, 200), "x" * 501, 422, "longer than 500"),
        (b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024 + 1), "a prompt", 413, "larger than 20 MB"),
    ],
    ids=["not-an-image", "corrupt-png", "too-small", "empty-prompt", "long-prompt", "too-large"],
)
async def test_bad_uploads_are_refused_and_nothing_is_stored_or_charged(
    stack: Stack, http: httpx.AsyncClient, upload: bytes, prompt: str, status: int, says: str
) -> None:
    user = await signup(http)
    before = _stored_inputs(stack)
    response = await user.generate(upload, prompt)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert await user.balance() == 3
    assert _stored_inputs(stack) == before


async def test_no_tokens_means_402_and_nothing_stored(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    ids = []
    for _ in range(3):
        response = await user.generate(photo("astronaut.png"))
        assert response.status_code == 202
        ids.append(response.json()["id"])
    assert await user.balance() == 0
    before = _stored_inputs(stack)
    refused = await user.generate(photo("astronaut.png"))
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_tokens"
    assert _stored_inputs(stack) == before
    await asyncio.gather(*(user.events(i) for i in ids))


async def test_a_repeated_request_with_the_same_idempotency_key_charges_once(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    key = str(uuid.uuid4())
    responses = await asyncio.gather(
        *(user.generate(photo("astronaut.png"), idempotency_key=key) for _ in range(3))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await user.balance() == 2
    later = await user.generate(photo("astronaut.png"), idempotency_key=key)
    assert later.json()["id"] == responses[0].json()["id"]
    events = await user.events(later.json()["id"])
    assert events[-1].event == "completed"
    assert await user.balance() == 2


async def test_a_user_sees_only_their_own_generations_streams_and_characters(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    owner, other = await signup(http), await signup(http)
    created = (await owner.generate(photo("astronaut.png"))).json()
    events = await owner.events(created["id"])
    character_id = events[-1].data["character_id"]
    for path in (
        f"/v1/generations/{created['id']}",
        f"/v1/generations/{created['id']}/events",
        f"/v1/characters/{character_id}",
    ):
        response = await http.get(path, headers=other.headers)
        assert response.status_code == 404, path
    assert (await http.get("/v1/characters", headers=other.headers)).json() == {"characters": []}


async def test_signed_file_urls_refuse_tampering(stack: Stack, http: httpx.AsyncClient) -> None:
    user = await signup(http)
    created = (await user.generate(photo("astronaut.png"))).json()
    character_id = (await user.events(created["id"]))[-1].data["character_id"]
    url = (await http.get(f"/v1/characters/{character_id}", headers=user.headers)).json()["assets"][
        "png"
    ]
    assert (await http.get(url)).status_code == 200
    assert (await http.get(url.replace("poster.png", "character.webm"))).status_code == 401
    assert (
        await http.get(url[:-2] + ("00" if not url.endswith("00") else "11"))
    ).status_code == 401


async def test_healthz_reports_every_dependency(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {
        "postgres": "ok",
        "redis": "ok",
        "temporal": "ok",
        "worker": "ok",
        "media_worker": "ok",
        "housekeeping_worker": "ok",
    }
    assert "/v1/generations" in (await http.get("/openapi.json")).json()["paths"]
