"""Fake of gym/spaces/multi_discrete.py (openai/gym 0.19.0)."""

import numpy as np

from gym.spaces.space import Space


class MultiDiscrete(Space):
    def __init__(self, nvec):
        self.nvec = np.asarray(nvec, dtype=np.int64)
        super(MultiDiscrete, self).__init__(self.nvec.shape, np.int64)

    def sample(self):
        return (self.np_random.random_sample(self.nvec.shape) * self.nvec).astype(self.dtype)

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all(0 <= x) and np.all(x < self.nvec))
