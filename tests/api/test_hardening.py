"""The API under traffic and hostile input: a clear 4xx with the documented body, never a
500, and no connection pool starved by streams or password hashing."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import uuid
import zlib
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin
from psycopg_pool import AsyncConnectionPool

from api.app import create_app
from infra.settings import LOCAL_SECRET, Settings
from tests.conftest import Stack, insert_generation
from tests.support.client import User, signup
from tests.support.photos import photo

API_POOL_SIZE = 20  # api/app.py


def _is_error_body(response: httpx.Response, code: str | None = None) -> bool:
    body = response.json()
    ok = set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return ok and (code is None or body["error"]["code"] == code)


async def _raw(stack: Stack, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes on a fresh connection; return what the server answers first."""
    url = urlsplit(stack.cfg.api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(_first_answer(reader), 10)
    finally:
        writer.close()


async def _first_answer(reader: asyncio.StreamReader) -> bytes:
    """The answer's head and its body (by Content-Length), however the bytes arrive: the
    head and the body may come in separate reads."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await reader.read(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length and (chunk := await reader.read(65536)):
        rest += chunk
    return head + b"\r\n\r\n" + rest


# --- traffic -----------------------------------------------------------------------


async def _open_stream(http: httpx.AsyncClient, user: User, generation_id: uuid.UUID) -> None:
    async with http.stream(
        "GET", f"/v1/generations/{generation_id}/events", headers=user.headers
    ) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


async def test_open_event_streams_hold_no_database_connection(
    stack: Stack,
    db: AsyncConnectionPool,
    http: httpx.AsyncClient,  # type: ignore[type-arg]
) -> None:
    user = await signup(http)
    # A generation that never moves: its streams stay open as long as we let them.
    waiting = await insert_generation(db, uuid.UUID(user.id))
    limits = httpx.Limits(max_connections=API_POOL_SIZE + 20)
    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60, limits=limits) as many:
        streams = [
            asyncio.create_task(_open_stream(many, user, waiting)) for _ in range(API_POOL_SIZE + 5)
        ]
        try:
            await asyncio.sleep(2.0)  # every stream is open and waiting
            assert not any(s.done() for s in streams)
            started = time.monotonic()
            me = await http.get("/v1/me", headers=user.headers, timeout=10)
            assert me.status_code == 200, me.text
            assert time.monotonic() - started < 2.0
            assert (await http.get("/healthz", timeout=10)).status_code == 200
        finally:
            for s in streams:
                s.cancel()
            await asyncio.gather(*streams, return_exceptions=True)


async def test_a_burst_of_wrong_password_logins_does_not_starve_other_routes(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    victim = await signup(http)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60, limits=limits) as many:
        logins = [
            asyncio.create_task(
                many.post("/v1/auth/login", json={"email": victim.email, "password": f"wrong {i}"})
            )
            for i in range(48)
        ]
        await asyncio.sleep(0.3)  # the burst is in flight
        started = time.monotonic()
        me = await http.get("/v1/me", headers=user.headers, timeout=20)
        took = time.monotonic() - started
        answers = await asyncio.gather(*logins)
    assert me.status_code == 200
    assert took < 2.0, f"GET /v1/me waited {took:.1f}s behind the login burst"
    for answer in answers:
        assert answer.status_code in (401, 503), answer.text
        assert _is_error_body(answer)
        if answer.status_code == 503:
            assert answer.headers["retry-after"]


@pytest.mark.parametrize(
    "query, header",
    [
        ("after=-1", None),
        ("after=1.5", None),
        ("after=%D9%A3", None),  # ARABIC-INDIC DIGIT THREE: a digit, but not an event id
        ("after=99999999999999999999", None),  # past Redis's 64-bit range
        ("after=9223372036854775808", None),  # 2**63
        ("", b"\xb2"),  # SUPERSCRIPT TWO in latin-1: str.isdigit() says yes
        ("", b"+12"),
        ("", b"99999999999999999999"),
    ],
)
async def test_a_bad_resume_point_is_422_not_500(
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    http: httpx.AsyncClient,
    query: str,
    header: bytes | None,
) -> None:
    user = await signup(http)
    waiting = await insert_generation(db, uuid.UUID(user.id))
    headers = dict(user.headers)
    if header is not None:
        headers["Last-Event-ID"] = header  # type: ignore[assignment]
    async with http.stream(
        "GET", f"/v1/generations/{waiting}/events?{query}", headers=headers, timeout=10
    ) as response:
        await response.aread()
    assert response.status_code == 422, response.text
    assert _is_error_body(response, "invalid_request")


async def test_the_largest_event_id_is_a_valid_resume_point(
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    http: httpx.AsyncClient,
) -> None:
    user = await signup(http)
    waiting = await insert_generation(db, uuid.UUID(user.id))
    url = f"/v1/generations/{waiting}/events?after={2**63 - 1}"
    async with http.stream("GET", url, headers=user.headers, timeout=10) as response:
        assert response.status_code == 200
        # The stream reads the log (past its end) without an error, then waits.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):
                async for _ in response.aiter_bytes():
                    pass


# --- sizes -------------------------------------------------------------------------


async def test_an_oversized_body_is_refused_before_it_is_sent(stack: Stack) -> None:
    head = (
        b"POST /v1/generations HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 314572800\r\n\r\n"
    )
    started = time.monotonic()
    answer = await _raw(stack, head)  # not one byte of the 300 MB body sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert time.monotonic() - started < 5


async def test_a_json_body_over_its_limit_is_413_with_the_error_body(
    http: httpx.AsyncClient,
) -> None:
    big = {"email": "a@b.co", "password": "p" * (200 * 1024)}
    response = await http.post("/v1/auth/login", json=big)
    assert response.status_code == 413
    assert _is_error_body(response, "payload_too_large")


async def test_a_chunked_body_is_cut_off_at_the_limit(http: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(1024):  # 64 MiB if it were all read
            yield b"x" * 65536

    response = await http.post(
        "/v1/auth/signup", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert _is_error_body(response, "payload_too_large")


async def test_huge_request_headers_are_431(stack: Stack) -> None:
    head = b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = await _raw(stack, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


# --- text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"email": "nul\x00@example.com", "password": "correct horse"}, "control characters"),
        ({"email": "a@example.com", "password": "correct\x00horse"}, "control characters"),
        ({"email": "a@example.com", "password": "password123"}, "too easy to guess"),
        ({"email": "a@example.com", "password": "      \u00a0\u3000  "}, "only spaces"),
        ({"email": "a@example.com", "password": "aaaaaaaaaaaa"}, "too easy to guess"),
        ({"email": "not an email", "password": "correct horse"}, "not an email"),
    ],
    ids=["nul-email", "nul-password", "common", "blank", "one-letter", "no-at"],
)
async def test_signup_refuses_bad_text_with_422(
    http: httpx.AsyncClient, body: dict[str, str], says: str
) -> None:
    response = await http.post("/v1/auth/signup", json=body)
    assert response.status_code == 422, response.text
    assert _is_error_body(response, "invalid_request")
    assert says in response.json()["error"]["message"]


async def test_login_with_a_nul_byte_is_422_not_500(http: httpx.AsyncClient) -> None:
    for body in (
        {"email": "a\x00@example.com", "password": "whatever it is"},
        {"email": "a@example.com", "password": "what\x00ever"},
    ):
        response = await http.post("/v1/auth/login", json=body)
        assert response.status_code == 422, response.text
        assert _is_error_body(response, "invalid_request")


async def test_look_alike_emails_are_one_account(http: httpx.AsyncClient) -> None:
    local = uuid.uuid4().hex[:12]
    first = await http.post(
        "/v1/auth/signup", json={"email": f"{local}@example.com", "password": "correct horse"}
    )
    assert first.status_code == 201
    assert first.json()["user"]["email"] == f"{local}@example.com"
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in local.upper())
    for spelling in (f"{local.upper()}@EXAMPLE.com", f"{fullwidth}@example.com"):
        again = await http.post(
            "/v1/auth/signup", json={"email": spelling, "password": "correct horse"}
        )
        assert again.status_code == 409, spelling
        login = await http.post(
            "/v1/auth/login", json={"email": spelling, "password": "correct horse"}
        )
        assert login.status_code == 200, spelling


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("a knight\x00", "control characters"),
        ("a \x1b[31mred\x1b[0m knight", "control characters"),
        ("\u200b\u200b\ufeff\u2060", "empty"),
        ("\u3164\u3164 \u2800", "empty"),
    ],
    ids=["nul", "escape", "zero-width", "fillers"],
)
async def test_bad_prompts_are_422_and_nothing_is_charged(
    http: httpx.AsyncClient, prompt: str, says: str
) -> None:
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"), prompt)
    assert response.status_code == 422, response.text
    assert _is_error_body(response, "invalid_request")
    assert says in response.json()["error"]["message"]
    assert await user.balance() == 3


async def test_a_prompt_that_is_not_utf8_is_refused(http: httpx.AsyncClient) -> None:
    user = await signup(http)
    boundary = "bitbuddiesboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'.encode()
        + b"a caf\xe9 knight \xff\xfe"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="photo";'
        f' filename="p.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + photo("astronaut.png")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await http.post(
        "/v1/generations",
        content=body,
        headers={**user.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 422, response.text
    assert "UTF-8" in response.json()["error"]["message"]
    assert await user.balance() == 3


# --- photos ------------------------------------------------------------------------


async def _upload(http: httpx.AsyncClient, user: User, data: bytes, name: str) -> httpx.Response:
    return await http.post(
        "/v1/generations",
        headers=user.headers,
        files={"photo": (name, data, "application/octet-stream")},
        data={"prompt": "a knight"},
    )


def _stored_input(stack: Stack, generation_id: str) -> bytes:
    folder = stack.cfg.data_dir / "storage" / "generations" / generation_id / "input"
    (path,) = folder.iterdir()
    return path.read_bytes()


def _textured(width: int, height: int) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


async def test_a_stored_photo_is_upright_with_no_metadata_or_trailer(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    pixels = _textured(300, 200)
    pixels[:, :150] = (220, 30, 30)  # left half red, right half blue
    pixels[:, 150:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "SnoopCam"  # Make
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 30.0), 3: "E", 4: (4.0, 53.0, 10.0)}  # GPS
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", exif=exif.tobytes(), quality=95)
    hostile = out.getvalue() + b"PK\x03\x04<html><script>alert(1)</script></html>" + b"\0" * 4096
    assert b"SnoopCam" in hostile

    user = await signup(http)
    response = await _upload(http, user, hostile, "holiday.jpg")
    assert response.status_code == 202, response.text
    stored = _stored_input(stack, response.json()["id"])
    await user.events(response.json()["id"])

    for secret in (b"SnoopCam", b"Exif", b"PK\x03\x04", b"<html", b"<script"):
        assert secret not in stored
    assert stored.endswith(b"\xff\xd9")  # the JPEG ends where its image data ends
    with Image.open(io.BytesIO(stored)) as image:
        assert image.size == (200, 300)  # turned upright
        assert not image.getexif()
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert rgb[5, 100, 0] > 150 > rgb[5, 100, 2]  # the red half is now on top
    assert rgb[-5, 100, 2] > 150 > rgb[-5, 100, 0]


async def test_a_transparent_photo_is_stored_as_png_with_no_metadata_chunks(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    rgba = np.dstack([_textured(300, 200), np.full((200, 300), 180, np.uint8)])
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "SnoopCam")
    text.add_itxt("Author", "SnoopCam")
    exif = Image.Exif()
    exif[0x010F] = "SnoopCam"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(
        out, "PNG", pnginfo=text, exif=exif.tobytes(), icc_profile=srgb
    )
    user = await signup(http)
    response = await _upload(http, user, out.getvalue(), "sticker.png")
    assert response.status_code == 202, response.text
    stored = _stored_input(stack, response.json()["id"])
    await user.events(response.json()["id"])
    assert stored.startswith(b"\x89PNG")
    for chunk in (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"iCCP", b"SnoopCam"):
        assert chunk not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == "RGBA" and image.size == (300, 200)


async def test_a_16_bit_grey_photo_keeps_its_brightness(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    grey = np.full((200, 200), 30000, dtype=np.uint16)  # 46% of full scale
    grey[::2, ::2] = 36000
    out = io.BytesIO()
    Image.fromarray(grey).save(out, "PNG")
    user = await signup(http)
    response = await _upload(http, user, out.getvalue(), "scan.png")
    assert response.status_code == 202, response.text
    stored = _stored_input(stack, response.json()["id"])
    await user.events(response.json()["id"])
    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == "RGB"
        mean = float(np.asarray(image).mean())
    assert abs(mean - (30000 * 0.75 + 36000 * 0.25) / 257) < 4, mean


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_too_many_pixels_are_refused_from_the_header(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    balance = await user.balance()
    before = set((stack.cfg.data_dir / "storage" / "generations").glob("*"))
    started = time.monotonic()
    response = await _upload(http, user, _png_header_only(7500, 7500), "bomb.png")
    assert response.status_code == 413, response.text
    assert _is_error_body(response, "payload_too_large")
    assert time.monotonic() - started < 2
    assert await user.balance() == balance
    assert set((stack.cfg.data_dir / "storage" / "generations").glob("*")) == before


@pytest.mark.parametrize(
    "width, height, words",
    [(100, 160, "too small"), (6000, 150, "too narrow")],  # 6000x150 is 2048x51 once stored
)
async def test_a_photo_the_pipeline_would_refuse_as_too_small_is_refused_at_upload(
    http: httpx.AsyncClient, width: int, height: int, words: str
) -> None:
    out = io.BytesIO()
    Image.fromarray(_textured(width, height)).save(out, "PNG")
    user = await signup(http)
    balance = await user.balance()
    response = await _upload(http, user, out.getvalue(), "tiny.png")
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]["message"]
    assert await user.balance() == balance  # refused before a token was charged


# --- idempotency, URLs, errors, headers --------------------------------------------


async def test_an_idempotency_key_reused_for_another_request_is_422(
    http: httpx.AsyncClient,
) -> None:
    user = await signup(http)
    key = str(uuid.uuid4())
    first = await user.generate(photo("astronaut.png"), "a knight", idempotency_key=key)
    assert first.status_code == 202
    other_prompt = await user.generate(photo("astronaut.png"), "a wizard", idempotency_key=key)
    assert other_prompt.status_code == 422
    assert _is_error_body(other_prompt, "idempotency_key_reused")
    other_photo = await user.generate(photo("coffee.png"), "a knight", idempotency_key=key)
    assert other_photo.status_code == 422
    same = await user.generate(photo("astronaut.png"), "a knight", idempotency_key=key)
    assert same.json()["id"] == first.json()["id"]
    assert await user.balance() == 2
    await user.events(first.json()["id"])


async def test_urls_come_from_the_public_url_not_the_host_header(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    response = await http.post(
        "/v1/generations",
        headers={**user.headers, "Host": "evil.example"},
        files={"photo": ("p.png", photo("astronaut.png"), "image/png")},
        data={"prompt": "a knight"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["events_url"].startswith(stack.cfg.api_url + "/v1/generations/")
    await user.events(response.json()["id"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/no/such/route", {}, 404, "not_found"),
        ("PUT", "/v1/me", {}, 405, "method_not_allowed"),
        ("POST", "/v1/auth/login", {"content": b"{not json"}, 422, "invalid_request"),
        ("POST", "/v1/auth/login", {"content": b"\xff\xfe{}"}, 422, "invalid_request"),
        ("GET", "/v1/generations/not-a-uuid", {}, 401, "unauthorized"),
    ],
    ids=["unknown-route", "wrong-method", "malformed-json", "not-utf8-json", "bad-id"],
)
async def test_every_error_has_the_documented_body(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    kwargs: dict[str, bytes],
    status: int,
    code: str,
) -> None:
    headers = {"Content-Type": "application/json"} if "content" in kwargs else {}
    response = await http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert _is_error_body(response, code), response.text


async def test_security_headers_and_no_cors_by_default(http: httpx.AsyncClient) -> None:
    for response in (
        await http.get("/livez"),
        await http.get("/no/such/route"),
        await http.get("/v1/me", headers={"Origin": "https://evil.example"}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "access-control-allow-origin" not in response.headers
    preflight = await http.options(
        "/v1/me",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_docs_work_offline(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    assets = [
        "/docs-assets/swagger-ui-bundle.js",
        "/docs-assets/swagger-ui.css",
        "/docs-assets/redoc.standalone.js",
    ]
    for asset in assets:
        assert asset.rsplit("/", 1)[1] in page.text or "redoc" in asset
        response = await http.get(asset)
        assert response.status_code == 200 and len(response.content) > 10_000, asset
    redoc = await http.get("/redoc")
    assert "https://" not in redoc.text


async def test_the_stack_signs_with_its_own_secret(stack: Stack, http: httpx.AsyncClient) -> None:
    """A link forged with the published placeholder secret opens nothing."""
    from infra.storage.local import LocalStorage

    forger = LocalStorage(
        stack.cfg.data_dir / "forger", public_url=stack.cfg.api_url, signing_secret=LOCAL_SECRET
    )
    from datetime import timedelta

    url = forger.signed_url("generations/x/input/photo.png", expires_in=timedelta(hours=1))
    assert (await http.get(url)).status_code == 401


async def test_the_placeholder_secret_is_refused_off_loopback() -> None:
    """Served on a public address with the placeholder secret, the API answers nothing."""
    for secret, status in ((LOCAL_SECRET, 503), ("a-real-secret-of-this-deployment", 200)):
        app = create_app(Settings(signing_secret=secret))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://0.0.0.0") as client:
            # ASGITransport reports the server as the base URL's host and port.
            response = await client.get("/livez")
        assert response.status_code == status, response.text


async def test_production_refuses_unknown_hosts() -> None:
    settings = Settings(
        environment="production",
        signing_secret="a-real-secret-of-this-deployment",  # type: ignore[arg-type]
        fal_key="fal-key",  # type: ignore[arg-type]
        public_url="https://api.bitbuddies.example",
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        good = await client.get("/livez", headers={"Host": "api.bitbuddies.example"})
        bad = await client.get("/livez", headers={"Host": "evil.example"})
    assert good.status_code == 200
    assert bad.status_code == 400 and _is_error_body(bad, "bad_host")


async def test_an_unhandled_error_is_our_500_with_the_request_id_and_security_headers() -> None:
    """A bug (here a route that raises) answers the documented error body, says which
    request it was (its log line: tests/infra/test_log_context.py), and keeps the
    security headers."""
    app = create_app(Settings())

    @app.get("/v1/_broken")
    async def _broken() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/v1/_broken", headers={"X-Request-ID": "complaint-42"})
    assert response.status_code == 500
    assert _is_error_body(response, "internal_error"), response.text
    assert response.headers["x-request-id"] == "complaint-42"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
