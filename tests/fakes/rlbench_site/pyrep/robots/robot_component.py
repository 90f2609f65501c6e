"""Fake of pyrep/robots/robot_component.py (stepjam/PyRep 8f420be): a base object and its joints."""

from __future__ import annotations

from typing import List, Tuple

from pyrep.backend import sim
from pyrep.const import JointMode, JointType, ObjectType
from pyrep.objects.joint import Joint
from pyrep.objects.object import Object


class RobotComponent(Object):
    """Collection of joints representing arms, end effectors, mobile bases, etc."""

    def __init__(self, count: int, name: str, joint_names: List[str], base_name: str = None):
        suffix = "" if count == 0 else "#%d" % (count - 1)
        super().__init__(name + suffix if base_name is None else base_name + suffix)
        self._num_joints = len(joint_names)
        self.joints = [Joint(jname + suffix) for jname in joint_names]
        self._joint_handles = [j.get_handle() for j in self.joints]

    def _get_requested_type(self) -> ObjectType:
        return ObjectType(sim.scene().get(self.get_handle()).type)

    def get_joint_count(self) -> int:
        return self._num_joints

    def get_joint_types(self) -> List[JointType]:
        return [j.get_joint_type() for j in self.joints]

    def get_joint_positions(self) -> List[float]:
        return [j.get_joint_position() for j in self.joints]

    def set_joint_positions(self, positions: List[float], disable_dynamics: bool = False) -> None:
        self._assert_len(positions)
        for joint, position in zip(self.joints, positions):
            joint.set_joint_position(position)
            if disable_dynamics:
                joint.set_joint_target_position(position)

    def get_joint_target_positions(self) -> List[float]:
        return [j.get_joint_target_position() for j in self.joints]

    def set_joint_target_positions(self, positions: List[float]) -> None:
        self._assert_len(positions)
        for joint, position in zip(self.joints, positions):
            joint.set_joint_target_position(position)

    def get_joint_target_velocities(self) -> List[float]:
        return [j.get_joint_target_velocity() for j in self.joints]

    def set_joint_target_velocities(self, velocities: List[float]) -> None:
        self._assert_len(velocities)
        for joint, velocity in zip(self.joints, velocities):
            joint.set_joint_target_velocity(velocity)

    def get_joint_forces(self) -> List[float]:
        return [j.get_joint_force() for j in self.joints]

    def set_joint_forces(self, forces: List[float]) -> None:
        self._assert_len(forces)
        for joint, force in zip(self.joints, forces):
            joint.set_joint_force(force)

    def get_joint_velocities(self) -> List[float]:
        return [j.get_joint_velocity() for j in self.joints]

    def get_joint_intervals(self) -> Tuple[List[bool], List[List[float]]]:
        cyclics, intervals = [], []
        for joint in self.joints:
            cyclic, interval = joint.get_joint_interval()
            cyclics.append(cyclic)
            intervals.append(interval)
        return cyclics, intervals

    def set_control_loop_enabled(self, value: bool) -> None:
        for joint in self.joints:
            joint.set_control_loop_enabled(value)
        data = sim.scene().get(self._handle).data
        data["control_loop"] = bool(value)

    def set_motor_locked_at_zero_velocity(self, value: bool) -> None:
        for joint in self.joints:
            joint.set_motor_locked_at_zero_velocity(value)

    def set_joint_mode(self, value: JointMode) -> None:
        pass

    def _assert_len(self, inputs: list) -> None:
        if len(self.joints) != len(inputs):
            raise ValueError("Tried to set values for %d joints, but joint group consists of %d joints."
                             % (len(inputs), len(self.joints)))
