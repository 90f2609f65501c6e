"""Fake of pyrep/robots/configuration_paths/__init__.py (stepjam/PyRep 8f420be)."""
