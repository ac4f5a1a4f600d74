"""One way to get a fal client (the real fal.ai with a key, our local server without),
and the few calls we make beside fal_client's own API.

``fal_client`` takes its hosts from module constants (``QUEUE_URL_FORMAT``,
``RUN_URL_FORMAT``, ``REST_URL``, ``CDN_URL``), read at call time, and only honours
``FAL_RUN_HOST``/``FAL_QUEUE_RUN_HOST`` at import and always with ``https://``. So to
reach ``python -m infra.modelserver`` over plain HTTP we point those constants at it.
That patch is **process-wide**: every ``fal_client`` client in the process then talks
to the local server. It is idempotent (same URL, same result) and is only ever applied
when no fal key is configured, or when ``BITBUDDIES_FAL_BASE_URL`` names another home
for fal's hosts (``python -m infra.modelserver --mimic fal``, which serves fal's own
endpoint ids): then the real adapter and a real key's requests go there. Asking for a
real client later in the same process restores the real hosts.

``AsyncBackupDomainTransport`` (the client's transport) cannot send local requests
elsewhere: on a connection error it retries only hosts listed in
``fal_client.client._BACKUP_DOMAINS`` (``fal.run``, ``queue.fal.run``); for any other
host ``_fallback_url`` returns None and ``_backup_request`` re-raises the original
error. Its connect-timeout cap also applies only to those hosts.
``check_no_backup_for`` asserts this still holds for our URL, should fal_client change.
"""

from __future__ import annotations

from typing import Any

import fal_client
import fal_client.client as fal_module
import httpx

from infra.settings import Settings

_REAL_HOSTS = {
    "QUEUE_URL_FORMAT": fal_module.QUEUE_URL_FORMAT,
    "RUN_URL_FORMAT": fal_module.RUN_URL_FORMAT,
    "REST_URL": fal_module.REST_URL,
    "CDN_URL": fal_module.CDN_URL,
}

LOCAL_KEY = "local"  # sent as "Authorization: Key local"; the local server ignores it


def make_fal_client(
    *, fal_key: str | None, model_server_url: str, fal_base_url: str | None = None
) -> fal_client.AsyncClient:
    """A fal ``AsyncClient`` for fal.ai (``fal_key`` set: at its real hosts, or at
    ``fal_base_url`` when given) or, without a key, the local model server."""
    if fal_key is not None:
        if fal_base_url is None:
            _set_hosts(_REAL_HOSTS)
        else:
            _point_hosts_at(fal_base_url)
        return fal_client.AsyncClient(key=fal_key)
    _point_hosts_at(model_server_url)
    return fal_client.AsyncClient(key=LOCAL_KEY)


def _point_hosts_at(url: str) -> None:
    """Every fal_client host constant at ``url``, in fal's queue layout."""
    base = url.rstrip("/") + "/"
    check_no_backup_for(base)
    _set_hosts(
        {
            "QUEUE_URL_FORMAT": base,
            "RUN_URL_FORMAT": base,
            # fal_client appends paths to these two without a slash.
            "REST_URL": base.rstrip("/"),
            "CDN_URL": base.rstrip("/"),
        }
    )


def fal_client_from_settings(settings: Settings) -> fal_client.AsyncClient:
    """The client the settings ask for: fal.ai when ``FAL_KEY`` is set (at
    ``BITBUDDIES_FAL_BASE_URL`` when that is set), else local."""
    key = settings.fal_key.get_secret_value() if settings.fal_key else None
    return make_fal_client(
        fal_key=key,
        model_server_url=settings.model_server_url,
        fal_base_url=settings.fal_base_url if key is not None else None,
    )


def check_no_backup_for(url: str) -> None:
    """Fail loudly if fal_client would ever fail over ``url`` to another host."""
    fallback = fal_module._fallback_url(httpx.URL(url))
    if fallback is not None:
        raise RuntimeError(f"fal_client would redirect {url} to backup host {fallback.host}")


def _set_hosts(values: dict[str, str]) -> None:
    for name, value in values.items():
        setattr(fal_module, name, value)


async def read_result(client: fal_client.AsyncClient, app: str, request_id: str) -> dict[str, Any]:
    """The result of a job already known to be complete, in one request.

    ``AsyncClient.result`` first polls the status until COMPLETED, which costs a second
    round trip after our own poll activity has seen the job finish. Errors come out as
    the same ``FalClientHTTPError`` fal_client raises (400 while the job still runs).
    """
    handle = await client.get_handle(app, request_id)
    response = await handle.client.get(handle.response_url, timeout=fal_module.QUEUE_POLL_TIMEOUT)
    if response.is_error:
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        error_type = body.get("error_type") if isinstance(body, dict) else None
        raise fal_client.client.FalClientHTTPError(
            str(detail),
            response.status_code,
            dict(response.headers),
            response=response,
            error_type=error_type or response.headers.get("x-fal-error-type"),
        )
    result: dict[str, Any] = response.json()
    return result


async def cancel_job(client: fal_client.AsyncClient, app: str, request_id: str) -> bool:
    """Ask the provider to stop a job. True if it was stopped; False if the provider
    refused (400: already finished, 404: unknown), as retrying cannot change that.
    Server errors, timeouts and rate limits propagate, to be retried."""
    try:
        await client.cancel(app, request_id)
    except fal_client.client.FalClientHTTPError as err:
        if is_refusal(err):
            return False
        raise
    return True


def is_refusal(err: fal_client.client.FalClientHTTPError) -> bool:
    """A 4xx the provider would repeat on every retry (not a timeout, conflict or rate
    limit, which a later try may get past)."""
    return 400 <= err.status_code < 500 and err.status_code not in (408, 409, 429)
