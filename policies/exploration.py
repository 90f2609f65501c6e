"""Exploratory segments for the scripted experts: stretches of random actions, for inverse-dynamics data, that
fill a given share of an episode's steps."""

from __future__ import annotations

import numpy as np

EXPLORE_LENGTHS = (3, 8)  # inclusive range of steps in one segment


class ExplorationSegments:
    """Step by step, whether the expert's action gives way to a random one.

    A segment may start on any step outside one, and the step it starts on is its first. With start probability
    p, the stretches between segments last (1 - p) / p steps on average and a segment L (5.5), so
    p = f / (L (1 - f) + f) makes the expected share of exploring steps exactly `fraction` = f.
    """

    def __init__(self, fraction: float) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"explore_fraction: expected a float in [0, 1), got {fraction!r}")
        mean_length = sum(EXPLORE_LENGTHS) / 2
        self.start_p = fraction / (mean_length * (1 - fraction) + fraction)
        self.left = 0  # steps left in the current segment

    def reset(self) -> None:
        self.left = 0

    def explore(self, rng: np.random.Generator) -> bool:
        """Whether this step explores (one draw from `rng` outside a segment, two where one starts)."""
        if self.left == 0 and rng.random() < self.start_p:
            self.left = int(rng.integers(EXPLORE_LENGTHS[0], EXPLORE_LENGTHS[1] + 1))
        if self.left > 0:
            self.left -= 1
            return True
        return False
