"""RLBench `Task` for return_cubes, built in code from PyRep primitives (no .ttm made in CoppeliaSim's GUI).

Imported only by `vplan.envs.rlbench_adapter`, after it has checked that RLBench and PyRep import: this
module imports both at the top. Written against RLBench's source (stepjam/RLBench 02720bb:
rlbench/backend/task.py, rlbench/backend/scene.py, rlbench/backend/conditions.py) and PyRep's
(stepjam/PyRep 8f420be: pyrep/objects/{object,shape,dummy,vision_sensor}.py).

How RLBench drives a task, and what this one does at each point:

- `Scene.load(task)` calls `task.load()`, then moves `task.get_base()` (the Dummy named after the task) to the
  centre of RLBench's workspace and saves the tree's configuration. RLBench's own `Task.load` only imports
  `rlbench/task_ttms/<name>.ttm`; `ReturnCubes.load` builds the scene instead: a model-base Dummy named
  `return_cubes` with the cubes (dynamic, respondable, graspable) and the flat marked spots as children.
- `Scene.init_episode` calls `init_task()` once (graspable objects, success conditions), then
  `init_episode(index)` every reset: colours and positions are drawn from numpy's global RNG (RLBench's
  convention; the adapter seeds it), and the task is static (`is_static_workspace`), so RLBench does not move
  the base afterwards. Then RLBench steps the physics ten times to let the cubes settle.
- The first observation of an episode passes through `decorate_observation`, which records the settled
  start poses and, on every observation, puts the task state in `observation.misc[MISC_KEY]`, in the base's
  frame (origin on the table top at the task's centre): the same keys as the embedded tabletop's `info`.
- `TaskEnvironment.step` asks `Task.success()`, which needs all registered conditions at once:
  `CubesDisplaced` (latched: every cube at least `displace_distance` from its start with none held, at
  some step so far), `CubesReturned` (every cube within `success_tolerance` of its start now) and RLBench's
  `NothingGrasped`. So success means "displaced, then returned", never "left where it was".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyrep.const import PrimitiveShape
from pyrep.objects.dummy import Dummy
from pyrep.objects.object import Object
from pyrep.objects.shape import Shape
from pyrep.objects.vision_sensor import VisionSensor
from rlbench.backend.conditions import Condition, NothingGrasped
from rlbench.backend.observation import Observation
from rlbench.backend.task import Task

from vplan.envs.tabletop_v0 import COLOURS, CUBE_HALF_SIZE, MAX_CUBES, MIN_SEPARATION, PLACE_HIGH, PLACE_LOW

MISC_KEY = "vplan_return_cubes"  # observation.misc entry that carries the task state
INSTRUCTIONS = [
    "move the cubes to the marked spots, then put them back where they were",
    "move every cube away from where it is, then return each cube to where it started",
    "displace the cubes and then put them back",
]
CUBE_MASS = 0.05  # kg
SPOT_SIZE = 0.05  # side of a marked spot (m)
SPOT_HEIGHT = 0.001
SPOT_COLOUR = [0.55, 0.55, 0.55]
MAX_YAW = 0.3  # cubes start rotated by up to this about the vertical (rad), as on the tabletop
FRONT_CAMERA = "cam_front"  # RLBench's front camera (rlbench/backend/scene.py)


class ReturnCubes(Task):
    """Move every cube away from where it starts, then put each back (the paper's RLBench task)."""

    def __init__(
        self,
        pyrep: Any,
        robot: Any,
        name: str | None = None,
        *,
        num_cubes: int = MAX_CUBES,
        success_tolerance: float = 0.02,
        displace_distance: float = 0.06,
    ) -> None:
        if not 1 <= num_cubes <= MAX_CUBES:
            raise ValueError(f"num_cubes: expected an int in [1, {MAX_CUBES}], got {num_cubes!r}")
        if not 0 < success_tolerance < displace_distance:
            raise ValueError(
                f"expected 0 < success_tolerance < displace_distance, got {success_tolerance!r} and "
                f"{displace_distance!r}"
            )
        super().__init__(pyrep, robot, name)
        self.num_cubes = num_cubes
        self.success_tolerance = success_tolerance
        self.displace_distance = displace_distance
        self._cubes: list[Shape] = []
        self._spots: list[Shape] = []
        self._cube_names: list[str] = list(COLOURS)[:num_cubes]
        self._start_poses: np.ndarray | None = None
        self._displaced = CubesDisplaced(self, displace_distance)

    # ---------------------------------------------------------------- the scene, built in code
    def load(self) -> Object:
        """The task's base, building the scene the first time (RLBench's `Task.load` wants a .ttm file)."""
        if Object.exists(self.name):
            return Dummy(self.name)
        base = Dummy.create()
        base.set_name(self.name)
        for i in range(self.num_cubes):
            x = (i - (self.num_cubes - 1) / 2) * MIN_SEPARATION
            cube = Shape.create(
                type=PrimitiveShape.CUBOID,
                size=[2 * CUBE_HALF_SIZE] * 3,
                mass=CUBE_MASS,
                respondable=True,
                static=False,
                renderable=True,
                position=[x, MIN_SEPARATION / 2, CUBE_HALF_SIZE],
                color=list(COLOURS[self._cube_names[i]][:3]),
            )
            cube.set_name(self._part_name("cube", i))
            cube.set_collidable(True)
            cube.set_measurable(True)
            cube.set_detectable(True)  # the gripper's proximity sensor must see it to grasp it
            cube.set_parent(base, keep_in_place=True)
            spot = Shape.create(
                type=PrimitiveShape.CUBOID,
                size=[SPOT_SIZE, SPOT_SIZE, SPOT_HEIGHT],
                respondable=False,
                static=True,
                renderable=True,
                position=[x, -MIN_SEPARATION / 2, SPOT_HEIGHT / 2],
                color=SPOT_COLOUR,
            )
            spot.set_name(self._part_name("spot", i))
            spot.set_collidable(False)
            spot.set_measurable(False)
            spot.set_detectable(False)
            spot.set_parent(base, keep_in_place=True)
        base.set_model(True)  # removing the base (Task.unload) removes the whole tree
        self._base_object = base
        return base

    # ---------------------------------------------------------------- RLBench's overrides
    def init_task(self) -> None:
        self._cubes = [Shape(self._part_name("cube", i)) for i in range(self.num_cubes)]
        self._spots = [Shape(self._part_name("spot", i)) for i in range(self.num_cubes)]
        self.register_graspable_objects(self._cubes)
        self._displaced = CubesDisplaced(self, self.displace_distance)
        self.register_success_conditions(
            [self._displaced, CubesReturned(self, self.success_tolerance), NothingGrasped(self.robot.gripper)]
        )

    def init_episode(self, index: int) -> list[str]:
        n = self.num_cubes
        order = np.random.permutation(len(COLOURS))[:n]
        self._cube_names = [list(COLOURS)[i] for i in order]
        for cube, colour in zip(self._cubes, self._cube_names):
            cube.set_color(list(COLOURS[colour][:3]))
        points = sample_separated(2 * n)
        starts, spots = points[:n], points[n:]
        right = self._image_right()  # spot i is the i-th from the left in the front camera, as on the tabletop
        spots = spots[np.argsort(spots @ right)]
        base = self.get_base()
        for cube, (x, y), yaw in zip(self._cubes, starts, np.random.uniform(-MAX_YAW, MAX_YAW, n)):
            cube.set_position([x, y, CUBE_HALF_SIZE], relative_to=base)
            cube.set_orientation([0.0, 0.0, yaw], relative_to=base)
        for spot, (x, y) in zip(self._spots, spots):
            spot.set_position([x, y, SPOT_HEIGHT / 2], relative_to=base)
        self._start_poses = None  # recorded from the first observation, once RLBench has let the cubes settle
        return list(INSTRUCTIONS)

    def variation_count(self) -> int:
        return 1  # colour order and layout are drawn per episode, not per variation

    def is_static_workspace(self) -> bool:
        return True  # the layout is drawn in init_episode; RLBench must not move the base afterwards

    def base_rotation_bounds(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)

    def get_low_dim_state(self) -> np.ndarray:
        return self.cube_poses()[:, :3].flatten()

    def decorate_observation(self, observation: Observation) -> Observation:
        observation.misc = dict(observation.misc or {})
        observation.misc[MISC_KEY] = self.state()
        return observation

    # ---------------------------------------------------------------- task state (base frame)
    def start_poses(self) -> np.ndarray:
        """(n, 7) start poses (position, wxyz quaternion), recorded at the episode's first look."""
        if self._start_poses is None:
            self._start_poses = self.cube_poses()
        return self._start_poses

    def cube_poses(self) -> np.ndarray:
        """(n, 7) cube poses in the base's frame: position and wxyz quaternion (the tabletop's layout)."""
        base = self.get_base()
        return np.stack([xyzw_pose_to_wxyz(cube.get_pose(relative_to=base)) for cube in self._cubes])

    def distances(self) -> np.ndarray:
        """(n,) distance (m) of each cube from its start."""
        return np.linalg.norm(self.cube_poses()[:, :3] - self.start_poses()[:, :3], axis=1)

    def grasped(self) -> int:
        """Index of the cube the gripper holds, or -1."""
        held = {obj.get_handle() for obj in self.robot.gripper.get_grasped_objects()}
        return next((i for i, cube in enumerate(self._cubes) if cube.get_handle() in held), -1)

    def state(self) -> dict[str, Any]:
        """The tabletop's `info` keys that the scene defines, in the base's frame."""
        poses, starts, grasped = self.cube_poses(), self.start_poses(), self.grasped()
        distance = np.linalg.norm(poses[:, :3] - starts[:, :3], axis=1)
        held = np.arange(self.num_cubes) == grasped
        base = self.get_base()
        returned = distance <= self.success_tolerance
        return {
            "cube_names": list(self._cube_names),
            "cube_poses": poses,
            "start_poses": starts.copy(),
            "spot_positions": np.stack([spot.get_position(relative_to=base) for spot in self._spots]),
            "grasped": grasped,
            "phase": "return" if self._displaced.latched else "displace",
            "displaced": (distance >= self.displace_distance) & ~held,
            "returned": returned,
            "success": bool(self._displaced.latched and returned.all() and grasped == -1),
            "dist": float(distance.mean()),
            "base_pose": np.asarray(base.get_pose(), dtype=np.float64),  # world frame, RLBench's xyzw
        }

    # ---------------------------------------------------------------- helpers
    def _part_name(self, part: str, index: int) -> str:
        return f"{self.name}_{part}{index}"

    def _image_right(self) -> np.ndarray:
        """Unit xy vector, in the base's frame, pointing to the right of the front camera's image."""
        base_rotation = quaternion_matrix(self.get_base().get_quaternion())
        if Object.exists(FRONT_CAMERA):
            forward = VisionSensor(FRONT_CAMERA).get_matrix()[:3, 2]  # a vision sensor looks along its z axis
            right = np.cross(forward, [0.0, 0.0, 1.0])
        else:  # no front camera in this scene: the base's +y
            right = base_rotation[:, 1]
        right_xy = (base_rotation.T @ right)[:2]
        norm = np.linalg.norm(right_xy)
        return right_xy / norm if norm > 1e-9 else np.array([0.0, 1.0])


class CubesDisplaced(Condition):
    """Met once every cube has been at least `distance` from its start with none held; stays met until reset."""

    def __init__(self, task: ReturnCubes, distance: float) -> None:
        self._task = task
        self._distance = distance
        self.latched = False

    def condition_met(self) -> tuple[bool, bool]:
        if not self.latched:
            self.latched = bool((self._task.distances() >= self._distance).all() and self._task.grasped() == -1)
        return self.latched, False

    def reset(self) -> None:
        self.latched = False


class CubesReturned(Condition):
    """Met while every cube is within `tolerance` of its start."""

    def __init__(self, task: ReturnCubes, tolerance: float) -> None:
        self._task = task
        self._tolerance = tolerance

    def condition_met(self) -> tuple[bool, bool]:
        return bool((self._task.distances() <= self._tolerance).all()), False


def sample_separated(count: int) -> np.ndarray:
    """`count` xy points in the placement area, pairwise at least MIN_SEPARATION apart (numpy's global RNG)."""
    while True:
        points: list[np.ndarray] = []
        for _ in range(100 * count):
            candidate = np.random.uniform(PLACE_LOW, PLACE_HIGH)
            if all(np.linalg.norm(candidate - p) >= MIN_SEPARATION for p in points):
                points.append(candidate)
                if len(points) == count:
                    return np.array(points)


def xyzw_pose_to_wxyz(pose: np.ndarray) -> np.ndarray:
    """PyRep's (x, y, z, qx, qy, qz, qw) as the tabletop's (x, y, z, qw, qx, qy, qz)."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.concatenate([pose[:3], pose[6:7], pose[3:6]])


def quaternion_matrix(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a PyRep (x, y, z, w) quaternion."""
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64) / np.linalg.norm(quaternion_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
