"""Fake of pyrep/objects/joint.py (stepjam/PyRep 8f420be): the joint methods RobotComponent calls."""

from __future__ import annotations

from typing import List, Tuple

from pyrep.backend import sim
from pyrep.const import JointType, ObjectType
from pyrep.objects.object import Object, object_type_to_class


class Joint(Object):
    def _get_requested_type(self) -> ObjectType:
        return ObjectType.JOINT

    def _data(self) -> dict:
        return sim.scene().get(self._handle).data

    def get_joint_type(self) -> JointType:
        return JointType.PRISMATIC

    def get_joint_position(self) -> float:
        return sim.scene().joint_position(self._handle)

    def set_joint_position(self, position: float, disable_dynamics: bool = False) -> None:
        sim.scene().set_joint_position(self._handle, position)

    def get_joint_target_position(self) -> float:
        return float(self._data()["target_position"])

    def set_joint_target_position(self, position: float) -> None:
        self._data()["target_position"] = float(position)

    def get_joint_target_velocity(self) -> float:
        return float(self._data()["target_velocity"])

    def set_joint_target_velocity(self, velocity: float) -> None:
        self._data()["target_velocity"] = float(velocity)

    def get_joint_force(self) -> float:
        return float(self._data()["force"])

    def set_joint_force(self, force: float) -> None:
        self._data()["force"] = float(force)

    def get_joint_velocity(self) -> float:
        return float(self._data()["target_velocity"])

    def get_joint_interval(self) -> Tuple[bool, List[float]]:
        return bool(self._data()["cyclic"]), list(self._data()["interval"])

    def set_joint_interval(self, cyclic: bool, interval: List[float]) -> None:
        self._data()["cyclic"], self._data()["interval"] = bool(cyclic), tuple(interval)

    def set_control_loop_enabled(self, value: bool) -> None:
        self._data()["control_loop"] = bool(value)

    def is_control_loop_enabled(self) -> bool:
        return bool(self._data().get("control_loop", True))

    def set_motor_locked_at_zero_velocity(self, value: bool) -> None:
        self._data()["locked"] = bool(value)


object_type_to_class[ObjectType.JOINT] = Joint
