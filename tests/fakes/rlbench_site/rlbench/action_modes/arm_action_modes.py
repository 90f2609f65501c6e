"""Fake of rlbench/action_modes/arm_action_modes.py (stepjam/RLBench 02720bb): the end-effector pose modes.

Same constructors and checks as the real ones (a 7-vector x, y, z, qx, qy, qz, qw with a unit quaternion;
`InvalidActionError` when IK or planning fails); the motion loops follow the real ones on the fake robot.
"""

from abc import abstractmethod
from enum import Enum

import numpy as np
from pyrep.const import ConfigurationPathAlgorithms as Algos
from pyrep.errors import ConfigurationPathError, IKError

from rlbench.backend.exceptions import InvalidActionError
from rlbench.backend.robot import Robot
from rlbench.backend.scene import Scene
from rlbench.const import SUPPORTED_ROBOTS


def assert_action_shape(action: np.ndarray, expected_shape: tuple):
    if np.shape(action) != expected_shape:
        raise InvalidActionError("Expected the action shape to be: %s, but was shape: %s"
                                 % (str(expected_shape), str(np.shape(action))))


def assert_unit_quaternion(quat):
    if not np.isclose(np.linalg.norm(quat), 1.0):
        raise InvalidActionError("Action contained non unit quaternion!")


def _quat_mul_wxyz(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return [aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw]


def calculate_delta_pose(robot: Robot, action: np.ndarray):
    a_x, a_y, a_z, a_qx, a_qy, a_qz, a_qw = action
    x, y, z, qx, qy, qz, qw = robot.arm.get_tip().get_pose()
    qw, qx, qy, qz = _quat_mul_wxyz([a_qw, a_qx, a_qy, a_qz], [qw, qx, qy, qz])
    return [a_x + x, a_y + y, a_z + z] + [qx, qy, qz, qw]


class RelativeFrame(Enum):
    WORLD = 0
    EE = 1


class ArmActionMode(object):
    @abstractmethod
    def action(self, scene: Scene, action: np.ndarray):
        pass

    @abstractmethod
    def action_shape(self, scene: Scene):
        pass

    def set_control_mode(self, robot: Robot):
        robot.arm.set_control_loop_enabled(True)


class JointPosition(ArmActionMode):
    def __init__(self, absolute_mode: bool = True):
        self._absolute_mode = absolute_mode

    def action(self, scene: Scene, action: np.ndarray):
        raise NotImplementedError("not used by vplan's tests")

    def action_shape(self, scene: Scene) -> tuple:
        return (SUPPORTED_ROBOTS[scene.robot_setup][2],)


class EndEffectorPoseViaPlanning(ArmActionMode):
    def __init__(self, absolute_mode: bool = True, frame: RelativeFrame = RelativeFrame.WORLD,
                 collision_checking: bool = False):
        self._absolute_mode = absolute_mode
        self._frame = frame
        self._collision_checking = collision_checking

    def _quick_boundary_check(self, scene: Scene, action: np.ndarray):
        pos_to_check = action[:3]
        if self._frame != RelativeFrame.WORLD:
            scene.target_workspace_check.set_position(pos_to_check, scene.robot.arm.get_tip())
            pos_to_check = scene.target_workspace_check.get_position()
        if not scene.check_target_in_workspace(pos_to_check):
            raise InvalidActionError("A path could not be found because the target is outside of workspace.")

    def action(self, scene: Scene, action: np.ndarray):
        assert_action_shape(action, (7,))
        assert_unit_quaternion(action[3:])
        if not self._absolute_mode and self._frame != RelativeFrame.EE:
            action = calculate_delta_pose(scene.robot, action)
        relative_to = None if self._frame == RelativeFrame.WORLD else scene.robot.arm.get_tip()
        self._quick_boundary_check(scene, action)
        try:
            path = scene.robot.arm.get_path(action[:3], quaternion=action[3:],
                                            ignore_collisions=not self._collision_checking,
                                            relative_to=relative_to, trials=100, max_configs=10,
                                            max_time_ms=10, trials_per_goal=5, algorithm=Algos.RRTConnect)
        except ConfigurationPathError as e:
            raise InvalidActionError("A path could not be found. Most likely due to the target being "
                                     "inaccessible or a collison was detected.") from e
        done = False
        while not done:
            done = path.step()
            scene.step()
            success, terminate = scene.task.success()
            if success:
                break

    def action_shape(self, scene: Scene) -> tuple:
        return (7,)


class EndEffectorPoseViaIK(ArmActionMode):
    def __init__(self, absolute_mode: bool = True, frame: RelativeFrame = RelativeFrame.WORLD,
                 collision_checking: bool = False):
        self._absolute_mode = absolute_mode
        self._frame = frame
        self._collision_checking = collision_checking

    def action(self, scene: Scene, action: np.ndarray):
        assert_action_shape(action, (7,))
        assert_unit_quaternion(action[3:])
        if not self._absolute_mode and self._frame != RelativeFrame.EE:
            action = calculate_delta_pose(scene.robot, action)
        relative_to = None if self._frame == RelativeFrame.WORLD else scene.robot.arm.get_tip()
        try:
            joint_positions = scene.robot.arm.solve_ik_via_jacobian(action[:3], quaternion=action[3:],
                                                                    relative_to=relative_to)
            scene.robot.arm.set_joint_target_positions(joint_positions)
        except IKError as e:
            raise InvalidActionError("Could not perform IK via Jacobian; most likely due to current end-effector "
                                     "pose being too far from the given target pose. Try limiting/bounding your "
                                     "action space.") from e
        done = False
        prev_values = None
        while not done:
            scene.step()
            cur_positions = scene.robot.arm.get_joint_positions()
            reached = np.allclose(cur_positions, joint_positions, atol=0.01)
            not_moving = prev_values is not None and np.allclose(cur_positions, prev_values, atol=0.001)
            prev_values = cur_positions
            done = reached or not_moving

    def action_shape(self, scene: Scene) -> tuple:
        return (7,)
