"""A small client of the public HTTP API, as the web app or the extension would use it.

The tests and the benchmarks (bench/) drive the service through it, so they see what
users see. It lives with the tests, not in the ``api`` package: the service never uses it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Event:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class User:
    http: httpx.AsyncClient
    token: str
    id: str
    email: str
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.token}"}

    async def balance(self) -> int:
        response = await self.http.get("/v1/me", headers=self.headers)
        response.raise_for_status()
        return int(response.json()["balance"])

    async def generate(
        self,
        photo: bytes,
        prompt: str = "a cheerful astronaut in gold",
        *,
        filename: str = "photo.png",
        content_type: str = "image/png",
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = dict(self.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self.http.post(
            "/v1/generations",
            headers=headers,
            files={"photo": (filename, photo, content_type)},
            data={"prompt": prompt},
        )

    async def events(self, generation_id: str, *, last_event_id: int | None = None) -> list[Event]:
        """Follow the stream until it ends (after the terminal event)."""
        return [e async for e in self.follow(generation_id, last_event_id=last_event_id)]

    async def follow(
        self, generation_id: str, *, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """Each event of the stream as it arrives."""
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        current: dict[str, str] = {}
        async with self.http.stream(
            "GET", f"/v1/generations/{generation_id}/events", headers=headers, timeout=300.0
        ) as response:
            response.raise_for_status()
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ValueError(f"expected an event stream, got {content_type!r}")
            async for line in response.aiter_lines():
                line = line.rstrip("\r")
                if not line:
                    if "data" in current:
                        yield Event(
                            int(current["id"]), current["event"], json.loads(current["data"])
                        )
                    current = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                current[name] = value[1:] if value.startswith(" ") else value

    async def watch(
        self, generation_id: str, *, last_event_id: int | None = None, retry_seconds: float = 1.0
    ) -> list[Event]:
        """Every event (after ``last_event_id``) up to the terminal one, as a browser's
        EventSource gets them: a dropped or ended connection is reopened with
        ``Last-Event-ID``; an error answer ends it for good (raised). Bound it with
        ``asyncio.timeout``."""
        seen: list[Event] = []
        while True:
            last = seen[-1].id if seen else last_event_id
            try:
                async for event in self.follow(generation_id, last_event_id=last):
                    seen.append(event)
                    if event.event in TERMINAL_EVENTS:
                        return seen
            except httpx.TransportError:
                pass  # reconnect, as EventSource does
            await asyncio.sleep(retry_seconds)

    async def generation(self, generation_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/generations/{generation_id}", headers=self.headers)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


async def signup(http: httpx.AsyncClient) -> User:
    email = f"user-{uuid.uuid4().hex[:12]}@example.com"
    response = await http.post(
        "/v1/auth/signup", json={"email": email, "password": "correct horse"}
    )
    if response.status_code != 201:
        raise ValueError(f"signup failed ({response.status_code}): {response.text}")
    body = response.json()
    return User(http=http, token=body["token"], id=body["user"]["id"], email=email)
