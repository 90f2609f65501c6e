"""Fake of gym/spaces/multi_binary.py (openai/gym 0.19.0)."""

import numpy as np

from gym.spaces.space import Space


class MultiBinary(Space):
    def __init__(self, n):
        self.n = n
        super(MultiBinary, self).__init__((n,) if np.isscalar(n) else tuple(n), np.int8)

    def sample(self):
        return self.np_random.randint(low=0, high=2, size=self.shape).astype(self.dtype)

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and bool(((x == 0) | (x == 1)).all())
