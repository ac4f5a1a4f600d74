"""Prometheus metrics (infra/metrics.py): what one completed and one failed generation
change on the API's /metrics and on the workers' endpoints, scraped like Prometheus
would, and who may read them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from api.app import create_app
from infra.metrics import PERMITS, WorkerEndpoint, access
from infra.settings import Settings
from tests.conftest import Stack
from tests.support.client import Event, signup
from tests.support.faults import provider_requests, wait_until
from tests.support.photos import photo
from tests.support.steps import STEP_APPS, step_names
from workflows.contract import CARTOONIFY, SEGMENT_IMAGE

Pool = AsyncConnectionPool  # type: ignore[type-arg]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CARTOONIFY_APP = STEP_APPS[CARTOONIFY.name]
TOKEN = "metrics-token-for-the-test"


def _parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named so whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _present(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for (n, ls) in samples)


async def _scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    await wait_until(check, timeout=60)


async def test_one_completed_and_one_failed_generation_show_in_the_metrics(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    main = f"http://127.0.0.1:{stack.cfg.ports.worker_metrics_port('interactive')}/metrics"
    media = f"http://127.0.0.1:{stack.cfg.ports.worker_metrics_port('media')}/metrics"

    async def api() -> Samples:
        return await _scrape(http, "/metrics")

    before_api, before_main = await api(), await _scrape(http, main)
    before_media = await _scrape(http, media)
    streams_before = _value(before_api, "bitbuddies_open_streams")

    # A generation that completes, held at cartoonify for a while: meanwhile its event
    # stream is open and cartoonify's permit is taken.
    fault = {"app": CARTOONIFY_APP, "kind": "delay", "times": 1, "seconds": 3}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    completed_id = response.json()["id"]
    following: asyncio.Task[list[Event]] = asyncio.create_task(user.events(completed_id))

    async def streams_open() -> bool:
        return _value(await api(), "bitbuddies_open_streams") == streams_before + 1

    async def cartoonifying() -> bool:
        return any(
            r["app"] == CARTOONIFY_APP and r["status"] == "IN_PROGRESS"
            for r in await provider_requests(models)
        )

    await _until(streams_open)
    await _until(cartoonifying)
    during = await api()
    assert _value(during, "bitbuddies_model_permits_in_use", model=CARTOONIFY_APP) == 1
    events = await asyncio.wait_for(following, 180)
    assert events[-1].event == "completed", events[-1]

    async def streams_closed() -> bool:
        return _value(await api(), "bitbuddies_open_streams") == streams_before

    await _until(streams_closed)
    ran = {e.data["step"] for e in events} & set(STEP_APPS)
    assert set(step_names(expand=False)) <= ran

    # A generation that fails at a model step: the job itself fails at the provider.
    fault = {"app": STEP_APPS[SEGMENT_IMAGE.name], "kind": "error", "times": 1}
    (await models.post("/_local/faults", json=fault)).raise_for_status()
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    failed = await asyncio.wait_for(user.events(response.json()["id"]), 180)
    assert failed[-1].event == "failed", failed[-1]
    assert failed[-1].data["error_code"] == "internal" and failed[-1].data["refunded"] is True

    after_api, after_main = await api(), await _scrape(http, main)
    after_media = await _scrape(http, media)

    def on_main(name: str, **labels: str) -> float:
        """How much a sample of the main worker grew."""
        return _value(after_main, name, **labels) - _value(before_main, name, **labels)

    started = _value(after_api, "bitbuddies_generations_started_total") - _value(
        before_api, "bitbuddies_generations_started_total"
    )
    assert started == 2
    assert on_main("bitbuddies_generations_completed_total") == 1
    at_segment = {"step": SEGMENT_IMAGE.name, "reason": "internal"}
    assert on_main("bitbuddies_generations_failed_total", **at_segment) == 1
    assert on_main("bitbuddies_generations_failed_total") == 1
    assert on_main("bitbuddies_generations_refunded_total", **at_segment) == 1
    assert on_main("bitbuddies_generations_refunded_total") == 1
    assert on_main("bitbuddies_generations_cancelled_total") == 0
    for step in sorted(ran):  # every model step of the completed generation was timed
        for histogram in ("bitbuddies_step_duration_seconds", "bitbuddies_provider_queue_seconds"):
            assert on_main(f"{histogram}_count", step=step) >= 1, (histogram, step)
    # the failed job has no duration: segment_image's one is the completed generation's
    assert on_main("bitbuddies_step_duration_seconds_count", step=SEGMENT_IMAGE.name) == 1
    transcodes = _value(
        after_media, "bitbuddies_step_duration_seconds_count", step="transcode"
    ) - _value(before_media, "bitbuddies_step_duration_seconds_count", step="transcode")
    assert transcodes == 1
    # the permit is back, and the model is still listed
    assert _value(after_api, "bitbuddies_model_permits_in_use", model=CARTOONIFY_APP) == 0
    # the Temporal SDK's own metrics, on the same endpoint as ours, by the SDK's names (the
    # parser calls a counter's samples <name>_total; the wire has `temporal_request{...}`)
    assert _present(after_main, "temporal_request_total")
    assert on_main("temporal_workflow_completed_total", workflow_type="BitBuddy") >= 1
    assert "\ntemporal_request{" in (await http.get(main)).text
    # not in the OpenAPI document
    assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]


@contextlib.asynccontextmanager
async def _in_process(
    settings: Settings, db: Pool, client: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """The API made by create_app, called in-process from ``client``'s address. Its
    lifespan does not run (a Redis subscription and a Temporal client for nothing):
    /metrics needs only the settings, and the permits collector reads through the test's
    pool on the test's loop, as the API's does through its own."""
    app = create_app(settings)
    app.state.settings = settings
    PERMITS.read_from(db, asyncio.get_running_loop())
    try:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=settings.public_url) as api:
            yield api
    finally:
        PERMITS.read_from(None, None)


async def test_with_a_token_the_api_metrics_answer_only_its_bearer(stack: Stack, db: Pool) -> None:
    settings = Settings(metrics_token=TOKEN)  # the rest from the stack's environment
    model, holder = "test/metrics-model", f"test-{uuid.uuid4()}"
    async with db.connection() as conn:  # a permit held for a model, as a submit takes one
        await conn.execute(
            "INSERT INTO provider_permits (limiter, holder, expires_at)"
            " VALUES (%s, %s, now() + interval '1 hour')",
            (model, holder),
        )
    try:
        async with _in_process(settings, db) as api:
            missing = await api.get("/metrics")
            wrong = await api.get("/metrics", headers={"Authorization": "Bearer not-it"})
            right = await api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        async with db.connection() as conn:
            await conn.execute("DELETE FROM provider_permits WHERE holder = %s", (holder,))
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert right.status_code == 200
    # the permits collector read the table at the scrape
    assert _value(_parse(right.text), "bitbuddies_model_permits_in_use", model=model) == 1


async def test_without_a_token_only_loopback_callers_read_them_locally(
    stack: Stack, db: Pool
) -> None:
    settings = Settings()
    async with _in_process(settings, db, client="203.0.113.7") as api:
        hidden = await api.get("/metrics")
        unknown = await api.get("/no-such-address")
    async with _in_process(settings, db, client="127.0.0.1") as api:
        shown = await api.get("/metrics")
    assert hidden.status_code == 404 and hidden.json() == unknown.json()
    assert shown.status_code == 200


def test_in_production_without_a_token_nobody_reads_them() -> None:
    production = Settings().model_copy(update={"environment": "production"})
    assert access(production, None, "127.0.0.1") == "hidden"
    assert access(production, f"Bearer {TOKEN}", "127.0.0.1") == "hidden"
    with_token = production.model_copy(update={"metrics_token": SecretStr(TOKEN)})
    assert access(with_token, f"Bearer {TOKEN}", "198.51.100.4") == "allowed"
    assert access(with_token, f"bearer {TOKEN}", "127.0.0.1") == "allowed"
    assert access(with_token, "Bearer", "127.0.0.1") == "unauthorized"
    assert access(with_token, TOKEN, "127.0.0.1") == "unauthorized"


async def test_a_worker_endpoint_asks_for_the_token_too() -> None:
    settings = Settings(metrics_token=TOKEN)
    endpoint = WorkerEndpoint(settings, "127.0.0.1", 0, sdk=False)
    try:
        url = f"http://127.0.0.1:{endpoint.port}"
        async with httpx.AsyncClient(base_url=url) as worker:
            assert (await worker.get("/metrics")).status_code == 401
            wrong = await worker.get("/metrics", headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 401
            right = await worker.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.status_code == 200
            assert "bitbuddies_step_duration_seconds" in right.text
            assert (await worker.get("/elsewhere")).status_code == 404
    finally:
        endpoint.close()
