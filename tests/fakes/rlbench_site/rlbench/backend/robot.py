"""Fake of rlbench/backend/robot.py (stepjam/RLBench 02720bb)."""


class Robot(object):
    """Simple container for the robot components."""

    def __init__(self, arm, gripper):
        self.arm = arm
        self.gripper = gripper
