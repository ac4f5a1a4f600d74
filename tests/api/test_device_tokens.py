"""Device tokens: named, hashed, listed, revocable; a device token cannot make or revoke
tokens nor change the password, so a stolen one cannot lock its owner out."""

from __future__ import annotations

import httpx

from tests.support.client import User, signup


async def _make(http: httpx.AsyncClient, owner: User, name: str) -> httpx.Response:
    return await http.post("/v1/tokens", headers=owner.headers, json={"name": name})


async def test_a_device_token_is_made_listed_used_and_revoked(http: httpx.AsyncClient) -> None:
    owner = await signup(http)
    made = await _make(http, owner, "  Chrome at work ")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["name"] == "Chrome at work" and body["token"]
    device = User(http, body["token"], owner.id, owner.email)
    assert await device.balance() == 3  # it signs in as its owner

    listed = await http.get("/v1/tokens", headers=owner.headers)
    assert listed.status_code == 200
    [entry] = listed.json()["tokens"]  # the sign-up's own token is not a device token
    assert entry["id"] == body["id"] and entry["name"] == "Chrome at work"
    assert "token" not in entry  # shown once, at creation; only its hash is kept

    revoked = await http.delete(f"/v1/tokens/{body['id']}", headers=owner.headers)
    assert revoked.status_code == 204
    after = await http.get("/v1/me", headers=device.headers)
    assert after.status_code == 401
    assert (await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"] == []
    again = await http.delete(f"/v1/tokens/{body['id']}", headers=owner.headers)
    assert again.status_code == 404


async def test_a_device_token_cannot_manage_tokens_or_the_password(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    body = (await _make(http, owner, "extension")).json()
    device = User(http, body["token"], owner.id, owner.email)
    for refused in (
        await _make(http, device, "another"),
        await http.delete(f"/v1/tokens/{body['id']}", headers=device.headers),
        await http.post(
            "/v1/me/password",
            headers=device.headers,
            json={"current_password": "correct horse", "new_password": "a much better secret"},
        ),
    ):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "forbidden"
    assert await device.balance() == 3  # still works: nothing was revoked
    listed = await http.get("/v1/tokens", headers=device.headers)  # reading is fine
    assert [t["id"] for t in listed.json()["tokens"]] == [body["id"]]
    login = await http.post(
        "/v1/auth/login", json={"email": owner.email, "password": "correct horse"}
    )
    assert login.status_code == 200  # the password did not change


async def test_nobody_else_sees_or_revokes_a_users_device_tokens(
    http: httpx.AsyncClient,
) -> None:
    owner, other = await signup(http), await signup(http)
    body = (await _make(http, owner, "phone")).json()
    assert (await http.get("/v1/tokens", headers=other.headers)).json()["tokens"] == []
    answer = await http.delete(f"/v1/tokens/{body['id']}", headers=other.headers)
    assert answer.status_code == 404  # exactly as for a token that does not exist
    assert await User(http, body["token"], owner.id, owner.email).balance() == 3
    for bad in ("", "   ", "tab\there", "x" * 101):
        refused = await _make(http, owner, bad)
        assert refused.status_code == 422, (bad, refused.text)
