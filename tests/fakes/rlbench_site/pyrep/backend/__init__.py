"""Fake of pyrep/backend/__init__.py (stepjam/PyRep 8f420be)."""
