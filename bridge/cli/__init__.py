"""Command line: the only module that parses argv or exits.

Every option comes from a settings field (:mod:`bridge.config`), so flags, ``BRIDGE_*``
variables and ``--help`` cannot drift apart.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, get_args

import click
from pydantic.fields import FieldInfo

from bridge.config import BridgeSettings, BrokerSettings, ConsumerSettings, load
from bridge.errors import ConfigError, StartupError
from bridge.example.consumer import build
from bridge.ops import logging as bridge_logging
from bridge.ops import service

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


def _options_summary(kind: type[BrokerSettings]) -> str:
    lines = []
    for name, field in _fields(kind):
        flag = "--" + name.replace("_", "-")
        text = textwrap.wrap(_option_help(name, field), width=74)
        lines.append(f"  {flag:<20} {text[0]}")
        lines.extend(f"  {'':<20} {rest}" for rest in text[1:])
    return "\n".join(lines)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"dicom-bridge: error: {message}", err=True)
    sys.exit(code)


def _settings(kind: type[S], flags: dict[str, Any]) -> S:
    """Settings from flags and environment, logging configured; exit 2 when invalid."""
    try:
        settings = load(kind, **flags)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, exc.message)
    bridge_logging.configure(settings.log_level, settings.log_format)
    return settings


MAIN_HELP = f"""DICOM SCP that answers every DIMSE request through RabbitMQ consumers.

\b
Quick start (three terminals):
  dicom-bridge serve
  dicom-bridge example-consumer
  echoscu -aec DICOM-BRIDGE 127.0.0.1 11112

\b
Options of 'serve' (flags win over BRIDGE_* variables):
{_options_summary(BridgeSettings)}

\b
Options of 'example-consumer':
{_options_summary(ConsumerSettings)}
"""


@click.group(help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dicom-bridge", prog_name="dicom-bridge")
def cli() -> None:
    pass


@cli.command(
    epilog="""\b
Examples:
  dicom-bridge serve --port 11112 --ae-title PACS-BRIDGE
  BRIDGE_AMQP_URL=amqps://user:pw@mq:5671/ dicom-bridge serve
  dicom-bridge serve --sop-classes verification,CTImageStorage,n-services"""
)
@settings_options(BridgeSettings)
def serve(**flags: Any) -> None:
    """Run the DICOM SCP and bridge each request to RabbitMQ."""
    settings = _settings(BridgeSettings, flags)
    try:
        asyncio.run(service.serve(settings))
    except StartupError as exc:
        _fail(EXIT_RUNTIME, exc.message)


@cli.command(
    "example-consumer",
    epilog="""\b
Example:
  dicom-bridge example-consumer --queue my-test-queue --log-level DEBUG""",
)
@settings_options(ConsumerSettings)
def example_consumer(**flags: Any) -> None:
    """Answer every request with Success and log one line per request."""
    settings = _settings(ConsumerSettings, flags)
    try:
        build(settings).run_forever()
    except (OSError, ConnectionError) as exc:
        _fail(EXIT_RUNTIME, f"cannot reach the broker at {settings.redacted_url()}: {exc}")


def main() -> None:
    cli(prog_name="dicom-bridge")


# Operator tools (bridge/tools.py); imported here, after settings_options, which they use.
from bridge.cli.tools import commands as _tool_commands  # noqa: E402

for _command in _tool_commands():
    cli.add_command(_command)
