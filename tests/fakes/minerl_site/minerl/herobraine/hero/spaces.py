"""Fake of minerl/herobraine/hero/spaces.py (minerllabs/minerl v0.4.4): MineRL's spaces subclass gym's
(so shimmy converts them: Box -> Box, Discrete and Enum -> Discrete, Dict -> Dict) and add `no_op()`.
`Enum` holds string values: an action carries the string (e.g. place="none")."""

from collections import OrderedDict

import numpy as np
from gym import spaces as gym_spaces


class MineRLSpace(object):
    def no_op(self, batch_shape=()):
        raise NotImplementedError

    def noop(self, batch_shape=()):
        return self.no_op(batch_shape)


class Box(gym_spaces.Box, MineRLSpace):
    def no_op(self, batch_shape=()):
        return np.zeros(shape=tuple(batch_shape) + tuple(self.shape)).astype(self.dtype)


class Discrete(gym_spaces.Discrete, MineRLSpace):
    def no_op(self, batch_shape=()):
        return 0 if len(batch_shape) == 0 else np.zeros(batch_shape).astype(self.dtype)


class Enum(Discrete, MineRLSpace):
    def __init__(self, *values: str, default=None):
        self.default = default if default is not None else values[0]
        super().__init__(len(values))
        self.values = np.array(sorted(values))
        self.value_map = dict(zip(self.values, range(len(values))))

    def sample(self, bs=None):
        return self.values[super().sample()]

    def no_op(self, batch_shape=()):
        return self.default

    def __getitem__(self, action):
        return self.value_map[action]

    def __len__(self):
        return len(self.values)

    def contains(self, x):
        return x in self.values

    __contains__ = contains


class Dict(gym_spaces.Dict, MineRLSpace):
    def no_op(self, batch_shape=()):
        return OrderedDict([(k, space.no_op(batch_shape=batch_shape)) for k, space in self.spaces.items()])
