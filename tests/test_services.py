"""Every bridged service, end to end: pynetdicom SCU -> bridge -> RabbitMQ -> SDK consumer
-> reply -> bridge -> SCU. Status, reply dataset and status elements must arrive exactly,
and every envelope must match its JSON Schema and carry the request's fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicFilmSession,
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepNotification,
    ModalityPerformedProcedureStepRetrieve,
    StorageCommitmentPushModel,
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    Verification,
)

from bridge.protocol.dicomjson import dataset_to_json
from bridge.protocol.model import Service
from bridge.sdk.consumer import Response
from tests.conftest import ConsumerFactory
from tests.harness import (
    BridgeHarness,
    Recorder,
    association,
    commitment_info,
    inline_references,
    make_dataset,
    part10_of,
)
from tests.schemas import validate_envelope

INSTANCE = "1.2.826.0.1.3680043.8.498.1"


@dataclass
class Case:
    """One request, the consumer's answer, and what the peer must see."""

    id: str
    service: Service
    contexts: list[str]
    send: Callable[[Association], tuple[Dataset, Dataset | None]]
    answer: Response
    request_dataset: tuple[str, Dataset | None] | None = None
    command: dict[str, Any] = field(default_factory=dict)
    expect_dataset: bool = True


def _pair(result: Any) -> tuple[Dataset, Dataset | None]:
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


EVENT_INFO = commitment_info()
ACTION_INFO = commitment_info()
MPPS_CREATE = make_dataset(PerformedProcedureStepStatus="IN PROGRESS", Modality="CT")
MPPS_SET = make_dataset(PerformedProcedureStepStatus="COMPLETED")
UPS_CANCEL = make_dataset(ReasonForCancellation="operator request")

CASES = [
    Case(
        "c-echo",
        Service.C_ECHO,
        [Verification],
        lambda a: _pair(a.send_c_echo()),
        Response(0x0000),
        command={"message_id": 1, "affected_sop_class_uid": str(Verification)},
        expect_dataset=False,
    ),
    Case(
        "c-echo-refused",
        Service.C_ECHO,
        [Verification],
        lambda a: _pair(a.send_c_echo()),
        Response(0x0211, error_comment="echo refused"),
        expect_dataset=False,
    ),
    Case(
        "c-store-warning",
        Service.C_STORE,
        [CTImageStorage],
        lambda a: _pair(a.send_c_store(examples.ct)),
        Response(0xB000, error_comment="coerced", offending_element=[0x00100010]),
        request_dataset=("dataset", examples.ct),
        command={
            "message_id": 1,
            "priority": 2,
            "affected_sop_class_uid": str(CTImageStorage),
            "affected_sop_instance_uid": examples.ct.SOPInstanceUID,
        },
        expect_dataset=False,
    ),
    Case(
        "n-event-report-commitment",
        Service.N_EVENT_REPORT,
        [StorageCommitmentPushModel],
        lambda a: a.send_n_event_report(EVENT_INFO, 1, StorageCommitmentPushModel, INSTANCE),
        Response(0x0000, dataset=make_dataset(RetrieveAETitle="ARCHIVE")),
        request_dataset=("event_information", EVENT_INFO),
        command={
            "event_type_id": 1,
            "affected_sop_class_uid": str(StorageCommitmentPushModel),
            "affected_sop_instance_uid": INSTANCE,
        },
    ),
    Case(
        "n-event-report-mpps-failure",
        Service.N_EVENT_REPORT,
        [ModalityPerformedProcedureStepNotification],
        lambda a: a.send_n_event_report(
            None, 2, ModalityPerformedProcedureStepNotification, INSTANCE
        ),
        Response(0x0113, error_comment="no such event type", error_id=7),
        request_dataset=("event_information", None),
        command={"event_type_id": 2},
    ),
    Case(
        "n-event-report-ups",
        Service.N_EVENT_REPORT,
        [UnifiedProcedureStepEvent],
        lambda a: a.send_n_event_report(
            make_dataset(ProcedureStepState="SCHEDULED"), 1, UnifiedProcedureStepPush, INSTANCE
        ),
        Response(0x0000),
        command={"event_type_id": 1},
    ),
    Case(
        "n-get-mpps",
        Service.N_GET,
        [ModalityPerformedProcedureStepRetrieve],
        lambda a: a.send_n_get(
            [Tag(0x00400252), Tag(0x00080060)], ModalityPerformedProcedureStepRetrieve, INSTANCE
        ),
        Response(
            0x0000, dataset=make_dataset(PerformedProcedureStepStatus="COMPLETED", Modality="MR")
        ),
        command={
            "attribute_identifier_list": ["00400252", "00080060"],
            "requested_sop_class_uid": str(ModalityPerformedProcedureStepRetrieve),
            "requested_sop_instance_uid": INSTANCE,
        },
    ),
    Case(
        "n-get-warning",
        Service.N_GET,
        [ModalityPerformedProcedureStepRetrieve],
        lambda a: a.send_n_get([Tag(0x00400252)], ModalityPerformedProcedureStepRetrieve, INSTANCE),
        Response(
            0x0107,
            dataset=make_dataset(Modality="CT"),
            error_comment="attribute list error",
            attribute_identifier_list=[0x00400252],
        ),
    ),
    Case(
        "n-set-mpps",
        Service.N_SET,
        [ModalityPerformedProcedureStep],
        lambda a: a.send_n_set(MPPS_SET, ModalityPerformedProcedureStep, INSTANCE),
        Response(0x0000, dataset=make_dataset(PerformedProcedureStepStatus="COMPLETED")),
        request_dataset=("modification_list", MPPS_SET),
        command={"requested_sop_instance_uid": INSTANCE},
    ),
    Case(
        "n-action-commitment",
        Service.N_ACTION,
        [StorageCommitmentPushModel],
        lambda a: a.send_n_action(ACTION_INFO, 1, StorageCommitmentPushModel, INSTANCE),
        Response(0x0000),
        request_dataset=("action_information", ACTION_INFO),
        command={"action_type_id": 1, "requested_sop_class_uid": str(StorageCommitmentPushModel)},
        expect_dataset=False,
    ),
    Case(
        "n-action-ups-reply",
        Service.N_ACTION,
        [UnifiedProcedureStepPull],
        lambda a: a.send_n_action(UPS_CANCEL, 2, UnifiedProcedureStepPull, INSTANCE),
        Response(0xB304, dataset=make_dataset(ProcedureStepState="CANCELED"), error_id=3),
        request_dataset=("action_information", UPS_CANCEL),
        command={"action_type_id": 2},
    ),
    Case(
        "n-create-mpps-assigns-uid",
        Service.N_CREATE,
        [ModalityPerformedProcedureStep],
        lambda a: a.send_n_create(MPPS_CREATE, ModalityPerformedProcedureStep, None),
        Response(
            0x0000,
            dataset=make_dataset(PerformedProcedureStepStatus="IN PROGRESS"),
            affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.99",
        ),
        request_dataset=("attribute_list", MPPS_CREATE),
        command={"affected_sop_class_uid": str(ModalityPerformedProcedureStep)},
    ),
    Case(
        "n-create-with-uid",
        Service.N_CREATE,
        [ModalityPerformedProcedureStep],
        lambda a: a.send_n_create(MPPS_CREATE, ModalityPerformedProcedureStep, INSTANCE),
        Response(0x0000, dataset=make_dataset(Modality="CT")),
        command={"affected_sop_instance_uid": INSTANCE},
    ),
    Case(
        "n-delete-print",
        Service.N_DELETE,
        [BasicFilmSession],
        lambda a: _pair(a.send_n_delete(BasicFilmSession, INSTANCE)),
        Response(0x0112, error_comment="no such film session", error_id=42),
        command={"requested_sop_class_uid": str(BasicFilmSession)},
        expect_dataset=False,
    ),
    Case(
        "n-delete-success",
        Service.N_DELETE,
        [BasicFilmSession],
        lambda a: _pair(a.send_n_delete(BasicFilmSession, INSTANCE)),
        Response(0x0000),
        expect_dataset=False,
    ),
]


def test_cases_cover_every_single_reply_service() -> None:
    from bridge.protocol.model import SINGLE_REPLY_SERVICES

    assert {case.service for case in CASES} == set(SINGLE_REPLY_SERVICES)


def _expected_status(answer: Response) -> dict[str, Any]:
    expected: dict[str, Any] = {"Status": answer.status}
    if answer.error_comment is not None:
        expected["ErrorComment"] = answer.error_comment
    if answer.error_id is not None:
        expected["ErrorID"] = answer.error_id
    if answer.offending_element is not None:
        expected["OffendingElement"] = answer.offending_element
    if answer.attribute_identifier_list is not None:
        expected["AttributeIdentifierList"] = answer.attribute_identifier_list
    return expected


# Echoes of the request that an N-EVENT-REPORT response carries besides the status.
ECHOED = {"AffectedSOPClassUID", "AffectedSOPInstanceUID", "EventTypeID"}


def _status_dict(status: Dataset) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for elem in status:
        if elem.keyword in ECHOED:
            continue
        value = elem.value
        if elem.VR == "AT":
            value = [int(v) for v in (value if isinstance(value, list) else [value])]
        result[elem.keyword] = value
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_request_travels_to_consumer_and_reply_reaches_peer(
    case: Case, bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    recorder = Recorder(answer=lambda request: case.answer)
    make_consumer(recorder)

    received: list[Any] = []

    def on_recv(event: evt.Event) -> None:
        received.append(event.message.command_set)

    with association(bridge.port, case.contexts) as assoc:
        assoc.bind(evt.EVT_DIMSE_RECV, on_recv)
        status, dataset = case.send(assoc)

    assert _status_dict(status) == _expected_status(case.answer)
    if case.expect_dataset and case.answer.dataset is not None:
        assert dataset is not None
        assert dataset_to_json(dataset) == dataset_to_json(case.answer.dataset)
    else:
        assert not dataset
    if case.answer.affected_sop_instance_uid:
        assert received[-1].AffectedSOPInstanceUID == case.answer.affected_sop_instance_uid

    assert len(recorder.requests) == 1
    request = recorder.requests[0]
    envelope = request.envelope
    validate_envelope(envelope)
    assert envelope["service"] == case.service.value
    assert envelope["event"] == case.service.event_name
    assert envelope["association"]["calling_ae"] == "TEST-SCU"
    assert envelope["association"]["called_ae"] == "DICOM-BRIDGE"
    assert envelope["association"]["peer"]["address"] == "127.0.0.1"
    assert envelope["context"]["abstract_syntax"] == str(case.contexts[0])
    for key, value in case.command.items():
        assert envelope["request"][key] == value, key
    if case.request_dataset is not None:
        name, sent = case.request_dataset
        if sent is None:
            assert envelope[name] is None
        else:
            assert inline_references(envelope[name], part10_of(envelope)) == dataset_to_json(sent)
            decoded = getattr(request, name)
            assert dataset_to_json(decoded) == dataset_to_json(sent)


def test_c_store_envelope_has_file_meta(bridge: BridgeHarness, recorder: Recorder) -> None:
    with association(bridge.port, [CTImageStorage]) as assoc:
        assert assoc.send_c_store(examples.ct).Status == 0
    request = recorder.requests[0]
    meta = request.file_meta
    assert meta is not None
    assert meta.MediaStorageSOPInstanceUID == examples.ct.SOPInstanceUID
    assert meta.TransferSyntaxUID == request.envelope["context"]["transfer_syntax"]


def test_association_id_is_shared_by_requests_of_one_association(
    bridge: BridgeHarness, recorder: Recorder
) -> None:
    with association(bridge.port) as assoc:
        assoc.send_c_echo()
        assoc.send_c_echo()
    with association(bridge.port) as assoc:
        assoc.send_c_echo()
    ids = [r.envelope["association"]["id"] for r in recorder.requests]
    assert ids[0] == ids[1] != ids[2]
    assert len({r.id for r in recorder.requests}) == 3


def test_storage_commitment_reported_on_association_where_peer_is_scp(
    bridge: BridgeHarness, recorder: Recorder
) -> None:
    """A Storage Commitment SCP reporting results opens its own association and proposes
    to be the SCP of the class (SCP/SCU role selection, PS3.4 J.3.3)."""
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    with association(bridge.port, [StorageCommitmentPushModel], roles=[role]) as assoc:
        context = assoc.accepted_contexts[0]
        assert (context.as_scu, context.as_scp) == (False, True)
        status, _ = assoc.send_n_event_report(EVENT_INFO, 1, StorageCommitmentPushModel, INSTANCE)
    assert status.Status == 0
    assert recorder.requests[0].envelope["event_information"] == dataset_to_json(EVENT_INFO)


def test_many_requests_on_one_association_keep_order(
    bridge: BridgeHarness, recorder: Recorder
) -> None:
    with association(bridge.port, [StorageCommitmentPushModel]) as assoc:
        for n in range(20):
            info = commitment_info()
            info.TransactionUID = f"1.2.826.0.1.3680043.8.498.100.{n}"
            status, _ = assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, INSTANCE)
            assert status.Status == 0
    transaction_uids = [r.event_information.TransactionUID for r in recorder.requests]  # type: ignore[union-attr]
    assert transaction_uids == [f"1.2.826.0.1.3680043.8.498.100.{n}" for n in range(20)]


def test_sequence_values_survive_the_round_trip(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    reply = make_dataset(
        ReferencedSOPSequence=Sequence(
            [
                make_dataset(ReferencedSOPInstanceUID=f"1.2.3.{n}", ReferencedSOPClassUID="1.2.3")
                for n in range(3)
            ]
        )
    )
    make_consumer(Recorder(answer=lambda r: (0, reply)))
    with association(bridge.port, [StorageCommitmentPushModel]) as assoc:
        status, dataset = assoc.send_n_action(ACTION_INFO, 1, StorageCommitmentPushModel, INSTANCE)
    assert status.Status == 0
    assert dataset is not None
    assert dataset_to_json(dataset) == dataset_to_json(reply)


def test_consumer_can_filter_by_calling_ae(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    only_a = Recorder()
    make_consumer(only_a, (Service.C_ECHO,), calling_ae="SCU-A")
    with association(bridge.port, ae_title="SCU-A") as assoc:
        assert assoc.send_c_echo().Status == 0
    # Nothing is bound for other calling AE titles: the request is unroutable.
    with association(bridge.port, ae_title="SCU-B") as assoc:
        status = assoc.send_c_echo()
    assert status.Status == 0x0110
    assert "no queue bound" in status.ErrorComment
    assert [r.calling_ae for r in only_a.requests] == ["SCU-A"]


def test_consumer_can_filter_by_sop_class(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    commitment = Recorder()
    make_consumer(commitment, (Service.N_ACTION,), sop_class=str(StorageCommitmentPushModel))
    with association(bridge.port, [StorageCommitmentPushModel, UnifiedProcedureStepPull]) as assoc:
        ok, _ = assoc.send_n_action(ACTION_INFO, 1, StorageCommitmentPushModel, INSTANCE)
        unrouted, _ = assoc.send_n_action(UPS_CANCEL, 2, UnifiedProcedureStepPull, INSTANCE)
    assert ok.Status == 0
    assert unrouted.Status == 0x0213
    assert len(commitment.requests) == 1
