"""Fake of pyrep/robots/end_effectors/__init__.py (stepjam/PyRep 8f420be)."""
