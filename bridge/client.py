"""The command client under its first name: :mod:`bridge.sdk.client` is its home."""

from bridge.sdk.client import CommandClient, CommandFailed, CommandResult, FindStream

__all__ = ["CommandClient", "CommandFailed", "CommandResult", "FindStream"]
