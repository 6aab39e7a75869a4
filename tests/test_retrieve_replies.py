"""What the consumer SDK sends for a C-GET or C-MOVE handler's instances
(bridge/sdk/replies.py): a path as its Part 10 file, inline or through the claim-check
store, never decoded; and the File Meta Information read from the first bytes only
(bridge/protocol/part10.py ``read_meta_prefix``)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from bridge.errors import CodecError
from bridge.protocol import part10
from bridge.protocol.model import SPECS, Service
from bridge.protocol.reply import parse_reply
from bridge.sdk.replies import retrieve_replies
from tests.schemas import REPLY


def _file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None
    return Path(path)


def _replies(result: Any, service: Service = Service.C_GET, **kwargs: Any) -> list[Any]:
    documents = [orjson.loads(body) for body in retrieve_replies(result, service, **kwargs)]
    for document in documents:
        REPLY.validate(document)
        parse_reply(orjson.dumps(document), SPECS[service])  # the bridge takes it
    return documents


def test_a_path_travels_as_its_file_inline() -> None:
    path = _file("CT_small.dcm")
    first, instance, final = _replies([path])
    assert first == {"version": 1, "status": 0xFF00, "sub_operations": 1}
    assert set(instance) == {"version", "status", "part10"}
    document = instance["part10"]
    data = path.read_bytes()
    assert base64.b64decode(document["InlineBinary"]) == data
    assert document["length"] == len(data)
    assert document["dataset_offset"] == part10.read_meta(data).dataset_offset
    assert final == {"version": 1, "status": 0}


def test_a_file_the_sink_takes_travels_by_its_uri() -> None:
    path = _file("MR_small.dcm")
    taken: list[tuple[Path, int]] = []

    def files(where: Path, size: int) -> str | None:
        taken.append((where, size))
        return "file:///bulk/0123" if where.name == "MR_small.dcm" else None

    _, mr, ct, _ = _replies([path, _file("CT_small.dcm")], files=files)
    size = path.stat().st_size
    assert taken == [(path, size), (_file("CT_small.dcm"), _file("CT_small.dcm").stat().st_size)]
    assert mr["part10"] == {
        "length": size,
        "dataset_offset": part10.read_meta(path.read_bytes()).dataset_offset,
        "BulkDataURI": "file:///bulk/0123",
    }
    assert "InlineBinary" in ct["part10"]


def test_datasets_and_files_without_usable_file_meta_travel_as_dicom_json(
    tmp_path: Path,
) -> None:
    ds = dcmread(_file("CT_small.dcm"))
    no_uid = tmp_path / "no-instance-uid.dcm"
    stripped = dcmread(_file("CT_small.dcm"))
    del stripped.file_meta.MediaStorageSOPInstanceUID
    stripped.save_as(no_uid)
    assert b"DICM" in no_uid.read_bytes()[:132]
    _, from_dataset, from_file, _ = _replies([ds, no_uid])
    for reply in (from_dataset, from_file):
        assert "part10" not in reply
        assert reply["transfer_syntax_uid"] == ExplicitVRLittleEndian
        assert reply["dataset"]["00080018"]["Value"] == [ds.SOPInstanceUID]


def test_c_move_proposes_each_file_syntax_on_a_context_of_its_own() -> None:
    files = [_file(n) for n in ("CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm")]
    first = _replies(files, Service.C_MOVE)[0]
    ct, sc = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
    explicit, jpeg, deflated = (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.1.99",
    )
    assert [
        (c["abstract_syntax"], c["transfer_syntaxes"]) for c in first["presentation_contexts"]
    ] == [
        (ct, [explicit]),
        (sc, [explicit, jpeg, deflated]),
        (sc, [jpeg]),
        (sc, [deflated]),
    ]


def _file_with_meta_of(length: int) -> bytes:
    """A Part 10 file whose File Meta Information carries ``length`` bytes of Private
    Information (0002,0102), then one data set element."""
    head = part10.header(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid="1.2.3",
        transfer_syntax=ExplicitVRLittleEndian,
        implementation_class_uid="1.2.3",
    )
    private = struct.pack("<HH2sHI", 2, 0x0102, b"OB", 0, length) + bytes(length)
    return head + private + struct.pack("<HH2sH", 8, 0x16, b"UI", 2) + b"1\0"


@pytest.mark.parametrize("length", [0, 4096, 3 * 4096 + 1, 100_000])
def test_file_meta_read_from_the_first_bytes_only(length: int) -> None:
    head = _file_with_meta_of(length + length % 2)
    data = head + bytes(1 << 20)  # the rest of the data set, never read
    asked: list[int] = []

    def read(size: int) -> bytes:
        asked.append(size)
        return data[:size]

    meta = part10.read_meta_prefix(read)
    assert meta.sop_instance_uid == "1.2.3"
    assert meta.dataset_offset == len(head) - 10
    assert max(asked) <= 4 * max(4096, meta.dataset_offset)


def test_file_meta_of_no_part10_file_is_a_codec_error() -> None:
    data = bytes(200)
    with pytest.raises(CodecError, match="not a DICOM Part 10 file"):
        part10.read_meta_prefix(lambda size: data[:size])
    cut = _file_with_meta_of(4 * 4096)[: 2 * 4096]
    with pytest.raises(CodecError, match="cut off"):
        part10.read_meta_prefix(lambda size: cut[:size])
