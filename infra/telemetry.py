"""Traces across HTTP, workflow and activities (OpenTelemetry).

A generation's start is one trace: the API's server span for the request
(api/middleware.py ``RequestContext``) -> ``StartWorkflow:BitBuddy`` (the Temporal client,
``ClientTracing`` below) -> ``RunWorkflow:BitBuddy`` (the worker) -> for each activity
``StartActivity:<name>`` (the workflow) and ``RunActivity:<name>`` (the worker that ran
it), made by ``temporalio.contrib.opentelemetry.TracingInterceptor`` on every worker.
Workflow spans are instants (Temporal's interceptor ends them as it starts them: a span
left open across a replay would be wrong); activity and HTTP spans have durations.

Switched on by ``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable: the collector's
base URL (``http://collector:4318``); spans go to ``<it>/v1/traces`` over OTLP/HTTP
(protobuf), batched, under ``service.name`` ``bitbuddies-api`` or
``bitbuddies-worker-<pools>``. The exporter reads the other standard variables itself
(``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._TRACES_ENDPOINT``, ...). Without
the endpoint nothing is set up and the SDK is not even imported: every tracer is
OpenTelemetry's no-op one.

Why the client's interceptor is ours: Temporal's ``TracingInterceptor`` lives in a module
that imports ``temporalio.worker``, which the API must not load
(tests/api/test_import_boundary.py). ``ClientTracing`` makes the same client spans and
writes the same header (``_tracer-data``: the W3C trace context as a JSON payload) that
the workers' ``TracingInterceptor`` reads (tests/infra/test_tracing.py holds it to that).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import temporalio.client
import temporalio.converter
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from infra.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from temporalio.worker import Interceptor as WorkerInterceptor

log = logging.getLogger("bitbuddies.telemetry")

API_SERVICE = "bitbuddies-api"
TRACER = "bitbuddies"
# What temporalio.contrib.opentelemetry.TracingInterceptor reads and writes.
TEMPORAL_HEADER = "_tracer-data"
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_converter = temporalio.converter.PayloadConverter.default

_provider: TracerProvider | None = None


def worker_service(pools: Sequence[str]) -> str:
    return "bitbuddies-worker-" + "-".join(pools)


def configure_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    """Export this process's spans when OTEL_EXPORTER_OTLP_ENDPOINT is set (once per
    process: OpenTelemetry's tracer provider can be set only once). ``flush_tracing``
    exports what is left as the process stops."""
    global _provider
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint or _provider is not None:
        return _provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # A traces-specific endpoint, when set, is a full URL the exporter reads itself.
    traces_url = None
    if not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        traces_url = endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    trace.set_tracer_provider(provider)
    _provider = provider
    shown = urlsplit(traces_url or os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
    # Never its user or password, should the URL hold any.
    log.info("tracing: %s exports to %s://%s", service_name, shown.scheme, shown.hostname)
    return provider


def flush_tracing(timeout_seconds: float = 5.0) -> None:
    """Export the spans still batched, if tracing is on: call as the process stops.
    (The provider would at exit too, but uvicorn ends by re-raising SIGTERM, which skips
    exit handlers.)"""
    if _provider is not None:
        _provider.force_flush(int(timeout_seconds * 1000))


def worker_tracing(tracer: trace.Tracer | None = None) -> WorkerInterceptor:
    """Temporal's tracing interceptor, for a worker: RunWorkflow, StartActivity and
    RunActivity spans, continuing the trace in the headers of what it runs."""
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(tracer)


class ClientTracing(temporalio.client.Interceptor):
    """A client span for each workflow start, signal, query and update, its context
    sent along in the ``_tracer-data`` header (as Temporal's TracingInterceptor does)."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        # A proxy until a provider is set, so connect() may come before configure_tracing().
        self.tracer = tracer or trace.get_tracer(TRACER)

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        return _ClientOutbound(next, self.tracer)


class _ClientOutbound(temporalio.client.OutboundInterceptor):
    def __init__(self, next: temporalio.client.OutboundInterceptor, tracer: trace.Tracer) -> None:
        super().__init__(next)
        self.tracer = tracer

    @contextmanager
    def _span(self, name: str, workflow_id: str, input: Any) -> Iterator[None]:
        with self.tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"temporalWorkflowID": workflow_id},
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            if carrier:
                input.headers = {
                    **input.headers,
                    TEMPORAL_HEADER: _converter.to_payloads([carrier])[0],
                }
            try:
                yield
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    async def start_workflow(
        self, input: temporalio.client.StartWorkflowInput
    ) -> temporalio.client.WorkflowHandle[Any, Any]:
        prefix = "SignalWithStartWorkflow" if input.start_signal else "StartWorkflow"
        with self._span(f"{prefix}:{input.workflow}", input.id, input):
            return await self.next.start_workflow(input)

    async def signal_workflow(self, input: temporalio.client.SignalWorkflowInput) -> None:
        with self._span(f"SignalWorkflow:{input.signal}", input.id, input):
            await self.next.signal_workflow(input)

    async def query_workflow(self, input: temporalio.client.QueryWorkflowInput) -> Any:
        with self._span(f"QueryWorkflow:{input.query}", input.id, input):
            return await self.next.query_workflow(input)

    async def start_workflow_update(
        self, input: temporalio.client.StartWorkflowUpdateInput
    ) -> temporalio.client.WorkflowUpdateHandle[Any]:
        with self._span(f"StartWorkflowUpdate:{input.update}", input.id, input):
            return await self.next.start_workflow_update(input)
