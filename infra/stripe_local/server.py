"""The local stand-in for Stripe, for `make dev` and the tests: no Stripe fake on the
registries implements Checkout Sessions, so this is ours. It keeps everything in memory
(a restart forgets its sessions, as a throwaway test account would).

What it implements, in Stripe's shapes, as the ``stripe`` library calls it:

- ``POST /v1/checkout/sessions``: form-encoded (``line_items[0][price_data][unit_amount]``
  and so on), with ``Idempotency-Key`` (a repeat answers the first session; the key with
  other parameters is an ``idempotency_error``); ``GET /v1/checkout/sessions/{id}``;
  ``GET /v1/checkout/sessions`` (a list, newest first: ``limit``, ``status``,
  ``created[gte]``, ``starting_after``, and ``has_more``).
- ``GET /pay/{id}``: the hosted page, with a Pay button; its ``POST`` marks the session
  complete and paid, delivers ``checkout.session.completed`` and sends the buyer to the
  success URL.
- Delivery: each event is POSTed to the webhook URL with a ``Stripe-Signature`` made at
  that attempt with the webhook secret (``stripe.WebhookSignature``), retried with
  backoff (0.5 s doubling up to 30 s, 10 attempts) until a 2xx.
- ``POST /v1/refunds`` (``payment_intent``, optional ``amount``, ``Idempotency-Key``): a
  refund of a paid session's payment, whole or in part, delivering ``charge.refunded``
  with the Charge (its cumulative ``amount_refunded``). A paid session gets a
  PaymentIntent (``payment_intent``) and a Charge; ``GET /v1/checkout/sessions`` filters
  by ``payment_intent`` too.
- Test hooks under ``/_local/``: ``GET refunds``; ``POST payments/{pi}/disputes``
  ``{amount?, status?}`` (a dispute opened by the buyer's bank: ``charge.dispute.created``)
  and ``POST disputes/{id}/close`` ``{status}`` (``won`` or ``lost``:
  ``charge.dispute.closed``); ``GET deliveries``; ``POST events/{id}/redeliver`` (the
  same event again, as Stripe's "resend"); ``POST sessions/{id}/events`` ``{type,
  payment_status?}`` (a new event, with a new id, about the session: a retried
  completion, ``async_payment_failed`` ...); ``POST sessions/{id}/paid[?age_seconds=N]``
  (the session complete and paid, its webhook never delivered: what the reconciliation
  finds; ``age_seconds`` moves its creation time back).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import stripe
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

log = logging.getLogger("bitbuddies.stripe_local")

MAX_ATTEMPTS = 10
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
DELIVERY_TIMEOUT_SECONDS = 10.0


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def parse_form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node: Any = root
        for part, after in itertools.pairwise(parts):
            nxt: Any = [] if after.isdigit() else {}
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if node[index] is None:
                    node[index] = nxt
                node = node[index]
            else:
                node = node.setdefault(part, nxt)
        last = parts[-1]
        if isinstance(node, list):
            index = int(last)
            while len(node) <= index:
                node.append(None)
            node[index] = value
        else:
            node[last] = value
    return root


def _error(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"type": kind, "message": message}
    if param:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status)


def _amount(line_items: list[Any]) -> int | None:
    total = 0
    for item in line_items:
        data = item.get("price_data") if isinstance(item, dict) else None
        if not isinstance(data, dict) or "unit_amount" not in data:
            return None  # a Price id: the stand-in knows no prices
        total += int(data["unit_amount"]) * int(item.get("quantity", 1))
    return total


@dataclass
class Delivery:
    event: dict[str, Any]
    attempts: list[str] = field(default_factory=list)  # status codes, or the error
    delivered: bool = False


class SessionEvent(BaseModel):
    type: str
    payment_status: str | None = None


class DisputeOpen(BaseModel):
    amount: int | None = None  # the whole payment unless given
    status: str = "needs_response"


class DisputeClose(BaseModel):
    status: str  # won, lost, warning_closed


class StandIn:
    def __init__(self, public_url: str, webhook_url: str, webhook_secret: str) -> None:
        self.public_url = public_url.rstrip("/")
        self.webhook_url = webhook_url
        self.secret = webhook_secret
        self.sessions: dict[str, dict[str, Any]] = {}
        # Idempotency-Key -> (the request it came with, the object it made)
        self.idempotency: dict[str, tuple[str, dict[str, Any]]] = {}
        self.deliveries: dict[str, Delivery] = {}
        self.payments: dict[str, dict[str, Any]] = {}  # PaymentIntent id -> its Charge
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.http: httpx.AsyncClient | None = None

    def create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        session_id = _id("cs")
        line_items = params.get("line_items") or []
        amount = _amount(line_items)
        currency = None
        if line_items and isinstance(line_items[0], dict):
            currency = (line_items[0].get("price_data") or {}).get("currency")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params.get("mode"),
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount,
            "currency": currency,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"{self.public_url}/pay/{session_id}",
            "created": int(time.time()),
            "livemode": False,
            "line_items_requested": line_items,
        }
        self.sessions[session_id] = session
        return session

    @staticmethod
    def _fingerprint(request: Request, params: dict[str, Any]) -> str:
        return f"{request.url.path} {json.dumps(params, sort_keys=True)}"

    def replay(self, key: str | None, request: Request, params: dict[str, Any]) -> Response | None:
        """Stripe's idempotency: a key seen before answers the object it made (as it is
        now), or an ``idempotency_error`` when it came with another request."""
        if not key or key not in self.idempotency:
            return None
        seen, made = self.idempotency[key]
        if seen != self._fingerprint(request, params):
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters.",
            )
        return JSONResponse(made)

    def remember(
        self, key: str | None, request: Request, params: dict[str, Any], made: dict[str, Any]
    ) -> None:
        if key:
            self.idempotency[key] = (self._fingerprint(request, params), made)

    def mark_paid(self, session: dict[str, Any]) -> None:
        """The session complete and paid, by a new PaymentIntent (and its Charge)."""
        session.update(status="complete", payment_status="paid")
        if session.get("payment_intent"):
            return
        intent = _id("pi")
        session["payment_intent"] = intent
        self.payments[intent] = {
            "id": _id("ch"),
            "object": "charge",
            "amount": session["amount_total"] or 0,
            "amount_refunded": 0,
            "currency": session["currency"],
            "payment_intent": intent,
            "refunded": False,
            "disputed": False,
            "paid": True,
            "status": "succeeded",
        }

    def event(self, kind: str, session: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": _id("evt"),
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "livemode": False,
            "api_version": stripe.api_version,
            "data": {"object": dict(session)},
        }

    def deliver(self, event: dict[str, Any]) -> None:
        delivery = self.deliveries.setdefault(event["id"], Delivery(event))
        task = asyncio.create_task(self._deliver(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        assert self.http is not None
        payload = json.dumps(delivery.event)
        backoff = FIRST_BACKOFF_SECONDS
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # Signed at each attempt, as Stripe does: the timestamp is the attempt's.
            header = stripe.WebhookSignature.generate_signature_header(
                payload, self.secret, timestamp=int(time.time())
            )
            try:
                response = await self.http.post(
                    self.webhook_url,
                    content=payload.encode(),
                    headers={"Content-Type": "application/json", "Stripe-Signature": header},
                )
                delivery.attempts.append(str(response.status_code))
                if response.is_success:
                    delivery.delivered = True
                    log.info("delivered %s %s", delivery.event["type"], delivery.event["id"])
                    return
            except httpx.HTTPError as err:
                delivery.attempts.append(type(err).__name__)
            event_id, outcome = delivery.event["id"], delivery.attempts[-1]
            log.warning("delivery %d of %s failed (%s)", attempt, event_id, outcome)
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        log.error("gave up delivering %s", delivery.event["id"])


def create_app(*, public_url: str, webhook_url: str, webhook_secret: str) -> FastAPI:
    stand_in = StandIn(public_url, webhook_url, webhook_secret)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stand_in.http = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS)
        log.info("local Stripe stand-in at %s; webhooks to %s", public_url, webhook_url)
        try:
            yield
        finally:
            for task in list(stand_in.tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await stand_in.http.aclose()

    app = FastAPI(title="Local Stripe stand-in", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.stand_in = stand_in

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/checkout/sessions")
    async def create_session(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer sk_"):
            return _error(401, "invalid_request_error", "Invalid API Key provided.")
        body = await request.body()
        params = parse_form(body)
        for required in ("mode", "success_url", "line_items"):
            if not params.get(required):
                return _error(400, "invalid_request_error", f"Missing {required}.", required)
        key = request.headers.get("idempotency-key")
        if (replayed := stand_in.replay(key, request, params)) is not None:
            return replayed
        session = stand_in.create_session(params)
        stand_in.remember(key, request, params, session)
        return JSONResponse(session)

    @app.get("/v1/checkout/sessions/{session_id}")
    async def get_session(session_id: str) -> Response:
        if session_id not in stand_in.sessions:
            return _error(404, "invalid_request_error", f"No such checkout.session: {session_id}")
        return JSONResponse(stand_in.sessions[session_id])

    @app.get("/v1/checkout/sessions")
    async def list_sessions(request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", 10))
            since = int(query.get("created[gte]", 0))
        except ValueError:
            return _error(400, "invalid_request_error", "Invalid integer.")
        newest = sorted(
            (
                s
                for s in stand_in.sessions.values()
                if s["created"] >= since
                and ("status" not in query or s["status"] == query["status"])
                and (
                    "payment_intent" not in query
                    or s.get("payment_intent") == query["payment_intent"]
                )
            ),
            key=lambda s: s["created"],
            reverse=True,
        )
        if after := query.get("starting_after"):
            ids = [s["id"] for s in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        return JSONResponse(
            {
                "object": "list",
                "url": "/v1/checkout/sessions",
                "data": newest[:limit],
                "has_more": len(newest) > limit,
            }
        )

    @app.post("/v1/refunds")
    async def create_refund(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer sk_"):
            return _error(401, "invalid_request_error", "Invalid API Key provided.")
        params = parse_form(await request.body())
        key = request.headers.get("idempotency-key")
        if (replayed := stand_in.replay(key, request, params)) is not None:
            return replayed
        charge = stand_in.payments.get(str(params.get("payment_intent")))
        if charge is None:
            return _error(400, "invalid_request_error", "No such payment_intent.", "payment_intent")
        left = charge["amount"] - charge["amount_refunded"]
        amount = int(params.get("amount") or left)
        if left <= 0:
            return _error(400, "invalid_request_error", "Charge has already been refunded.")
        if not 0 < amount <= left:
            return _error(400, "invalid_request_error", "Refund amount is too large.", "amount")
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        refund = {
            "id": _id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "currency": charge["currency"],
            "reason": params.get("reason"),
            "status": "succeeded",
            "created": int(time.time()),
        }
        stand_in.refunds[refund["id"]] = refund
        stand_in.remember(key, request, params, refund)
        stand_in.deliver(stand_in.event("charge.refunded", charge))
        return JSONResponse(refund)

    @app.get("/pay/{session_id}", response_class=HTMLResponse)
    async def payment_page(session_id: str) -> Response:
        session = stand_in.sessions.get(session_id)
        if session is None:
            return HTMLResponse("<h1>No such checkout</h1>", status_code=404)
        amount = session["amount_total"]
        price = f"{amount / 100:.2f} {str(session['currency']).upper()}" if amount else "(a Price)"
        sid = html.escape(session_id)
        cancel = html.escape(str(session["cancel_url"] or "/"))
        return HTMLResponse(
            "<!doctype html><html><head><title>Pay (local Stripe)</title></head><body>"
            f"<h1>Local Stripe checkout</h1><p>Pack: {html.escape(str(session['metadata']))}</p>"
            f"<p>Amount: {html.escape(price)}</p><p>Status: {html.escape(session['status'])}</p>"
            f'<form method="post" action="/pay/{sid}"><button type="submit">Pay</button></form>'
            f'<p><a href="{cancel}">Cancel</a></p></body></html>'
        )

    @app.post("/pay/{session_id}")
    async def pay(session_id: str) -> Response:
        session = stand_in.sessions.get(session_id)
        if session is None:
            return HTMLResponse("<h1>No such checkout</h1>", status_code=404)
        if session["status"] == "open":
            stand_in.mark_paid(session)
            stand_in.deliver(stand_in.event("checkout.session.completed", session))
        success = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
        return RedirectResponse(success, status_code=303)

    # --- test hooks ------------------------------------------------------------------

    @app.get("/_local/deliveries")
    async def deliveries() -> list[dict[str, Any]]:
        return [
            {
                "event_id": event_id,
                "type": d.event["type"],
                "session_id": d.event["data"]["object"].get("id"),
                "payment_intent": d.event["data"]["object"].get("payment_intent"),
                "attempts": d.attempts,
                "delivered": d.delivered,
            }
            for event_id, d in stand_in.deliveries.items()
        ]

    @app.post("/_local/events/{event_id}/redeliver", status_code=202)
    async def redeliver(event_id: str) -> Response:
        delivery = stand_in.deliveries.get(event_id)
        if delivery is None:
            return _error(404, "invalid_request_error", f"No such event: {event_id}")
        stand_in.deliver(delivery.event)
        return JSONResponse({"event_id": event_id}, status_code=202)

    @app.post("/_local/sessions/{session_id}/events", status_code=202)
    async def session_event(session_id: str, body: SessionEvent) -> Response:
        session = stand_in.sessions.get(session_id)
        if session is None:
            return _error(404, "invalid_request_error", f"No such checkout.session: {session_id}")
        if body.type.startswith("checkout.session.") and body.type != "checkout.session.expired":
            session["status"] = "complete"
        if body.payment_status is not None:
            session["payment_status"] = body.payment_status
        if body.payment_status == "paid":
            stand_in.mark_paid(session)
        event = stand_in.event(body.type, session)
        stand_in.deliver(event)
        return JSONResponse({"event_id": event["id"]}, status_code=202)

    @app.get("/_local/refunds")
    async def refunds() -> list[dict[str, Any]]:
        return list(stand_in.refunds.values())

    @app.post("/_local/payments/{payment_intent}/disputes", status_code=201)
    async def open_dispute(payment_intent: str, body: DisputeOpen) -> Response:
        charge = stand_in.payments.get(payment_intent)
        if charge is None:
            return _error(404, "invalid_request_error", f"No such payment_intent: {payment_intent}")
        charge["disputed"] = True
        dispute = {
            "id": _id("dp"),
            "object": "dispute",
            "amount": body.amount or charge["amount"],
            "charge": charge["id"],
            "payment_intent": payment_intent,
            "currency": charge["currency"],
            "reason": "fraudulent",
            "status": body.status,
            "created": int(time.time()),
        }
        stand_in.disputes[dispute["id"]] = dispute
        event = stand_in.event("charge.dispute.created", dispute)
        stand_in.deliver(event)
        return JSONResponse({"dispute": dispute, "event_id": event["id"]}, status_code=201)

    @app.post("/_local/disputes/{dispute_id}/close")
    async def close_dispute(dispute_id: str, body: DisputeClose) -> Response:
        dispute = stand_in.disputes.get(dispute_id)
        if dispute is None:
            return _error(404, "invalid_request_error", f"No such dispute: {dispute_id}")
        dispute["status"] = body.status
        event = stand_in.event("charge.dispute.closed", dispute)
        stand_in.deliver(event)
        return JSONResponse({"dispute": dispute, "event_id": event["id"]})

    @app.post("/_local/sessions/{session_id}/paid")
    async def paid_without_webhook(session_id: str, age_seconds: int = 0) -> Response:
        session = stand_in.sessions.get(session_id)
        if session is None:
            return _error(404, "invalid_request_error", f"No such checkout.session: {session_id}")
        stand_in.mark_paid(session)
        session["created"] -= age_seconds  # as if it had been created that much earlier
        return JSONResponse(session)

    return app
