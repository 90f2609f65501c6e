"""Fake of gym/spaces/dict.py (openai/gym 0.19.0): `Dict(spaces)` keeping an OrderedDict in `.spaces`."""

from collections import OrderedDict

from gym.spaces.space import Space


class Dict(Space):
    def __init__(self, spaces=None, **spaces_kwargs):
        spaces = spaces_kwargs if spaces is None else spaces
        if isinstance(spaces, dict) and not isinstance(spaces, OrderedDict):
            spaces = OrderedDict(sorted(spaces.items()))
        self.spaces = OrderedDict(spaces)
        super(Dict, self).__init__(None, None)

    def seed(self, seed=None):
        return [space.seed(seed) for space in self.spaces.values()]

    def sample(self):
        return OrderedDict([(k, space.sample()) for k, space in self.spaces.items()])

    def contains(self, x):
        if not isinstance(x, dict) or len(x) != len(self.spaces):
            return False
        return all(k in x and space.contains(x[k]) for k, space in self.spaces.items())

    def __getitem__(self, key):
        return self.spaces[key]

    def __iter__(self):
        yield from self.spaces

    def __len__(self):
        return len(self.spaces)

    def __repr__(self):
        return "Dict(" + ", ".join([str(k) + ":" + str(s) for k, s in self.spaces.items()]) + ")"
