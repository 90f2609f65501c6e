"""Stop signals: a SIGTERM stops a command as a Ctrl-C does (`Terminated`), a stop Python would drop is delivered
again, and both are held off while work that is already done is closed (a finished run's records, summary and
simulator)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_terminating = False  # a Terminated was raised: a SIGTERM after it is the same stop, sent again
_stops_raised = 0  # stops raised by the handlers below: a dropped stop is sent again only if none came since


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a job scheduler's time limit or preemption, `kill`, `docker stop`), raised where Ctrl-C raises
    KeyboardInterrupt, so that every command keeps what it has done as it does for a Ctrl-C (its default action
    killed the process at once, mid-episode, its files unclosed); the command line then exits 143, not 130."""


def terminated() -> Terminated:
    """The Terminated to raise for a SIGTERM: from then on, further SIGTERMs are ignored (`timeout`, Slurm and
    torchrun send it more than once), so that they do not cut short the clean-up of the first."""
    global _terminating, _stops_raised
    _terminating = True
    _stops_raised += 1
    return Terminated()


def raise_terminated(signum: int, frame: Any) -> None:
    """The SIGTERM handler the command line installs."""
    if not _terminating:
        raise terminated()


def interrupted() -> KeyboardInterrupt:
    """The KeyboardInterrupt to raise for a Ctrl-C, counted (see `deliver_dropped_stops`)."""
    global _stops_raised
    _stops_raised += 1
    return KeyboardInterrupt()


def raise_interrupt(signum: int, frame: Any) -> None:
    """The SIGINT handler the command line installs: Python's own, counted."""
    raise interrupted()


def deliver_dropped_stops(unraisable: Any, report: Any = sys.__unraisablehook__) -> None:
    """A `sys.unraisablehook` that sends a stop again where Python dropped it: a Ctrl-C or SIGTERM handled while
    Python ran code whose exceptions it only reports (an at-fork hook, as ffmpeg's start runs logging's; a
    destructor) printed "Exception ignored" and the command went on to its end. The signal is sent again from
    another thread a moment later, so that it reaches the main thread once it is back in code that can raise it
    (dropped again, it is sent again), unless another stop was raised meanwhile: that one is being handled, and
    the copy would cut its clean-up short."""
    stop = unraisable.exc_value
    if not isinstance(stop, KeyboardInterrupt):
        report(unraisable)
        return
    terminate = isinstance(stop, Terminated)
    threading.Thread(target=_send_again, args=(terminate, _stops_raised), daemon=True).start()


def _send_again(terminate: bool, stops_raised: int) -> None:
    global _terminating
    time.sleep(0.05)  # the hook that dropped it has returned (sent at once, it was handled inside the hook again)
    if _stops_raised != stops_raised:
        return
    if terminate:
        _terminating = False  # the SIGTERM stopped nothing: the one sent again is the stop
    os.kill(os.getpid(), signal.SIGTERM if terminate else signal.SIGINT)


def handle_stop_signals() -> None:
    """Make a SIGTERM stop the process's command as a Ctrl-C does, and no stop be dropped (the main thread)."""
    signal.signal(signal.SIGTERM, raise_terminated)
    signal.signal(signal.SIGINT, raise_interrupt)
    sys.unraisablehook = deliver_dropped_stops


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
