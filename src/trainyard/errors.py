"""Errors meant for people: each one prints as a single line and exits with code 2."""


class TrainyardError(Exception):
    """A problem with the user's input (config, data, files). The CLI prints it on one line, exit 2."""

    exit_code = 2


class ConfigError(TrainyardError):
    """A bad config key or value."""


class DataError(TrainyardError):
    """Data that cannot be found, read or used."""


class CheckpointError(TrainyardError):
    """A checkpoint that cannot be loaded."""
