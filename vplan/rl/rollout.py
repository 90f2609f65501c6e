"""What one explored episode leaves behind for scoring and finetuning: `EpisodeRollout`.

`vplan rl` runs, per task seed, G plans and K executor continuations of each from the same start; every
continuation is an `EpisodeRollout`: the env's final `info`, the agent's stats, and each imagined chunk with the
latents it was generated from (context), its own latents and subgoal text — what the diffusion loss needs to
reweight or compare it — plus the frames that were executed while it was followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ImaginedChunk:
    """One chunk the executor imagined: the diffusion sample that a finetuning objective reweights."""

    text: str
    context: torch.Tensor = field(repr=False)  # (1, k, C, h, w): the latents it was conditioned on
    latents: torch.Tensor = field(repr=False)  # (1, T, C, h, w): what was generated
    frames: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8: decoded
    actions: np.ndarray = field(repr=False)  # what the IDM read off the frames: action i leads into frame i
    observed: list[np.ndarray] = field(default_factory=list, repr=False)  # the real frames while it was followed
    drift: list[float] = field(default_factory=list)  # per observed frame: imagined vs real (mean abs, [0, 1])


@dataclass
class EpisodeRollout:
    """One continuation: which plan (group `plan_index`), which continuation, and how it went."""

    task_seed: int
    plan_index: int
    continuation: int
    plan: dict[str, Any]
    final_info: dict[str, Any] = field(repr=False)
    stats: dict[str, Any]
    chunks: list[ImaginedChunk] = field(default_factory=list, repr=False)
    rewards: dict[str, float] = field(default_factory=dict)  # by reward name, before weighting
    reward: float = 0.0  # the weighted sum

    @property
    def imagined_video(self) -> np.ndarray:
        """The imagined frame of every executed step in order, (N, H, W, 3) uint8, as `vplan run`'s video shows
        it: a chunk cut by a replan or by the episode's end counts to the step it reached, since the frames after
        it were never followed (the next chunk starts again from the real frame there). Empty when no chunk was
        made."""
        frames = [chunk.frames[: len(chunk.observed)] for chunk in self.chunks]
        if not frames:
            return np.zeros((0, 1, 1, 3), np.uint8)
        return np.concatenate(frames)
