"""Errors a user can fix: the CLI prints them as one line and exits with code 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user (a key, a value, a path); the message says what is valid."""


class RunError(Exception):
    """A run that cannot go on (a diverged loss, a missing checkpoint); the message says what to do."""
