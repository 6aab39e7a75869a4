"""A unit run (``make unit``) reaches no broker and starts no process.

``make unit`` sets :data:`UNIT_RUN`; :func:`forbid` then refuses, in this process, every
connection to the broker's port and every child process, and records them: the test that
tried fails at its teardown even when the code under test swallowed the refusal. Tests
that need either carry the ``needs_broker`` or ``process`` marker, which ``make unit``
deselects.
"""

from __future__ import annotations

import os
import sys
from typing import Any

UNIT_RUN = "BRIDGE_TEST_UNIT"

# The audit events of starting a program (subprocess and asyncio use the first).
_SPAWNS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.system", "os.exec"})

_tried: list[str] = []


def is_unit_run() -> bool:
    return os.environ.get(UNIT_RUN) == "1"


def forbid(broker_port: int) -> None:
    """Refuse connections to ``broker_port`` and child processes from now on, in every
    thread of this process. Audit hooks cannot be removed: call it once, for a unit run."""

    def refuse(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2 and address[1] == broker_port:
                _refuse(f"a connection to the broker at {address[0]}:{address[1]}")
        elif event in _SPAWNS:
            _refuse(f"a process ({event} {args[0]!r})")

    sys.addaudithook(refuse)


def _refuse(what: str) -> None:
    _tried.append(what)
    raise RuntimeError(f"{UNIT_RUN} is set: {what} is not allowed in a unit run")


def tried() -> list[str]:
    """What was refused since the last call."""
    found = sorted(set(_tried))
    _tried.clear()
    return found
