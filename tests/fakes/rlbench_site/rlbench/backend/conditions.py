"""Fake of rlbench/backend/conditions.py (stepjam/RLBench 02720bb): the condition classes vplan uses.

`condition_met()` returns (met, terminate); `reset()` clears any state (Task.cleanup_ calls it).
"""

from typing import List

from pyrep.objects.object import Object
from pyrep.objects.proximity_sensor import ProximitySensor


class Condition(object):
    def condition_met(self):
        raise NotImplementedError()

    def reset(self):
        pass


class DetectedCondition(Condition):
    def __init__(self, obj: Object, detector: ProximitySensor, negated: bool = False):
        self._obj = obj
        self._detector = detector
        self._negated = negated

    def condition_met(self):
        met = self._detector.is_detected(self._obj)
        if self._negated:
            met = not met
        return met, False


class NothingGrasped(Condition):
    def __init__(self, gripper):
        self._gripper = gripper

    def condition_met(self):
        met = len(self._gripper.get_grasped_objects()) == 0
        return met, False


class GraspedCondition(Condition):
    def __init__(self, gripper, object: Object):
        self._gripper = gripper
        self._object_handle = object.get_handle()

    def condition_met(self):
        met = len([ob for ob in self._gripper.get_grasped_objects() if self._object_handle == ob.get_handle()]) > 0
        return met, False


class ConditionSet(Condition):
    def __init__(self, conditions: List[Condition], order_matters: bool = False, simultaneously_met: bool = True):
        self._conditions = conditions
        self._order_matters = order_matters
        self._simultaneously_met = simultaneously_met
        self._current_condition_index = 0

    def condition_met(self):
        met = True
        if self._order_matters:
            if self._current_condition_index < len(self._conditions):
                for cond in self._conditions[self._current_condition_index:]:
                    ismet, term = cond.condition_met()
                    if not ismet:
                        break
                    self._current_condition_index += 1
            met = self._current_condition_index >= len(self._conditions)
        else:
            for cond in self._conditions:
                ismet, term = cond.condition_met()
                met &= ismet
        return met, False

    def reset(self):
        self._current_condition_index = 0
