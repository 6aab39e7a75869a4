from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.protocol.model import SINGLE_REPLY_SERVICES, Service
from tests import unit_run
from tests.harness import (
    AMQP_URL,
    BridgeHarness,
    ConsumerHarness,
    RawResponder,
    Recorder,
    bridge_settings,
    broker_reachable,
    delete_exchange,
    stopping,
)

BROKER_PORT = urlsplit(AMQP_URL).port or 5672


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test needs the broker when it asks for the ``broker`` fixture, itself or through
    any fixture that does (``exchange``, ``bridge``, ``make_bridge``, ``make_consumer``,
    ``recorder``, ``raw`` and the modules' own): ``fixturenames`` is the whole closure.
    A test that reaches the broker without the fixture must ask for it all the same."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_broker)


def pytest_configure(config: pytest.Config) -> None:
    if unit_run.is_unit_run():
        unit_run.forbid(BROKER_PORT)


@pytest.fixture(autouse=True)
def _unit_run_guard() -> Iterator[None]:
    """In a unit run, a test that tried to reach the broker or start a process fails."""
    yield
    if tried := unit_run.tried():
        pytest.fail(
            f"{unit_run.UNIT_RUN} is set, yet this test tried {tried}: a test that needs the"
            " broker asks for the broker fixture, one that starts a process is marked process"
        )


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Bridges and consumers that tests start as processes keep their spool, claim-check
    and example store in this session's temp dir, take a free HTTP port and leave the
    shared commands queue alone.

    The temporary directory of this process and of those it starts is in the session's
    temp dir too: what a library leaves there goes with it (pynetdicom, for one, keeps
    each data set a test's C-GET SCU receives in a temporary file it never deletes)."""
    root = tmp_path_factory.mktemp("state")
    temporary = root / "tmp"
    temporary.mkdir()
    values = {
        "BRIDGE_SPOOL_DIR": str(root / "spool"),
        "BRIDGE_BULK_DIR": str(root / "bulk"),
        "BRIDGE_DATA_DIR": str(root / "store"),
        "BRIDGE_HTTP_PORT": "0",
        # The commander's queue is shared and durable: bridges started as processes by
        # tests leave it alone (tests/test_commands.py runs its own on its own queues).
        "BRIDGE_COMMANDS": "false",
        "TMPDIR": str(temporary),
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(temporary)
    yield
    tempfile.tempdir = saved_tempdir
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def broker() -> None:
    """Tests that talk to RabbitMQ fail at once, and say why, when it is down or when the
    run forbids it (``make unit``): such tests are marked ``needs_broker``."""
    if unit_run.is_unit_run():
        pytest.fail(f"{unit_run.UNIT_RUN} is set: a unit run does not reach RabbitMQ")
    if not broker_reachable():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672: run rabbitmq-server -detached")


@pytest.fixture
def exchange(broker: None) -> Iterator[str]:
    """A fresh topic exchange per test, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_exchange(name)


BridgeFactory = Callable[..., BridgeHarness]


@pytest.fixture
def make_bridge(exchange: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeFactory]:
    def make(**overrides: Any) -> BridgeHarness:
        overrides.setdefault("spool_dir", tmp_path_factory.mktemp("bridge-spool"))
        return BridgeHarness(bridge_settings(exchange, **overrides))

    yield from stopping(make)


@pytest.fixture
def bridge(make_bridge: BridgeFactory) -> BridgeHarness:
    harness = make_bridge()
    harness.wait_ready()
    return harness


ConsumerFactory = Callable[..., ConsumerHarness]


@pytest.fixture
def make_consumer(exchange: str) -> Iterator[ConsumerFactory]:
    def make(
        handler: Any, services: tuple[Service, ...] = SINGLE_REPLY_SERVICES, **filters: str
    ) -> ConsumerHarness:
        return ConsumerHarness(exchange, handler, services, **filters)

    yield from stopping(make)


@pytest.fixture
def recorder(make_consumer: ConsumerFactory) -> Recorder:
    """A consumer bound for every single-reply service that answers Success."""
    rec = Recorder()
    make_consumer(rec)
    return rec


RawFactory = Callable[..., RawResponder]


@pytest.fixture
def raw(exchange: str) -> Iterator[RawFactory]:
    """Consumers without the SDK (:class:`RawResponder`), stopped after the test."""

    def make(
        reply: Callable[[Any], bytes | list[bytes] | None], pattern: str = "#"
    ) -> RawResponder:
        return RawResponder(exchange, reply, pattern)

    yield from stopping(make)
