"""Settings from ``BRIDGE_*`` environment variables and command-line flags.

Every field is one flag (``--reply-timeout``) and one variable (``BRIDGE_REPLY_TIMEOUT``);
flags win over variables, variables over defaults. Invalid settings fail at start-up with a
message naming the setting, before anything listens or connects.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.errors import ConfigError
from bridge.ops import tls
from bridge.protocol import sopclasses
from bridge.protocol.values import fits_ae_title, is_ae_title
from bridge.transport.urls import redact

S = TypeVar("S", bound="BrokerSettings")

# Services whose answer needs nothing from a consumer: no response dataset, no instance UID.
PUBLISH_ONLY_SERVICES = ("c-echo", "c-store", "n-event-report", "n-set", "n-action", "n-delete")


def _cache_dir() -> Path:
    # Per user, not /tmp: bulk data is patient data.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# -- the AE table ------------------------------------------------------------------------
# The AE table: where a C-MOVE destination AE title lives (title -> host, port).
#
# Read once at start-up from JSON or YAML, given with ``--ae-table FILE``:
#
#     {"WORKSTATION1": {"host": "10.0.0.7", "port": 11112},
#      "ARCHIVE":      {"host": "archive.example", "port": 104}}


class Destination(BaseModel):
    """A peer the bridge can open an association to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class AETable:
    """AE titles (stripped of padding) to destinations."""

    def __init__(self, entries: Mapping[str, Destination] | None = None) -> None:
        self._entries = {title.strip(): dest for title, dest in (entries or {}).items()}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ae_title: str) -> Destination | None:
        return self._entries.get(ae_title.strip())

    @classmethod
    def load(cls, path: Path) -> AETable:
        """Read ``path`` (``.json``, or YAML otherwise). Raises ConfigError naming the
        problem: missing file, bad syntax, an entry without host or port."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"AE table {path}: {exc.strerror or exc}") from None
        try:
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"AE table {path}: not valid JSON/YAML ({exc})") from None
        if not isinstance(document, dict):
            raise ConfigError(f"AE table {path}: expected a mapping of AE title to host/port")
        entries: dict[str, Destination] = {}
        for title, value in document.items():
            if not isinstance(title, str) or not fits_ae_title(title.strip()):
                raise ConfigError(f"AE table {path}: {title!r} is not an AE title")
            try:
                entries[title] = Destination.model_validate(value)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'entry'} {e['msg']}" for e in exc.errors()
                )
                raise ConfigError(f"AE table {path}: {title}: {problems}") from None
        return cls(entries)


# -- calling AE titles allowed -----------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CallingPolicy:
    """Calling AE titles allowed; ``None`` networks means from any address."""

    entries: dict[str, tuple[Network, ...] | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Iterable[str]) -> CallingPolicy:
        """Entries ``TITLE`` or ``TITLE@network|network`` (an address or CIDR block).
        Raises ConfigError naming the bad entry."""
        entries: dict[str, tuple[Network, ...] | None] = {}
        for raw in items:
            title, _, nets = raw.strip().partition("@")
            title = title.strip()
            if not fits_ae_title(title) or "\\" in title:
                raise ConfigError(f"allowed calling AE {raw!r}: not an AE title")
            if not nets:
                entries[title] = None  # from any address
                continue
            try:
                networks = [ipaddress.ip_network(n.strip(), strict=False) for n in nets.split("|")]
            except ValueError:
                raise ConfigError(f"allowed calling AE {raw!r}: bad address or network") from None
            if title in entries and entries[title] is None:
                continue  # already allowed from anywhere
            entries[title] = (*(entries.get(title) or ()), *networks)
        return cls(entries)

    def allows(self, title: str, address: str | None) -> bool:
        if not self.entries:
            return True
        if title not in self.entries:
            return False
        networks = self.entries[title]
        if networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in networks)


class BrokerSettings(BaseSettings):
    """What both the bridge and a consumer need to reach the broker."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="forbid", frozen=True)

    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL (amqp:// or amqps://); the password is never logged.",
    )
    exchange: str = Field(
        "dicom",
        min_length=1,
        max_length=255,
        description="Topic exchange requests are published to (declared if missing).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log format: text for people, json for log pipelines."
    )
    bulk_dir: Path = Field(
        default_factory=lambda: _cache_dir() / "dicom-bridge" / "bulk",
        description="Claim-check directory shared by the bridge and its consumers (same "
        "path everywhere); bulk data above --bulk-threshold travels through it.",
    )
    bulk_threshold: int = Field(
        1 << 20,
        ge=0,
        description="Binary values larger than this many bytes go to the claim-check "
        "directory instead of into the message.",
    )
    max_message_size: int = Field(
        16 << 20,
        ge=4096,
        description="Largest message to publish, in bytes: the broker's max_message_size "
        "(16 MiB by default on RabbitMQ 4, 128 MiB on 3.x).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    amqp_ca: Path | None = Field(
        None, description="CA file to verify the broker's certificate (amqps://)."
    )
    amqp_cert: Path | None = Field(None, description="Client certificate for amqps://.")
    amqp_key: Path | None = Field(None, description="Key of --amqp-cert.")

    def redacted_url(self) -> str:
        return redact(self.amqp_url)

    def amqp_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for amqps:// URLs (None for amqp://)."""
        if not self.amqp_url.startswith("amqps://"):
            return None
        return tls.amqp_client(self.amqp_ca, self.amqp_cert, self.amqp_key)


class CommandOptions(BaseModel):
    """Options of the commander: the bridge as an SCU (``docs/commands.md``)."""

    commands: bool = Field(
        True, description="Consume commands and perform them as an SCU (docs/commands.md)."
    )
    commands_queue: str = Field(
        "dicom-bridge.commands",
        min_length=1,
        max_length=255,
        description="Quorum queue of commands, bound to the exchange with "
        "--commands-binding (declared if missing).",
    )
    commands_binding: str = Field(
        "command.#",
        min_length=1,
        description="Binding of the commands queue: commands are published with routing "
        "key command.<service>.<destination AE>.",
    )
    command_dead_letter_exchange: str = Field(
        "dicom-bridge.dead-letter",
        min_length=1,
        max_length=255,
        description="Fanout exchange that receives commands that can never succeed.",
    )
    command_dead_letter_queue: str = Field(
        "dicom-bridge.commands.dead-letter",
        max_length=255,
        description="Queue bound to the dead-letter exchange (empty: declare none).",
    )
    command_delivery_limit: int = Field(
        5,
        ge=1,
        le=1000,
        description="Deliveries of one command before the broker dead-letters it (a "
        "command that keeps crashing the bridge).",
    )
    command_concurrency: int = Field(
        16, ge=1, le=1024, description="Commands performed at once, all destinations."
    )
    command_pool_size: int = Field(
        4, ge=1, le=256, description="Associations at once per destination."
    )
    command_idle_timeout: float = Field(
        10.0, gt=0, description="Seconds an idle pooled association stays open."
    )
    command_retries: int = Field(
        3, ge=0, le=20, description="Connection attempts after the first one, per command."
    )
    command_retry_delay: float = Field(
        0.5, gt=0, description="Seconds before the first connection retry (doubling)."
    )
    command_retry_max_delay: float = Field(
        5.0, gt=0, description="Longest wait between connection retries, in seconds."
    )
    command_acse_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the peer's association answer."
    )
    command_dimse_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for the peer's DIMSE response."
    )
    command_network_timeout: float = Field(
        60.0, gt=0, description="Seconds without traffic before pynetdicom aborts."
    )
    command_drain_timeout: float = Field(
        10.0, ge=0, description="On stop: seconds to let commands in progress finish."
    )

    @model_validator(mode="after")
    def _command_timeouts(self) -> CommandOptions:
        if self.command_idle_timeout >= self.command_network_timeout:
            raise ValueError("command_idle_timeout must be below command_network_timeout")
        if self.command_retry_delay > self.command_retry_max_delay:
            raise ValueError("command_retry_delay must not exceed command_retry_max_delay")
        return self


class BridgeSettings(BrokerSettings, CommandOptions):
    """Settings of ``dicom-bridge serve``."""

    host: str = Field("0.0.0.0", description="Address the DICOM SCP listens on.")
    port: int = Field(11112, ge=0, le=65535, description="DICOM port (0 picks a free one).")
    ae_title: str = Field(
        "DICOM-BRIDGE", min_length=1, max_length=16, description="The SCP's AE title."
    )
    require_called_ae: bool = Field(
        False,
        description="Reject associations whose Called AE Title is not --ae-title.",
    )
    reply_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to wait for a consumer's reply before answering the peer "
        "with a failure status; must be below --dimse-timeout and --network-timeout.",
    )
    publish_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for the broker to confirm a publish."
    )
    sop_classes: Annotated[tuple[str, ...], NoDecode] = Field(
        sopclasses.DEFAULT_SELECTION,
        description="Comma-separated SOP classes to accept: groups (verification, storage, "
        "n-services, query-retrieve), keywords (CTImageStorage) or UIDs.",
    )
    max_associations: int = Field(
        64, ge=1, le=10000, description="Concurrent associations accepted."
    )
    allowed_calling_aes: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated calling AE titles allowed to associate, each "
        "optionally bound to source networks: CT1,MR2@10.0.0.0/24|10.0.1.7 (empty: any).",
    )
    max_dataset_size: int = Field(
        1 << 30,
        ge=0,
        description="Largest DIMSE message (command and data set) a peer may send, in "
        "bytes; a larger one aborts the association (0: no limit).",
    )
    receive_to_disk: bool = Field(
        True,
        description="Receive C-STORE data sets larger than --bulk-threshold into files in "
        "--receive-dir instead of memory; values above --bulk-threshold are then copied "
        "from there to the claim-check directory, so a large instance never sits in the "
        "bridge's memory. Applies to the whole process (pynetdicom has one switch for it).",
    )
    receive_dir: Path | None = Field(
        None,
        description="Directory of the C-STORE data sets being received, which needs room "
        "for those of every open association (default: .receiving in --bulk-dir: the same "
        "filesystem, where the copy to the claim-check directory stays in the kernel).",
    )
    tcp_tuning: bool = Field(
        True,
        description="Set TCP_NODELAY and TCP_QUICKACK on DICOM connections (peers that "
        "write command and data set separately are served ~10x faster).",
    )
    event_reactors: bool = Field(
        True,
        description="Run each DICOM association's pynetdicom threads event-driven "
        "instead of polling every 1 ms (bridge._pynetdicom.reactor): less CPU per open association "
        "and no timer ticks in the request path.",
    )
    max_request_rate: float = Field(
        1000.0,
        ge=0,
        description="Requests per second one association may send; more are answered "
        "with the service's 'out of resources' status (0: no limit).",
    )
    max_pdu: int = Field(
        65536,
        ge=0,
        description="Maximum PDU length the SCP receives, in bytes (0: unlimited).",
    )
    acse_timeout: float = Field(30.0, gt=0, description="Seconds to wait for ACSE messages.")
    dimse_timeout: float = Field(30.0, gt=0, description="Seconds to wait for DIMSE messages.")
    network_timeout: float = Field(
        60.0, gt=0, description="Seconds an idle association stays open before it is aborted."
    )
    tls_cert: Path | None = Field(
        None, description="Certificate (PEM) for DICOM TLS; with --tls-key, TLS is on."
    )
    tls_key: Path | None = Field(None, description="Private key of --tls-cert.")
    tls_ca: Path | None = Field(
        None,
        description="CA file: peers must present a certificate it signed (mutual TLS).",
    )
    http_host: str = Field("0.0.0.0", description="Address of the HTTP port.")
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="HTTP port serving /healthz, /readyz and /metrics (0 picks a free one).",
    )
    drain_timeout: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM: seconds to wait for peers to finish their associations "
        "before the rest are answered 'shutting down' and aborted.",
    )
    publish_only: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated services answered Success as soon as the broker (or "
        "the disk spool) holds the request, without waiting for a consumer: c-echo, "
        "c-store, n-event-report, n-set, n-action, n-delete.",
    )
    association_events: bool = Field(
        True,
        description="Publish association accepted/released/aborted/rejected events "
        "(routing key event.association-<outcome>.<calling AE>).",
    )
    spool_dir: Path = Field(
        default_factory=lambda: _cache_dir() / "dicom-bridge" / "spool",
        description="Disk spool for events and publish-only requests while the broker is "
        "away; replayed when it returns (keep it on a persistent volume).",
    )
    spool_max_bytes: int = Field(
        1 << 30, ge=0, description="Largest size of the disk spool, in bytes."
    )
    ae_table: Path | None = Field(
        None,
        description="JSON or YAML file mapping AE titles to host and port, for C-MOVE "
        "destinations.",
    )

    @field_validator("publish_only")
    @classmethod
    def _publish_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in PUBLISH_ONLY_SERVICES:
                choices = ", ".join(PUBLISH_ONLY_SERVICES)
                raise ValueError(f"{name!r} cannot be publish-only: choose from {choices}")
        return value

    @field_validator("sop_classes", "allowed_calling_aes", "publish_only", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _calling_aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            CallingPolicy.parse(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not is_ae_title(value):
            raise ValueError("must be 1-16 characters without backslash or control characters")
        return value

    @field_validator("sop_classes")
    @classmethod
    def _sop_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            sopclasses.resolve(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _deadlines(self) -> BridgeSettings:
        # The peer must hear from us before its own DIMSE timeout, and the association
        # must not be aborted as idle while a reply is awaited.
        if self.reply_timeout >= self.dimse_timeout:
            raise ValueError("reply_timeout must be below dimse_timeout")
        if self.reply_timeout >= self.network_timeout:
            raise ValueError("reply_timeout must be below network_timeout")
        return self

    @field_validator("ae_table")
    @classmethod
    def _ae_table(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                AETable.load(value)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> BridgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key")
        try:
            self.dicom_ssl_context()
            self.amqp_ssl_context()
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self

    @property
    def receive_directory(self) -> Path:
        """Where C-STORE data sets are received (``--receive-dir`` or its default)."""
        return self.receive_dir or self.bulk_dir / ".receiving"

    def dicom_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return tls.dicom_server(self.tls_cert, self.tls_key, self.tls_ca)

    @property
    def sop_class_uids(self) -> list[str]:
        return sopclasses.resolve(self.sop_classes)

    def load_ae_table(self) -> AETable:
        return AETable.load(self.ae_table) if self.ae_table is not None else AETable()


class ConsumerSettings(BrokerSettings):
    """Settings of ``dicom-bridge example-consumer``."""

    queue: str = Field(
        "dicom-bridge.example-consumer",
        min_length=1,
        max_length=255,
        description="Queue the consumer declares and binds.",
    )
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum",
        description="Type of the queue: quorum (replicated, delivery limits; every "
        "request written to disk) or classic (one node, in memory; a broker round trip "
        "about 0.8 ms shorter). Requests that wait for a reply are worthless after their "
        "deadline; publish-only requests must survive a broker restart: use quorum.",
    )
    prefetch: int = Field(32, ge=1, le=65535, description="Requests handled concurrently.")
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Consumer processes on the queue, each with its own broker connection "
        "and --prefetch window, for handlers that spend CPU in Python (1: this process).",
    )
    data_dir: Path = Field(
        default_factory=lambda: _cache_dir() / "dicom-bridge" / "example-store",
        description="Where the example consumer keeps the instances it receives.",
    )


def load(kind: type[S], **flags: Any) -> S:
    """Build settings from flags (None means not given) over ``BRIDGE_*`` variables.

    Raises :class:`~bridge.errors.ConfigError` listing every invalid setting.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return kind(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
