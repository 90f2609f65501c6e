"""Fake of minerl/herobraine/__init__.py (minerllabs/minerl v0.4.4)."""
