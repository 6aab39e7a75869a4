"""Settings from ``BRIDGE_*`` environment variables and command-line flags.

Every field is one flag (``--reply-timeout``) and one variable (``BRIDGE_REPLY_TIMEOUT``);
flags win over variables, variables over defaults. Invalid settings fail at start-up with a
message naming the setting, before anything listens or connects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge import sopclasses
from bridge.aetable import AETable
from bridge.errors import ConfigError
from bridge.guard import CallingPolicy
from bridge.transport.amqp import redact

S = TypeVar("S", bound="BrokerSettings")

_AE_FORBIDDEN = set("\\") | {chr(c) for c in range(32)} | {chr(127)}


def _cache_dir() -> Path:
    # Per user, not /tmp: bulk data is patient data.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


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

    def redacted_url(self) -> str:
        return redact(self.amqp_url)


class BridgeSettings(BrokerSettings):
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
        "n-services), keywords (CTImageStorage) or UIDs.",
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
    ae_table: Path | None = Field(
        None,
        description="JSON or YAML file mapping AE titles to host and port, for C-MOVE "
        "destinations.",
    )

    @field_validator("sop_classes", "allowed_calling_aes", mode="before")
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
        if not value or _AE_FORBIDDEN & set(value):
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
        description="Queue the consumer declares and binds (a quorum queue).",
    )
    prefetch: int = Field(32, ge=1, le=65535, description="Requests handled concurrently.")
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
