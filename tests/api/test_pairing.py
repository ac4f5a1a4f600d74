"""Pairing the Chrome extension: a pairing code made on the account page becomes one
device token, once, typed in any case; the extension ends its own token; and its origin
gets CORS on the routes it calls and nowhere else."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from psycopg_pool import AsyncConnectionPool

from tests.api.test_rate_limits import _assert_429, clients, limited_apis  # noqa: F401
from tests.support.client import User, signup

EXTENSION_ID = "ighhgfpcngbokfoplnnjnpnnngdebald"  # the unpacked build's, the default
EXTENSION_ORIGIN = f"chrome-extension://{EXTENSION_ID}"
CODE = re.compile(r"^[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}$")  # no 0, O, 1, I or L


async def _code(http: httpx.AsyncClient, owner: User) -> str:
    made = await http.post("/v1/tokens/pairing-codes", headers=owner.headers)
    assert made.status_code == 201, made.text
    code: str = made.json()["code"]
    return code


async def _pair(http: httpx.AsyncClient, code: str, **extra: str) -> httpx.Response:
    return await http.post("/v1/tokens/pair", json={"code": code, **extra})


def _assert_invalid(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_token"


async def test_a_pairing_code_makes_one_device_token_of_its_owner_once(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    made = await http.post("/v1/tokens/pairing-codes", headers=owner.headers)
    assert made.status_code == 201, made.text
    code = made.json()["code"]
    assert CODE.match(code), code
    expires = datetime.fromisoformat(made.json()["expires_at"])
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)

    paired = await _pair(http, code)
    assert paired.status_code == 201, paired.text
    body = paired.json()
    assert set(body) == {"id", "name", "created_at", "expires_at", "token"}
    assert body["name"] == "Chrome extension"
    device = User(http, body["token"], owner.id, owner.email)
    me = await http.get("/v1/me", headers=device.headers)
    assert me.status_code == 200 and me.json()["id"] == owner.id
    listed = (await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"]
    assert [t["id"] for t in listed] == [body["id"]]
    # A device token, with no power over tokens: not even a pairing code of its own.
    refused = await http.post("/v1/tokens/pairing-codes", headers=device.headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    _assert_invalid(await _pair(http, code))  # used up
    assert len((await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"]) == 1


async def test_two_concurrent_redeems_of_one_code_make_one_token(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    code = await _code(http, owner)
    answers = await asyncio.gather(*(_pair(http, code) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [201] + [400] * 7
    assert len((await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"]) == 1


async def test_the_code_is_read_in_any_case_with_or_without_its_dash(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    for typed in (
        lambda c: c.lower(),
        lambda c: c.replace("-", ""),
        lambda c: f"  {c[:2]} {c[2:4].lower()} {c[5:]} ",
    ):
        code = await _code(http, owner)
        paired = await _pair(http, typed(code), name="Chrome at home")
        assert paired.status_code == 201, (typed(code), paired.text)
        assert paired.json()["name"] == "Chrome at home"


async def test_unknown_expired_and_malformed_codes_are_refused_alike(
    http: httpx.AsyncClient,
    db: AsyncConnectionPool,  # type: ignore[type-arg]
) -> None:
    owner = await signup(http)
    code = await _code(http, owner)
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE pairing_codes SET expires_at = now() - interval '1 second' WHERE user_id = %s",
            (uuid.UUID(owner.id),),
        )
    _assert_invalid(await _pair(http, code))  # expired
    for wrong in ("ABCD-EFGH", "2345-6789", "", "0000-0000", "ABCD-EFG", "ABCD-EFGHJ"):
        _assert_invalid(await _pair(http, wrong))
    assert (await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"] == []


async def test_a_deleted_accounts_codes_go_with_it(http: httpx.AsyncClient) -> None:
    owner = await signup(http)
    code = await _code(http, owner)
    deleted = await http.request(
        "DELETE", "/v1/me", headers=owner.headers, json={"password": "correct horse"}
    )
    assert deleted.status_code == 204, deleted.text
    _assert_invalid(await _pair(http, code))


async def test_redeem_attempts_are_limited_per_address_across_processes(
    http: httpx.AsyncClient,
    clients: list[httpx.AsyncClient],  # noqa: F811
) -> None:
    owner = await signup(http)  # the main API: no limits
    code = await _code(http, owner)
    for i in range(10):  # BITBUDDIES_PAIRING_ATTEMPTS_PER_IP_PER_MINUTE's default
        _assert_invalid(await _pair(clients[i % 2], "ABCD-EFGH"))
    for client in clients:  # every try counts, so even the right code waits now
        _assert_429(await _pair(client, code))
    assert (await _pair(http, code)).status_code == 201  # it was not used up


async def test_a_device_token_ends_itself_and_a_login_token_cannot(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    paired = await _pair(http, await _code(http, owner))
    device = User(http, paired.json()["token"], owner.id, owner.email)
    ended = await http.delete("/v1/tokens/current", headers=device.headers)
    assert ended.status_code == 204, ended.text
    assert (await http.get("/v1/me", headers=device.headers)).status_code == 401
    assert (await http.delete("/v1/tokens/current", headers=device.headers)).status_code == 401
    assert (await http.get("/v1/tokens", headers=owner.headers)).json()["tokens"] == []

    refused = await http.delete("/v1/tokens/current", headers=owner.headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert await owner.balance() == 3  # the log-in's token still works


async def test_the_extension_ids_are_listed_for_the_web_app(http: httpx.AsyncClient) -> None:
    answer = await http.get("/v1/extension")
    assert answer.status_code == 200
    assert answer.json() == {"extension_ids": [EXTENSION_ID]}


def _preflight(origin: str, method: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


async def test_the_extension_gets_cors_on_the_routes_it_calls(http: httpx.AsyncClient) -> None:
    owner = await signup(http)
    device = User(http, (await _pair(http, await _code(http, owner))).json()["token"], "", "")
    character = uuid.uuid4()
    for method, path in (
        ("GET", "/v1/me"),
        ("GET", "/v1/characters"),
        ("GET", f"/v1/characters/{character}"),
        ("GET", f"/v1/characters/{character}/assets/webm"),
        ("POST", "/v1/tokens/pair"),
        ("DELETE", "/v1/tokens/current"),
    ):
        answer = await http.options(path, headers=_preflight(EXTENSION_ORIGIN, method))
        assert answer.status_code in (200, 204), (path, answer.text)
        assert answer.headers["access-control-allow-origin"] == EXTENSION_ORIGIN, path
        assert method in answer.headers["access-control-allow-methods"], path
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed, path
        assert "access-control-allow-credentials" not in answer.headers, path

    headers = {**device.headers, "Origin": EXTENSION_ORIGIN}
    listed = await http.get("/v1/characters", headers=headers)
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == EXTENSION_ORIGIN
    assert "access-control-allow-credentials" not in listed.headers
    # Errors too, so the extension can read why (here: a token it no longer has).
    unknown = await http.get("/v1/me", headers={"Origin": EXTENSION_ORIGIN})
    assert unknown.status_code == 401
    assert unknown.headers["access-control-allow-origin"] == EXTENSION_ORIGIN


async def test_no_cors_for_another_origin_or_another_route(http: httpx.AsyncClient) -> None:
    owner = await signup(http)
    mine = await http.get("/v1/characters", headers={**owner.headers, "Origin": EXTENSION_ORIGIN})
    assert mine.headers["access-control-allow-origin"] == EXTENSION_ORIGIN  # the contrast
    other = "chrome-extension://" + "a" * 32
    for origin, method, path in (
        (other, "GET", "/v1/characters"),
        (other, "POST", "/v1/tokens/pair"),
        ("https://evil.example", "GET", "/v1/me"),
        (EXTENSION_ORIGIN, "POST", "/v1/generations"),
        (EXTENSION_ORIGIN, "GET", "/v1/tokens"),
        (EXTENSION_ORIGIN, "POST", "/v1/tokens"),
        (EXTENSION_ORIGIN, "DELETE", f"/v1/tokens/{uuid.uuid4()}"),
    ):
        answer = await http.options(path, headers=_preflight(origin, method))
        assert "access-control-allow-origin" not in answer.headers, (origin, method, path)
    for origin, path in ((other, "/v1/characters"), (EXTENSION_ORIGIN, "/v1/tokens")):
        answer = await http.get(path, headers={**owner.headers, "Origin": origin})
        assert answer.status_code == 200, answer.text
        assert "access-control-allow-origin" not in answer.headers, (origin, path)
