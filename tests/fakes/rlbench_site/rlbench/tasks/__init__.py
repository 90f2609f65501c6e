"""Fake of rlbench/tasks/__init__.py (stepjam/RLBench 02720bb): no bundled tasks in this fake."""
