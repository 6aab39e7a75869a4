"""``tail`` prints the requests crossing the exchange, live, with patient data masked."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import textwrap
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import aiormq
import click
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydicom.uid import UID

from bridge.cli.options import (
    EXIT_RUNTIME,
    fail,
    load_settings,
    quiet_amqp_libraries,
    settings_options,
)
from bridge.config import BrokerSettings
from bridge.protocol.model import topic_matches
from bridge.transport import broker, urls

# Attributes `tail` masks besides every PN value: those of PS3.15 Annex E Table E.1-1
# (Basic Application Level Confidentiality Profile) that describe the patient (Patient
# module and its relatives: IDs, birth date, address, telephone, age, sex, size...) or
# lead straight to them (accession, study, order, admission and procedure step IDs,
# institution). UIDs and dates other than birth dates stay visible: they are what one
# debugs with. Free text (descriptions, comments outside the patient) is not masked.
PHI_TAGS: dict[str, str] = {
    "00080050": "AccessionNumber",
    "00080080": "InstitutionName",
    "00080081": "InstitutionAddress",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100032": "PatientBirthTime",
    "00100033": "PatientBirthDateInAlternativeCalendar",
    "00100034": "PatientDeathDateInAlternativeCalendar",
    "00100040": "PatientSex",
    "00100050": "PatientInsurancePlanCodeSequence",
    "00101000": "OtherPatientIDs",
    "00101001": "OtherPatientNames",
    "00101002": "OtherPatientIDsSequence",
    "00101005": "PatientBirthName",
    "00101010": "PatientAge",
    "00101020": "PatientSize",
    "00101030": "PatientWeight",
    "00101040": "PatientAddress",
    "00101050": "InsurancePlanIdentification",
    "00101060": "PatientMotherBirthName",
    "00101080": "MilitaryRank",
    "00101081": "BranchOfService",
    "00101090": "MedicalRecordLocator",
    "00101100": "ReferencedPatientPhotoSequence",
    "00102000": "MedicalAlerts",
    "00102110": "Allergies",
    "00102150": "CountryOfResidence",
    "00102152": "RegionOfResidence",
    "00102154": "PatientTelephoneNumbers",
    "00102155": "PatientTelecomInformation",
    "00102160": "EthnicGroup",
    "00102180": "Occupation",
    "001021A0": "SmokingStatus",
    "001021B0": "AdditionalPatientHistory",
    "001021C0": "PregnancyStatus",
    "001021D0": "LastMenstrualDate",
    "001021F0": "PatientReligiousPreference",
    "00102203": "PatientSexNeutered",
    "00102297": "ResponsiblePerson",
    "00102299": "ResponsibleOrganization",
    "00104000": "PatientComments",
    "00200010": "StudyID",
    "00380010": "AdmissionID",
    "00380300": "CurrentPatientLocation",
    "00380400": "PatientInstitutionResidence",
    "00380500": "PatientState",
    "00400009": "ScheduledProcedureStepID",
    "00401001": "RequestedProcedureID",
    "00402016": "PlacerOrderNumberImagingServiceRequest",
    "00402017": "FillerOrderNumberImagingServiceRequest",
}
MASK = "***"
_HEX8 = frozenset("0123456789ABCDEFabcdef")


def _is_dataset(node: Mapping[str, Any]) -> bool:
    return bool(node) and all(
        len(key) == 8 and set(key) <= _HEX8 and isinstance(value, dict)
        for key, value in node.items()
    )


def _shown_binary(element: dict[str, Any], binary: bool) -> dict[str, Any]:
    inline = element.get("InlineBinary")
    if binary or not isinstance(inline, str) or len(inline) <= 64:
        return element
    return {**element, "InlineBinary": f"<{len(inline)} base64 characters; --binary shows them>"}


def _mask_dataset(dataset: Mapping[str, Any], show_phi: bool, binary: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for tag, element in dataset.items():
        vr = element.get("vr")
        if not show_phi and (vr == "PN" or tag.upper() in PHI_TAGS):
            masked = {"vr": vr} if vr else {}
            for key in ("Value", "InlineBinary", "BulkDataURI"):
                if key in element:
                    value = element[key]
                    masked[key] = [MASK] * len(value) if isinstance(value, list) else MASK
            shown[tag] = masked
        elif vr == "SQ" and isinstance(element.get("Value"), list):
            items = [
                _mask_dataset(item, show_phi, binary) if isinstance(item, dict) else item
                for item in element["Value"]
            ]
            shown[tag] = {**element, "Value": items}
        else:
            shown[tag] = _shown_binary(element, binary)
    return shown


def mask(document: Any, *, show_phi: bool = False, binary: bool = False) -> Any:
    """A copy of ``document`` for display: in every DICOM JSON dataset inside it (at any
    depth, sequences included), values of PN elements and of :data:`PHI_TAGS` become
    ``***`` unless ``show_phi``; long InlineBinary values are elided unless ``binary``."""
    if isinstance(document, dict):
        if _is_dataset(document):
            return _mask_dataset(document, show_phi, binary)
        return {
            key: mask(value, show_phi=show_phi, binary=binary) for key, value in document.items()
        }
    if isinstance(document, list):
        return [mask(item, show_phi=show_phi, binary=binary) for item in document]
    return document


def _sop_class_text(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return f"{name} [{uid}]" if name and name != uid else uid or "-"


class Delivered(Protocol):
    """What :func:`render` reads of a message (an aio-pika incoming message)."""

    @property
    def body(self) -> bytes: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...


def header_line(message: Delivered, document: Any) -> str:
    """time, service, SOP class, calling AE, DIMSE message id, correlation id."""
    correlation = message.correlation_id or "-"
    if isinstance(document, dict) and document.get("type") == "cancel":
        when = message.timestamp.astimezone(UTC) if message.timestamp else datetime.now(UTC)
        return (
            f"{when.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}  cancel {document.get('service', '?')}"
            f"  {message.routing_key}  correlation-id {document.get('id', correlation)}"
        )
    if not isinstance(document, dict):
        return f"{message.routing_key}  ({len(message.body)} bytes, not a JSON object)"
    association = document.get("association") or {}
    if str(document.get("type", "")).startswith("association-"):
        return "  ".join(
            [
                str(document.get("timestamp", "-")),
                f"event {document['type']}",
                f"from {association.get('calling_ae') or '-'}",
                f"association-id {association.get('id', '-')}",
            ]
        )
    request = document.get("request") or {}
    return "  ".join(
        [
            str(document.get("timestamp", "-")),
            str(document.get("service", "?")),
            _sop_class_text(str(document.get("sop_class_uid", ""))),
            f"from {association.get('calling_ae') or '-'}",
            f"message-id {request.get('message_id', '-')}",
            f"correlation-id {correlation}",
        ]
    )


def render(message: Delivered, *, compact: bool, show_phi: bool, binary: bool) -> str:
    try:
        document = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return header_line(message, None)
    shown = mask(document, show_phi=show_phi, binary=binary)
    options = 0 if compact else orjson.OPT_INDENT_2
    body = orjson.dumps(shown, option=options).decode()
    return f"{header_line(message, document)}\n{body}" + ("" if compact else "\n")


def tail_bindings(binding: str) -> list[str]:
    """BINDING, plus the cancel notices of the requests it matches (``cancel.`` in front)
    unless it matches those already (``#`` does)."""
    keys = [binding]
    if not topic_matches(binding, "cancel.c-find.1_2.AE"):
        keys.append(f"cancel.{binding}")
    return keys


_PHI_LIST = "\n".join("  " + line for line in textwrap.wrap(", ".join(PHI_TAGS.values()), 76))

TAIL_EPILOG = f"""\b
Each message gets one line (time, service, SOP class, calling AE, DIMSE message ID,
correlation ID), then its JSON. Values of PN elements and of these attributes are
masked unless --show-phi (in sequences too; PS3.15 Annex E patient attributes):
{_PHI_LIST}

\b
The tail queue gets a copy of each request: consumers still get theirs. But while it
runs, a request no consumer is bound for is routed to it instead of failing at once,
so that peer waits --reply-timeout for its failure status.

\b
Examples:
  dicom-bridge tail                          # everything, until Ctrl-C
  dicom-bridge tail 'c-store.*.CT_SCANNER_1' --count 5
  dicom-bridge tail 'n-action.#' --compact > n-action.log
  dicom-bridge tail --show-phi --exchange dicom-test"""


async def _tail(
    settings: BrokerSettings,
    binding: str,
    *,
    count: int | None,
    compact: bool,
    show_phi: bool,
    binary: bool,
) -> int:
    target = settings.redacted_url()
    quiet_amqp_libraries(settings.log_level)
    try:
        connection = await broker.connect(
            settings.amqp_url, purpose="tail", timeout=10.0, ssl_context=settings.amqp_ssl_context()
        )
    except broker.CONNECT_ERRORS as exc:
        reason = broker.failure_reason(exc, urls.password(settings.amqp_url))
        fail(EXIT_RUNTIME, f"cannot reach the broker at {target}: {reason}")
    seen = 0
    keys = tail_bindings(binding)
    try:
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=100)
            exchange = await broker.declare_exchange(channel, settings.exchange)
            name = f"dicom-bridge.tail.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
            # Bounded, dropping the oldest: a slow terminal never makes the broker refuse
            # (and so the bridge fail) a request.
            queue = await channel.declare_queue(
                name,
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": 10000, "x-overflow": "drop-head"},
            )
            for key in keys:
                await queue.bind(exchange, key)
        except aiormq.exceptions.AMQPError as exc:
            fail(
                EXIT_RUNTIME,
                f"cannot tail exchange {settings.exchange!r}: {broker.channel_error_text(exc)}",
            )
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        await queue.consume(on_message, no_ack=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        click.echo(
            f"tailing exchange {settings.exchange!r} at {target}, binding "
            f"{' and '.join(repr(k) for k in keys)}; Ctrl-C stops",
            err=True,
        )
        click.echo(
            "note: this is a copy, consumers still get every request; but while it runs, "
            "a request no consumer is bound for comes here instead of failing at once "
            "(its peer waits --reply-timeout)",
            err=True,
        )
        if show_phi:
            click.echo("note: --show-phi: patient data is shown unmasked", err=True)
        lost = asyncio.ensure_future(connection.closed())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while count is None or seen < count:
                getting = asyncio.ensure_future(inbox.get())
                await asyncio.wait({getting, lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    if lost.done() and not stopped.done():
                        fail(EXIT_RUNTIME, f"lost the connection to the broker at {target}")
                    break
                text = render(getting.result(), compact=compact, show_phi=show_phi, binary=binary)
                click.echo(text)
                sys.stdout.flush()
                seen += 1
        finally:
            lost.cancel()
            stopped.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)
    click.echo(f"stopped after {seen} message{'' if seen == 1 else 's'}", err=True)
    return 0


@click.command("tail", epilog=TAIL_EPILOG)
@click.argument("binding", default="#")
@settings_options(BrokerSettings)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@click.option("--compact", is_flag=True, help="One line of JSON per message.")
@click.option("--show-phi", is_flag=True, help="Do not mask patient data.")
@click.option("--binary", is_flag=True, help="Show long InlineBinary values in full.")
def tail(
    binding: str,
    count: int | None,
    compact: bool,
    show_phi: bool,
    binary: bool,
    **flags: Any,
) -> None:
    """Print the requests (and cancel notices) published to the exchange, live.

    BINDING is a topic pattern on the routing key <service>.<sop class>.<calling AE>
    (default '#': everything).
    """
    settings = load_settings(BrokerSettings, flags)
    code = asyncio.run(
        _tail(
            settings,
            binding,
            count=count,
            compact=compact,
            show_phi=show_phi,
            binary=binary,
        )
    )
    sys.exit(code)
