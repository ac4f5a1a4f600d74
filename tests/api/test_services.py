"""The rules behind the HTTP handlers, called without HTTP: the services the web app's
pages and the API routes share (api/services/). Against the session's real stack."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from api.services import errors
from api.services.accounts import AccountService
from api.services.generations import GenerationService, StartRequest
from api.services.passwords import Passwords
from infra.database import open_pool
from infra.settings import Settings
from infra.storage import storage_from_settings
from infra.temporal import connect
from tests.conftest import Stack, ledger_kinds
from tests.support.client import User
from tests.support.photos import photo


class _Upload:
    """An async file, as FastAPI's UploadFile is."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    async def seek(self, offset: int) -> None:
        self._file.seek(offset)


@dataclass
class Services:
    accounts: AccountService
    generations: GenerationService


@pytest.fixture
async def services(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    for name, value in stack.cfg.app_env().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    pool = open_pool(settings.database_url, max_size=4)
    await pool.open(wait=True)
    try:
        yield Services(
            accounts=AccountService(pool, settings, Passwords(concurrency=1, max_wait=30)),
            generations=GenerationService(
                pool, storage_from_settings(settings), await connect(settings), settings
            ),
        )
    finally:
        await pool.close()


def _email() -> str:
    return f"service-{uuid.uuid4().hex[:12]}@example.com"


async def test_sign_up_creates_the_account_grants_its_tokens_and_hands_a_working_token(
    services: Services, http: httpx.AsyncClient
) -> None:
    email = _email()
    made = await services.accounts.sign_up(email, "correct horse battery")
    user = User(http, made.token, str(made.user_id), email)
    assert await user.balance() == 3  # the local sign-up grant
    with pytest.raises(errors.EmailTaken):
        await services.accounts.sign_up(email, "another good password")
    with pytest.raises(errors.WrongPassword):
        await services.accounts.log_in(email, "not the password")
    token = await services.accounts.log_in(email, "correct horse battery")
    assert await User(http, token, user.id, email).balance() == 3


async def test_start_charges_once_per_key_and_asks_admission_only_for_a_new_start(
    services: Services, http: httpx.AsyncClient
) -> None:
    email = _email()
    made = await services.accounts.sign_up(email, "correct horse battery")
    user = User(http, made.token, str(made.user_id), email)
    admitted: list[bool] = []

    async def admit() -> None:
        admitted.append(True)

    def request() -> StartRequest:
        return StartRequest(
            user_id=made.user_id,
            prompt="a brave knight",
            photo=_Upload(photo("astronaut.png")),
            idempotency_key="service-test",
        )

    first = await services.generations.start(request(), admit=admit)
    again = await services.generations.start(request(), admit=admit)
    assert again.id == first.id
    assert admitted == [True]
    assert await user.balance() == 2
    events = await user.events(str(first.id))
    assert events[-1].event == "completed"


async def test_refusals_leave_nothing_charged(
    services: Services, http: httpx.AsyncClient, db: object
) -> None:
    email = _email()
    made = await services.accounts.sign_up(email, "correct horse battery")
    user = User(http, made.token, str(made.user_id), email)
    with pytest.raises(errors.InvalidInput):
        await services.generations.start(
            StartRequest(user_id=made.user_id, prompt="\x00", photo=_Upload(b"x"))
        )
    with pytest.raises(errors.PhotoUnsupported):
        await services.generations.start(
            StartRequest(user_id=made.user_id, prompt="a knight", photo=_Upload(b"GIF89a..."))
        )
    with pytest.raises(errors.KeyReused):
        ok = StartRequest(
            user_id=made.user_id,
            prompt="a knight",
            photo=_Upload(photo("astronaut.png")),
            idempotency_key="reused",
        )
        first = await services.generations.start(ok)
        await services.generations.start(
            StartRequest(
                user_id=made.user_id,
                prompt="another knight",
                photo=_Upload(photo("astronaut.png")),
                idempotency_key="reused",
            )
        )
    assert await user.balance() == 2  # only the first, good request was charged
    # It runs to the end, as any would: nothing of it is left running for the next test.
    assert (await user.events(str(first.id)))[-1].event == "completed"
    assert await ledger_kinds(db, first.id) == ["charge"]  # type: ignore[arg-type]
