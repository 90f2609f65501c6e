"""Ctrl-C held off while work that is already done is closed: a finished run's records, summary and simulator."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (in the main thread, the only one Python delivers it to): a Ctrl-C as a
    finished run closes its files cut that short, and turned the finished run into an interrupted one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
