"""Fake of minerl/herobraine/hero/__init__.py (minerllabs/minerl v0.4.4)."""
