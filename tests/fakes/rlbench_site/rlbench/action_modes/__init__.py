"""Fake of rlbench/action_modes/__init__.py (stepjam/RLBench 02720bb)."""
