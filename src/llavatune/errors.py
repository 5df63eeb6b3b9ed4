"""The one exception type a user sees: it carries a message that says what, where, and the fix."""

from __future__ import annotations


class LlavatuneError(Exception):
    """A problem with the user's input (file, flag, config, checkpoint). The CLI prints it as one line."""


class ConfigError(LlavatuneError):
    """An unknown key, a wrong type or a bad value in a run config or a command-line override; `key` (dotted:
    lora.r) names the key it is about, when it is about one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DataError(LlavatuneError):
    """Bad input data; the message names the file and row."""
