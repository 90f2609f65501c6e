"""What this process has used so far (CPU seconds and peak memory, for the run summary and the benches) and how many
processes a launcher started beside it."""

from __future__ import annotations

import os
import resource
import sys


def cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB: `ru_maxrss` is KiB on Linux and bytes on macOS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024**2 if sys.platform == "darwin" else 1024)


def launched_processes() -> int:
    """How many processes a launcher started (accelerate launch and torchrun set WORLD_SIZE in each); 1 without."""
    value = os.environ.get("WORLD_SIZE", "1").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1
