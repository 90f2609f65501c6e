"""Fake of pyrep/objects/object.py (stepjam/PyRep 8f420be): `Object`, a handle into the scene.

Same public methods and signatures as the real class for everything RLBench and vplan call; the state lives
in pyrep.backend.sim's in-memory scene instead of CoppeliaSim.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from pyrep.backend import sim
from pyrep.const import ObjectType
from pyrep.errors import ObjectAlreadyRemovedError, ObjectIsNotModelError, WrongObjectTypeError

object_type_to_class: Dict[ObjectType, Any] = {}


def _relto(relative_to: "Object | None") -> int:
    return -1 if relative_to is None else relative_to.get_handle()


class Object(object):
    """Base class for V-REP scene objects that are used for building a scene."""

    def __init__(self, name_or_handle: Union[str, int]):
        if isinstance(name_or_handle, int):
            self._handle = name_or_handle
        else:
            self._handle = sim.scene().handle_of(name_or_handle)
        assert_type = self._get_requested_type()
        actual = ObjectType(sim.scene().get(self._handle).type)
        if actual != assert_type:
            raise WrongObjectTypeError(
                "You requested object of type %s, but the actual type was %s" % (assert_type.name, actual.name)
            )

    def __eq__(self, other: object):
        if not isinstance(other, Object):
            raise NotImplementedError
        return self.get_handle() == other.get_handle()

    @staticmethod
    def exists(name: str) -> bool:
        try:
            sim.scene().handle_of(name)
        except RuntimeError:
            return False
        return True

    @staticmethod
    def get_object_type(name: str) -> ObjectType:
        return ObjectType(sim.scene().get(sim.scene().handle_of(name)).type)

    @staticmethod
    def get_object_name(name_or_handle: Union[str, int]) -> str:
        if isinstance(name_or_handle, int):
            return sim.scene().get(name_or_handle).name
        return name_or_handle

    @staticmethod
    def get_object(name_or_handle: Union[str, int]) -> "Object":
        handle = name_or_handle if isinstance(name_or_handle, int) else sim.scene().handle_of(name_or_handle)
        cls = object_type_to_class[ObjectType(sim.scene().get(handle).type)]
        return cls(handle)

    def _get_requested_type(self) -> ObjectType:
        raise NotImplementedError("Must be overridden.")

    def get_type(self) -> ObjectType:
        return ObjectType(sim.scene().get(self._handle).type)

    def get_handle(self) -> int:
        return self._handle

    def still_exists(self) -> bool:
        return sim.SCENE is not None and self._handle in sim.scene().objects

    def get_name(self) -> str:
        return sim.scene().get(self._handle).name

    def set_name(self, name: str) -> None:
        sim.scene().get(self._handle).name = name

    def get_position(self, relative_to=None) -> np.ndarray:
        return np.array(sim.scene().pose_relative(self._handle, _relto(relative_to))[0], dtype=np.float64)

    def set_position(self, position: Union[list, np.ndarray], relative_to=None, reset_dynamics=True) -> None:
        sim.scene().set_pose_relative(self._handle, _relto(relative_to), np.asarray(position, np.float64), None)

    def get_orientation(self, relative_to=None) -> np.ndarray:
        return sim.quat_euler(sim.scene().pose_relative(self._handle, _relto(relative_to))[1])

    def set_orientation(self, orientation: Union[list, np.ndarray], relative_to=None, reset_dynamics=True) -> None:
        sim.scene().set_pose_relative(self._handle, _relto(relative_to), None, sim.euler_quat(orientation))

    def get_quaternion(self, relative_to=None) -> np.ndarray:
        return np.array(sim.scene().pose_relative(self._handle, _relto(relative_to))[1], dtype=np.float64)

    def set_quaternion(self, quaternion: Union[list, np.ndarray], relative_to=None, reset_dynamics=True) -> None:
        assert len(quaternion) == 4
        sim.scene().set_pose_relative(self._handle, _relto(relative_to), None, np.asarray(quaternion, np.float64))

    def get_pose(self, relative_to=None) -> np.ndarray:
        return np.r_[self.get_position(relative_to), self.get_quaternion(relative_to)]

    def set_pose(self, pose: Union[list, np.ndarray], relative_to=None, reset_dynamics=True) -> None:
        assert len(pose) == 7
        self.set_position(pose[:3], relative_to, reset_dynamics)
        self.set_quaternion(pose[3:], relative_to, reset_dynamics)

    def get_velocity(self) -> Tuple[np.ndarray, np.ndarray]:
        return np.zeros(3), np.zeros(3)

    def get_parent(self) -> Union["Object", None]:
        parent = sim.scene().get(self._handle).parent
        if parent == -1:
            return None
        cls = object_type_to_class.get(ObjectType(sim.scene().get(parent).type), Object)
        return cls(parent)

    def set_parent(self, parent_object: Union["Object", None], keep_in_place=True) -> None:
        sim.scene().set_parent(self._handle, _relto(parent_object), keep_in_place)

    def get_matrix(self, relative_to=None) -> np.ndarray:
        position, quaternion = sim.scene().pose_relative(self._handle, _relto(relative_to))
        m = np.eye(4)
        m[:3, :3] = sim.quat_matrix(quaternion)
        m[:3, 3] = position
        return m

    def set_matrix(self, matrix: np.ndarray, relative_to=None) -> None:
        if not isinstance(matrix, np.ndarray):
            raise ValueError("Expected Numpy 4x4 array.")
        sim.scene().set_pose_relative(self._handle, _relto(relative_to), matrix[:3, 3], sim.matrix_quat(matrix[:3, :3]))

    def _prop(self, key: str) -> bool:
        return bool(sim.scene().get(self._handle).props[key])

    def _set_prop(self, key: str, value: Any) -> None:
        sim.scene().get(self._handle).props[key] = value

    def is_collidable(self) -> bool:
        return self._prop("collidable")

    def set_collidable(self, value: bool) -> None:
        self._set_prop("collidable", bool(value))

    def get_contact(self, contact_obj=None, get_contact_normal: bool = True) -> List:
        return []

    def is_measurable(self) -> bool:
        return self._prop("measurable")

    def set_measurable(self, value: bool):
        self._set_prop("measurable", bool(value))

    def is_detectable(self) -> bool:
        return self._prop("detectable")

    def set_detectable(self, value: bool):
        self._set_prop("detectable", bool(value))

    def is_renderable(self) -> bool:
        return self._prop("renderable")

    def set_renderable(self, value: bool):
        self._set_prop("renderable", bool(value))

    def is_model(self) -> bool:
        return self._prop("model")

    def set_model(self, value: bool):
        self._set_prop("model", bool(value))

    def remove(self) -> None:
        if not self.still_exists():
            raise ObjectAlreadyRemovedError("The object/model was already deleted.")
        sim.scene().remove(self._handle, model=self.is_model())

    def reset_dynamic_object(self) -> None:
        pass

    def get_bounding_box(self) -> List[float]:
        half = sim.scene().get(self._handle).size / 2
        return [-half[0], half[0], -half[1], half[1], -half[2], half[2]]

    def get_extension_string(self) -> str:
        return ""

    def get_configuration_tree(self) -> Any:
        return sim.scene().configuration_tree(self._handle)

    def rotate(self, rotation: List[float]) -> None:
        q = sim.scene().pose_relative(self._handle, -1)[1]
        sim.scene().set_world_pose(self._handle, None, sim.quat_mul(q, sim.euler_quat(rotation)))

    def check_collision(self, obj: "Object" = None) -> bool:
        return False

    def get_model_bounding_box(self) -> List[float]:
        self._check_model()
        return self.get_bounding_box()

    @staticmethod
    def _get_objects_in_tree(root_object=None, object_type=ObjectType.ALL, exclude_base=True,
                             first_generation_only=False) -> List["Object"]:
        if root_object is None:
            root_object = sim.sim_handle_scene
        elif isinstance(root_object, Object):
            root_object = root_object.get_handle()
        elif not isinstance(root_object, int):
            raise ValueError("root_object must be None, int or Object")
        objects = []
        for handle in sim.scene().tree(root_object, exclude_base, first_generation_only):
            if object_type != ObjectType.ALL and sim.scene().get(handle).type != object_type.value:
                continue
            try:
                objects.append(Object.get_object(handle))
            except KeyError:
                warnings.warn(f"Object {handle} has an unsupported type")
        return objects

    def get_objects_in_tree(self, *args, **kwargs) -> List["Object"]:
        return self._get_objects_in_tree(self._handle, *args, **kwargs)

    def copy(self) -> "Object":
        raise NotImplementedError("the fake scene does not copy objects")

    def check_distance(self, other: "Object") -> float:
        return float(np.linalg.norm(self.get_position() - other.get_position()))

    def get_explicit_handling(self) -> int:
        return int(sim.scene().get(self._handle).props["explicit_handling"])

    def set_explicit_handling(self, value: int) -> None:
        self._set_prop("explicit_handling", int(value))

    def _check_model(self) -> None:
        if not self.is_model():
            raise ObjectIsNotModelError(
                "Object '%s' is not a model. Use 'set_model(True)' to convert." % self.get_name()
            )
