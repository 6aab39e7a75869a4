"""``serve`` runs the bridge; ``example-consumer`` runs the example consumer."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bridge.cli.options import EXIT_RUNTIME, fail, load_settings, settings_options
from bridge.config import BridgeSettings, ConsumerSettings
from bridge.errors import StartupError
from bridge.ops import service


@click.command(
    epilog="""\b
Examples:
  dicom-bridge serve --port 11112 --ae-title PACS-BRIDGE
  BRIDGE_AMQP_URL=amqps://user:pw@mq:5671/ dicom-bridge serve
  dicom-bridge serve --sop-classes verification,CTImageStorage,n-services"""
)
@settings_options(BridgeSettings)
def serve(**flags: Any) -> None:
    """Run the DICOM SCP and bridge each request to RabbitMQ."""
    settings = load_settings(BridgeSettings, flags)
    try:
        asyncio.run(service.serve(settings))
    except StartupError as exc:
        fail(EXIT_RUNTIME, exc.message)


@click.command(
    "example-consumer",
    epilog="""\b
Examples:
  dicom-bridge example-consumer --queue my-test-queue --log-level DEBUG
  dicom-bridge example-consumer --processes 4""",
)
@settings_options(ConsumerSettings)
def example_consumer(**flags: Any) -> None:
    """Run the example consumer: store, find, get and move from a local directory."""
    # Imported here: the example and its index are not part of what 'serve' loads.
    from bridge.example.consumer import build, worker  # noqa: PLC0415
    from bridge.sdk.processes import run_processes  # noqa: PLC0415

    settings = load_settings(ConsumerSettings, flags)
    if settings.processes > 1:
        # Each worker process builds its own consumer; this one only supervises them.
        try:
            run_processes(worker, settings.processes, settings)
        except StartupError as exc:
            fail(EXIT_RUNTIME, exc.message)
        return
    try:
        build(settings).run_forever()
    except (OSError, ConnectionError) as exc:
        fail(EXIT_RUNTIME, f"cannot reach the broker at {settings.redacted_url()}: {exc}")
