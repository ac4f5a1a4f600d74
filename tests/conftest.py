"""One real stack per test session: Temporal dev server, Redis, PostgreSQL, the local
model server, one worker per pool (interactive, media, housekeeping) and the API, each a real
process started by infra/supervisor.py exactly as `make dev` starts them (on free ports,
in a temporary data folder).

Also registered here, so every folder shares one: the GCS emulator (tests/support/gcs.py)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from billing import ledger
from infra import supervisor
from infra.database import open_pool
from tests.support import pushover as pushover_stub
from tests.support.gcs import gcs_emulator_url  # noqa: F401 (a fixture, registered here)
from tests.support.mailbox import Mailbox
from tests.support.pushover import Pushover

TEST_ENV = {
    # Small and short, so the whole pipeline runs in seconds on two cores.
    "BITBUDDIES_RENDER_SIZE": "256",
    "BITBUDDIES_ANIMATION_FPS": "12",
    "BITBUDDIES_ANIMATION_SECONDS": "2",
    "BITBUDDIES_MODEL_CONCURRENCY": "2",
    "BITBUDDIES_SIGNUP_TOKENS": "3",
    "BITBUDDIES_LOG_LEVEL": "INFO",
    # Every test signs up from 127.0.0.1; tests/api/test_rate_limits.py turns limits on.
    "BITBUDDIES_RATE_LIMITS": "off",
    "BITBUDDIES_API_REDIS_CONNECTIONS": "8",  # small, so a test can see the bound hold
    "BITBUDDIES_SWEEP_INTERVAL_SECONDS": "1",
    # only the sweeper test's backdated generation is old enough; other tests insert rows too
    "BITBUDDIES_STALE_QUEUED_SECONDS": "1800",
    # tests that look at stored inputs are not raced; tests/e2e/test_retention.py backdates
    "BITBUDDIES_FILES_RETENTION_SECONDS": "3600",
    # the alert digest runs when a test triggers its schedule, never in the middle of one
    "BITBUDDIES_ALERT_DIGEST_INTERVAL_SECONDS": "86400",
    # billing's reconciliation runs when a test triggers it (tests/billing/test_reconcile.py)
    "BITBUDDIES_RECONCILE_INTERVAL_SECONDS": "86400",
    # Local jobs priced (USD a call), so every generation records costs as in production
    # (tests/e2e/test_costs.py): $0.353 a generation, $0.393 with expand.
    "BITBUDDIES_LOCAL_MODEL_COSTS": json.dumps(
        {
            "nsfw_filter": 0.001,
            "analyze": 0.002,
            "cartoonify": 0.04,
            "expand": 0.04,
            "segment_image": 0.01,
            "animate": 0.25,
            "segment_video": 0.05,
        }
    ),
    # Passed by the session's first few generations: the spend alert is raised once today.
    "BITBUDDIES_DAILY_SPEND_ALERT_USD": "0.5",
}


async def insert_generation(
    db: AsyncConnectionPool,  # type: ignore[type-arg]
    user_id: uuid.UUID,
    *,
    generation_id: uuid.UUID | None = None,
    photo_key: str = "k",
    charged: bool = False,
    age_seconds: int = 0,
) -> uuid.UUID:
    """A generation row as the API writes it (charged or not) with no workflow started:
    what a crash between the API's commit and its workflow start leaves behind."""
    generation_id = generation_id or uuid.uuid4()
    async with db.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO generations (id, user_id, prompt, photo_key, created_at, updated_at)"
            " VALUES (%s, %s, 'a knight', %s, now() - make_interval(secs => %s),"
            " now() - make_interval(secs => %s))",
            (generation_id, user_id, photo_key, age_seconds, age_seconds),
        )
        if charged:
            await ledger.charge(
                conn,
                user_id,
                idempotency_key=ledger.charge_key(generation_id),
                generation_id=generation_id,
            )
    return generation_id


async def permits_held(db: AsyncConnectionPool) -> int:  # type: ignore[type-arg]
    """Provider permits in the table, expired or not."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM provider_permits")
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def ledger_kinds(db: AsyncConnectionPool, generation_id: str | uuid.UUID) -> list[str]:  # type: ignore[type-arg]
    async with db.connection() as conn:
        entries = await ledger.entries_for_generation(conn, uuid.UUID(str(generation_id)))
    return [e.kind for e in entries]


@dataclass
class Stack:
    cfg: supervisor.StackConfig
    worker: supervisor.Managed  # the interactive pool's: the workflow and the model steps
    api: supervisor.Managed
    model_server: supervisor.Managed
    redis: supervisor.Managed

    def restart_worker(self) -> None:
        self.worker.stop()
        self.worker = supervisor.worker(self.cfg, "interactive")
        self.worker.start()

    def restart_api(self, down_seconds: float) -> None:
        """Stop the API (SIGTERM, as a deploy does), leave it down, start it again. The
        same process record restarts, so the session's teardown still stops it."""
        self.api.stop()
        time.sleep(down_seconds)
        self.api.start()

    def crash_redis(self) -> None:
        """SIGKILL Redis. The test stack's Redis keeps nothing on disk, so it comes back
        empty, as a cache-tier Redis or one restarted without persistence does."""
        self.redis.kill()
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()

    def crash_model_server(self, down_seconds: float) -> None:
        """SIGKILL the model server (nothing saved on the way down), leave it down, start
        it again on the same port and data folder."""
        self.model_server.kill()
        self.model_server.stop()  # closes its log file; the process is gone already
        time.sleep(down_seconds)
        self.model_server.start()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """The SMTP server the stack's API mails to (tests/support/mailbox.py)."""
    box = Mailbox()
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def pushover() -> Iterator[Pushover]:
    """The Pushover API the stack's owner alerts go to (tests/support/pushover.py)."""
    stub = Pushover()
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox, pushover: Pushover
) -> Iterator[Stack]:
    env = {
        **TEST_ENV,
        "BITBUDDIES_SMTP_URL": mailbox.url,
        "PUSHOVER_TOKEN": pushover_stub.TOKEN,
        "PUSHOVER_USER": pushover_stub.USER,
        "BITBUDDIES_PUSHOVER_API_URL": pushover.api_url,
    }
    cfg = supervisor.StackConfig.throwaway(tmp_path_factory.mktemp("stack"), env=env)
    for key, value in {**cfg.app_env(), **env}.items():
        os.environ[key] = value  # in-process helpers read the same settings
    with supervisor.running(cfg) as started:
        by_name = {s.name: s for s in started}
        stack = Stack(
            cfg=cfg,
            worker=by_name["worker-interactive"],
            api=by_name["api"],
            model_server=by_name["model-server"],
            redis=by_name["redis"],
        )
        try:
            yield stack
        finally:
            stack.worker.stop()  # a restarted worker is not among `started`


@pytest.fixture(scope="session")
async def db(stack: Stack) -> AsyncIterator[AsyncConnectionPool]:  # type: ignore[type-arg]
    pool = open_pool(stack.cfg.database_url, max_size=30)
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.cfg.api_url, timeout=60.0) as client:
        yield client


@pytest.fixture
async def models(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The local model server's test hooks (/_local/...), reset before each test."""
    async with httpx.AsyncClient(base_url=stack.cfg.model_server_url, timeout=30.0) as client:
        (await client.post("/_local/reset")).raise_for_status()
        yield client


def pytest_unconfigure(config: pytest.Config) -> None:
    # Processes using the Temporal SDK sometimes crash at interpreter exit
    # (sdk-python#300); leave with pytest's own status instead.
    status = getattr(config, "_bitbuddies_exitstatus", None)
    if status is not None:
        os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._bitbuddies_exitstatus = exitstatus  # type: ignore[attr-defined]
