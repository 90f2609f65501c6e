"""Fake of rlbench/const.py (stepjam/RLBench 02720bb): the Panda is the only robot of this fake."""

from pyrep.robots.arms.panda import Panda
from pyrep.robots.end_effectors.panda_gripper import PandaGripper

colors = [
    ("red", (1.0, 0.0, 0.0)),
    ("green", (0.0, 0.5, 0.0)),
    ("blue", (0.0, 0.0, 1.0)),
]

SUPPORTED_ROBOTS = {
    "panda": (Panda, PandaGripper, 7),
}
