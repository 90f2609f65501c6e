"""Fake of pyrep/objects/force_sensor.py (stepjam/PyRep 8f420be)."""

from typing import List, Tuple

from pyrep.const import ObjectType
from pyrep.objects.object import Object, object_type_to_class


class ForceSensor(Object):
    def _get_requested_type(self) -> ObjectType:
        return ObjectType.FORCE_SENSOR

    def read(self) -> Tuple[List[float], List[float]]:
        return [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]


object_type_to_class[ObjectType.FORCE_SENSOR] = ForceSensor
