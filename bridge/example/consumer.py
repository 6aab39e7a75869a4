"""The example consumer: a tiny PACS behind the bridge.

Started with ``dicom-bridge example-consumer``. It logs one line per request, keeps what
it receives by C-STORE in ``--data-dir`` with an in-memory index (:mod:`bridge.example.qrindex`),
answers C-FIND from that index and C-GET/C-MOVE with the stored files (paths: the SDK
sends them as Part 10 files, and the bridge passes their bytes on), and answers every
other service with Success. An N-CREATE without an Affected SOP Instance UID gets a fresh
one, as PS3.7 10.1.5.1.4 requires of the SCP. The README's quick start uses it for
store -> find -> get, docs/consumers.md for move.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bridge.config import ConsumerSettings
from bridge.example.qrindex import Index, QueryError, QueryModel, query_model, record_from_json
from bridge.ops import logging as bridge_logging
from bridge.protocol.model import Service
from bridge.sdk.consumer import Consumer, Request, Response

log = logging.getLogger("bridge.example")


def _log(request: Request) -> None:
    # Identifiers only: UIDs and AE titles, never dataset values (no patient data at INFO).
    log.info(
        "%s %s from %s, message %s",
        request.service.dimse_name,
        request.sop_class_uid,
        request.calling_ae or "-",
        request.command.get("message_id"),
        extra={"correlation_id": request.id},
    )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("envelope: %s", orjson.dumps(request.envelope).decode())


def _model(request: Request) -> QueryModel:
    model = query_model(request.sop_class_uid)
    if model is None:
        raise QueryError(0xC000, "information model not supported by the example")
    return model


def _refusal(request: Request, exc: QueryError) -> Response:
    # 0x0122 (SOP class not supported) is a C-MOVE status only; C-FIND and C-GET say
    # "unable to process" instead.
    allowed = request.service.spec.statuses.allows(exc.status)
    return Response(exc.status if allowed else 0xC000, error_comment=exc.comment)


class ExampleConsumer:
    """Handlers for every service, around one index."""

    def __init__(self, data_dir: Path, *, fsync: bool = False) -> None:
        self.index = Index(data_dir)
        self.fsync = fsync

    def store(self, request: Request) -> Response:
        """Keep the received bytes (the Part 10 file the bridge made, saved without
        decoding it) and index the instance from the envelope's JSON."""
        _log(request)
        document = request.envelope.get("dataset")
        if document is None or request.envelope.get("part10") is None:
            return Response(0xA900, error_comment="C-STORE without a data set")
        try:
            syntax = str(request.envelope["context"]["transfer_syntax"])
            record = record_from_json(document, syntax, Path())
            path = self.index.path_for(record.sop_instance_uid)
            request.save(path, fsync=self.fsync)
            self.index.put(dataclasses.replace(record, path=path))
        except ValueError as exc:
            return Response(0xA900, error_comment=str(exc)[:64])
        except OSError as exc:
            log.error("cannot store instance: %s", exc.strerror)
            return Response(0xA700, error_comment="out of resources: cannot write")
        return Response()

    def find(self, request: Request) -> Iterator[Dataset | Response]:
        _log(request)
        identifier = request.identifier
        if identifier is None:
            yield Response(0xA900, error_comment="C-FIND without an identifier")
            return
        try:
            yield from self.index.find(identifier, _model(request))
        except QueryError as exc:
            yield _refusal(request, exc)

    def retrieve(self, request: Request) -> list[Path] | Response:
        _log(request)
        identifier = request.identifier
        if identifier is None:
            return Response(0xA900, error_comment="no identifier")
        try:
            return self.index.retrieve(identifier, _model(request))
        except QueryError as exc:
            return _refusal(request, exc)

    def other(self, request: Request) -> Response:
        _log(request)
        if request.service is Service.N_CREATE and not request.command.get(
            "affected_sop_instance_uid"
        ):
            return Response(affected_sop_instance_uid=str(generate_uid()))
        return Response()


def build(settings: ConsumerSettings, *, exclusive: bool = False) -> Consumer:
    """The example consumer; ``exclusive`` gives a queue that vanishes with it (tests)."""
    consumer = Consumer(
        settings.amqp_url,
        settings.exchange,
        settings.queue,
        prefetch=settings.prefetch,
        queue_type=settings.queue_type,
        exclusive=exclusive,
        bulk_dir=settings.bulk_dir,
        bulk_threshold=settings.bulk_threshold,
        ssl_context=settings.amqp_ssl_context(),
    )
    example = ExampleConsumer(settings.data_dir)
    for service in Service:
        if service is Service.C_STORE:
            consumer.add(service, example.store)
        elif service is Service.C_FIND:
            consumer.add(service, example.find)
        elif service in (Service.C_GET, Service.C_MOVE):
            consumer.add(service, example.retrieve)
        else:
            consumer.add(service, example.other)
    log.info("example store at %s holds %d instances", settings.data_dir, len(example.index))
    return consumer


def worker(settings: ConsumerSettings) -> Consumer:
    """:func:`build` in a worker process of ``example-consumer --processes N``
    (:func:`bridge.sdk.processes.run_processes`): a spawned process starts without the
    parent's logging set-up, so this sets it up from ``settings`` first."""
    bridge_logging.configure(settings.log_level, settings.log_format)
    return build(settings)
