"""Fake of gym/envs/registration.py (openai/gym 0.19.0): `register`, `make` (wrapping `TimeLimit` when the
spec has `max_episode_steps`), `spec`; ids must look like `Name-vN`."""

import copy
import importlib
import re

from gym import error

env_id_re = re.compile(r"^(?:[\w:-]+\/)?([\w:.-]+)-v(\d+)$")


def load(name):
    mod_name, attr_name = name.split(":")
    return getattr(importlib.import_module(mod_name), attr_name)


class EnvSpec(object):
    def __init__(self, id, entry_point=None, reward_threshold=None, nondeterministic=False, max_episode_steps=None,
                 kwargs=None):
        self.id = id
        self.entry_point = entry_point
        self.reward_threshold = reward_threshold
        self.nondeterministic = nondeterministic
        self.max_episode_steps = max_episode_steps
        self._kwargs = {} if kwargs is None else kwargs
        if not env_id_re.search(id):
            raise error.Error("Attempted to register malformed environment ID: {}.".format(id))

    def make(self, **kwargs):
        _kwargs = self._kwargs.copy()
        _kwargs.update(kwargs)
        env = self.entry_point(**_kwargs) if callable(self.entry_point) else load(self.entry_point)(**_kwargs)
        spec = copy.copy(self)
        spec._kwargs = _kwargs
        env.unwrapped.spec = spec
        return env

    def __repr__(self):
        return "EnvSpec({})".format(self.id)


class EnvRegistry(object):
    def __init__(self):
        self.env_specs = {}

    def make(self, path, **kwargs):
        env = self.spec(path).make(**kwargs)
        if env.spec.max_episode_steps is not None:
            from gym.wrappers.time_limit import TimeLimit

            env = TimeLimit(env, max_episode_steps=env.spec.max_episode_steps)
        return env

    def all(self):
        return self.env_specs.values()

    def spec(self, path):
        if path not in self.env_specs:
            raise error.UnregisteredEnv("No registered env with id: {}".format(path))
        return self.env_specs[path]

    def register(self, id, **kwargs):
        if id in self.env_specs:
            raise error.Error("Cannot re-register id: {}".format(id))
        self.env_specs[id] = EnvSpec(id, **kwargs)


registry = EnvRegistry()


def register(id, **kwargs):
    return registry.register(id, **kwargs)


def make(id, **kwargs):
    return registry.make(id, **kwargs)


def spec(id):
    return registry.spec(id)
