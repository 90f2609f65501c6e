"""Fake of gym/spaces/box.py (openai/gym 0.19.0): `Box(low, high, shape=None, dtype=np.float32)`."""

import numpy as np

from gym.spaces.space import Space


class Box(Space):
    def __init__(self, low, high, shape=None, dtype=np.float32):
        assert dtype is not None, "dtype must be explicitly provided. "
        dtype = np.dtype(dtype)
        if shape is not None:
            shape = tuple(shape)
        elif not np.isscalar(low):
            shape = np.shape(low)
        elif not np.isscalar(high):
            shape = np.shape(high)
        else:
            raise ValueError("shape must be provided or inferred from the shapes of low or high")
        self.low = np.full(shape, low, dtype=dtype) if np.isscalar(low) else np.asarray(low, dtype=dtype)
        self.high = np.full(shape, high, dtype=dtype) if np.isscalar(high) else np.asarray(high, dtype=dtype)
        super(Box, self).__init__(shape, dtype)

    def sample(self):
        return self.np_random.uniform(self.low, self.high, size=self.shape).astype(self.dtype)

    def contains(self, x):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x, dtype=self.dtype)
        return bool(np.can_cast(x.dtype, self.dtype) and x.shape == self.shape and np.all(x >= self.low)
                    and np.all(x <= self.high))

    def __repr__(self):
        return "Box({}, {}, {}, {})".format(self.low.min(), self.high.max(), self.shape, self.dtype)
