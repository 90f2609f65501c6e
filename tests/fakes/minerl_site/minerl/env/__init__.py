"""Fake of minerl/env/__init__.py (minerllabs/minerl v0.4.4)."""
