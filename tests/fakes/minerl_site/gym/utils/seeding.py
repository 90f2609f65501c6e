"""Fake of gym/utils/seeding.py (openai/gym 0.19.0): `np_random(seed) -> (RandomState, seed)`."""

import os

import numpy as np

from gym import error


def np_random(seed=None):
    if seed is not None and not (isinstance(seed, int) and 0 <= seed):
        raise error.Error("Seed must be a non-negative integer or omitted, not {}".format(seed))
    seed = int.from_bytes(os.urandom(4), "big") if seed is None else seed
    rng = np.random.RandomState()
    rng.seed(seed % 2**32)
    return rng, seed
