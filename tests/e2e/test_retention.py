"""A generation's working files (the photo, every intermediate result) are deleted once
it has ended and the retention setting has passed; the character's assets stay.

The test stack keeps working files for an hour (tests/conftest.py), so the tests that
look at stored inputs are not raced; this test moves a generation's end back by two
hours in the database, as time passing would, and waits for the next sweep."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Stack
from tests.support.client import signup
from tests.support.faults import wait_until
from tests.support.paths import FIXTURES
from tests.support.photos import photo

Pool = AsyncConnectionPool  # type: ignore[type-arg]


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


async def _end_two_hours_ago(db: Pool, generation_id: str) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE generations SET updated_at = now() - interval '2 hours' WHERE id = %s",
            (uuid.UUID(generation_id),),
        )


async def test_working_files_are_deleted_after_the_retention_and_assets_stay(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    storage = stack.cfg.data_dir / "storage"
    user = await signup(http)
    done = (await user.generate(photo("astronaut.png"))).json()["id"]
    refused = (await user.generate((FIXTURES / "nsfw_probe.png").read_bytes())).json()["id"]
    done_events = await asyncio.wait_for(user.events(done), 120)
    refused_events = await asyncio.wait_for(user.events(refused), 120)
    assert done_events[-1].event == "completed" and refused_events[-1].event == "failed"
    character_id = done_events[-1].data["character_id"]

    # Within the retention, everything is still there.
    working = _files_under(storage / "generations" / done)
    assert any(f.startswith("input/photo.") for f in working) and len(working) > 3, working
    refused_files = _files_under(storage / "generations" / refused)
    assert [f.split(".")[0] for f in refused_files] == ["input/photo"], refused_files

    for generation_id in (done, refused):
        await _end_two_hours_ago(db, generation_id)

    async def discarded() -> bool:
        return not any((storage / "generations" / g).exists() for g in (done, refused))

    await wait_until(discarded, timeout=30)
    character = (await http.get(f"/v1/characters/{character_id}", headers=user.headers)).json()
    assets = _files_under(storage / "characters" / character_id)
    assert len(assets) == 3, assets
    for url in character["assets"].values():
        response = await http.get(url)
        assert response.status_code == 200 and response.content, url
    # The generations themselves are still on record for their owner.
    assert (await user.generation(done))["status"] == "completed"
    assert (await user.generation(refused))["status"] == "failed"
