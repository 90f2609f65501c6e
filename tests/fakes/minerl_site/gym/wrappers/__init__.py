"""Fake of gym/wrappers/__init__.py (openai/gym 0.19.0): `TimeLimit` only (0.19 has no render_collection or
human_rendering wrappers, which shimmy strips when they exist)."""

from gym.wrappers.time_limit import TimeLimit

__all__ = ["TimeLimit"]
