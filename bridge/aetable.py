"""The AE table: where a C-MOVE destination AE title lives (title -> host, port).

Read once at start-up from JSON or YAML, given with ``--ae-table FILE``:

    {"WORKSTATION1": {"host": "10.0.0.7", "port": 11112},
     "ARCHIVE":      {"host": "archive.example", "port": 104}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import ConfigError


class Destination(BaseModel):
    """A peer the bridge can open an association to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class AETable:
    """AE titles (stripped of padding) to destinations."""

    def __init__(self, entries: Mapping[str, Destination] | None = None) -> None:
        self._entries = {title.strip(): dest for title, dest in (entries or {}).items()}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ae_title: str) -> Destination | None:
        return self._entries.get(ae_title.strip())

    @classmethod
    def load(cls, path: Path) -> AETable:
        """Read ``path`` (``.json``, or YAML otherwise). Raises ConfigError naming the
        problem: missing file, bad syntax, an entry without host or port."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"AE table {path}: {exc.strerror or exc}") from None
        try:
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"AE table {path}: not valid JSON/YAML ({exc})") from None
        if not isinstance(document, dict):
            raise ConfigError(f"AE table {path}: expected a mapping of AE title to host/port")
        entries: dict[str, Destination] = {}
        for title, value in document.items():
            if not isinstance(title, str) or not 0 < len(title.strip()) <= 16:
                raise ConfigError(f"AE table {path}: {title!r} is not an AE title")
            try:
                entries[title] = Destination.model_validate(value)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'entry'} {e['msg']}" for e in exc.errors()
                )
                raise ConfigError(f"AE table {path}: {title}: {problems}") from None
        return cls(entries)
