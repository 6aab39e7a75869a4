"""TLS for DICOM (with and without client certificates) and for AMQP (amqps:// with CA
and client certificate), with certificates made at test time."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bridge.config import BridgeSettings
from bridge.errors import ConfigError
from tests.conftest import BridgeFactory
from tests.harness import LoopThread, Recorder, free_port


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if subject == "127.0.0.1":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("test CA", ca_key, None, ca=True)
    ca_path, _ = _write(directory, "ca", ca_cert, ca_key)
    signer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, signer, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    server_paths = _write(directory, "server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("MODALITY", client_key, signer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    client_paths = _write(directory, "client", client, client_key)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _issue("STRANGER", stranger_key, None, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger_paths = _write(directory, "stranger", stranger, stranger_key)
    return PKI(ca_path, *server_paths, *client_paths, *stranger_paths)


def _client_context(pki: PKI, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _echo(port: int, tls: tuple[ssl.SSLContext, str] | None) -> int | None:
    ae = AE("TLS-SCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM-BRIDGE", tls_args=tls)
        if not assoc.is_established:
            return None
        status = int(assoc.send_c_echo().Status)
        assoc.release()
        return status
    finally:
        ae.shutdown()


def test_dicom_tls_with_client_certificates(
    pki: PKI, make_bridge: BridgeFactory, recorder: Recorder
) -> None:
    harness = make_bridge(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_ca=str(pki.ca)
    )
    harness.wait_ready()
    signed = _client_context(pki, pki.client_cert, pki.client_key)
    assert _echo(harness.port, (signed, "127.0.0.1")) == 0
    # a certificate the CA did not sign, no certificate, or no TLS at all: no association
    stranger = _client_context(pki, pki.stranger_cert, pki.stranger_key)
    assert _echo(harness.port, (stranger, "127.0.0.1")) is None
    assert _echo(harness.port, (_client_context(pki, None, None), "127.0.0.1")) is None
    assert _echo(harness.port, None) is None
    assert len(recorder.requests) == 1


def test_dicom_tls_server_only(pki: PKI, make_bridge: BridgeFactory, recorder: Recorder) -> None:
    harness = make_bridge(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    harness.wait_ready()
    assert _echo(harness.port, (_client_context(pki, None, None), "127.0.0.1")) == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tls_cert": "/nonexistent.crt", "tls_key": "/nonexistent.key"}, "TLS files"),
        ({"tls_cert": "/x.crt"}, "tls_cert and tls_key go together"),
        ({"tls_ca": "/ca.crt"}, "tls_ca needs tls_cert"),
    ],
)
def test_bad_tls_settings_fail_at_start(fields: dict[str, str], message: str) -> None:
    from bridge.config import load

    with pytest.raises(ConfigError, match=message):
        load(BridgeSettings, **fields)


class TlsTerminator:
    """amqps:// in front of the plain broker; requires client certificates."""

    def __init__(self, pki: PKI) -> None:
        self.port = free_port()
        self._loop = LoopThread("tls-terminator")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        context.load_verify_locations(cafile=str(pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = self._loop.run(self._listen(context))

    async def _listen(self, context: ssl.SSLContext) -> asyncio.Server:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        return await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=context)

    def close(self) -> None:
        self.server.close()
        self._loop.stop()


@pytest.fixture
def terminator(pki: PKI, broker: None) -> Iterator[TlsTerminator]:
    proxy = TlsTerminator(pki)
    yield proxy
    proxy.close()


def test_amqps_with_ca_and_client_certificate(
    pki: PKI, terminator: TlsTerminator, make_bridge: BridgeFactory, recorder: Recorder
) -> None:
    harness = make_bridge(
        amqp_url=f"amqps://guest:guest@127.0.0.1:{terminator.port}/",
        amqp_ca=str(pki.ca),
        amqp_cert=str(pki.client_cert),
        amqp_key=str(pki.client_key),
    )
    harness.wait_ready(timeout=15)
    assert _echo(harness.port, None) == 0
    assert len(recorder.requests) == 1


@pytest.mark.slow
def test_amqps_without_client_certificate_is_refused(
    pki: PKI, terminator: TlsTerminator, make_bridge: BridgeFactory
) -> None:
    harness = make_bridge(
        amqp_url=f"amqps://guest:guest@127.0.0.1:{terminator.port}/", amqp_ca=str(pki.ca)
    )
    with pytest.raises(AssertionError, match="did not connect"):
        harness.wait_ready(timeout=3)
