"""A local stand-in for Pushover's message API (stdlib http.server, in a thread of the
test process): the stack's workers send their owner alerts here with the real
``pushover-complete`` library, and the tests read every form field it posted.

It answers ``POST /1/messages.json`` as Pushover does: ``{"status": 1, "request": ...}``
for a message with a token, a user and a text (and, at priority 2, ``retry`` and
``expire``), else 400 with ``{"status": 0, "errors": [...]}``. ``fail_next`` makes the
next answers (to the messages it names) 500, as an outage of Pushover would."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from infra import supervisor

TOKEN = "a" * 30  # Pushover's tokens and user keys are 30 characters
USER = "u" * 30


@dataclass(frozen=True)
class Message:
    fields: dict[str, str]
    accepted: bool  # answered status 1

    def __getitem__(self, name: str) -> str:
        return self.fields[name]

    def get(self, name: str) -> str | None:
        return self.fields.get(name)


class Pushover:
    def __init__(self) -> None:
        self.port = supervisor.free_port()
        self._lock = threading.Lock()
        self._received: list[Message] = []
        self._failures = 0
        self._fail_where: Callable[[dict[str, str]], bool] = lambda _: True
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fields = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                status, body = stub._answer(self.path, fields)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        """What ``BITBUDDIES_PUSHOVER_API_URL`` is set to (Pushover's is .../1/)."""
        return f"http://127.0.0.1:{self.port}/1/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self, times: int, where: Callable[[dict[str, str]], bool] = lambda _: True
    ) -> None:
        """The next ``times`` messages ``where`` says (every message by default) are
        answered 500. A predicate keeps another alert sent meanwhile (the day's spend
        alert, say) from taking the failure meant for the one under test."""
        with self._lock:
            self._failures = times
            self._fail_where = where

    def _answer(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = str(uuid.uuid4())
        with self._lock:
            if path != "/1/messages.json":
                return 404, {"status": 0, "errors": ["not found"], "request": request}
            if self._failures > 0 and self._fail_where(fields):
                self._failures -= 1
                self._received.append(Message(fields, accepted=False))
                return 500, {"status": 0, "errors": ["injected outage"], "request": request}
            errors = []
            if fields.get("token") != TOKEN:
                errors.append("application token is invalid")
            if fields.get("user") != USER:
                errors.append("user identifier is invalid")
            if not fields.get("message"):
                errors.append("message cannot be blank")
            if fields.get("priority") == "2" and not (fields.get("retry") and fields.get("expire")):
                errors.append("retry and expire are required for emergency priority")
            self._received.append(Message(fields, accepted=not errors))
        if errors:
            return 400, {"status": 0, "errors": errors, "request": request}
        return 200, {"status": 1, "request": request}

    def messages(self, where: Callable[[Message], bool] = lambda _: True) -> list[Message]:
        """Messages Pushover accepted, oldest first."""
        with self._lock:
            return [m for m in self._received if m.accepted and where(m)]

    def requests(self) -> list[Message]:
        """Every request, accepted or not."""
        with self._lock:
            return list(self._received)

    def about(self, text: str) -> list[Message]:
        """Accepted messages whose text, title or link mention ``text`` (a generation id)."""
        return self.messages(
            lambda m: any(text in (m.get(f) or "") for f in ("message", "title", "url"))
        )

    async def wait_for(
        self, where: Callable[[Message], bool], *, count: int = 1, timeout: float = 60.0
    ) -> list[Message]:
        import asyncio

        deadline = time.monotonic() + timeout
        while len(found := self.messages(where)) < count:
            assert time.monotonic() < deadline, f"no Pushover message: {self.requests()}"
            await asyncio.sleep(0.1)
        return found
