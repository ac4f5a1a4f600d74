"""Nothing of one user's reaches another user, nor an anonymous caller, on any route.

The walk reads the running API's own OpenAPI document, so a route added later is walked
too. User A owns a completed generation and its character, a device token and a browser
session; every operation is then called as user B with B's bearer token, as B with B's
session cookie and CSRF token, and anonymously, with A's ids in the path:

- a route that names one of A's things answers 404 to B (exactly as for a thing that does
  not exist) and 401 to an anonymous caller, and a request body plausible enough that the
  answer comes from the ownership check, not from validation (a 422 proves nothing);
- a route about the caller's own account answers B about B, and 401 anonymously;
- a route anyone may call is in ``PUBLIC_ROUTES``, with the reason;
- no answer, status or route, carries any of A's identifiers in its body or headers.

A path, query or header parameter the walk does not know fails the test before any call,
naming the route: give it one of A's values in ``_path_values`` (or a value in
``QUERY_VALUES`` / ``HEADER_VALUES``), or list the route as public, with its reason.
Afterwards A's balance, tokens, characters, generation, session and password are as they
were. The table of answers is printed (``-s``) and written, as markdown, to
``isolation.md`` in tests/output/ and in pytest's base temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.conftest import Stack
from tests.support.client import User, signup
from tests.support.paths import OUTPUT
from tests.support.photos import photo

PASSWORD = "correct horse"  # what tests.support.client.signup gives every account
WRONG_PASSWORD = "not the password at all"
COOKIE = "bitbuddies_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_LIMIT = 256 * 1024  # bytes of an answer read (and searched for A's identifiers)
CALL_TIMEOUT = 20.0  # seconds; an event stream of a completed generation ends at once
GENERATION_TIMEOUT = 180.0

# Routes anyone may call, each with why. They are walked all the same: their answers must
# still carry none of A's identifiers, and none may fail with a 5xx.
PUBLIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/livez"): "liveness: the process answers; nothing of anyone's",
    ("GET", "/healthz"): "health: which dependencies answer; nothing of anyone's",
    ("POST", "/v1/auth/signup"): "sign-up makes an account: nobody is signed in yet",
    ("POST", "/v1/auth/login"): "log-in gives a token for an email and its password",
    ("POST", "/v1/auth/session"): "log-in for a browser: the same, with a cookie",
    ("POST", "/v1/auth/verify-email"): "the emailed link's token is the credential",
    ("POST", "/v1/auth/password-reset"): "a forgotten password: the same 202 for any email,"
    " and the link goes to the address's owner",
    ("POST", "/v1/auth/password-reset/confirm"): "the emailed link's token is the credential",
    ("GET", "/v1/shared/{slug}"): "a character its owner chose to share, for its share page",
    ("GET", "/v1/shared/{slug}/{fmt}"): "that shared character's files, for its share page",
    ("POST", "/v1/providers/fal/webhook"): "the model provider calls it; the delivery's Ed25519"
    " signature is the credential (forgeries: tests/e2e/test_provider_webhooks.py)",
    ("POST", "/v1/billing/stripe/webhook"): "Stripe calls it; the Stripe-Signature over the"
    " body with our webhook secret is the credential (forgeries: tests/billing/test_stripe.py)",
    ("GET", "/v1/extension"): "the extension's public ids, for the web app to message it",
    ("POST", "/v1/tokens/pair"): "the pairing code (one use, 10 minutes, rate limited) is the"
    " credential (tests/api/test_pairing.py)",
}
# What a shared character's public view may show on purpose, by the label of the
# identifier (see ``Victim.secrets``). Today it shows the animation and its size alone,
# nothing of its owner, not even the prompt; list a label here (e.g. "prompt") only when
# a view is meant to show it.
SHARED_VIEWS = frozenset({"/s/{slug}", "/v1/shared/{slug}", "/v1/shared/{slug}/{fmt}"})
SHARED_ON_PURPOSE: frozenset[str] = frozenset()
# Served by the API but not in its OpenAPI document; public, and walked too (filled with
# A's values): the schema and docs must answer 200; the web app's pages, the same HTML
# shell whatever the path, may not be there yet.
UNDOCUMENTED_PUBLIC: dict[str, str] = {
    "/openapi.json": "the schema of the API",
    "/docs": "the interactive docs (Swagger UI)",
    "/redoc": "the reference docs (ReDoc)",
    "/": "the web app's shell",
    "/generations/{generation_id}": "the web app's shell (app.js reads the id)",
    "/characters/{character_id}": "the web app's shell (app.js reads the id)",
    "/s/{slug}": "the share page's shell, the same whatever the slug (share.js asks the API)",
    "/metrics": "Prometheus metrics: counts by step and error code, nobody's ids (locally open"
    " to loopback; a token, or 404, in production: tests/infra/test_metrics.py)",
}
MUST_ANSWER = frozenset({"/openapi.json", "/docs", "/redoc"})
# Routes guarded by a signature in the URL rather than by who asks: a signed URL is a
# capability (anyone holding A's genuine link may fetch the file, as with GCS), so the
# walk sends A's key with a forged signature, and every caller gets 401.
SIGNED_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/files/{key}"): "local storage's stand-in for GCS signed URLs",
}
# Request bodies for one route, over the fields by name (``_body_values``). B deletes
# B's own account for real, once by bearer and once by cookie (a new B is made between):
# deleting one account must take nothing of another's with it.
BODY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("DELETE", "/v1/me"): {"password": PASSWORD},
}
# The caller's own lists and account (the balance is in GET /v1/me): B gets 200, about B.
OWN_READS = frozenset({("GET", "/v1/me"), ("GET", "/v1/tokens"), ("GET", "/v1/characters")})
FORGED_SIGNATURE = "0" * 64
# Query and header parameters, by name (case-insensitive): the value to send, or for an
# optional one the value of an extra call with it (a stream resumed with Last-Event-ID).
QUERY_VALUES: dict[str, str] = {
    "expires": str(int(time.time()) + 3600),
    "sig": FORGED_SIGNATURE,
    "after": "1",
    "generation_id": str(uuid.uuid4()),  # the provider webhook's: names nothing of A's
    "before": "9223372036854775807",  # GET /v1/billing/ledger: a page before every entry
    "limit": "1",
}
HEADER_VALUES: dict[str, str] = {
    "last-event-id": "1",
    "idempotency-key": f"isolation-{uuid.uuid4().hex}",
}
# Optional parameters sent in an extra call of their own, alongside the call without them.
VARIANT_PARAMETERS = frozenset({"after", "last-event-id", "before", "limit"})
# Optional parameters sent on every call (a start repeated with its key starts nothing new).
ALWAYS_PARAMETERS = frozenset({"idempotency-key"})


@dataclass
class Victim:
    """User A and everything of A's the walk looks for."""

    user: User
    generation_id: str
    character_id: str
    device_token_id: str
    device_token: str
    session_id: str
    csrf_token: str
    prompt: str
    asset_keys: list[str]
    asset_signatures: list[str]
    browser: httpx.AsyncClient
    picture_names: list[str] = field(default_factory=list)
    slug: str | None = None

    def secrets(self) -> dict[str, str]:
        """Label -> value of every identifier of A's that must not reach anyone else."""
        found = {
            "user id": self.user.id,
            "email": self.user.email,
            "sign-up token": self.user.token,
            "device token": self.device_token,
            "device token id": self.device_token_id,
            "session id": self.session_id,
            "CSRF token": self.csrf_token,
            "generation id": self.generation_id,
            "character id": self.character_id,
            "prompt": self.prompt,
        }
        for i, key in enumerate(self.asset_keys):
            found[f"asset key {i}"] = key
        for i, sig in enumerate(self.asset_signatures):
            found[f"asset signature {i}"] = sig
        return found


@dataclass
class Intruder:
    """User B: a bearer token and, in its own cookie jar, a browser session."""

    user: User
    browser: httpx.AsyncClient
    csrf_token: str


@dataclass
class Operation:
    method: str
    path: str
    kind: str  # "public", "signed", "owner" (names A's things) or "own" (the caller's)
    query: dict[str, str]
    headers: dict[str, str]
    # label, path parameters, extra query, extra headers: one call (of each caller) each
    variants: list[tuple[str, dict[str, str], dict[str, str], dict[str, str]]]
    json_body: Any = None
    form: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


@dataclass
class Answer:
    status: int
    head: str
    body: str

    @property
    def text(self) -> str:
        return f"{self.head}\n\n{self.body}"

    def excerpt(self) -> str:
        """The status and the start of the body, for a message (a file as its size)."""
        kind = next(
            (
                line.split(":", 1)[1].strip()
                for line in self.head.splitlines()
                if line.lower().startswith("content-type:")
            ),
            "",
        )
        if kind.startswith(("application/json", "text/")) or not self.body:
            return f"{self.status} {self.body[:300]}"
        return f"{self.status} ({len(self.body)} characters of {kind})"

    def __str__(self) -> str:
        return str(self.status)


@dataclass
class Row:
    method: str
    path: str
    variant: str
    bearer: Answer
    cookie: Answer
    anonymous: Answer
    owner: Answer | None = None  # A's own call, for a route that names A's thing
    missing: Answer | None = None  # B's, naming a thing that does not exist


# -- Reading the OpenAPI document ---------------------------------------------------------


def _resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref: str = schema["$ref"]
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return dict(schema)


def _example(
    schema: Mapping[str, Any], name: str, doc: Mapping[str, Any], values: Mapping[str, Any]
) -> Any:
    """A minimal value for a schema: a named value when the field's name is in
    ``values``, else one of the schema's type."""
    if name in values:
        return values[name]
    schema = _resolve(schema, doc)
    for choice in ("anyOf", "oneOf"):
        if choice in schema:
            options = [_resolve(s, doc) for s in schema[choice]]
            usable = [s for s in options if s.get("type") != "null"] or options
            return _example(usable[0], name, doc, values)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, doc))
        return _example(merged, name, doc, values)
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties", {})
        return {
            key: _example(props.get(key, {}), key, doc, values)
            for key in schema.get("required", [])
        }
    if kind == "array":
        return [_example(schema.get("items", {}), name, doc, values)]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    return "isolation probe"


def _body_values(victim: Victim) -> dict[str, Any]:
    """Request body fields, by name. Credentials are A's email with a wrong password, as
    an intruder would try; only ``BODY_OVERRIDES`` lets B act on B's own account."""
    return {
        "email": victim.user.email,
        "password": WRONG_PASSWORD,
        "current_password": WRONG_PASSWORD,
        "new_password": "a much better secret",
        "name": "isolation probe",
        "prompt": "a probe of the isolation walk",
        "pack": "pack-10",  # POST /v1/billing/checkout: a pack for sale (B buys for B)
    }


def _path_values(victim: Victim) -> dict[str, list[str]]:
    """A path parameter, by name, filled with the things of A's it names (each walked).
    A parameter with an enum schema (a file format) is walked with each of its values."""
    return {
        "generation_id": [victim.generation_id],
        "character_id": [victim.character_id],
        "token_id": [victim.device_token_id],
        "key": victim.asset_keys,  # A's files in storage
        "slug": [victim.slug] if victim.slug else [],  # A's shared character's
        "name": victim.picture_names,  # the pictures A's generation announced
    }


def _plan(doc: Mapping[str, Any], victim: Victim) -> tuple[list[Operation], list[str]]:
    """Every operation of the document, ready to call; and what the walk cannot fill."""
    operations: list[Operation] = []
    unknown: list[str] = []
    path_values = _path_values(victim)
    for path, item in doc["paths"].items():
        shared = [_resolve(p, doc) for p in item.get("parameters", [])]
        for method, spec in item.items():
            if method not in {"get", "post", "put", "patch", "delete", "head", "options"}:
                continue
            route = (method.upper(), path)
            body_values = {**_body_values(victim), **BODY_OVERRIDES.get(route, {})}
            where = f"{route[0]} {path}"
            params = shared + [_resolve(p, doc) for p in spec.get("parameters", [])]
            filled: dict[str, list[str]] = {}
            query: dict[str, str] = {}
            headers: dict[str, str] = {}
            extras: list[tuple[str, dict[str, str], dict[str, str]]] = [("", {}, {})]
            for param in params:
                name, place = param["name"], param["in"]
                required = bool(param.get("required"))
                if place == "path":
                    values = path_values.get(name) or _resolve(param.get("schema", {}), doc).get(
                        "enum"
                    )
                    if not values:
                        unknown.append(
                            f"{where}: path parameter {name!r} names nothing of A's; map it"
                            " in _path_values (or list the route in PUBLIC_ROUTES, with why)"
                        )
                        continue
                    filled[name] = [str(v) for v in values]
                    continue
                table = QUERY_VALUES if place == "query" else HEADER_VALUES
                value = table.get(name.lower())
                target = query if place == "query" else headers
                if value is None:
                    if required:
                        unknown.append(
                            f"{where}: required {place} parameter {name!r} has no value;"
                            f" add one to {'QUERY' if place == 'query' else 'HEADER'}_VALUES"
                        )
                elif required or name.lower() in ALWAYS_PARAMETERS:
                    target[name] = value
                elif name.lower() in VARIANT_PARAMETERS:
                    extra = {name: value}
                    extras.append(
                        (
                            f"{place} {name}: {value}",
                            extra if place == "query" else {},
                            extra if place == "header" else {},
                        )
                    )
            if route in PUBLIC_ROUTES:
                kind = "public"
            elif route in SIGNED_ROUTES:
                kind = "signed"
            elif filled:
                kind = "owner"
            else:
                kind = "own"
            names = sorted(filled)
            variants = []
            for combination in itertools.product(*(filled[n] for n in names)):
                chosen = dict(zip(names, combination, strict=True))
                several = [
                    f"{n}=…/{chosen[n].rsplit('/', 1)[-1]}"
                    if "/" in chosen[n]
                    else f"{n}={chosen[n]}"
                    for n in names
                    if len(filled[n]) > 1
                ]
                for label, extra_query, extra_headers in extras:
                    text = ", ".join([*several, *([label] if label else [])])
                    variants.append((text, chosen, extra_query, extra_headers))
            operation = Operation(route[0], path, kind, query, headers, variants)
            content = spec.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"].get("schema", {})
                operation.json_body = _example(schema, "", doc, body_values)
            elif "multipart/form-data" in content or "application/x-www-form-urlencoded" in (
                content
            ):
                media = (
                    content.get("multipart/form-data")
                    or content["application/x-www-form-urlencoded"]
                )
                schema = _resolve(media.get("schema", {}), doc)
                operation.form, operation.files = {}, {}
                for key in schema.get("required", []):
                    prop = _resolve(schema.get("properties", {}).get(key, {}), doc)
                    if prop.get("format") == "binary" or prop.get("contentMediaType"):
                        operation.files[key] = ("probe.png", photo("astronaut.png"), "image/png")
                    else:
                        operation.form[key] = str(_example(prop, key, doc, body_values))
            elif content:
                unknown.append(f"{where}: request body {sorted(content)} has no example")
            operations.append(operation)
    return operations, unknown


# -- Calling ------------------------------------------------------------------------------


def _url(path: str, values: Mapping[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return quote(values[match.group(1)], safe="/")

    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", fill, path)


async def _call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes, str]] | None = None,
) -> Answer:
    """One request; the answer's status and its head and (start of the) body as text."""
    kwargs: dict[str, Any] = {"headers": dict(headers), "params": dict(params or {})}
    if json_body is not None:
        kwargs["json"] = json_body
    if files:
        kwargs["files"] = files
        kwargs["data"] = form or {}
    elif form:
        kwargs["data"] = form
    body = bytearray()
    async with asyncio.timeout(CALL_TIMEOUT):
        async with client.stream(method, url, **kwargs) as response:
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) >= READ_LIMIT:
                    break
            head = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    return Answer(response.status_code, head, body.decode("utf-8", "replace"))


def _leaks(answer: Answer, secrets: Mapping[str, str]) -> list[str]:
    """The labels of A's identifiers found in an answer (a UUID in any of its spellings)."""
    text = answer.text.lower()
    found = []
    for label, value in secrets.items():
        spellings = {value.lower()}
        with contextlib.suppress(ValueError):
            spellings.add(uuid.UUID(value).hex)
        if any(s in text for s in spellings):
            found.append(label)
    return found


# -- Setting up A and B -------------------------------------------------------------------


async def _browser_session(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    response = await client.post("/v1/auth/session", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def _signed_parts(url: str) -> tuple[str, str] | None:
    """The storage key and signature of a signed link to the file route, if it is one."""
    parts = urlsplit(url)
    if "/v1/files/" not in parts.path:
        return None
    key = parts.path.split("/v1/files/", 1)[1]
    return key, parse_qs(parts.query).get("sig", [""])[0]


async def _victim(stack: Stack, http: httpx.AsyncClient, doc: Mapping[str, Any]) -> Victim:
    user = await signup(http)
    prompt = f"a secret gardener number {uuid.uuid4().hex[:10]}"
    started = await user.generate(photo("astronaut.png"), prompt=prompt)
    assert started.status_code == 202, started.text
    generation_id = str(started.json()["id"])
    async with asyncio.timeout(GENERATION_TIMEOUT):
        events = await user.events(generation_id)
    assert events[-1].event == "completed", events[-1]
    generation = await user.generation(generation_id)
    character_id = str(generation["character_id"])
    character = await http.get(f"/v1/characters/{character_id}", headers=user.headers)
    assert character.status_code == 200, character.text
    links = [_signed_parts(url) for url in character.json()["assets"].values()]
    signed = [link for link in links if link is not None]
    made = await http.post("/v1/tokens", headers=user.headers, json={"name": "A's extension"})
    assert made.status_code == 201, made.text
    browser = httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60.0)
    csrf = await _browser_session(browser, user.email)
    pictures = [str(e.data["picture"]) for e in events if e.data.get("picture")]
    victim = Victim(
        user=user,
        generation_id=generation_id,
        character_id=character_id,
        device_token_id=str(made.json()["id"]),
        device_token=str(made.json()["token"]),
        session_id=str(browser.cookies[COOKIE]),
        csrf_token=csrf,
        prompt=prompt,
        asset_keys=[key for key, _ in signed],
        asset_signatures=[sig for _, sig in signed if sig],
        browser=browser,
        picture_names=sorted(set(pictures)),
    )
    victim.slug = await _share(http, victim, doc)
    return victim


async def _share(http: httpx.AsyncClient, victim: Victim, doc: Mapping[str, Any]) -> str | None:
    """When the API lets an owner share a character, A shares theirs, so the public
    views of a shared character are walked with a real slug; the slug, from the answer."""
    path = "/v1/characters/{character_id}/share"
    spec = doc["paths"].get(path, {}).get("put")
    if spec is None:
        return None
    body: Any = None
    content = spec.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = _example(content["application/json"].get("schema", {}), "", doc, {})
    url = path.replace("{character_id}", victim.character_id)
    response = await http.put(url, headers=victim.user.headers, json=body)
    assert response.status_code in (200, 201), response.text
    answer = response.json()
    if isinstance(answer, dict) and isinstance(answer.get("slug"), str):
        return str(answer["slug"])
    match = re.search(r"/s/([^/?#\"]+)", response.text)
    assert match, f"no slug in the answer of PUT {path}: {response.text}"
    return match.group(1)


async def _intruder(stack: Stack, http: httpx.AsyncClient) -> Intruder:
    user = await signup(http)
    browser = httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60.0)
    return Intruder(user, browser, await _browser_session(browser, user.email))


async def _keep_signed_in(http: httpx.AsyncClient, intruder: Intruder) -> None:
    """A route of B's own may have signed B out (log-out, a future account deletion):
    sign B in again, or make a new B, so every route meets a signed-in B."""
    me = await http.get("/v1/me", headers=intruder.user.headers)
    if me.status_code == 401:
        login = await http.post(
            "/v1/auth/login", json={"email": intruder.user.email, "password": PASSWORD}
        )
        if login.status_code == 200:
            intruder.user = User(http, login.json()["token"], intruder.user.id, intruder.user.email)
        else:
            intruder.user = await signup(http)
    again = await intruder.browser.get("/v1/auth/session")
    if again.status_code != 200 or again.json()["user"]["id"] != intruder.user.id:
        intruder.browser.cookies.clear()
        intruder.csrf_token = await _browser_session(intruder.browser, intruder.user.email)


def _strip_signatures(value: Any) -> Any:
    """A's things as the API shows them, less the signed URLs' changing expiry."""
    if isinstance(value, dict):
        return {k: _strip_signatures(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_signatures(v) for v in value]
    if isinstance(value, str) and value.startswith("http"):
        return value.split("?", 1)[0]
    return value


async def _snapshot(http: httpx.AsyncClient, victim: Victim) -> dict[str, Any]:
    headers = victim.user.headers
    found: dict[str, Any] = {}
    for label, url, with_headers in (
        ("me", "/v1/me", headers),
        ("tokens", "/v1/tokens", headers),
        ("characters", "/v1/characters", headers),
        ("generation", f"/v1/generations/{victim.generation_id}", headers),
        ("character", f"/v1/characters/{victim.character_id}", headers),
        ("device token signs in", "/v1/me", {"Authorization": f"Bearer {victim.device_token}"}),
    ):
        response = await http.get(url, headers=with_headers)
        found[label] = (response.status_code, _strip_signatures(response.json()))
    session = await victim.browser.get("/v1/auth/session")
    found["session"] = (session.status_code, session.json())
    return found


# -- The walk -----------------------------------------------------------------------------


def _expect(operation: Operation, row: Row) -> Iterator[str]:
    """What is wrong with one row's answers."""
    where = _where(operation.method, operation.path, row.variant)
    answers = {"B's bearer": row.bearer, "B's cookie": row.cookie, "anonymous": row.anonymous}
    for who, answer in answers.items():
        if answer.status >= 500:
            yield f"{where}: {who} got {answer.excerpt()}"
    if operation.kind == "owner":
        for who, answer in answers.items():
            if answer.status == 422:
                yield (
                    f"{where}: {who} got 422, so the walk never reached the ownership check;"
                    f" send a valid body or parameters ({answer.excerpt()})"
                )
        for who in ("B's bearer", "B's cookie"):
            if answers[who].status != 404:
                yield f"{where}: {who} naming A's thing got {answers[who].status}, not 404"
        if row.anonymous.status != 401:
            yield f"{where}: anonymous got {row.anonymous.status}, not 401"
        if row.missing is not None and (row.missing.status, row.missing.body) != (
            row.bearer.status,
            row.bearer.body,
        ):
            yield (
                f"{where}: B naming A's thing got {row.bearer.excerpt()},"
                f" but naming nothing {row.missing.excerpt()}"
            )
        if row.owner is not None and not 200 <= row.owner.status < 300:
            yield (
                f"{where}: A, the owner, got {row.owner.status}: the values the walk fills"
                f" in name nothing real, so B's 404 proves nothing; fix _path_values"
            )
    elif operation.kind == "signed":
        for who, answer in answers.items():
            if answer.status != 401:
                yield f"{where}: {who} with a forged signature got {answer.status}, not 401"
    elif operation.kind == "own":
        if row.anonymous.status != 401:
            yield (
                f"{where}: anonymous got {row.anonymous.status}, not 401; if the route is"
                " public on purpose, list it in PUBLIC_ROUTES with why"
            )
        for who in ("B's bearer", "B's cookie"):
            if answers[who].status == 422:
                yield f"{where}: {who} got 422; the walk's body is not plausible"
            if (operation.method, operation.path) in OWN_READS and answers[who].status != 200:
                yield f"{where}: {who} reading its own got {answers[who].status}, not 200"


async def test_nothing_of_a_users_reaches_another_user_or_an_anonymous_caller(
    stack: Stack,
    http: httpx.AsyncClient,
    models: httpx.AsyncClient,  # resets the model server: no fault left by another test
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    started = time.monotonic()
    doc_response = await http.get("/openapi.json")
    assert doc_response.status_code == 200
    doc: dict[str, Any] = doc_response.json()
    victim = await _victim(stack, http, doc)
    intruder = await _intruder(stack, http)
    setup_seconds = time.monotonic() - started
    try:
        operations, unknown = _plan(doc, victim)
        assert not unknown, "routes the isolation walk cannot fill:\n" + "\n".join(unknown)
        assert any(op.kind == "owner" for op in operations)
        before = await _snapshot(http, victim)
        secrets = victim.secrets()
        rows, problems = await _walk(stack, http, victim, intruder, operations, secrets)
        after = await _snapshot(http, victim)
        for label in before:
            if before[label] != after[label]:
                problems.append(f"A's {label} changed: {before[label]} -> {after[label]}")
        login = await http.post(
            "/v1/auth/login", json={"email": victim.user.email, "password": PASSWORD}
        )
        if login.status_code != 200:
            problems.append(f"A can no longer log in: {login.status_code} {login.text}")
        table = _table(rows, setup_seconds, time.monotonic() - started - setup_seconds)
        print("\n" + table)
        for folder in (tmp_path_factory.getbasetemp(), OUTPUT):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "isolation.md").write_text(table + "\n")
        assert not problems, "\n".join(problems)
    finally:
        await victim.browser.aclose()
        await intruder.browser.aclose()


def _where(method: str, path: str, variant: str) -> str:
    return f"{method} {path}" + (f" ({variant})" if variant else "")


def _elsewhere(values: Mapping[str, str]) -> dict[str, str]:
    """The same path parameters, each id of A's replaced by one that names nothing."""
    fresh = {}
    for name, value in values.items():
        try:
            uuid.UUID(value)
        except ValueError:
            fresh[name] = value
        else:
            fresh[name] = str(uuid.uuid4())
    return fresh


def _shown(path: str, secrets: Mapping[str, str]) -> Mapping[str, str]:
    """What must not show in a route's answers: every identifier of A's, less what a
    shared character's public view shows on purpose."""
    if path not in SHARED_VIEWS:
        return secrets
    return {k: v for k, v in secrets.items() if not any(k.startswith(p) for p in SHARED_ON_PURPOSE)}


async def _walk(
    stack: Stack,
    http: httpx.AsyncClient,
    victim: Victim,
    intruder: Intruder,
    operations: list[Operation],
    secrets: Mapping[str, str],
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60.0) as bare:
        for operation in operations:
            shown = _shown(operation.path, secrets)
            for label, values, extra_query, extra_headers in operation.variants:
                url = _url(operation.path, values)
                query = {**operation.query, **extra_query}
                base_headers = {**operation.headers, **extra_headers}

                async def as_(
                    client: httpx.AsyncClient,
                    headers: Mapping[str, str],
                    operation: Operation = operation,
                    url: str = url,
                    query: Mapping[str, str] = query,
                ) -> Answer:
                    return await _call(
                        client,
                        operation.method,
                        url,
                        headers=headers,
                        params=query,
                        json_body=operation.json_body,
                        form=operation.form,
                        files=operation.files,
                    )

                bare.cookies.clear()
                bearer = await as_(bare, {**base_headers, **intruder.user.headers})
                if operation.method not in SAFE_METHODS:
                    await _keep_signed_in(http, intruder)  # B may have signed B out
                cookie = await as_(
                    intruder.browser, {**base_headers, CSRF_HEADER: intruder.csrf_token}
                )
                bare.cookies.clear()
                anonymous = await as_(bare, base_headers)
                row = Row(operation.method, operation.path, label, bearer, cookie, anonymous)
                if operation.kind == "owner":
                    # B naming a thing that does not exist: the answer must be the same,
                    # or it tells B that A's exists.
                    row.missing = await as_(
                        bare,
                        {**base_headers, **intruder.user.headers},
                        url=_url(operation.path, _elsewhere(values)),
                    )
                if operation.kind == "owner" and operation.method in SAFE_METHODS:
                    # The control: A, the owner, reaches the thing the walk named.
                    row.owner = await as_(bare, {**base_headers, **victim.user.headers})
                where = _where(operation.method, operation.path, label)
                for who, answer in (
                    ("B's bearer", bearer),
                    ("B's cookie", cookie),
                    ("anonymous", anonymous),
                ):
                    for leak in _leaks(answer, shown):
                        problems.append(f"{where}: {who} got {answer.status} showing A's {leak}")
                problems.extend(_expect(operation, row))
                rows.append(row)
                await _keep_signed_in(http, intruder)
        values = {
            "generation_id": victim.generation_id,
            "character_id": victim.character_id,
            "slug": victim.slug or "no-slug",
        }
        for path in UNDOCUMENTED_PUBLIC:
            answers: list[Answer] = []
            for who, client, headers in (
                ("B's bearer", bare, intruder.user.headers),
                ("B's cookie", intruder.browser, {}),
                ("anonymous", bare, {}),
            ):
                bare.cookies.clear()
                answer = await _call(client, "GET", _url(path, values), headers=headers)
                answers.append(answer)
                if answer.status >= 500 or (path in MUST_ANSWER and answer.status != 200):
                    problems.append(f"GET {path}: {who} got {answer.status}")
                for leak in _leaks(answer, _shown(path, secrets)):
                    problems.append(f"GET {path}: {who}'s answer shows A's {leak}")
            bearer, cookie, anonymous = answers
            rows.append(Row("GET", path, "not in the document", bearer, cookie, anonymous))
    return rows, problems


def _table(rows: list[Row], setup_seconds: float, walk_seconds: float) -> str:
    lines = [
        "| method | path | variant | B bearer | B cookie | anonymous"
        " | B bearer, no such id | A (owner, control) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        missing = str(row.missing) if row.missing is not None else "-"
        owner = str(row.owner) if row.owner is not None else "-"
        lines.append(
            f"| {row.method} | `{row.path}` | {row.variant or '-'} | {row.bearer} |"
            f" {row.cookie} | {row.anonymous} | {missing} | {owner} |"
        )
    lines.append("")
    lines.append(
        f"{len(rows)} rows, each called as B by bearer, as B by cookie and anonymously;"
        f" setting up A and B took {setup_seconds:.1f} s, the walk {walk_seconds:.1f} s."
    )
    return "\n".join(lines)
