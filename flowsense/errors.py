"""The error hierarchy. Everything the CLI reports as one line derives from FlowsenseError."""

from __future__ import annotations


class FlowsenseError(Exception):
    """Base class: a problem the user should read about in one line."""

    exit_code = 2


class ConfigError(FlowsenseError):
    """Bad usage or configuration: nothing was analysed (exit 2)."""

    exit_code = 2


class SignatureError(ConfigError):
    """A signature or policy file is invalid; the message names path:line."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


class CaptureError(FlowsenseError):
    """A capture is damaged at the container level (exit 1).

    What was readable before ``offset`` has been analysed; the rest of the file is skipped.
    """

    exit_code = 1

    def __init__(self, path: str, offset: int, message: str) -> None:
        super().__init__(f"{path}: at byte {offset}: {message}")
        self.path = path
        self.offset = offset
        self.reason = message


class InputMissingError(ConfigError):
    """A path that does not exist or an interface that cannot be opened (exit 2)."""
