"""Errors a user can fix: the CLI prints them as one line and exits with code 2, no traceback. Warnings of what
the user may want to change: the CLI prints them as one line too."""


class UsageError(Exception):
    """Bad input from the user (a key, a value, a path); the message says what is valid."""


class SettingMismatchError(UsageError, ValueError):
    """A setting that passes its own config's check but not what it meets at run time (a module name the loaded
    model lacks); still a ValueError for library callers."""


class RunError(Exception):
    """A run that cannot go on (a diverged loss, a missing checkpoint); the message says what to do."""


class VplanWarning(UserWarning):
    """Something that works but is likely not what the user meant (a fallback taken, a model from another env);
    the CLI prints it as one line `warning: ...`, without the source line Python adds."""
