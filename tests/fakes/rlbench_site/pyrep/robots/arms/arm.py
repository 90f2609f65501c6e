"""Fake of pyrep/robots/arms/arm.py (stepjam/PyRep 8f420be): IK and paths for the fake's pose-space arm.

The fake arm's joint values are the tip's world pose (position in 1 / sim.JOINT_UNITS m, then the xyzw
quaternion), so IK "solves" by checking reach: the target must be
within sim.ARM_REACH of the arm's base and above the table, and Jacobian IK also within sim.IK_MAX_JUMP of
the current tip (IKError otherwise, as the real Jacobian linearisation fails far from the current pose).
"""

from __future__ import annotations

from typing import List, Union

import numpy as np

from pyrep.backend import sim
from pyrep.const import ConfigurationPathAlgorithms as Algos
from pyrep.errors import ConfigurationPathError, IKError
from pyrep.objects.dummy import Dummy
from pyrep.objects.object import Object
from pyrep.robots.configuration_paths.arm_configuration_path import ArmConfigurationPath
from pyrep.robots.robot_component import RobotComponent


class Arm(RobotComponent):
    """Base class representing a robot arm with path planning support."""

    def __init__(self, count: int, name: str, num_joints: int, base_name: str = None,
                 max_velocity=1.0, max_acceleration=4.0, max_jerk=1000):
        joint_names = ["%s_joint%d" % (name, i + 1) for i in range(num_joints)]
        super().__init__(count, name, joint_names, base_name)
        self.max_velocity = max_velocity
        self.max_acceleration = max_acceleration
        self.max_jerk = max_jerk
        suffix = "" if count == 0 else "#%d" % (count - 1)
        self._ik_target = Dummy("%s_target%s" % (name, suffix))
        self._ik_tip = Dummy("%s_tip%s" % (name, suffix))

    def _target_pose(self, position, euler, quaternion, relative_to) -> np.ndarray:
        self._ik_target.set_position(position, relative_to)
        if euler is not None:
            self._ik_target.set_orientation(euler, relative_to)
        elif quaternion is not None:
            self._ik_target.set_quaternion(quaternion, relative_to)
        else:
            self._ik_target.set_quaternion(self._ik_tip.get_quaternion())
        return self._ik_target.get_pose()

    def _reachable(self, pose: np.ndarray) -> bool:
        base = self.get_position()
        return bool(np.linalg.norm(pose[:3] - base) <= sim.ARM_REACH and pose[2] >= sim.TABLE_Z - 0.005)

    def solve_ik_via_jacobian(self, position: Union[List[float], np.ndarray],
                              euler: Union[List[float], np.ndarray] = None,
                              quaternion: Union[List[float], np.ndarray] = None,
                              relative_to: Object = None, locked_joints: List[int] = None) -> List[float]:
        pose = self._target_pose(position, euler, quaternion, relative_to)
        jump = np.linalg.norm(pose[:3] - self._ik_tip.get_position())
        if not self._reachable(pose) or jump > sim.IK_MAX_JUMP:
            raise IKError("IK failed. Perhaps the distance was between the tip  and target was too large.")
        return list(_joints(pose))

    def get_path(self, position: Union[List[float], np.ndarray], euler: Union[List[float], np.ndarray] = None,
                 quaternion: Union[List[float], np.ndarray] = None, ignore_collisions=False, trials=300,
                 max_configs=1, distance_threshold: float = 0.65, max_time_ms: int = 10, trials_per_goal=1,
                 algorithm=Algos.SBL, relative_to: Object = None) -> ArmConfigurationPath:
        pose = self._target_pose(position, euler, quaternion, relative_to)
        if not self._reachable(pose):
            raise ConfigurationPathError("Could not create path.")
        start, goal = np.asarray(self.get_joint_positions()), _joints(pose)
        steps = max(1, int(np.ceil(np.linalg.norm(pose[:3] - self._ik_tip.get_position()) / sim.ARM_STEP)))
        points = [np.concatenate([start[:3] + (goal[:3] - start[:3]) * (i / steps), goal[3:]])
                  for i in range(1, steps + 1)]
        return ArmConfigurationPath(self, np.concatenate(points).tolist())

    def get_tip(self) -> Dummy:
        return self._ik_tip

    def check_arm_collision(self, obj: "Object" = None) -> bool:
        return False


def _joints(pose: np.ndarray) -> np.ndarray:
    """The fake arm's joint values for a world tip pose (x, y, z, qx, qy, qz, qw)."""
    return np.concatenate([np.asarray(pose[:3]) * sim.JOINT_UNITS, pose[3:]])
