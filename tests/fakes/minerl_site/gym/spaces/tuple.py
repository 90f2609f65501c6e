"""Fake of gym/spaces/tuple.py (openai/gym 0.19.0)."""

from gym.spaces.space import Space


class Tuple(Space):
    def __init__(self, spaces):
        self.spaces = tuple(spaces)
        super(Tuple, self).__init__(None, None)

    def sample(self):
        return tuple(space.sample() for space in self.spaces)

    def contains(self, x):
        return isinstance(x, tuple) and len(x) == len(self.spaces) and all(
            space.contains(part) for space, part in zip(self.spaces, x))
