"""Fake of pyrep/objects/vision_sensor.py (stepjam/PyRep 8f420be): cameras that draw sim's top view.

`capture_rgb` returns float32 (resolution[1], resolution[0], 3) in [0, 1], upright, as the real one does
after flipping CoppeliaSim's buffer.
"""

from __future__ import annotations

from typing import List, Union

import numpy as np

from pyrep.backend import sim
from pyrep.const import ObjectType, RenderMode
from pyrep.objects.object import Object, object_type_to_class


class VisionSensor(Object):
    """A camera-type sensor, reacting to light, colors and images."""

    def __init__(self, name_or_handle: Union[str, int]):
        super().__init__(name_or_handle)
        self.resolution = list(sim.scene().get(self._handle).data["resolution"])

    def _get_requested_type(self) -> ObjectType:
        return ObjectType.VISION_SENSOR

    def handle_explicitly(self) -> None:
        if not self.get_explicit_handling():
            raise RuntimeError(
                "The explicit_handling is disabled. "
                "Call set_explicit_handling(value=1) to enable explicit_handling first."
            )

    def capture_rgb(self) -> np.ndarray:
        return sim.scene().render(self._handle)

    def capture_depth(self, in_meters=False) -> np.ndarray:
        return np.ones((self.resolution[1], self.resolution[0]), np.float32)

    def get_intrinsic_matrix(self) -> np.ndarray:
        return np.eye(3)

    def get_resolution(self) -> List[int]:
        return list(self.resolution)

    def set_resolution(self, resolution: List[int]) -> None:
        sim.scene().get(self._handle).data["resolution"] = [int(resolution[0]), int(resolution[1])]
        self.resolution = list(resolution)

    def get_render_mode(self) -> RenderMode:
        return RenderMode(sim.scene().get(self._handle).data["render_mode"])

    def set_render_mode(self, render_mode: RenderMode) -> None:
        sim.scene().get(self._handle).data["render_mode"] = render_mode.value

    def get_near_clipping_plane(self) -> float:
        return 0.01

    def get_far_clipping_plane(self) -> float:
        return 10.0


object_type_to_class[ObjectType.VISION_SENSOR] = VisionSensor
