"""Errors a user can fix: the CLI prints them as one line and exits with code 2, no traceback. Warnings of what
the user may want to change: the CLI prints them as one line too."""

from collections.abc import Callable


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of an error's message (its type's name if it has none), to say it in one line; with
    `with_type`, `Type: first line`, to quote an underlying error inside a message of our own."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def close_after_block(close: Callable[[], None], body_failed: bool, what: str) -> None:
    """A context manager's `close()` at the end of its with-block: where the block's body failed, its error is the
    one to see, and `close`'s own (a failed background update) becomes a VplanWarning saying `what` failed too."""
    import warnings

    if not body_failed:
        close()
        return
    try:
        close()
    except Exception as error:
        warnings.warn(f"{what} failed too ({first_line(error, with_type=True)})", VplanWarning, stacklevel=3)


class UsageError(Exception):
    """Bad input from the user (a key, a value, a path); the message says what is valid."""


class SettingMismatchError(UsageError, ValueError):
    """A setting that passes its own config's check but not what it meets at run time (a module name the loaded
    model lacks); still a ValueError for library callers."""


class RunError(Exception):
    """A run that cannot go on (a diverged loss, a missing checkpoint); the message says what to do."""


class DatasetError(ValueError):
    """A directory is not a dataset this package can read, or cannot take the episodes asked of it; met while a
    command runs (a damaged file), the CLI says it in one line with exit code 1."""


class DamagedDatasetError(DatasetError):
    """A dataset file that is missing, cut short or unreadable (an interrupted copy): exit code 1 from the CLI,
    whenever it is found; the message says the dataset is damaged and what to do."""


class VplanWarning(UserWarning):
    """Something that works but is likely not what the user meant (a fallback taken, a model from another env);
    the CLI prints it as one line `warning: ...`, without the source line Python adds."""


class PlannerFallbackWarning(VplanWarning):
    """The LLM planner could not produce a valid plan and the offline plan was used."""


class VLMRewardWarning(VplanWarning):
    """A chunk got no answer from the VLM (unclear reply, HTTP error, timeout, exhausted budget)."""
