"""Fake of rlbench/backend/__init__.py (stepjam/RLBench 02720bb)."""
