"""The dependency direction of ``bridge/`` (docs/architecture.md, "Module layout").

Two kinds of check: what each module imports, read from its source (static, so a rule
holds for every module, imported by a test or not), and what importing a package loads,
read from ``sys.modules`` in a fresh interpreter (so a rule holds through every chain of
imports, not only the direct ones). ``test_a_forbidden_import_is_found`` shows the static
checker finds a violation it is given.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bridge"

# Modules whose import means input/output or concurrency: none of them in the pure layer.
IO_MODULES = frozenset(
    {
        "aio_pika",
        "aiormq",
        "pamqp",
        "asyncio",
        "concurrent",
        "http",
        "os",
        "select",
        "selectors",
        "shutil",
        "socket",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "urllib",
    }
)
# What of pynetdicom the pure layer may name: its SOP class tables, status tables and the
# Event type; not the AE, associations, the DUL or the transport.
PYNETDICOM_DATA = frozenset(
    {
        "pynetdicom.sop_class",
        "pynetdicom.status",
        "pynetdicom.presentation",
        "pynetdicom.service_class",
        "pynetdicom.service_class_n",
        "pynetdicom.events",
    }
)


@dataclass(frozen=True)
class Import:
    importer: str
    """Dotted name of the importing module (``bridge.scp.server``)."""
    target: str
    """Dotted name imported: a module, or ``module.name`` for ``from module import name``."""
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(root: Path) -> dict[str, str]:
    """The source of every module below ``root``, by dotted name."""
    return {
        module_name(path, root): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*.py"))
    }


@functools.cache
def module_imports(importer: str, source: str) -> tuple[Import, ...]:
    """Every import statement of one module, TYPE_CHECKING blocks too."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(importer, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.extend(
                Import(importer, f"{node.module}.{alias.name}", node.lineno) for alias in node.names
            )
    return tuple(found)


def imports(tree: Mapping[str, str]) -> Iterator[Import]:
    for importer, source in tree.items():
        yield from module_imports(importer, source)


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def violations(tree: Mapping[str, str]) -> list[str]:
    """The static rules, one line per import that breaks one (``tree``: module -> source)."""
    found: list[str] = []
    for imp in imports(tree):
        who, what = imp.importer, imp.target
        top = what.split(".")[0]
        if within(who, "bridge.protocol"):
            if top in IO_MODULES:
                found.append(f"{imp}: the protocol layer does no I/O")
            elif top == "pynetdicom" and not any(within(what, m) for m in PYNETDICOM_DATA):
                found.append(f"{imp}: the protocol layer names no pynetdicom machinery")
            elif top == "bridge" and not within(what, "bridge.protocol", "bridge.errors"):
                found.append(f"{imp}: protocol imports nothing of ours but errors")
        if within(who, "bridge.sdk", "bridge.example") and within(
            what, "bridge.scp", "bridge.scu", "bridge._pynetdicom"
        ):
            found.append(f"{imp}: consumer code never imports the DICOM side")
        if within(what, "bridge.ops.service") and not within(who, "bridge.cli"):
            found.append(f"{imp}: only the CLI starts the service")
        if within(what, "bridge.cli") and not within(who, "bridge.cli", "bridge.__main__"):
            found.append(f"{imp}: nothing imports the CLI")
        if within(what, "bridge._pynetdicom") and not within(
            who, "bridge._pynetdicom", "bridge.scp", "bridge.scu"
        ):
            found.append(f"{imp}: pynetdicom's internals serve the DICOM side only")
        private = top == "pynetdicom" and any(part.startswith("_") for part in what.split("."))
        if private and not within(who, "bridge._pynetdicom"):
            found.append(f"{imp}: pynetdicom's private internals are touched in _pynetdicom only")
        if within(who, "bridge.scp") and (
            top in ("aio_pika", "aiormq") or within(what, "bridge.transport.amqp")
        ):
            found.append(f"{imp}: the SCP knows the transport Protocol, not AMQP")
    return found


def test_the_tree_keeps_the_dependency_direction() -> None:
    assert violations(sources(PACKAGE)) == []


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("protocol/model.py", "import socket", "does no I/O"),
        ("protocol/model.py", "from bridge.transport import Outbound", "nothing of ours"),
        ("protocol/model.py", "from pynetdicom.association import Association", "machinery"),
        ("sdk/replies.py", "from bridge.scp import server", "never imports the DICOM side"),
        ("example/consumer.py", "from bridge.scu.pool import Peer", "the DICOM side"),
        ("scp/events.py", "from bridge.ops import service", "only the CLI starts"),
        ("ops/metrics.py", "from bridge.cli import options", "nothing imports the CLI"),
        ("scp/server.py", "from pynetdicom import _config", "_pynetdicom only"),
        ("scp/conversation.py", "import aio_pika", "not AMQP"),
        ("sdk/consumer.py", "from bridge._pynetdicom import reactor", "DICOM side"),
    ],
)
def test_a_forbidden_import_is_found(module: str, line: str, rule: str) -> None:
    tree = sources(PACKAGE)
    name = module_name(PACKAGE / module, PACKAGE)
    changed = {**tree, name: f"{tree[name]}\n{line}\n"}
    found = [v for v in violations(changed) if v not in violations(tree)]
    assert found, f"{line!r} in {module} went unnoticed"
    assert any(rule in v for v in found), found


def loaded_after(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('\\n'.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


@pytest.mark.process
@pytest.mark.parametrize(
    "modules",
    [
        ("bridge",),
        ("bridge.config",),
        ("bridge.errors", "bridge.protocol.model"),
    ],
)
def test_importing_the_package_or_its_settings_loads_no_aio_pika(modules: tuple[str, ...]) -> None:
    loaded = loaded_after(*modules)
    assert modules[0] in loaded
    assert not {m for m in loaded if within(m, "aio_pika", "aiormq")}


@pytest.mark.process
def test_the_pure_layer_loads_no_broker_and_none_of_our_io() -> None:
    protocol = sorted(
        module_name(p, PACKAGE) for p in (PACKAGE / "protocol").glob("*.py") if p.stem[0] != "_"
    )
    loaded = loaded_after(*protocol)
    ours = {m for m in loaded if within(m, "bridge")}
    assert ours <= {"bridge", *protocol, "bridge.protocol", "bridge.errors"}
    assert not {m for m in loaded if within(m, "aio_pika", "aiormq")}


@pytest.mark.process
def test_consumer_code_loads_nothing_of_the_dicom_side() -> None:
    loaded = loaded_after(
        "bridge.consumer",
        "bridge.client",
        "bridge.sdk.replies",
        "bridge.example.consumer",
        "bridge.example.qrindex",
    )
    assert "bridge.sdk.consumer" in loaded
    forbidden = (
        "bridge.scp",
        "bridge.scu",
        "bridge._pynetdicom",
        "bridge.cli",
        "bridge.ops.service",
    )
    assert not {m for m in loaded if within(m, *forbidden, "bridge.ops.service")}
