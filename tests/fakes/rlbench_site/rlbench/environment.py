"""Fake of rlbench/environment.py (stepjam/RLBench 02720bb): `Environment` with the real constructor.

`launch()` starts (fake) CoppeliaSim on rlbench/task_design.ttt and builds the Panda and the Scene;
`get_task(task_class)` unloads the previous task, calls `task_class(pyrep, robot)` and wraps it in a
`TaskEnvironment`, as the real one does.
"""

from os.path import abspath, dirname, exists, join
from typing import Type

from pyrep import PyRep

from rlbench.action_modes.action_mode import ActionMode
from rlbench.backend.const import TTT_FILE
from rlbench.backend.robot import Robot
from rlbench.backend.scene import Scene
from rlbench.backend.task import Task
from rlbench.const import SUPPORTED_ROBOTS
from rlbench.observation_config import ObservationConfig
from rlbench.task_environment import TaskEnvironment

DIR_PATH = dirname(abspath(__file__))


class Environment(object):
    """Each environment has a scene."""

    def __init__(self, action_mode: ActionMode, dataset_root: str = "",
                 obs_config: ObservationConfig = ObservationConfig(), headless: bool = False,
                 static_positions: bool = False, robot_setup: str = "panda", randomize_every=None,
                 frequency: int = 1, visual_randomization_config=None, dynamics_randomization_config=None,
                 attach_grasped_objects: bool = True, shaped_rewards: bool = False, arm_max_velocity: float = 1.0,
                 arm_max_acceleration: float = 4.0):
        self._dataset_root = dataset_root
        self._action_mode = action_mode
        self._obs_config = obs_config
        self._headless = headless
        self._static_positions = static_positions
        self._robot_setup = robot_setup.lower()
        self._attach_grasped_objects = attach_grasped_objects
        self._shaped_rewards = shaped_rewards
        self._arm_max_velocity = arm_max_velocity
        self._arm_max_acceleration = arm_max_acceleration
        if robot_setup not in SUPPORTED_ROBOTS.keys():
            raise ValueError("robot_configuration must be one of %s" % str(SUPPORTED_ROBOTS.keys()))
        if len(self._dataset_root) > 0 and not exists(self._dataset_root):
            raise RuntimeError("Data set root does not exists: %s" % self._dataset_root)
        self._pyrep = None
        self._robot = None
        self._scene = None
        self._prev_task = None

    def launch(self):
        if self._pyrep is not None:
            raise RuntimeError("Already called launch!")
        self._pyrep = PyRep()
        self._pyrep.launch(join(DIR_PATH, TTT_FILE), headless=self._headless)
        arm_class, gripper_class, _ = SUPPORTED_ROBOTS[self._robot_setup]
        arm = arm_class(max_velocity=self._arm_max_velocity, max_acceleration=self._arm_max_acceleration)
        self._robot = Robot(arm, gripper_class())
        self._scene = Scene(self._pyrep, self._robot, self._obs_config, self._robot_setup)
        self._action_mode.arm_action_mode.set_control_mode(self._robot)

    def shutdown(self):
        if self._pyrep is not None:
            self._pyrep.shutdown()
        self._pyrep = None

    def get_task(self, task_class: Type[Task]) -> TaskEnvironment:
        if self._pyrep is None:
            self.launch()
        self._scene.unload()
        task = task_class(self._pyrep, self._robot)
        self._prev_task = task
        return TaskEnvironment(self._pyrep, self._robot, self._scene, task, self._action_mode, self._dataset_root,
                               self._obs_config, self._static_positions, self._attach_grasped_objects,
                               self._shaped_rewards)

    @property
    def action_shape(self):
        return (self._action_mode.action_shape(self._scene),)
