"""Fake of pyrep/objects/proximity_sensor.py (stepjam/PyRep 8f420be): detection by distance."""

from pyrep.backend import sim
from pyrep.const import ObjectType
from pyrep.objects.object import Object, object_type_to_class


class ProximitySensor(Object):
    """Detects objects within a detection volume (here: a sphere of sim.DETECT_RADIUS)."""

    def _get_requested_type(self) -> ObjectType:
        return ObjectType.PROXIMITY_SENSOR

    def read(self) -> float:
        return -1.0

    def is_detected(self, obj: Object) -> bool:
        return sim.scene().detects(self._handle, obj.get_handle())


object_type_to_class[ObjectType.PROXIMITY_SENSOR] = ProximitySensor
