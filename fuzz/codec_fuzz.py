"""Coverage-guided fuzzing (atheris) of the DICOM JSON codec and the reply parser.

    .venv/bin/python fuzz/codec_fuzz.py -max_total_time=60

Three targets share one input: bytes read as a DICOM data set (implicit and explicit VR,
the raw path pynetdicom gives the bridge), bytes parsed as JSON and decoded as a DICOM
JSON data set, and bytes parsed as a consumer reply for every service. The only
exceptions allowed out are the documented ones (CodecError, ReplyError); anything
else is a bug and atheris reports it with the input.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from io import BytesIO

import atheris

with atheris.instrument_imports():
    import orjson
    from pydicom.filereader import read_dataset

    from bridge.errors import CodecError, ReplyError
    from bridge.protocol import dicomjson
    from bridge.protocol.model import SPECS
    from bridge.protocol.reply import parse_reply, reply_to_dimse

warnings.simplefilter("ignore")


def one_input(data: bytes) -> None:
    for implicit in (True, False):
        try:
            ds = read_dataset(BytesIO(data), implicit, True)
        except Exception:  # noqa: S112 - pydicom's reader is not under test
            continue
        with contextlib.suppress(CodecError):
            dicomjson.dataset_to_json(ds)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        with contextlib.suppress(CodecError):
            dicomjson.json_to_dataset(document)
    for spec in SPECS.values():
        try:
            reply = parse_reply(data, spec)
            reply_to_dimse(reply, spec)
        except ReplyError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
