"""Every optional-dependency check in one place.

`import vplan` works with only the core dependencies; a feature that needs an extra calls
`require_package` where it is used and the user gets the pip line to run.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from vplan.errors import UsageError


class MissingExtraError(ImportError, UsageError):
    """An optional package is needed for the feature the user asked for (a UsageError: the CLI says it in one
    line, with the pip line to run)."""


@lru_cache(maxsize=None)
def is_package_available(module: str) -> bool:
    """Whether `module` can be imported, checked once without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_package(module: str, extra: str, hint: str = "") -> None:
    """Raise `MissingExtraError` naming the extra to install when `module` is missing."""
    if is_package_available(module):
        return
    message = f"'{module}' is not installed; install it with: pip install 'vplan[{extra}]'"
    if hint:
        message += f". {hint}"
    raise MissingExtraError(message)
