"""One trace from the HTTP request through the workflow start to the workflow and each of
its activities (infra/telemetry.py, api/middleware.py RequestContext).

In-process, no stack: the spans go to the SDK's InMemorySpanExporter on the global tracer
provider, as configure_tracing sets the OTLP one; the code under test takes no tracer
argument. The Temporal client comes from the real ``infra.temporal.connect``, the worker
from the real ``infra.worker._worker``, running the tiny workflow of
tests/infra/log_workflows.py on the time-skipping test server; the API side is a tiny
FastAPI app with the real RequestContext whose route starts that workflow.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.runtime import Runtime
from api.errors import install_error_handlers
from api.middleware import RequestContext
from infra.logging import ContextFilter, add_log_context
from infra.settings import Settings
from infra.telemetry import TEMPORAL_HEADER, configure_tracing
from infra.temporal import connect
from infra.worker import Pool, _worker
from tests.infra.log_workflows import (
    ANONYMOUS,
    CHORE,
    WORKFLOW,
    LogWorkflow,
    Order,
    log_anonymous,
    log_chore,
)


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    """Spans of this process, kept in memory: on the global provider (set here unless a
    test of this session set an SDK one already)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture(scope="module")
async def client(env: WorkflowEnvironment) -> Client:
    """A client as the API and the workers make theirs, on the test server."""
    target = env.client.service_client.config.target_host
    return await connect(Settings(temporal_address=target, temporal_namespace=env.client.namespace))


@pytest.fixture(scope="module")
async def task_queue(env: WorkflowEnvironment, client: Client) -> AsyncIterator[str]:
    queue = f"tracing-{uuid.uuid4().hex[:8]}"
    pool = Pool(
        "tracing-test",
        task_queue=lambda _: queue,
        workflows=[LogWorkflow],
        activities=lambda _: [log_chore, log_anonymous],
        concurrency=lambda _: 4,
    )
    async with _worker(client, Settings(), cast(Runtime, None), pool):
        yield queue


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


def _spans(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    found = [s for s in spans if s.name == name]
    assert found, (name, sorted(s.name for s in spans))
    return found


def _workflow_trace(spans: list[ReadableSpan]) -> ReadableSpan:
    """The shape Temporal's TracingInterceptor gives a run, all in one trace: under the
    client's StartWorkflow, the workflow's RunWorkflow, each StartActivity and
    CompleteWorkflow (instants, from the workflow); under each StartActivity, a
    RunActivity per attempt (from the worker that ran it). Returns StartWorkflow."""
    (start,) = _spans(spans, f"StartWorkflow:{WORKFLOW}")
    assert start.kind == SpanKind.CLIENT
    under_start = [
        f"RunWorkflow:{WORKFLOW}",
        f"StartActivity:{CHORE}",
        f"StartActivity:{ANONYMOUS}",
        f"CompleteWorkflow:{WORKFLOW}",
    ]
    for name in under_start:
        (span,) = _spans(spans, name)
        assert span.parent is not None and span.parent.span_id == start.context.span_id, name
    for activity, attempts in ((CHORE, 2), (ANONYMOUS, 1)):  # the chore's first attempt fails
        (scheduled,) = _spans(spans, f"StartActivity:{activity}")
        runs = _spans(spans, f"RunActivity:{activity}")
        assert len(runs) == attempts, activity
        for run in runs:
            assert run.kind == SpanKind.SERVER
            assert run.parent is not None and run.parent.span_id == scheduled.context.span_id
    assert {s.context.trace_id for s in spans} == {start.context.trace_id}
    return start


async def test_a_workflow_start_is_one_trace_through_the_workflow_and_its_activities(
    env: WorkflowEnvironment, client: Client, task_queue: str, spans: InMemorySpanExporter
) -> None:
    generation_id = str(uuid.uuid4())
    handle = await client.start_workflow(
        LogWorkflow.run, Order(generation_id, "u-1"), id=generation_id, task_queue=task_queue
    )
    await env.client.get_workflow_handle(generation_id).result()
    start = _workflow_trace(list(spans.get_finished_spans()))
    assert start.parent is None  # nothing above it here: no request
    assert start.attributes == {"temporalWorkflowID": handle.id}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _api(client: Client, task_queue: str) -> FastAPI:
    """A route that starts the workflow, as POST /v1/generations does, behind the real
    RequestContext (FastAPI's own tracing off, as in api/app.py)."""
    app = FastAPI(telemetry={"tracing": False})
    install_error_handlers(app)

    @app.post("/generations/{generation_id}")
    async def start(generation_id: str) -> dict[str, str]:
        add_log_context(user_id="u-2")  # as api/deps.py does once the caller is known
        logging.getLogger("bitbuddies.tests.api").info("starting")
        await client.start_workflow(
            LogWorkflow.run, Order(generation_id, "u-2"), id=generation_id, task_queue=task_queue
        )
        return {"id": generation_id}

    app.add_middleware(RequestContext)
    return app


async def test_the_http_request_is_the_root_of_the_generations_trace(
    env: WorkflowEnvironment, client: Client, task_queue: str, spans: InMemorySpanExporter
) -> None:
    handler = _Capture()
    records = handler.records
    api_log = logging.getLogger("bitbuddies.tests.api")
    api_log.addHandler(handler)
    api_log.setLevel(logging.INFO)
    generation_id = str(uuid.uuid4())
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_api(client, task_queue)), base_url="http://api"
        ) as http:
            answer = await http.post(f"/generations/{generation_id}")
    finally:
        api_log.removeHandler(handler)
        api_log.setLevel(logging.NOTSET)
    assert answer.status_code == 200, answer.text
    await env.client.get_workflow_handle(generation_id).result()

    finished = list(spans.get_finished_spans())
    server = _one(finished, "POST /generations/{generation_id}")
    assert server.kind == SpanKind.SERVER and server.parent is None
    start = _workflow_trace([s for s in finished if s is not server])
    assert start.parent is not None and start.parent.span_id == server.context.span_id
    assert start.context.trace_id == server.context.trace_id
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/generations/{generation_id}",
        "http.response.status_code": 200,
        "request.id": answer.headers["x-request-id"],
        "enduser.id": "u-2",
    }
    # Not the path itself: ids (and share slugs) stay out of the traces.
    assert generation_id not in json.dumps(dict(server.attributes or {}))
    # The request's log lines name the trace.
    (record,) = records
    assert record.trace_id == format(server.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(server.context.span_id, "016x")  # type: ignore[attr-defined]


async def test_a_callers_trace_is_continued(
    env: WorkflowEnvironment, client: Client, task_queue: str, spans: InMemorySpanExporter
) -> None:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    generation_id = str(uuid.uuid4())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_api(client, task_queue)), base_url="http://api"
    ) as http:
        answer = await http.post(
            f"/generations/{generation_id}",
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "baggage": "big=" + "x" * 100},
        )
    assert answer.status_code == 200, answer.text
    await env.client.get_workflow_handle(generation_id).result()
    finished = list(spans.get_finished_spans())
    server = _one(finished, "POST /generations/{generation_id}")
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == parent_id
    assert all(format(s.context.trace_id, "032x") == trace_id for s in finished)
    # The caller's baggage is not carried into the workflow's header.
    history = await env.client.get_workflow_handle(generation_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert b"big=" not in started.header.fields[TEMPORAL_HEADER].data


def test_without_an_endpoint_nothing_is_set_up() -> None:
    assert configure_tracing(Settings(otel_exporter_otlp_endpoint=None), "bitbuddies-test") is None
