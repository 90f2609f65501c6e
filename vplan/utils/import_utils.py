"""Every optional-dependency check in one place.

`import vplan` works with only the core dependencies; a feature that needs an extra calls
`require_package` where it is used and the user gets the pip line to run. `lazy_exports` lets a package name
what its heavy submodules hold without importing them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

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


def lazy_exports(package: str, lazy: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` (PEP 562): each name of `lazy` (name -> submodule) is imported on
    first use, and listed by `dir()` (tab completion, `help()`) before it is."""

    def __getattr__(name: str) -> Any:
        if name in lazy:
            return getattr(importlib.import_module(f"{package}.{lazy[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *lazy})

    return __getattr__, __dir__
