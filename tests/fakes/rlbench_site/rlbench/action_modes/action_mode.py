"""Fake of rlbench/action_modes/action_mode.py (stepjam/RLBench 02720bb).

As in the real module, `MoveArmThenGripper` does not define `action_bounds()`: the base class raises
NotImplementedError (RLBench's own gym wrapper calls it, so it cannot use this action mode).
"""

from abc import abstractmethod

import numpy as np

from rlbench.action_modes.arm_action_modes import ArmActionMode, JointPosition
from rlbench.action_modes.gripper_action_modes import GripperActionMode, GripperJointPosition
from rlbench.backend.scene import Scene


class ActionMode(object):
    def __init__(self, arm_action_mode: "ArmActionMode", gripper_action_mode: "GripperActionMode"):
        self.arm_action_mode = arm_action_mode
        self.gripper_action_mode = gripper_action_mode

    @abstractmethod
    def action(self, scene: Scene, action: np.ndarray):
        pass

    @abstractmethod
    def action_shape(self, scene: Scene):
        pass

    def action_bounds(self):
        """Returns the min and max of the action mode."""
        raise NotImplementedError("You must define your own action bounds.")


class MoveArmThenGripper(ActionMode):
    """The arm action is first applied, followed by the gripper action."""

    def action(self, scene: Scene, action: np.ndarray):
        arm_act_size = np.prod(self.arm_action_mode.action_shape(scene))
        arm_action = np.array(action[:arm_act_size])
        ee_action = np.array(action[arm_act_size:])
        self.arm_action_mode.action(scene, arm_action)
        self.gripper_action_mode.action(scene, ee_action)

    def action_shape(self, scene: Scene):
        return np.prod(self.arm_action_mode.action_shape(scene)) + np.prod(
            self.gripper_action_mode.action_shape(scene))


class JointPositionActionMode(ActionMode):
    def __init__(self):
        super().__init__(JointPosition(False), GripperJointPosition(True))

    def action(self, scene: Scene, action: np.ndarray):
        raise NotImplementedError("not used by vplan's tests")

    def action_shape(self, scene: Scene):
        return 8

    def action_bounds(self):
        return np.array(7 * [-0.1] + [0.0]), np.array(7 * [0.1] + [0.04])
