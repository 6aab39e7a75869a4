"""``schema`` prints the contract consumers are written against."""

from __future__ import annotations

from pathlib import Path

import click

from bridge.cli.options import EXIT_RUNTIME, fail

SCHEMAS: dict[str, tuple[str, str]] = {
    "envelope": ("envelope.schema.json", "JSON Schema of a request envelope (draft 2020-12)"),
    "reply": ("reply.schema.json", "JSON Schema of a consumer's reply"),
    "dicom-json": ("dicom-json.schema.json", "JSON Schema of a DICOM JSON dataset"),
    "command": ("command.schema.json", "JSON Schema of a command (the bridge as SCU)"),
    "command-reply": ("command-reply.schema.json", "JSON Schema of a command's reply"),
    "asyncapi": ("asyncapi.yaml", "AsyncAPI 3.0 document: exchange, routing keys, messages"),
}


def schema_dir(package_dir: Path | None = None) -> Path:
    """Where the schemas are: ``bridge/_schemas`` in an installed wheel (pyproject
    force-includes ``schemas`` there), ``schemas/`` beside the package in a checkout."""
    package = package_dir or Path(__file__).resolve().parents[1]
    for candidate in (package / "_schemas", package.parent / "schemas"):
        if (candidate / SCHEMAS["envelope"][0]).is_file():
            return candidate
    raise FileNotFoundError(f"no schemas beside {package}: neither _schemas/ nor ../schemas/")


SCHEMA_HELP = """Print one of the schemas consumers are written against.

\b
NAME is one of:
""" + "\n".join(f"  {name:<11} {text}" for name, (_, text) in SCHEMAS.items())

SCHEMA_EPILOG = """\b
Examples:
  dicom-bridge schema                      # list the names
  dicom-bridge schema envelope > envelope.schema.json
  dicom-bridge schema asyncapi > asyncapi.yaml
  dicom-bridge schema --path reply         # where the file is"""


def _schema(name: str | None, path: bool) -> None:
    try:
        directory = schema_dir()
    except FileNotFoundError as exc:
        fail(EXIT_RUNTIME, str(exc))
    if name is None:
        click.echo(f"schemas in {directory}:")
        for key, (filename, text) in SCHEMAS.items():
            click.echo(f"  {key:<11} {filename:<24} {text}")
        click.echo("print one with: dicom-bridge schema NAME")
        return
    target = directory / SCHEMAS[name][0]
    if path:
        click.echo(str(target))
        return
    try:
        click.echo(target.read_text(encoding="utf-8"), nl=False)
    except OSError as exc:
        fail(EXIT_RUNTIME, f"cannot read {target}: {exc.strerror or exc}")


@click.command("schema", help=SCHEMA_HELP, epilog=SCHEMA_EPILOG)
@click.argument("name", required=False, type=click.Choice(list(SCHEMAS)))
@click.option("--path", is_flag=True, help="Print the file's path instead of its text.")
def schema(name: str | None, path: bool) -> None:
    _schema(name, path)
