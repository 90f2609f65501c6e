"""Group-relative advantages at two levels (TempAct's hierarchical exploration; GRPO's normalisation).

Rewards of one task seed form a (G plans, K continuations) table. A plan's reward is the mean over its
continuations; its advantage is that, standardised over the G plans. A continuation's advantage is its reward
standardised over the K continuations of its own plan (same plan, same start: only the executor differs). A
group whose rewards are all equal carries no signal: its advantages are 0.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def standardize(values: np.ndarray) -> np.ndarray:
    """(x − mean) / std along the last axis; 0 where a row's std is 0 (no preference)."""
    values = np.asarray(values, np.float64)
    std = values.std(axis=-1, keepdims=True)
    centred = values - values.mean(axis=-1, keepdims=True)
    return np.where(std > EPS, centred / np.maximum(std, EPS), 0.0)


def group_advantages(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plan advantages (G,) and continuation advantages (G, K) of one task seed's (G, K) reward table."""
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 2 or 0 in rewards.shape or not np.isfinite(rewards).all():
        raise ValueError(f"expected a finite (G plans, K continuations) reward table, got shape {rewards.shape}")
    return standardize(rewards.mean(axis=1)), standardize(rewards)
