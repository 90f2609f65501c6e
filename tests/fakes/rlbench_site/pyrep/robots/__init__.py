"""Fake of pyrep/robots/__init__.py (stepjam/PyRep 8f420be)."""
