"""Fake of pyrep/robots/configuration_paths/arm_configuration_path.py (stepjam/PyRep 8f420be).

A path is a list of joint configurations (here: tip poses) that `step()` walks through, one per call.
"""

from __future__ import annotations

from typing import List

import numpy as np


class ArmConfigurationPath(object):
    def __init__(self, arm, path_points: List[float]):
        self._arm = arm
        self._path_points = np.asarray(path_points, dtype=np.float64).reshape(-1, len(arm.joints))
        self._index = 0

    def __len__(self):
        return len(self._path_points)

    def __getitem__(self, i):
        return self._path_points[i]

    def step(self) -> bool:
        if self._index < len(self._path_points):
            self._arm.set_joint_target_positions(self._path_points[self._index])
            self._arm.set_joint_positions(self._path_points[self._index])
            self._index += 1
        return self._index >= len(self._path_points)

    def set_to_start(self, disable_dynamics=False) -> None:
        self._arm.set_joint_positions(self._path_points[0], disable_dynamics=disable_dynamics)

    def set_to_end(self, disable_dynamics=False) -> None:
        self._arm.set_joint_positions(self._path_points[-1], disable_dynamics=disable_dynamics)

    def visualize(self) -> None:
        pass

    def clear_visualization(self) -> None:
        pass

    def get_executed_joint_position_action(self) -> np.ndarray:
        return self._path_points[max(self._index - 1, 0)]
