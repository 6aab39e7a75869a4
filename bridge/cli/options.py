"""Command-line options from settings fields, and how a command fails.

Every option comes from a settings field (:mod:`bridge.config`), so flags, ``BRIDGE_*``
variables and ``--help`` cannot drift apart.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, get_args

import click
from pydantic.fields import FieldInfo

from bridge.config import BrokerSettings, load
from bridge.errors import ConfigError
from bridge.ops import logging as bridge_logging

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=BrokerSettings)

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "none"
    return str(default)


def _option_help(name: str, field: FieldInfo) -> str:
    env = f"BRIDGE_{name.upper()}"
    return f"{field.description} [env: {env}; default: {_default_text(field)}]"


def settings_options(kind: type[BrokerSettings]) -> Callable[[F], F]:
    """Add one click option per settings field; an unset option passes None."""

    def decorate(function: F) -> F:
        for name, field in reversed(_fields(kind)):
            flag = "--" + name.replace("_", "-")
            help_text = _option_help(name, field)
            choices = get_args(field.annotation)
            if field.annotation is bool:
                option = click.option(
                    f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text
                )
            elif choices and all(isinstance(c, str) for c in choices):
                option = click.option(
                    flag,
                    name,
                    type=click.Choice(choices, case_sensitive=False),
                    default=None,
                    help=help_text,
                )
            else:
                option = click.option(flag, name, default=None, help=help_text, metavar="VALUE")
            function = option(function)
        return function

    return decorate


def _fields(kind: type[BrokerSettings]) -> list[tuple[str, FieldInfo]]:
    """The command's own settings first, then those of its bases (commands, broker)."""
    order: list[str] = []
    for base in kind.__mro__:
        for name in getattr(base, "__annotations__", {}):
            if name in kind.model_fields and name not in order:
                order.append(name)
    return [(name, kind.model_fields[name]) for name in order]


def options_summary(kind: type[BrokerSettings]) -> str:
    """Every option of ``kind`` with its help, for a command's ``--help`` text."""
    lines = []
    for name, field in _fields(kind):
        flag = "--" + name.replace("_", "-")
        text = textwrap.wrap(_option_help(name, field), width=74)
        lines.append(f"  {flag:<20} {text[0]}")
        lines.extend(f"  {'':<20} {rest}" for rest in text[1:])
    return "\n".join(lines)


def fail(code: int, message: str) -> NoReturn:
    """Print ``dicom-bridge: error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"dicom-bridge: error: {message}", err=True)
    sys.exit(code)


def load_settings(kind: type[S], flags: dict[str, Any]) -> S:
    """Settings from flags and environment, logging configured; exit 2 when invalid."""
    try:
        settings = load(kind, **flags)
    except ConfigError as exc:
        fail(EXIT_CONFIG, exc.message)
    bridge_logging.configure(settings.log_level, settings.log_format)
    return settings


def quiet_amqp_libraries(level: str) -> None:
    """Connection failures are reported once, by the command: not again by aio-pika."""
    if level != "DEBUG":
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
