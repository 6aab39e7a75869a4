"""TLS contexts from certificate files: DICOM (PS3.15 Annex B secure transport) and AMQP.

Built once at start-up; a missing or unreadable file fails loudly then, with the file
named. TLS 1.2 is the floor on both sides.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.errors import ConfigError


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    try:
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS files ({cert}, {key}, {ca}): {exc}") from None


def dicom_server(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """The SCP's context: our certificate; with ``ca``, peers must present a certificate
    that ``ca`` signed (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def amqp_client(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Context for amqps:// connections: the broker is verified against ``ca`` (or the
    system's CAs) and its host name; ``cert``/``key`` are our client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    return context
