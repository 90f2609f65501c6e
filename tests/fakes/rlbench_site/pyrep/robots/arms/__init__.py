"""Fake of pyrep/robots/arms/__init__.py (stepjam/PyRep 8f420be)."""
