"""Fake of minerl/herobraine/env_specs/__init__.py (minerllabs/minerl v0.4.4)."""
