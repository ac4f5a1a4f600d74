"""Every log line says whose work it is (infra/logging.py, infra/log_context.py,
api/middleware.py RequestContext, api/deps.py).

No stack: a tiny workflow and two activities (tests/infra/log_workflows.py) on Temporal's
time-skipping test server, run by a worker made by the real ``infra.worker._worker`` (so
with exactly the interceptors and sandbox every worker has), logging through
``workflow.logger``, ``activity.logger``, a module logger of ours and a library's
logger. The API's side runs in-process on a tiny app with the real middleware and the
real authentication dependency.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
import temporalio.activity
import temporalio.workflow
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.runtime import Runtime
from api import deps
from api.deps import CurrentUser
from api.errors import install_error_handlers
from api.middleware import RequestContext
from infra.database import records
from infra.logging import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    add_log_context,
    configure_logging,
    current_log_context,
    log_context,
)
from infra.settings import Settings
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
from tests.workflows.test_replay import FILES, load
from workflows.bitbuddy import BitBuddyWorkflow

WORKFLOW_FIELDS = ("workflow_id", "run_id", "task_queue", "workflow_type")
OWNER_FIELDS = ("generation_id", "user_id")


def _pool(task_queue: str, workflows: list[type] | None = None) -> Pool:
    return Pool(
        "log-test",
        task_queue=lambda _: task_queue,
        workflows=workflows if workflows is not None else [LogWorkflow],
        activities=lambda _: [log_chore, log_anonymous],
        concurrency=lambda _: 4,
    )


class Capture(logging.Handler):
    """Keeps every record, with the filter the real handler has."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage().startswith(prefix)]


@contextlib.contextmanager
def _root_at_info(*handlers: logging.Handler) -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def captured() -> Iterator[Capture]:
    capture = Capture()
    with _root_at_info(capture):
        yield capture


@contextlib.contextmanager
def _configured(fmt: str) -> Iterator[io.StringIO]:
    """configure_logging as a process does, writing to a buffer; the root's handlers and
    Temporal's loggers are restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("INFO", cast(Any, fmt), stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        temporalio.workflow.logger.workflow_info_on_message = True
        temporalio.activity.logger.activity_info_on_message = True


async def _run(client: Client) -> tuple[str, str, str, str]:
    """One run of the workflow on a worker from ``_worker``; (generation_id, user_id,
    run_id, task_queue)."""
    generation_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    task_queue = f"log-context-{uuid.uuid4().hex[:8]}"
    worker = _worker(client, Settings(), cast(Runtime, None), _pool(task_queue))
    async with worker:
        handle = await client.start_workflow(
            LogWorkflow.run, Order(generation_id, user_id), id=generation_id, task_queue=task_queue
        )
        assert await handle.result() == "done"
    assert handle.result_run_id is not None
    return generation_id, user_id, handle.result_run_id, task_queue


async def test_every_line_of_a_run_carries_the_workflow_and_its_owner(
    env: WorkflowEnvironment, captured: Capture
) -> None:
    generation_id, user_id, run_id, task_queue = await _run(env.client)
    expected = {
        "workflow_id": generation_id,
        "run_id": run_id,
        "task_queue": task_queue,
        "workflow_type": WORKFLOW,
        "generation_id": generation_id,
        "user_id": user_id,
    }

    def fields(record: logging.LogRecord) -> dict[str, Any]:
        return {name: getattr(record, name, None) for name in expected}

    # Workflow code: Temporal's workflow logger, a module logger, a library's logger.
    for what in ("workflow.logger", "module logger", "library logger"):
        lines = captured.about(f"workflow: {what}")
        assert lines, what
        for record in lines:
            assert fields(record) == expected, (what, record.__dict__)

    # Workflow code may add to its context (the module is the same inside the sandbox).
    (added,) = captured.about("workflow: after add_log_context")
    assert (added.step, added.user_id) == ("chores", user_id)  # type: ignore[attr-defined]

    # An activity whose input names the owner, on both its attempts.
    for what in ("activity.logger", "module logger", "library logger"):
        lines = captured.about(f"chore: {what}")
        assert sorted(r.attempt for r in lines) == [1, 2], what  # type: ignore[attr-defined]
        for record in lines:
            assert fields(record) == expected, (what, record.__dict__)
            assert record.activity_type == CHORE  # type: ignore[attr-defined]

    # Temporal's own line about the failed attempt, logged as the activity ends.
    (failed,) = captured.about("Completing activity as failed")
    assert fields(failed) == expected, failed.__dict__
    assert failed.attempt == 1 and failed.exc_info  # type: ignore[attr-defined]

    # An activity whose input does not: the workflow sent the owner along in a header.
    (record,) = captured.about("anonymous: module logger")
    assert fields(record) == expected, record.__dict__
    assert (record.activity_type, record.attempt) == (ANONYMOUS, 1)  # type: ignore[attr-defined]

    # Nothing is left bound once the run is over.
    logging.getLogger("bitbuddies.tests").info("after the run")
    (after,) = captured.about("after the run")
    assert not any(hasattr(after, name) for name in expected)


async def test_json_lines_parse_and_carry_every_context_field(env: WorkflowEnvironment) -> None:
    with _configured("json") as out:
        generation_id, user_id, run_id, task_queue = await _run(env.client)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # every line parses
    by_message = {(d["message"], d.get("attempt")): d for d in lines}
    chore = by_message[("chore: module logger", 2)]
    assert chore["time"].endswith("Z")
    assert {k: chore[k] for k in ("level", "logger")} == {
        "level": "INFO",
        "logger": "bitbuddies.tests.log_workflows",
    }
    assert {k: chore[k] for k in (*WORKFLOW_FIELDS, *OWNER_FIELDS, "activity_type")} == {
        "workflow_id": generation_id,
        "run_id": run_id,
        "task_queue": task_queue,
        "workflow_type": WORKFLOW,
        "generation_id": generation_id,
        "user_id": user_id,
        "activity_type": CHORE,
    }
    # Temporal's own loggers no longer append their details to the message itself.
    assert ("chore: activity.logger", 1) in by_message
    assert ("workflow: workflow.logger", None) in by_message
    assert by_message[("workflow: library logger", None)]["user_id"] == user_id


async def test_text_lines_carry_the_context_as_key_value_pairs(env: WorkflowEnvironment) -> None:
    with _configured("text") as out:
        generation_id, user_id, run_id, task_queue = await _run(env.client)
    (line,) = [
        line
        for line in out.getvalue().splitlines()
        if "chore: library logger" in line and "attempt=2" in line
    ]
    assert " WARNING somelibrary.client chore: library logger " in line
    for pair in (
        f"generation_id={generation_id}",
        f"user_id={user_id}",
        f"workflow_id={generation_id}",
        f"run_id={run_id}",
        f"task_queue={task_queue}",
        f"workflow_type={WORKFLOW}",
        f"activity_type={CHORE}",
    ):
        assert pair in line.split(" "), (pair, line)


def test_uvicorn_errors_come_through_and_its_access_log_stays_off() -> None:
    """uvicorn's traceback lines take our format; its access log, which holds whole URLs
    (signed query strings included), stays off as --no-access-log left it: uvicorn turns
    it on whenever the logger finds a handler."""
    access, server = logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn")
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in (access, server)]
    access.handlers, access.propagate = [], False  # what uvicorn --no-access-log does
    server.handlers, server.propagate = [logging.NullHandler()], False
    try:
        with _configured("json") as out, log_context(request_id="r-9"):
            logging.getLogger("uvicorn.error").error("Exception in ASGI application")
            assert not access.hasHandlers()
        (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
        assert (line["logger"], line["request_id"]) == ("uvicorn.error", "r-9")
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def _record(message: str, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("bitbuddies.tests.format")
    return logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, message, (), None, extra=extra
    )


def test_the_formatters() -> None:
    context = ContextFilter()
    with log_context(user_id="u-1", request_id="r-1"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger = logging.getLogger("bitbuddies.tests.format")
            record = logger.makeRecord(
                logger.name, logging.ERROR, __file__, 1, "it %s", ("failed",), None
            )
            record.exc_info = sys.exc_info()
        context.filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "it failed"
    assert (doc["level"], doc["request_id"], doc["user_id"]) == ("ERROR", "r-1", "u-1")
    assert "Traceback" in doc["exception"] and "ValueError: boom" in doc["exception"]
    text = TextFormatter().format(record)
    first, *traceback = text.splitlines()
    assert first.endswith(" ERROR bitbuddies.tests.format it failed request_id=r-1 user_id=u-1")
    assert traceback[-1] == "ValueError: boom"

    # A value with spaces or quotes is quoted; a UUID is written as text.
    odd = _record("odd", generation_id=uuid.UUID(int=1), user_id='a "b" c')
    context.filter(odd)
    assert (
        TextFormatter()
        .format(odd)
        .endswith('generation_id=00000000-0000-0000-0000-000000000001 user_id="a \\"b\\" c"')
    )
    assert json.loads(JsonFormatter().format(odd))["generation_id"] == str(uuid.UUID(int=1))


def test_a_field_passed_by_the_call_wins_over_the_bound_one() -> None:
    """Code that passes ``extra={"generation_id": ...}`` (the sweep names the generation
    it is about) keeps working, and its value is the one shown."""
    capture = Capture()
    log = logging.getLogger("bitbuddies.tests.extra")
    with _root_at_info(capture), log_context(generation_id="bound", user_id="u"):
        log.info("about another", extra={"generation_id": "passed"})
        add_log_context(request_id="later")
        log.info("later")
    first, later = capture.records
    assert (first.generation_id, first.user_id) == ("passed", "u")  # type: ignore[attr-defined]
    assert later.request_id == "later"  # type: ignore[attr-defined]


async def test_recorded_histories_replay_with_every_workers_interceptors(
    env: WorkflowEnvironment,
) -> None:
    """The log context (a header on each activity) and the tracing interceptors issue no
    command: the real histories replay with exactly what _worker registers."""
    worker = _worker(
        env.client, Settings(), cast(Runtime, None), _pool("replay-only", [BitBuddyWorkflow])
    )
    config = worker.config()
    interceptors = list(config.get("interceptors") or [])
    assert {type(i).__name__ for i in interceptors} >= {
        "TracingInterceptor",
        "LogContextInterceptor",
    }
    replayer = Replayer(
        workflows=[BitBuddyWorkflow],
        interceptors=interceptors,
        workflow_runner=config["workflow_runner"],
    )
    assert FILES
    for path in FILES:
        await replayer.replay_workflow(load(path))


# --- the API -------------------------------------------------------------------------

API_LOG = logging.getLogger("bitbuddies.tests.api")
USER = records.User(id=uuid.uuid4(), email="someone@example.com", password_hash="x")
TOKEN = "secret-bearer-token-" + uuid.uuid4().hex
COOKIE = "secret-session-" + uuid.uuid4().hex


def _api() -> FastAPI:
    """The real middleware and the real authentication dependency, on a fake database
    connection and a fake token lookup."""
    app = FastAPI(telemetry={"tracing": False})
    install_error_handlers(app)

    @app.get("/whoami")
    async def whoami(user: CurrentUser) -> dict[str, str]:
        API_LOG.info("handling")
        return {"id": str(user.id)}

    @app.get("/boom")
    async def boom(user: CurrentUser) -> None:
        raise RuntimeError("unexpected")

    @app.get("/anyone")
    async def anyone() -> dict[str, str]:
        API_LOG.info("no caller")
        return {}

    async def no_connection() -> AsyncIterator[None]:
        yield None

    app.dependency_overrides[deps._connection] = no_connection
    app.add_middleware(RequestContext)
    return app


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    async def bearer(_: object, token: str) -> records.Bearer | None:
        return records.Bearer(user=USER, device=False) if token == TOKEN else None

    monkeypatch.setattr(records, "bearer", bearer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_api()), base_url="http://api")


async def test_api_lines_carry_the_request_id_and_the_user(
    api: httpx.AsyncClient, captured: Capture
) -> None:
    with _configured("json") as out:
        root = logging.getLogger()
        root.addHandler(captured)
        answer = await api.get(
            "/whoami",
            headers={"Authorization": f"Bearer {TOKEN}", "Cookie": f"bitbuddies_session={COOKIE}"},
        )
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    assert len(request_id) == 32
    (record,) = captured.about("handling")
    assert (record.request_id, record.user_id) == (request_id, str(USER.id))  # type: ignore[attr-defined]
    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if '"handling"' in x]
    assert (line["request_id"], line["user_id"]) == (request_id, str(USER.id))
    # No header of the request is logged by any of it.
    everything = out.getvalue() + "".join(repr(r.__dict__) for r in captured.records)
    assert TOKEN not in everything and COOKIE not in everything


async def test_a_safe_incoming_request_id_is_kept_and_any_other_replaced(
    api: httpx.AsyncClient, captured: Capture
) -> None:
    kept = await api.get("/anyone", headers={"X-Request-ID": "edge-42.a_B"})
    assert kept.headers["x-request-id"] == "edge-42.a_B"
    (record,) = captured.about("no caller")
    assert record.request_id == "edge-42.a_B"  # type: ignore[attr-defined]
    assert not hasattr(record, "user_id")
    for unsafe in ("a b", "x" * 65, "id;drop", '"quoted"', "é"):
        answer = await api.get("/anyone", headers={b"X-Request-ID": unsafe.encode()})
        replaced = answer.headers["x-request-id"]
        assert replaced != unsafe and len(replaced) == 32 and replaced.isalnum(), unsafe
    # An unauthenticated answer carries its id too.
    refused = await api.get("/whoami")
    assert refused.status_code in (401, 403) and len(refused.headers["x-request-id"]) == 32


async def test_the_line_about_an_unhandled_error_names_the_request_and_its_user(
    api: httpx.AsyncClient, captured: Capture
) -> None:
    """The API logs an unhandled error itself, with its traceback, in the request's
    context, and answers it with the same request id the line carries."""
    answer = await api.get("/boom", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 500
    (record,) = captured.about("unhandled error in GET /boom")
    assert record.request_id == answer.headers["x-request-id"]  # type: ignore[attr-defined]
    assert record.user_id == str(USER.id)  # type: ignore[attr-defined]
    assert record.exc_info is not None and str(record.exc_info[1]) == "unexpected"
    assert current_log_context() == {}  # and only there
