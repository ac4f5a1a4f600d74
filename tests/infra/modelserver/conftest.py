"""A real model server subprocess for the whole session, and clients to drive it.

Tests talk to the server only the way the pipeline does: through
``infra.falclient.make_fal_client`` (fal_client's queue API) and, for the test hooks
under ``/_local``, plain httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fal_client
import httpx
import pytest

from infra.falclient import make_fal_client
from infra.supervisor import free_port
from tests.infra.modelserver.ms_helpers import ModelServer, data_uri, spawn, stop, wait_idle
from tests.support.photos import photo


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    # It also mimics fal's hosted endpoints (test_modelserver_mimic.py): our own apps are
    # served the same either way.
    proc, server = spawn(tmp_path_factory.mktemp("modelserver"), free_port(), mimic="fal")
    try:
        yield server
    finally:
        stop(proc)


@pytest.fixture
def fal(model_server: ModelServer) -> fal_client.AsyncClient:
    """Made for each test: fal_client's hosts are process-wide, and a test that starts a
    server of its own (test_modelserver_restart.py) leaves them pointing at it."""
    return make_fal_client(fal_key=None, model_server_url=model_server.url)


@pytest.fixture(scope="session")
async def local(model_server: ModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=model_server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def clean(local: httpx.AsyncClient) -> httpx.AsyncClient:
    """Start from empty records, stats and faults (and no jobs still running)."""
    await wait_idle(local)
    (await local.post("/_local/reset")).raise_for_status()
    return local


@pytest.fixture(scope="session")
def astronaut_uri() -> str:
    return str(data_uri(photo("astronaut.png")))


@pytest.fixture(scope="session")
def coffee_uri() -> str:
    return str(data_uri(photo("coffee.png")))
