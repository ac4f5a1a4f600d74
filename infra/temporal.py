"""One way to reach Temporal, shared by the API, the worker and the tests.

Locally (and a self-hosted server on a private network) the connection is plain gRPC.
Temporal Cloud needs TLS and one of two identities: a client certificate and its key
(mTLS, the namespace trusting the CA that issued it) or an API key, which the SDK sends as
``Authorization: Bearer <key>`` and which implies TLS. Both come from settings
(``TEMPORAL_TLS*``, ``TEMPORAL_API_KEY``: infra/settings.py, which refuses half an mTLS
pair at start).
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from infra.settings import Settings
from infra.telemetry import ClientTracing


def tls_config(settings: Settings) -> TLSConfig | bool:
    """What ``Client.connect(tls=...)`` gets: False (plain), True (TLS with the system's
    roots, nothing else to present) or the TLSConfig of the files and names set."""
    if not settings.temporal_uses_tls:
        return False
    cert, key = settings.temporal_tls_client_cert_path, settings.temporal_tls_client_key_path
    ca = settings.temporal_tls_server_ca_cert_path
    name = settings.temporal_tls_server_name
    if cert is None and key is None and ca is None and name is None:
        return True
    return TLSConfig(
        client_cert=cert.read_bytes() if cert else None,
        client_private_key=key.read_bytes() if key else None,
        server_root_ca_cert=ca.read_bytes() if ca else None,
        domain=name,
    )


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """``runtime``: the SDK runtime to run on (a worker's, which exports the SDK's metrics:
    infra/metrics.py); the SDK's default one when None."""
    api_key = settings.temporal_api_key
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=tls_config(settings),
        runtime=runtime,
        # Client spans (StartWorkflow, ...) whose trace the workers continue: infra/telemetry.py.
        interceptors=[ClientTracing()],
    )
