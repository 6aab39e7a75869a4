"""The example consumer: logs each request and answers Success.

Started with ``dicom-bridge example-consumer``; the README's quick start uses it for a
full round trip. It answers every single-reply service; an N-CREATE without an Affected
SOP Instance UID gets a fresh one, as PS3.7 10.1.5.1.4 requires of the SCP.
"""

from __future__ import annotations

import logging

import orjson
from pydicom.uid import generate_uid

from bridge.config import ConsumerSettings
from bridge.consumer import Consumer, Request, Response
from bridge.model import SINGLE_REPLY_SERVICES, Service

log = logging.getLogger("bridge.example")


def answer(request: Request) -> Response:
    command = request.command
    # Identifiers only: UIDs and AE titles, never dataset values (no patient data at INFO).
    log.info(
        "%s %s from %s, message %s",
        request.service.dimse_name,
        request.sop_class_uid,
        request.calling_ae or "-",
        command.get("message_id"),
        extra={"correlation_id": request.id},
    )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("envelope: %s", orjson.dumps(request.envelope).decode())
    if request.service is Service.N_CREATE and not command.get("affected_sop_instance_uid"):
        return Response(affected_sop_instance_uid=str(generate_uid()))
    return Response()


def build(settings: ConsumerSettings) -> Consumer:
    consumer = Consumer(
        settings.amqp_url, settings.exchange, settings.queue, prefetch=settings.prefetch
    )
    for service in SINGLE_REPLY_SERVICES:
        consumer.add(service, answer)
    return consumer
