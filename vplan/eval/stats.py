"""Paired comparisons of two variants run on the same episodes and noise: the per-episode difference, its standard
error and who is ahead, so a gap can be told from noise (`eval worldmodel compare=`, `eval consistency`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def paired_summary(gains: np.ndarray) -> dict[str, Any]:
    """Per-episode differences (variant minus baseline): their mean, standard error (None for one episode), and
    in how many episodes the variant is ahead and behind (no episodes: mean None, not NaN, which JSON lacks)."""
    gains = np.asarray(gains, dtype=np.float64)
    error = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else None
    mean = float(gains.mean()) if len(gains) else None
    return {"mean": mean, "standard_error": error, "episodes": len(gains),
            "ahead": int((gains > 0).sum()), "behind": int((gains < 0).sum())}


def signed(value: float, digits: int = 2) -> str:
    """A difference with its sign and `digits` decimals; two significant digits where those decimals would read
    ±0.00 for one that is not 0 (`-0.00, ... behind in 1` read as a tie); 0 without a sign."""
    if value == 0:
        return f"{0:.{digits}f}"
    text = f"{value:+.{digits}f}"
    return f"{value:+.2g}" if float(text) == 0 else text
