"""Fake of pyrep/__init__.py (stepjam/PyRep 8f420be): exposes `PyRep`."""

__version__ = "4.1.0.3"

testing = False

from .pyrep import PyRep  # noqa: E402

__all__ = ["PyRep"]
