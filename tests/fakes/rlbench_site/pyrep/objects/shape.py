"""Fake of pyrep/objects/shape.py (stepjam/PyRep 8f420be): `Shape.create` with the real signature."""

from __future__ import annotations

from typing import List

import numpy as np

from pyrep.backend import sim
from pyrep.const import ObjectType, PrimitiveShape
from pyrep.objects.object import Object, object_type_to_class

_DEFAULT_NAMES = {
    PrimitiveShape.CUBOID: "Cuboid",
    PrimitiveShape.SPHERE: "Sphere",
    PrimitiveShape.CYLINDER: "Cylinder",
    PrimitiveShape.CONE: "Cone",
}


class Shape(Object):
    """Shapes are rigid mesh objects that are composed of triangular faces."""

    @staticmethod
    def create(type: PrimitiveShape, size: List[float], mass=1., backface_culling=False, visible_edges=False,
               smooth=False, respondable=True, static=False, renderable=True, position=None, orientation=None,
               color=None) -> "Shape":
        if len(size) != 3:
            raise ValueError("size: expected [x, y, z]")
        record = sim.scene().add(
            _DEFAULT_NAMES[type], sim.sim_object_shape_type, size=np.asarray(size, dtype=np.float64),
            props={"respondable": bool(respondable), "dynamic": not static},
            data={"mass": float(mass), "primitive": type},
        )
        ob = Shape(record.handle)
        ob.set_renderable(renderable)
        if position is not None:
            ob.set_position(position)
        if orientation is not None:
            ob.set_orientation(orientation)
        if color is not None:
            ob.set_color(color)
        return ob

    def _get_requested_type(self) -> ObjectType:
        return ObjectType.SHAPE

    def is_respondable(self) -> bool:
        return self._prop("respondable")

    def set_respondable(self, value: bool) -> None:
        self._set_prop("respondable", bool(value))

    def is_dynamic(self) -> bool:
        return self._prop("dynamic")

    def set_dynamic(self, value: bool) -> None:
        self._set_prop("dynamic", bool(value))

    def get_color(self) -> List[float]:
        return list(sim.scene().get(self._handle).color)

    def set_color(self, color: List[float]) -> None:
        if len(color) != 3:
            raise ValueError("color: expected [r, g, b]")
        sim.scene().get(self._handle).color = [float(c) for c in color]

    def get_mass(self) -> float:
        return float(sim.scene().get(self._handle).data.get("mass", 0.0))

    def set_mass(self, mass: float) -> None:
        sim.scene().get(self._handle).data["mass"] = float(mass)


object_type_to_class[ObjectType.SHAPE] = Shape
