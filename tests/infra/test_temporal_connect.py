"""Reaching a Temporal behind TLS (Temporal Cloud's way): infra/temporal.py's connect()
with a client certificate (mTLS) or an API key, from the settings that name them.

The dev server speaks plain gRPC only, so a TLS front of our own stands before the
session's: it terminates TLS with a test CA's certificate (requiring a client
certificate from that CA, for mTLS) and passes the HTTP/2 stream on unchanged. A call
that reaches the server through it went over TLS, with the identity it demanded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from infra.settings import Settings
from infra.temporal import connect, tls_config
from tests.conftest import Stack

SERVER_NAME = "temporal.test"  # the name on the front's certificate, not its address


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test CA", ca_key, None, ca=True)
    server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    server = _issue(SERVER_NAME, server_key, (ca, ca_key), server=True)
    client = _issue("bitbuddies-worker", client_key, (ca, ca_key))
    other_ca = _issue("another CA", other_key, None, ca=True)
    return Pki(
        ca=_write(folder / "ca.pem", ca, None),
        server_cert=_write(folder / "server.pem", server, server_key),
        server_key=folder / "server.key",
        client_cert=_write(folder / "client.pem", client, client_key),
        client_key=folder / "client.key",
        other_ca=_write(folder / "other-ca.pem", other_ca, None),
    )


@dataclass
class TlsFront:
    address: str
    clients: list[str] = field(default_factory=list)  # each handshake's client certificate CN


@contextlib.asynccontextmanager
async def tls_front(pki: Pki, upstream_port: int, *, mtls: bool) -> AsyncIterator[TlsFront]:
    """TLS (HTTP/2 by ALPN, as gRPC asks) on a free port, passed through to the server."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED if mtls else ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        names = [
            value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        front.clients.append(names[0] if names else "")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        both = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        tasks.update(both)
        await asyncio.gather(*both, return_exceptions=True)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    front = TlsFront(address=f"127.0.0.1:{port}")
    try:
        yield front
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _settings(address: str, **fields: object) -> Settings:
    return Settings(temporal_address=address, temporal_namespace="default", **fields)  # type: ignore[arg-type]


async def _reaches_server(settings: Settings) -> None:
    client = await connect(settings)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version


async def test_mtls_presents_the_client_certificate_and_verifies_the_server(
    stack: Stack, pki: Pki
) -> None:
    async with tls_front(pki, stack.cfg.ports.temporal, mtls=True) as front:
        settings = _settings(
            front.address,
            temporal_tls_client_cert_path=pki.client_cert,
            temporal_tls_client_key_path=pki.client_key,
            temporal_tls_server_ca_cert_path=pki.ca,
            temporal_tls_server_name=SERVER_NAME,
        )
        await asyncio.wait_for(_reaches_server(settings), 30)
        assert "bitbuddies-worker" in front.clients

        # Without the certificate the front refuses the handshake: nothing gets through.
        no_identity = _settings(
            front.address,
            temporal_tls_server_ca_cert_path=pki.ca,
            temporal_tls_server_name=SERVER_NAME,
        )
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(_reaches_server(no_identity), 30)
        # Nor does a client that does not trust the server's CA.
        wrong_ca = _settings(
            front.address,
            temporal_tls_client_cert_path=pki.client_cert,
            temporal_tls_client_key_path=pki.client_key,
            temporal_tls_server_ca_cert_path=pki.other_ca,
            temporal_tls_server_name=SERVER_NAME,
        )
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(_reaches_server(wrong_ca), 30)


async def test_an_api_key_goes_over_tls(stack: Stack, pki: Pki) -> None:
    async with tls_front(pki, stack.cfg.ports.temporal, mtls=False) as front:
        settings = _settings(
            front.address,
            temporal_api_key="test-api-key",
            temporal_tls_server_ca_cert_path=pki.ca,
            temporal_tls_server_name=SERVER_NAME,
        )
        client = await asyncio.wait_for(connect(settings), 30)
        await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert client.api_key == "test-api-key"  # sent as "authorization: Bearer ..."
        assert front.clients  # it went through the TLS front
    # Plain gRPC with no TLS setting at all, as locally.
    assert tls_config(_settings(stack.cfg.temporal_address)) is False
    assert tls_config(_settings("x:7233", temporal_api_key="k")) is True


def test_half_an_mtls_pair_or_a_missing_file_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="TEMPORAL_TLS_CLIENT_KEY_PATH is not"):
        _settings("x:7233", temporal_tls_client_cert_path=pki.client_cert)
    with pytest.raises(ValidationError, match="TEMPORAL_TLS_CLIENT_CERT_PATH is not"):
        _settings("x:7233", temporal_tls_client_key_path=pki.client_key)
    with pytest.raises(ValidationError, match="TEMPORAL_TLS_SERVER_CA_CERT_PATH: no such file"):
        _settings("x:7233", temporal_tls_server_ca_cert_path=tmp_path / "missing.pem")
    # Blank, as an empty line of .env or key of a Secret leaves them: not set.
    assert (
        tls_config(_settings("x:7233", temporal_tls_client_cert_path="", temporal_api_key=""))
        is False
    )
