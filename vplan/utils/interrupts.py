"""Ctrl-C held off while work that is already done is closed: a finished run's records, summary and simulator."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (in the main thread, the only one Python delivers them to): a
    Ctrl-C as a finished run closes its files cut that short, and turned the finished run into an interrupted one
    (a SIGTERM, killing it there, too); either is dropped, the work it would stop being done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
