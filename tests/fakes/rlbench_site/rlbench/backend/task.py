"""Fake of rlbench/backend/task.py (stepjam/RLBench 02720bb): the `Task` base class.

Same overridable methods, registering functions and semantics as the real one: the name comes from the
class name (ReturnCubes -> return_cubes), `load()` imports only `../task_ttms/<name>.ttm` (FileNotFoundError
otherwise), `get_base()` is the Dummy named after the task, `success()` needs every registered success
condition at once, `cleanup_()` resets the conditions. Waypoints (for demos) are not supported by this fake.
"""

import os
import re
from os.path import abspath, dirname, join
from typing import Callable, List, Tuple, Union

import numpy as np
from pyrep import PyRep
from pyrep.objects.dummy import Dummy
from pyrep.objects.object import Object

from rlbench.backend.conditions import Condition
from rlbench.backend.observation import Observation
from rlbench.backend.robot import Robot

TASKS_PATH = join(dirname(abspath(__file__)), "../tasks")


class Task(object):
    def __init__(self, pyrep: PyRep, robot: Robot, name: str = None):
        self.pyrep = pyrep
        self.name = name if name else re.sub("(?<!^)(?=[A-Z])", "_", self.__class__.__name__).lower()
        self.robot = robot
        self._waypoints = None
        self._success_conditions = []
        self._fail_conditions = []
        self._graspable_objects = []
        self._base_object = None
        self._waypoint_additional_inits = {}
        self._waypoint_abilities_start = {}
        self._waypoint_abilities_end = {}
        self._waypoints_should_repeat = lambda: False
        self._initial_objs_in_scene = None
        self._stop_at_waypoint_index = -1

    # Overriding functions
    def init_task(self) -> None:
        raise NotImplementedError("'init_task' is almost always necessary.")

    def init_episode(self, index: int) -> List[str]:
        raise NotImplementedError("'init_episode' must be defined and return a list of strings.")

    def variation_count(self) -> int:
        raise NotImplementedError("'variation_count' must be defined and return an int.")

    def get_low_dim_state(self) -> np.ndarray:
        state = []
        for obj, _ in self._initial_objs_in_scene:
            state.extend(np.array(obj.get_pose()) if obj.still_exists() else np.zeros(7))
        return np.array(state).flatten()

    def step(self) -> None:
        pass

    def reward(self) -> Union[float, None]:
        return None

    def cleanup(self) -> None:
        pass

    def base_rotation_bounds(self) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
        return (0.0, 0.0, -3.14), (0.0, 0.0, 3.14)

    def boundary_root(self) -> Object:
        return self.get_base()

    def decorate_observation(self, observation: Observation) -> Observation:
        return observation

    def is_static_workspace(self) -> bool:
        return False

    def set_initial_objects_in_scene(self):
        objs = self.get_base().get_objects_in_tree(exclude_base=True, first_generation_only=False)
        self._initial_objs_in_scene = list(zip(objs, [ob.get_type() for ob in objs]))

    # Registering functions
    def register_success_conditions(self, condition: List[Condition]):
        self._success_conditions = condition

    def register_fail_conditions(self, condition: List[Condition]):
        self._fail_conditions = condition

    def register_graspable_objects(self, objects: List[Object]):
        self._graspable_objects = objects

    def register_waypoint_ability_start(self, waypoint_index: int, func: Callable):
        self._waypoint_abilities_start[waypoint_index] = func

    def register_waypoint_ability_end(self, waypoint_index: int, func: Callable):
        self._waypoint_abilities_end[waypoint_index] = func

    def register_waypoints_should_repeat(self, func: Callable[[], bool]):
        self._waypoints_should_repeat = func

    def register_stop_at_waypoint(self, waypoint_index: int):
        self._stop_at_waypoint_index = waypoint_index

    # Other public functions
    def get_name(self) -> str:
        return self.name

    def validate(self):
        self._waypoints = self._get_waypoints()

    def get_waypoints(self):
        if self._waypoints is None:
            self._waypoints = self._get_waypoints()
        return self._waypoints

    def should_repeat_waypoints(self):
        return self._waypoints_should_repeat()

    def get_graspable_objects(self):
        return self._graspable_objects

    def success(self) -> Tuple[bool, bool]:
        all_fails_met = np.all([cond.condition_met()[0] for cond in self._fail_conditions])
        if len(self._fail_conditions) > 0 and all_fails_met:
            return False, True
        all_met = np.all([cond.condition_met()[0] for cond in self._success_conditions])
        return all_met, all_met

    def load(self) -> Object:
        if Object.exists(self.name):
            return Dummy(self.name)
        ttm_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../task_ttms/%s.ttm" % self.name)
        if not os.path.isfile(ttm_file):
            raise FileNotFoundError("The following is not a valid task .ttm file: %s" % ttm_file)
        self._base_object = self.pyrep.import_model(ttm_file)
        return self._base_object

    def unload(self) -> None:
        self._waypoints = None
        self.get_base().remove()
        self.clear_registerings()

    def cleanup_(self) -> None:
        for cond in self._success_conditions + self._fail_conditions:
            cond.reset()
        self._waypoints = None
        self.cleanup()

    def clear_registerings(self) -> None:
        self._success_conditions = []
        self._fail_conditions = []
        self._graspable_objects = []
        self._base_object = None
        self._waypoint_additional_inits = {}
        self._waypoint_abilities_start = {}
        self._waypoint_abilities_end = {}

    def get_base(self) -> Dummy:
        self._base_object = Dummy(self.name)
        return self._base_object

    def get_state(self) -> Tuple[bytes, int]:
        objs = self.get_base().get_objects_in_tree(exclude_base=False)
        return self.get_base().get_configuration_tree(), len(objs)

    def restore_state(self, state: Tuple[bytes, int]) -> None:
        objs = self.get_base().get_objects_in_tree(exclude_base=False)
        if len(objs) != state[1]:
            raise RuntimeError("Expected to be resetting %d objects, but there were %d." % (state[1], len(objs)))
        self.pyrep.set_configuration_tree(state[0])

    def _get_waypoints(self, validating=False) -> list:
        return []  # the fake scene has no waypoint objects (demos are not supported)
