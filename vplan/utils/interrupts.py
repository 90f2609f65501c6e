"""Stop signals: a SIGTERM stops a command as a Ctrl-C does (`Terminated`), and both are held off while work that
is already done is closed (a finished run's records, summary and simulator)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any, NoReturn


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a job scheduler's time limit or preemption, `kill`, `docker stop`), raised where Ctrl-C raises
    KeyboardInterrupt, so that every command keeps what it has done as it does for a Ctrl-C (its default action
    killed the process at once, mid-episode, its files unclosed); the command line then exits 143, not 130."""


def raise_terminated(signum: int, frame: Any) -> NoReturn:
    """The SIGTERM handler the command line installs."""
    raise Terminated


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (in the main thread, the only one Python delivers them to): a
    Ctrl-C as a finished run closes its files cut that short, and turned the finished run into an interrupted one
    (a SIGTERM too); either is dropped, the work it would stop being done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
