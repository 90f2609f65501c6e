"""Fake of pyrep/backend/sim.py (stepjam/PyRep 8f420be): CoppeliaSim's scene, in memory.

The real module is PyRep's cffi binding to CoppeliaSim, whose scene holds every object behind an integer
handle. Here the scene is a dict of records with just enough behaviour for RLBench's code paths:

- a hierarchy of objects whose poses are stored relative to their parents (moving a parent moves its
  children, as in CoppeliaSim);
- a "pose-space" Panda: its seven joint values are the tip's world pose (x, y, z in units of
  1 / JOINT_UNITS m, so RLBench's 0.01 joint tolerance is 1 mm; then qx, qy, qz, qw), IK succeeds within
  reach, and each physics step moves the tip at most `ARM_STEP` towards the joint targets;
- a two-finger gripper whose joints (0 to 0.04 m each) follow their target velocities and stop on a held cube;
- dynamic shapes that, unless held, rest on the table after every step;
- proximity sensors that detect a detectable object within `DETECT_RADIUS`;
- vision sensors that draw a top view of the renderable shapes, oriented like the camera (its image's right
  is the camera's forward axis crossed with the world's up).

Scene file: `load_scene` builds RLBench's task_design.ttt as this fake knows it (table workspace, Panda,
cameras) whatever file it is given.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Object types (pyrep/backend/simConst.py values).
sim_object_shape_type = 0
sim_object_joint_type = 1
sim_object_graph_type = 2
sim_object_camera_type = 3
sim_object_dummy_type = 4
sim_object_proximitysensor_type = 5
sim_object_path_type = 8
sim_object_visionsensor_type = 9
sim_object_volume_type = 10
sim_object_mill_type = 11
sim_object_forcesensor_type = 12
sim_object_light_type = 13
sim_object_mirror_type = 14
sim_object_octree_type = 15
sim_handle_all = -2
sim_handle_scene = -12
sim_rendermode_opengl = 0
sim_rendermode_auxchannels = 1
sim_rendermode_colorcoded = 2
sim_rendermode_povray = 3
sim_rendermode_extrenderer = 4
sim_rendermode_extrendererwindowed = 5
sim_rendermode_opengl3 = 7
sim_rendermode_opengl3windowed = 8

TABLE_Z = 0.752  # RLBench's table top
WORKSPACE_CENTRE = np.array([0.25, 0.0, TABLE_Z])
WORKSPACE_SIZE = np.array([0.6, 0.9, 0.0])
ARM_BASE = np.array([-0.3, 0.0, TABLE_Z])
TIP_START = np.array([0.25, 0.0, TABLE_Z + 0.35])
TIP_DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # xyzw: 180 degrees about x, the gripper's z axis points down
ARM_REACH = 0.95  # m from the arm's base
IK_MAX_JUMP = 0.25  # m: Jacobian IK only solves near the current pose
ARM_STEP = 0.01  # m per physics step
JOINT_UNITS = 10.0  # the fake arm's position joints count decimetres
FINGER_MAX = 0.04
DETECT_RADIUS = 0.03
DT = 0.05


@dataclass
class Record:
    handle: int
    name: str
    type: int
    parent: int = -1
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))  # relative to the parent
    quaternion: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))  # xyzw, ditto
    size: np.ndarray = field(default_factory=lambda: np.zeros(3))
    color: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    props: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class ConfigurationTree:
    """Opaque snapshot of a subtree (the real one is a byte string)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = [copy.deepcopy(r) for r in records]


class Scene:
    def __init__(self) -> None:
        self.objects: dict[int, Record] = {}
        self._handles = itertools.count(1)
        self.running = False
        self.arms: list[int] = []  # arm base handles
        self.grippers: list[int] = []

    # ---- records
    def add(self, name: str, type_: int, parent: int = -1, **kwargs: Any) -> Record:
        props = {"renderable": True, "collidable": True, "measurable": True, "detectable": True,
                 "respondable": False, "dynamic": False, "model": False, "explicit_handling": 0}
        props.update(kwargs.pop("props", {}))
        record = Record(next(self._handles), self._unique(name), type_, parent, props=props, **kwargs)
        self.objects[record.handle] = record
        return record

    def _unique(self, name: str) -> str:
        taken = {r.name for r in self.objects.values()}
        if name not in taken:
            return name
        return next(f"{name}{i}" for i in itertools.count() if f"{name}{i}" not in taken)

    def get(self, handle: int) -> Record:
        if handle not in self.objects:
            raise RuntimeError(f"The call failed on the V-REP side. Return value: -1 (no object {handle})")
        return self.objects[handle]

    def handle_of(self, name: str) -> int:
        for record in self.objects.values():
            if record.name == name:
                return record.handle
        raise RuntimeError(f"The call failed on the V-REP side. Return value: -1 (no object named {name!r})")

    def children(self, handle: int) -> list[int]:
        return [r.handle for r in self.objects.values() if r.parent == handle]

    def tree(self, handle: int, exclude_base: bool = True, first_generation_only: bool = False) -> list[int]:
        if handle == sim_handle_scene:
            roots = [r.handle for r in self.objects.values() if r.parent == -1]
            out = []
            for root in roots:
                out += [root] + ([] if first_generation_only else self.tree(root))
            return out
        out = [] if exclude_base else [handle]
        for child in self.children(handle):
            out.append(child)
            if not first_generation_only:
                out += self.tree(child)
        return out

    def ancestors(self, handle: int) -> list[int]:
        out = []
        parent = self.get(handle).parent
        while parent != -1:
            out.append(parent)
            parent = self.get(parent).parent
        return out

    def remove(self, handle: int, model: bool) -> None:
        for h in (self.tree(handle, exclude_base=False) if model else [handle]):
            record = self.objects.pop(h)
            for child in self.children(h):  # a removed object's children move up to its parent
                self.objects[child].parent = record.parent

    # ---- poses
    def world_pose(self, handle: int) -> tuple[np.ndarray, np.ndarray]:
        record = self.get(handle)
        if record.parent == -1:
            return record.position.copy(), record.quaternion.copy()
        p, q = self.world_pose(record.parent)
        return p + quat_rotate(q, record.position), quat_mul(q, record.quaternion)

    def set_world_pose(self, handle: int, position: np.ndarray | None, quaternion: np.ndarray | None) -> None:
        record = self.get(handle)
        current_p, current_q = self.world_pose(handle)
        position = current_p if position is None else np.asarray(position, dtype=np.float64)
        quaternion = current_q if quaternion is None else normalise(quaternion)
        if record.parent == -1:
            record.position, record.quaternion = position.copy(), quaternion.copy()
            return
        pp, pq = self.world_pose(record.parent)
        inverse = quat_conj(pq)
        record.position = quat_rotate(inverse, position - pp)
        record.quaternion = quat_mul(inverse, quaternion)

    def pose_relative(self, handle: int, relative_to: int) -> tuple[np.ndarray, np.ndarray]:
        p, q = self.world_pose(handle)
        if relative_to == -1:
            return p, q
        rp, rq = self.world_pose(relative_to)
        inverse = quat_conj(rq)
        return quat_rotate(inverse, p - rp), quat_mul(inverse, q)

    def set_pose_relative(
        self, handle: int, relative_to: int, position: np.ndarray | None, quaternion: np.ndarray | None
    ) -> None:
        if relative_to != -1:
            rp, rq = self.world_pose(relative_to)
            if position is not None:
                position = rp + quat_rotate(rq, np.asarray(position, dtype=np.float64))
            if quaternion is not None:
                quaternion = quat_mul(rq, normalise(quaternion))
        self.set_world_pose(handle, position, quaternion)

    def set_parent(self, handle: int, parent: int, keep_in_place: bool) -> None:
        p, q = self.world_pose(handle)
        self.get(handle).parent = parent
        if keep_in_place:
            self.set_world_pose(handle, p, q)

    # ---- configuration trees
    def configuration_tree(self, handle: int) -> ConfigurationTree:
        return ConfigurationTree([self.get(h) for h in self.tree(handle, exclude_base=False)])

    def set_configuration_tree(self, tree: ConfigurationTree) -> None:
        for saved in tree.records:
            if saved.handle in self.objects:
                record = self.objects[saved.handle]
                record.parent = saved.parent
                record.position, record.quaternion = saved.position.copy(), saved.quaternion.copy()
                record.data = copy.deepcopy(saved.data)

    # ---- joints and robots
    def joint_position(self, handle: int) -> float:
        return float(self.get(handle).data["position"])

    def set_joint_position(self, handle: int, value: float) -> None:
        record = self.get(handle)
        low, span = record.data["interval"]
        record.data["position"] = float(np.clip(value, low, low + span)) if not record.data["cyclic"] else float(value)
        self._sync_arms()

    def _sync_arms(self) -> None:
        for arm in self.arms:
            data = self.get(arm).data
            pose = np.array([self.joint_position(j) for j in data["joints"]])
            self.set_world_pose(data["tip"], pose[:3] / JOINT_UNITS, pose[3:])

    def step(self) -> None:
        """One physics step of DT seconds."""
        for arm in self.arms:
            data = self.get(arm).data
            joints = [self.get(j) for j in data["joints"]]
            current = np.array([j.data["position"] for j in joints])
            target = np.array([j.data["target_position"] for j in joints])
            if data.get("control_loop", True):
                delta = target[:3] - current[:3]
                distance, limit = np.linalg.norm(delta), ARM_STEP * JOINT_UNITS
                moved = target[:3] if distance <= limit else current[:3] + delta / distance * limit
                new = np.concatenate([moved, normalise(target[3:])])
            else:
                new = current + np.array([j.data["target_velocity"] for j in joints]) * DT
            for j, value in zip(joints, new):
                j.data["position"] = float(value)
        self._sync_arms()
        for gripper in self.grippers:
            data = self.get(gripper).data
            held = self.tree(data["attach_point"])
            lowest = max([self.get(h).size[0] / 2 for h in held if self.get(h).type == sim_object_shape_type] + [0.0])
            for j in data["joints"]:
                record = self.get(j)
                value = record.data["position"] + record.data["target_velocity"] * DT
                record.data["position"] = float(np.clip(value, lowest, FINGER_MAX))
        carried = set()
        for gripper in self.grippers:
            carried |= set(self.tree(self.get(gripper).data["attach_point"]))
        for record in list(self.objects.values()):
            if record.type == sim_object_shape_type and record.props["dynamic"] and record.handle not in carried:
                p, q = self.world_pose(record.handle)
                self.set_world_pose(record.handle, [p[0], p[1], TABLE_Z + record.size[2] / 2], q)

    # ---- sensing
    def detects(self, sensor: int, handle: int) -> bool:
        record = self.get(handle)
        if not record.props["detectable"]:
            return False
        distance = np.linalg.norm(self.world_pose(sensor)[0] - self.world_pose(handle)[0])
        return bool(distance <= DETECT_RADIUS)

    def render(self, sensor: int) -> np.ndarray:
        """A (res_y, res_x, 3) float image in [0, 1]: a top view of the renderable shapes, oriented like the camera."""
        record = self.get(sensor)
        res_x, res_y = record.data["resolution"]
        position, quaternion = self.world_pose(sensor)
        forward = quat_matrix(quaternion)[:, 2]
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right = right / np.linalg.norm(right) if np.linalg.norm(right) > 1e-9 else np.array([0.0, 1.0, 0.0])
        ahead = np.cross([0.0, 0.0, 1.0], right)  # horizontal forward
        wrist = record.data.get("wrist", False)
        centre = position if wrist else WORKSPACE_CENTRE
        half = 0.12 if wrist else 0.4
        image = np.empty((res_y, res_x, 3))
        image[:] = [0.35, 0.35, 0.38]

        def fill(xy: np.ndarray, half_size: float, colour: list[float]) -> None:
            u = float(np.dot(np.append(xy, 0.0) - np.append(centre[:2], 0.0), right))
            v = float(np.dot(np.append(xy, 0.0) - np.append(centre[:2], 0.0), ahead))
            col0, col1 = [int(round((u + s * half_size + half) / (2 * half) * res_x)) for s in (-1, 1)]
            row0, row1 = [int(round((half - (v + s * half_size)) / (2 * half) * res_y)) for s in (1, -1)]
            image[max(row0, 0):max(min(row1, res_y), 0), max(col0, 0):max(min(col1, res_x), 0)] = colour

        fill(WORKSPACE_CENTRE[:2], WORKSPACE_SIZE[:2].min() / 2, [0.8, 0.72, 0.55])  # the table
        shapes = [r for r in self.objects.values() if r.type == sim_object_shape_type and r.props["renderable"]]
        for shape in sorted(shapes, key=lambda r: self.world_pose(r.handle)[0][2]):
            fill(self.world_pose(shape.handle)[0][:2], float(max(shape.size[:2])) / 2, shape.color)
        for gripper in self.grippers:
            tip = self.get(gripper).parent
            opening = sum(self.joint_position(j) for j in self.get(gripper).data["joints"])
            fill(self.world_pose(tip)[0][:2], 0.01 + opening / 4, [0.1, 0.1, 0.1])
        return image.astype(np.float32)


SCENE: Scene | None = None


def scene() -> Scene:
    if SCENE is None:
        raise RuntimeError("CoppeliaSim is not running: call PyRep.launch() first")
    return SCENE


def load_scene(scene_file: str) -> Scene:
    """RLBench's task_design.ttt as this fake knows it."""
    global SCENE
    SCENE = s = Scene()
    invisible = {"renderable": False, "collidable": False, "detectable": False, "measurable": False}
    s.add("workspace", sim_object_shape_type, position=WORKSPACE_CENTRE.copy(), size=WORKSPACE_SIZE.copy(),
          props=invisible)
    arm = s.add("Panda", sim_object_shape_type, position=ARM_BASE.copy(), props=dict(invisible, model=True))
    tip = s.add("Panda_tip", sim_object_dummy_type, arm.handle)
    s.set_world_pose(tip.handle, TIP_START, TIP_DOWN)
    s.add("Panda_target", sim_object_dummy_type, arm.handle)
    pose = np.concatenate([TIP_START * JOINT_UNITS, TIP_DOWN])
    joints = []
    for i, value in enumerate(pose):
        interval = (-100.0, 200.0) if i < 3 else (-1.0, 2.0)
        joint = s.add(f"Panda_joint{i + 1}", sim_object_joint_type, arm.handle, data={
            "position": float(value), "target_position": float(value), "target_velocity": 0.0,
            "interval": interval, "cyclic": False, "force": 0.0})
        joints.append(joint.handle)
    arm.data = {"joints": joints, "tip": tip.handle, "control_loop": True}
    s.arms.append(arm.handle)
    gripper = s.add("Panda_gripper", sim_object_shape_type, tip.handle, props=dict(invisible, model=True))
    finger_joints = [
        s.add(f"Panda_gripper_joint{i}", sim_object_joint_type, gripper.handle, data={
            "position": FINGER_MAX, "target_position": FINGER_MAX, "target_velocity": 0.0,
            "interval": (0.0, FINGER_MAX), "cyclic": False, "force": 0.0}).handle
        for i in (1, 2)
    ]
    s.add("Panda_gripper_attachProxSensor", sim_object_proximitysensor_type, tip.handle)
    attach = s.add("Panda_gripper_attachPoint", sim_object_forcesensor_type, tip.handle)
    gripper.data = {"joints": finger_joints, "attach_point": attach.handle}
    s.grippers.append(gripper.handle)
    cameras = {
        "cam_over_shoulder_left": ([-0.2, 0.6, 1.6], [0.6, -0.7, -0.6]),
        "cam_over_shoulder_right": ([-0.2, -0.6, 1.6], [0.6, 0.7, -0.6]),
        "cam_overhead": ([0.25, 0.0, 2.2], [0.001, 0.0, -1.0]),
        "cam_front": ([1.3, 0.0, 1.6], [-1.0, 0.0, -0.6]),
    }
    for name, (position, forward) in cameras.items():
        for suffix in ("", "_mask"):
            camera = s.add(name + suffix, sim_object_visionsensor_type, props=invisible,
                           data={"resolution": [128, 128], "render_mode": sim_rendermode_opengl3})
            s.set_world_pose(camera.handle, position, look_quaternion(forward))
    for suffix in ("", "_mask"):
        wrist = s.add("cam_wrist" + suffix, sim_object_visionsensor_type, tip.handle, props=invisible,
                      data={"resolution": [128, 128], "render_mode": sim_rendermode_opengl3, "wrist": True})
        s.set_world_pose(wrist.handle, TIP_START, look_quaternion([0.001, 0.0, -1.0]))
    s.add("cam_cinematic_placeholder", sim_object_dummy_type)
    return s


def unload_scene() -> None:
    global SCENE
    SCENE = None


# ---- quaternion helpers (xyzw, as PyRep)
def normalise(q: Any) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return quat_matrix(q) @ np.asarray(v, dtype=np.float64)


def quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = normalise(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_quat(m: np.ndarray) -> np.ndarray:
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        return normalise([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
    q = np.zeros(4)
    q[i] = 0.25 * s
    q[j] = (m[j, i] + m[i, j]) / s
    q[k] = (m[k, i] + m[i, k]) / s
    q[3] = (m[k, j] - m[j, k]) / s
    return normalise(q)


def euler_quat(euler: Any) -> np.ndarray:
    """CoppeliaSim's Euler angles (alpha, beta, gamma): R = Rx(alpha) Ry(beta) Rz(gamma)."""
    a, b, g = euler
    qx = np.array([np.sin(a / 2), 0.0, 0.0, np.cos(a / 2)])
    qy = np.array([0.0, np.sin(b / 2), 0.0, np.cos(b / 2)])
    qz = np.array([0.0, 0.0, np.sin(g / 2), np.cos(g / 2)])
    return quat_mul(quat_mul(qx, qy), qz)


def quat_euler(q: np.ndarray) -> np.ndarray:
    m = quat_matrix(q)
    beta = np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    alpha = np.arctan2(-m[1, 2], m[2, 2])
    gamma = np.arctan2(-m[0, 1], m[0, 0])
    return np.array([alpha, beta, gamma])


def look_quaternion(forward: Any) -> np.ndarray:
    """A vision sensor's orientation looking along `forward`: z forward, y up, x = y cross z (image left)."""
    z = normalise(forward)
    x = np.cross([0.0, 0.0, 1.0], z)
    x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-9 else np.array([0.0, 1.0, 0.0])
    y = np.cross(z, x)
    return matrix_quat(np.column_stack([x, y, z]))
