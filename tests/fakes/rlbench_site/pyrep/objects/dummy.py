"""Fake of pyrep/objects/dummy.py (stepjam/PyRep 8f420be)."""

from pyrep.backend import sim
from pyrep.const import ObjectType
from pyrep.objects.object import Object, object_type_to_class


class Dummy(Object):
    """A point with orientation."""

    @staticmethod
    def create(size=0.01) -> "Dummy":
        record = sim.scene().add("Dummy", sim.sim_object_dummy_type, data={"size": size})
        return Dummy(record.handle)

    def _get_requested_type(self) -> ObjectType:
        return ObjectType.DUMMY


object_type_to_class[ObjectType.DUMMY] = Dummy
