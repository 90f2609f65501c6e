"""Fake of pyrep/robots/end_effectors/gripper.py (stepjam/PyRep 8f420be).

Grasping works as in the real class: `grasp` attaches a detected object to the attach point (it does not
close the fingers), `release` gives grasped objects back to their old parents, and `actuate` drives the
finger joints towards `amount` (1 open, 0 closed), returning True once they stop.
"""

from __future__ import annotations

from typing import List

import numpy as np

from pyrep.objects.force_sensor import ForceSensor
from pyrep.objects.object import Object
from pyrep.objects.proximity_sensor import ProximitySensor
from pyrep.robots.robot_component import RobotComponent

POSITION_ERROR = 0.001


class Gripper(RobotComponent):
    """Represents all types of end-effectors, e.g. grippers."""

    def __init__(self, count: int, name: str, joint_names: List[str]):
        super().__init__(count, name, joint_names)
        suffix = "" if count == 0 else "#%d" % (count - 1)
        self._proximity_sensor = ProximitySensor("%s_attachProxSensor%s" % (name, suffix))
        self._attach_point = ForceSensor("%s_attachPoint%s" % (name, suffix))
        self._old_parents: List[Object] = []
        self._grasped_objects: List[Object] = []
        self._prev_positions = [None] * len(joint_names)
        self._touch_sensors: list = []

    def grasp(self, obj: Object) -> bool:
        detected = self._proximity_sensor.is_detected(obj)
        if detected and obj not in self._grasped_objects:
            self._grasped_objects.append(obj)
            self._old_parents.append(obj.get_parent())  # type: ignore
            obj.set_parent(self._attach_point, keep_in_place=True)
        return detected

    def release(self) -> None:
        for grasped_obj, old_parent in zip(self._grasped_objects, self._old_parents):
            if grasped_obj.still_exists():
                grasped_obj.set_parent(old_parent, keep_in_place=True)
        self._grasped_objects = []
        self._old_parents = []

    def get_grasped_objects(self) -> List[Object]:
        return self._grasped_objects

    def actuate(self, amount: float, velocity: float) -> bool:
        if not (0.0 <= amount <= 1.0):
            raise ValueError("'open_amount' should be between 0 and 1.'")
        _, intervals = self.get_joint_intervals()
        intervals = np.array(intervals)
        target = intervals[:, 0] + intervals[:, 1] * amount
        current = self.get_joint_positions()
        done = True
        for joint, goal, cur, prev in zip(self.joints, target, current, self._prev_positions):
            not_moving = prev is not None and abs(cur - prev) < POSITION_ERROR
            if not_moving or abs(goal - cur) < POSITION_ERROR:
                joint.set_joint_target_velocity(0)
                continue
            done = False
            joint.set_joint_target_velocity(-velocity if cur > goal else velocity)
        self._prev_positions = current
        if done:
            self._prev_positions = [None] * len(self.joints)
            self.set_joint_target_velocities([0.0] * len(self.joints))
        return done

    def get_open_amount(self) -> List[float]:
        _, intervals = self.get_joint_intervals()
        intervals = np.array(intervals)
        return list(np.clip((np.array(self.get_joint_positions()) - intervals[:, 0]) / intervals[:, 1], 0.0, 1.0))

    def get_touch_sensor_forces(self) -> List[List[float]]:
        raise NotImplementedError("No touch sensors for this robot!")
