"""Command line: the only package that parses argv or exits.

``serve`` and ``example-consumer`` (:mod:`bridge.cli.serve`), ``schema``, ``check`` and
``tail`` (one module each), on one click group.
"""

from __future__ import annotations

import click

from bridge.cli import check, schema, serve, tail
from bridge.cli.options import options_summary
from bridge.config import BridgeSettings, ConsumerSettings

MAIN_HELP = f"""DICOM SCP that answers every DIMSE request through RabbitMQ consumers.

\b
Quick start (three terminals):
  dicom-bridge serve
  dicom-bridge example-consumer
  echoscu -aec DICOM-BRIDGE 127.0.0.1 11112

\b
Options of 'serve' (flags win over BRIDGE_* variables):
{options_summary(BridgeSettings)}

\b
Options of 'example-consumer':
{options_summary(ConsumerSettings)}
"""


@click.group(help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dicom-bridge", prog_name="dicom-bridge")
def cli() -> None:
    pass


for _command in (serve.serve, serve.example_consumer, schema.schema, check.check, tail.tail):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="dicom-bridge")
