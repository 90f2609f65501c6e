"""How torch's OpenMP threads wait between parallel regions, which the CLI chooses before torch loads.

With libgomp's default (spin ~300,000 times, then sleep) or `ACTIVE` (spin), a waiting thread keeps its core
busy; with `PASSIVE` it sleeps, and waking it costs time at every parallel region. On this project's 2-core
machine (README, "The CLI") passive waiting halves the speed of the small UNet when nothing else runs, but
spinning makes a chunk or an update 2-10x slower as soon as one other process is busy (or a second vplan
process, or Temp-LoRA's worker thread, runs beside it). So the CLI defaults to `PASSIVE`, which never degrades
far, and a user whose machine runs nothing else sets `OMP_WAIT_POLICY=ACTIVE`. Read once, when torch loads.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])

DEFAULT = "PASSIVE"


def choose_wait_policy() -> None:
    """`OMP_WAIT_POLICY=PASSIVE` unless the user set it; call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT)


def current_policy() -> str | None:
    """The policy in effect for this process: "PASSIVE", "ACTIVE", or None for libgomp's default."""
    value = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    return value if value in ("PASSIVE", "ACTIVE") else None


def wait_policy() -> str:
    """The policy in effect for this process, in words, for benchmark headers."""
    policy = current_policy()
    return f"OpenMP waiting {policy.lower()}" if policy else "OpenMP waiting libgomp default"


def restores_torch_threads(function: Function) -> Function:
    """For a command that sets torch's intra-op thread count (its `threads=`): the caller's count comes back when
    it returns or raises, so a script or test that calls it is not left on another count. A caller that has not
    loaded torch has no count to restore, and the command checks its settings before it loads torch (the CLI)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        torch = sys.modules.get("torch")
        before = torch.get_num_threads() if torch is not None else None
        try:
            return function(*args, **kwargs)
        finally:
            if before is not None:
                torch.set_num_threads(before)

    return wrapper  # type: ignore[return-value]
