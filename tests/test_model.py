"""The status tables and response fields must keep covering pynetdicom's handler contract."""

from __future__ import annotations

import re

import pytest
from pynetdicom import _handlers, dimse_primitives
from pynetdicom.status import code_to_category

from bridge.errors import Failure
from bridge.protocol.model import SPECS, Category, Service, routing_key

DOCS = {
    Service.C_ECHO: _handlers.doc_handle_echo,
    Service.C_STORE: _handlers.doc_handle_store,
    Service.C_FIND: _handlers.doc_handle_find,
    Service.C_GET: _handlers.doc_handle_c_get,
    Service.C_MOVE: _handlers.doc_handle_move,
    Service.N_EVENT_REPORT: _handlers.doc_handle_event_report,
    Service.N_GET: _handlers.doc_handle_n_get,
    Service.N_SET: _handlers.doc_handle_set,
    Service.N_ACTION: _handlers.doc_handle_action,
    Service.N_CREATE: _handlers.doc_handle_create,
    Service.N_DELETE: _handlers.doc_handle_delete,
}
PRIMITIVES = {
    Service.C_ECHO: dimse_primitives.C_ECHO,
    Service.C_STORE: dimse_primitives.C_STORE,
    Service.C_FIND: dimse_primitives.C_FIND,
    Service.C_GET: dimse_primitives.C_GET,
    Service.C_MOVE: dimse_primitives.C_MOVE,
    Service.N_EVENT_REPORT: dimse_primitives.N_EVENT_REPORT,
    Service.N_GET: dimse_primitives.N_GET,
    Service.N_SET: dimse_primitives.N_SET,
    Service.N_ACTION: dimse_primitives.N_ACTION,
    Service.N_CREATE: dimse_primitives.N_CREATE,
    Service.N_DELETE: dimse_primitives.N_DELETE,
}
# Where our table deliberately differs from pynetdicom's docs, and why.
DOC_CORRECTIONS = {
    # PS3.7 10.1.2.1.9 lists 0x0107 for N-GET as a Warning only.
    (Service.N_GET, 0x0107): Category.WARNING,
}


def _documented(service: Service) -> dict[int, Category]:
    doc = DOCS[service].__doc__
    assert doc is not None
    section = doc.split("**Status**")[1].split("Parameters\n")[0]
    table: dict[int, Category] = {}
    category: Category | None = None
    for line in section.splitlines():
        text = line.strip()
        if text.lower() in {c.value for c in Category}:
            category = Category(text.lower())
            continue
        codes = [int(c, 16) for c in re.findall(r"``0x([0-9A-F]{4})``", text)]
        if not codes or category is None:
            continue
        if " to " in text and len(codes) == 2:
            codes = list(range(codes[0], codes[1] + 1))
        for code in codes:
            table[code] = DOC_CORRECTIONS.get((service, code), category)
    return table


@pytest.mark.parametrize("service", list(Service), ids=lambda s: s.value)
def test_status_table_covers_pynetdicom_docs(service: Service) -> None:
    documented = _documented(service)
    assert documented, "docstring parse found nothing"
    table = SPECS[service].statuses
    for code, category in documented.items():
        assert table.category(code) == category, f"0x{code:04X}"


def test_n_action_allows_processing_failure() -> None:
    # PS3.7 10.1.4.1.10; missing from pynetdicom's N-ACTION docs.
    assert SPECS[Service.N_ACTION].statuses.category(0x0110) is Category.FAILURE


@pytest.mark.parametrize("service", list(Service), ids=lambda s: s.value)
def test_status_elements_exist_on_the_response_primitive(service: Service) -> None:
    primitive = PRIMITIVES[service]
    spec = SPECS[service]
    assert set(spec.status_elements) <= set(primitive.STATUS_OPTIONAL_KEYWORDS)
    for keyword in spec.reply_fields:
        assert hasattr(primitive(), keyword)


@pytest.mark.parametrize("service", list(Service), ids=lambda s: s.value)
@pytest.mark.parametrize("failure", list(Failure), ids=lambda f: f.value)
def test_bridge_failures_are_failure_statuses(service: Service, failure: Failure) -> None:
    status = SPECS[service].failure_status(failure)
    assert code_to_category(status) == "Failure"


def test_c_store_failures_are_distinct_per_cause() -> None:
    spec = SPECS[Service.C_STORE]
    causes = (Failure.BAD_REQUEST, Failure.TIMEOUT, Failure.BAD_REPLY, Failure.INTERNAL)
    assert len({spec.failure_status(f) for f in causes}) == len(causes)
    for failure in causes:
        assert spec.statuses.allows(spec.failure_status(failure))


@pytest.mark.parametrize(
    ("service", "uid", "ae", "key"),
    [
        (Service.C_ECHO, "1.2.840.10008.1.1", "ECHOSCU", "c-echo.1_2_840_10008_1_1.ECHOSCU"),
        (
            Service.N_EVENT_REPORT,
            "1.2.840.10008.1.20.1",
            "  MODALITY_1 ",
            "n-event-report.1_2_840_10008_1_20_1.MODALITY_1",
        ),
        (Service.C_STORE, "1.2.3", "MY.AE", "c-store.1_2_3.MY%2EAE"),
        (Service.C_STORE, "1.2.3", "A*B#C D", "c-store.1_2_3.A%2AB%23C%20D"),
        (Service.C_STORE, "1.2.3", "", "c-store.1_2_3.-"),
        (Service.N_ACTION, "", "X", "n-action.-.X"),
        (Service.C_STORE, "1.2.3", "Ä", "c-store.1_2_3.%C3%84"),
    ],
)
def test_routing_key_has_three_words(service: Service, uid: str, ae: str, key: str) -> None:
    assert routing_key(service, uid, ae) == key
    assert len(key.split(".")) == 3


def test_event_and_dimse_names() -> None:
    assert Service.N_EVENT_REPORT.event_name == "EVT_N_EVENT_REPORT"
    assert Service.N_EVENT_REPORT.dimse_name == "N-EVENT-REPORT"
    assert Service.C_ECHO.spec.service is Service.C_ECHO
