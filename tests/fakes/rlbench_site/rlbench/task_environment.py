"""Fake of rlbench/task_environment.py (stepjam/RLBench 02720bb): `reset() -> (descriptions, obs)` and the
3-tuple `step(action) -> (obs, reward, terminate)`, with the real call order (action, then success, then
the observation)."""

from typing import List

import numpy as np
from pyrep import PyRep
from pyrep.const import ObjectType

from rlbench.action_modes.action_mode import ActionMode
from rlbench.backend.exceptions import BoundaryError, TaskEnvironmentError, WaypointError
from rlbench.backend.observation import Observation
from rlbench.backend.robot import Robot
from rlbench.backend.scene import Scene
from rlbench.backend.task import Task
from rlbench.observation_config import ObservationConfig

_MAX_RESET_ATTEMPTS = 40


class TaskEnvironment(object):
    def __init__(self, pyrep: PyRep, robot: Robot, scene: Scene, task: Task, action_mode: ActionMode,
                 dataset_root: str, obs_config: ObservationConfig, static_positions: bool = False,
                 attach_grasped_objects: bool = True, shaped_rewards: bool = False):
        self._pyrep = pyrep
        self._robot = robot
        self._scene = scene
        self._task = task
        self._variation_number = 0
        self._action_mode = action_mode
        self._dataset_root = dataset_root
        self._obs_config = obs_config
        self._static_positions = static_positions
        self._attach_grasped_objects = attach_grasped_objects
        self._shaped_rewards = shaped_rewards
        self._reset_called = False
        self._scene.load(self._task)
        self._pyrep.start()
        self._robot_shapes = self._robot.arm.get_objects_in_tree(object_type=ObjectType.SHAPE)

    def get_name(self) -> str:
        return self._task.get_name()

    def sample_variation(self) -> int:
        self._variation_number = np.random.randint(0, self._task.variation_count())
        return self._variation_number

    def set_variation(self, v: int) -> None:
        if v >= self.variation_count():
            raise TaskEnvironmentError("Requested variation %d, but there are only %d variations."
                                       % (v, self.variation_count()))
        self._variation_number = v

    def variation_count(self) -> int:
        return self._task.variation_count()

    def reset(self, demo=None) -> (List[str], Observation):
        self._scene.reset()
        try:
            desc = self._scene.init_episode(self._variation_number, max_attempts=_MAX_RESET_ATTEMPTS,
                                            randomly_place=not self._static_positions)
        except (BoundaryError, WaypointError) as e:
            raise TaskEnvironmentError("Could not place the task %s in the scene." % self._task.get_name()) from e
        self._reset_called = True
        return desc, self._scene.get_observation()

    def get_observation(self) -> Observation:
        return self._scene.get_observation()

    def step(self, action) -> (Observation, int, bool):
        if not self._reset_called:
            raise RuntimeError("Call 'reset' before calling 'step' on a task.")
        self._action_mode.action(self._scene, action)
        success, terminate = self._task.success()
        reward = float(success)
        if self._shaped_rewards:
            reward = self._task.reward()
            if reward is None:
                raise RuntimeError("User requested shaped rewards, but task %s does not have a defined reward() "
                                   "function." % self._task.get_name())
        return self._scene.get_observation(), reward, terminate
