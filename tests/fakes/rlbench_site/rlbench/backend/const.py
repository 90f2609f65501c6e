"""Fake of rlbench/backend/const.py (stepjam/RLBench 02720bb): the scene file's name."""

TTT_FILE = "task_design.ttt"
