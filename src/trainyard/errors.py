"""Errors meant for people: each one prints as a single line and exits with code 2."""


class TrainyardError(Exception):
    """A problem with the user's input (config, data, files). The CLI prints it on one line, exit 2."""

    exit_code = 2

    def __str__(self) -> str:
        # Raised in a DataLoader worker, the error comes back re-created from a message that holds the
        # worker's traceback; its last line is the original message.
        text = super().__str__()
        if "\nOriginal Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            return last.split(": ", 1)[1] if ": " in last else last
        return text


class ConfigError(TrainyardError):
    """A bad config key or value."""


class DataError(TrainyardError):
    """Data that cannot be found, read or used."""


class CheckpointError(TrainyardError):
    """A checkpoint that cannot be loaded."""
