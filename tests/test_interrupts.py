"""Stop signals as the command line handles them: each in a fresh process, as the `vplan` command's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def dropped_in_a_fork_hook(signum: str) -> str:
    """Code that forks with an at-fork hook in which `signum` is handled: Python drops the stop it raises there."""
    return f"""
            os.register_at_fork(after_in_parent=lambda: signal.raise_signal(signal.{signum}))
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)"""


def run(code: str) -> subprocess.CompletedProcess:
    preamble = ("import os, signal, sys, time\n"
                "from vplan.utils.interrupts import Terminated, handle_stop_signals\n"
                "handle_stop_signals()\n")
    return subprocess.run([sys.executable, "-c", preamble + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("signum, stop", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_a_stop_python_drops_in_an_at_fork_hook_is_delivered_again(signum, stop):
    """ffmpeg's start (imageio's preexec_fn) runs logging's at-fork hooks; a stop handled inside one was printed as
    "Exception ignored" and dropped, and the command went on to its end (a Ctrl-C to collect was once lost so)."""
    result = run(f"""
        try:{dropped_in_a_fork_hook(signum)}
            time.sleep(20)
            print("went on")
        except {stop} as error:
            print("stopped:", type(error).__name__)
    """)
    assert result.stdout == f"stopped: {stop}\n", result
    assert "Exception ignored" not in result.stderr, result.stderr


def test_a_second_sigterm_does_not_cut_the_first_ones_clean_up_short():
    """`timeout`, Slurm and torchrun send SIGTERM more than once: the second cut collect's clean-up (the env's
    close, the line saying what it kept) short."""
    result = run("""
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)
        except Terminated:
            os.kill(os.getpid(), signal.SIGTERM)  # the same stop, sent again during the clean-up
            time.sleep(0.2)
            print("cleaned up")
    """)
    assert result.stdout == "cleaned up\n", result


@pytest.mark.parametrize("dropped, then, stop", [("SIGINT", "SIGTERM", "Terminated"),
                                                 ("SIGTERM", "SIGINT", "KeyboardInterrupt")])
def test_a_dropped_stop_is_not_sent_again_into_the_clean_up_of_one_that_came_since(dropped, then, stop):
    result = run(f"""
        try:{dropped_in_a_fork_hook(dropped)}
            os.kill(os.getpid(), signal.{then})  # another stop, before the dropped one is sent again
            time.sleep(20)
        except {stop}:
            time.sleep(0.3)  # the clean-up, past the moment the dropped one would have come again
            print("cleaned up")
    """)
    assert result.stdout == "cleaned up\n", result
