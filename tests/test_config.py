from __future__ import annotations

import pytest

from bridge.config import BridgeSettings, ConsumerSettings, load
from bridge.errors import ConfigError
from bridge.protocol import sopclasses
from bridge.transport.urls import redact


def test_defaults_work_on_the_local_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BridgeSettings.model_fields:
        monkeypatch.delenv(f"BRIDGE_{name.upper()}", raising=False)
    settings = load(BridgeSettings)
    assert (settings.host, settings.port, settings.ae_title) == ("0.0.0.0", 11112, "DICOM-BRIDGE")
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.exchange == "dicom"
    assert settings.reply_timeout < settings.dimse_timeout
    assert settings.max_associations > 10


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "104")
    monkeypatch.setenv("BRIDGE_AE_TITLE", "FROM-ENV")
    settings = load(BridgeSettings, port="11113", ae_title=None)
    assert settings.port == 11113
    assert settings.ae_title == "FROM-ENV"


def test_sop_classes_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SOP_CLASSES", "verification, CTImageStorage,1.2.840.10008.1.20.1")
    settings = load(BridgeSettings)
    assert settings.sop_class_uids == [
        "1.2.840.10008.1.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.20.1",
    ]


def test_default_selection_covers_storage_n_services_and_query_retrieve() -> None:
    uids = sopclasses.resolve(sopclasses.DEFAULT_SELECTION)
    assert "1.2.840.10008.1.1" in uids  # Verification
    assert "1.2.840.10008.5.1.4.1.1.2" in uids  # CT Image Storage
    assert "1.2.840.10008.1.20.1" in uids  # Storage Commitment Push Model
    assert "1.2.840.10008.3.1.2.3.3" in uids  # MPPS
    assert "1.2.840.10008.5.1.4.34.6.1" in uids  # UPS Push
    assert "1.2.840.10008.5.1.1.1" in uids  # Basic Film Session
    assert "1.2.840.10008.5.1.4.1.2.2.1" in uids  # Study Root FIND
    assert "1.2.840.10008.5.1.4.1.2.1.3" in uids  # Patient Root GET
    assert "1.2.840.10008.5.1.4.31" in uids  # Modality Worklist FIND
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("item", ["NoSuchClass", "1..2", "", "1.2.x"])
def test_unknown_sop_class_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError):
        sopclasses.resolve([item])


def test_errors_name_every_bad_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        load(BridgeSettings, port="-1", log_level="LOUD")
    assert "port" in caught.value.message
    assert "log_level" in caught.value.message


def test_log_level_is_case_insensitive() -> None:
    assert load(ConsumerSettings, log_level="debug").log_level == "DEBUG"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:secret@mq:5672/vh", "amqp://user:***@mq:5672/vh"),
        ("amqps://mq/", "amqps://mq/"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert load(ConsumerSettings, amqp_url=url).redacted_url() == shown
