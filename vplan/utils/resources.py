"""What this process has used so far: CPU seconds and peak memory, for the run summary and the benches."""

from __future__ import annotations

import resource
import sys


def cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB: `ru_maxrss` is KiB on Linux and bytes on macOS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024**2 if sys.platform == "darwin" else 1024)
