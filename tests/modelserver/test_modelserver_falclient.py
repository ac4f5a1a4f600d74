"""``make_fal_client``: which hosts the unmodified fal_client ends up talking to."""

from __future__ import annotations

import fal_client
import fal_client.client as fal_module
import httpx
import pytest
from ms_helpers import ModelServer

from infra.falclient import check_no_backup_for, make_fal_client


def hosts() -> dict[str, str]:
    names = ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL")
    return {name: getattr(fal_module, name) for name in names}


def test_local_client_points_every_host_at_the_model_server(model_server: ModelServer) -> None:
    try:
        client = make_fal_client(fal_key="key-id:secret", model_server_url=model_server.url)
        assert client.key == "key-id:secret"
        assert hosts() == {
            "QUEUE_URL_FORMAT": "https://queue.fal.run/",
            "RUN_URL_FORMAT": "https://fal.run/",
            "REST_URL": "https://rest.fal.ai",
            "CDN_URL": "https://v3.fal.media",
        }

        for _ in range(2):  # idempotent
            local = make_fal_client(fal_key=None, model_server_url=model_server.url + "/")
        assert local.key == "local"
        base = model_server.url
        assert hosts() == {
            "QUEUE_URL_FORMAT": base + "/",
            "RUN_URL_FORMAT": base + "/",
            "REST_URL": base,  # fal_client appends "/storage/..." and "/files/..."
            "CDN_URL": base,
        }
    finally:
        make_fal_client(fal_key=None, model_server_url=model_server.url)


async def test_backup_transport_never_redirects_local_requests() -> None:
    """A refused local connection fails as such; it is not retried on a fal domain."""
    check_no_backup_for("http://127.0.0.1:8010/")
    with pytest.raises(RuntimeError, match="backup host"):
        check_no_backup_for("https://queue.fal.run/")
    async with httpx.AsyncClient(transport=fal_module.AsyncBackupDomainTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/nothing-listens-here")


async def test_the_key_header_is_sent_and_ignored(
    fal: fal_client.AsyncClient, astronaut_uri: str
) -> None:
    handle = await fal.submit("bitbuddies/nsfw-filter", {"image_url": astronaut_uri})
    assert handle.client.headers["authorization"] == "Key local"
    assert "nsfw_probability" in await handle.get(interval=0.02)
