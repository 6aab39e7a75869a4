"""The project's JSON Schemas, loaded once, for tests to validate documents against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return document


def _registry() -> Registry[Any]:
    resources = [
        (doc["$id"], Resource.from_contents(doc))
        for doc in (_load(p.name) for p in sorted(SCHEMAS.glob("*.schema.json")))
    ]
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validator(name: str) -> Draft202012Validator:
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(
        schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


ENVELOPE = validator("envelope.schema.json")
REPLY = validator("reply.schema.json")


def validate_envelope(document: dict[str, Any]) -> None:
    ENVELOPE.validate(document)


def validate_reply(document: dict[str, Any]) -> None:
    REPLY.validate(document)
