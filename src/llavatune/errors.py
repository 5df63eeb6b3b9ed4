"""The one exception type a user sees: it carries a message that says what, where, and the fix."""


class LlavatuneError(Exception):
    """A problem with the user's input (file, flag, config, checkpoint). The CLI prints it as one line."""


class ConfigError(LlavatuneError):
    """An unknown key, a wrong type or a bad value in a run config or a command-line override."""


class DataError(LlavatuneError):
    """Bad input data; the message names the file and row."""
