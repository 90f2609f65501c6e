"""Fake of gym/envs/__init__.py (openai/gym 0.19.0): the registry functions, no bundled envs."""

from gym.envs.registration import make, register, registry, spec

__all__ = ["make", "register", "registry", "spec"]
