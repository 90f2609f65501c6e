"""Fake of pyrep/objects/__init__.py (stepjam/PyRep 8f420be)."""

from pyrep.objects.dummy import Dummy
from pyrep.objects.force_sensor import ForceSensor
from pyrep.objects.joint import Joint
from pyrep.objects.object import Object
from pyrep.objects.proximity_sensor import ProximitySensor
from pyrep.objects.shape import Shape
from pyrep.objects.vision_sensor import VisionSensor

__all__ = ["Dummy", "ForceSensor", "Joint", "Object", "ProximitySensor", "Shape", "VisionSensor"]
