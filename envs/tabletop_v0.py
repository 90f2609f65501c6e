"""Embedded MuJoCo tabletop: a floating parallel gripper and three coloured cubes (vplan/Tabletop-v0)."""

from __future__ import annotations

import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# MuJoCo picks its OpenGL backend once, when it is imported: choose a headless one before that.
if "mujoco" not in sys.modules and "MUJOCO_GL" not in os.environ:
    _has_egl = ctypes.util.find_library("EGL") is not None
    os.environ["MUJOCO_GL"] = "egl" if _has_egl or not ctypes.util.find_library("OSMesa") else "osmesa"

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from vplan.envs.settings import LastFrameRender, check_no_options, env_settings, make_gl_context
from vplan.utils.settings import check_field_types, check_ints

TASKS = ("return_cubes",)
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.1, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.12, 0.3, 0.85, 1.0),
}
MAX_CUBES = 3
CUBE_HALF_SIZE = 0.02
FINGER_OPEN = 0.04  # finger joint position when open (each finger); 0 is closed
# Tool-centre-point workspace (metres); cubes and spots are drawn from a smaller area inside it.
WORKSPACE_LOW = np.array([-0.2, -0.14, 0.008])
WORKSPACE_HIGH = np.array([0.2, 0.14, 0.16])
PLACE_LOW = np.array([-0.16, -0.1])
PLACE_HIGH = np.array([0.16, 0.1])
MIN_SEPARATION = 0.09  # between any two of the cube starts and spots: room for the open fingers
PHYSICS_HZ = 200  # assets/tabletop.xml's timestep, 0.005 s


def spot_names(num_spots: int) -> list[str]:
    """Names of the marked spots in order of increasing x (left to right in the front camera)."""
    return {1: ["middle"], 2: ["left", "right"], 3: ["left", "middle", "right"]}[num_spots]


@dataclass
class TabletopConfig:
    """Settings of the tabletop env; the defaults are the benchmark's."""

    image_size: int = field(default=64, metadata={"help": "Height and width of the camera images (pixels)."})
    wrist_camera: bool = field(default=False, metadata={"help": "Add the gripper camera as obs['wrist']."})
    num_cubes: int = field(default=3, metadata={"help": "Number of cubes (and marked spots), 1 to 3."})
    max_episode_steps: int = field(
        default=400, metadata={"help": "Steps after which the env truncates an episode."}
    )
    control_hz: int = field(
        default=10, metadata={"help": f"Env steps per simulated second: a divisor of the physics' {PHYSICS_HZ} Hz."}
    )
    max_delta: float = field(default=0.03, metadata={"help": "Gripper displacement (m) for an action of 1."})
    success_tolerance: float = field(
        default=0.02, metadata={"help": "Distance (m) from its start within which a cube counts as returned."}
    )
    displace_distance: float = field(
        default=0.06, metadata={"help": "Distance (m) from its start beyond which a cube counts as displaced."}
    )
    task: str = field(default="return_cubes", metadata={"help": f"One of {TASKS}."})

    def __post_init__(self) -> None:
        check_return_cubes_settings(self)
        check_ints(self, ("control_hz",))
        if PHYSICS_HZ % self.control_hz:
            divisors = [hz for hz in range(1, PHYSICS_HZ + 1) if PHYSICS_HZ % hz == 0]
            raise ValueError(f"control_hz: expected a divisor of the physics' {PHYSICS_HZ} Hz, so that a step is "
                             f"whole physics steps, one of {divisors}; got {self.control_hz!r}")


def check_return_cubes_settings(config: Any) -> None:
    """Refuse out-of-range values of the settings every return-cubes env has (the tabletop's and the RLBench
    adapter's configs), each with the field's name and the range it takes."""
    check_field_types(config)
    check_ints(config, ("image_size", "num_cubes", "max_episode_steps"), low=None)
    if not 8 <= config.image_size <= 1024:
        raise ValueError(f"image_size: expected an int in [8, 1024], got {config.image_size!r}")
    if not 1 <= config.num_cubes <= MAX_CUBES:
        raise ValueError(f"num_cubes: expected an int in [1, {MAX_CUBES}], got {config.num_cubes!r}")
    if config.max_episode_steps < 1:
        raise ValueError(f"max_episode_steps: expected a positive int, got {config.max_episode_steps!r}")
    if not 0 < config.max_delta <= 0.1:
        raise ValueError(f"max_delta: expected metres in (0, 0.1], got {config.max_delta!r}")
    if not 0 < config.success_tolerance < MIN_SEPARATION / 2:
        raise ValueError(
            f"success_tolerance: expected metres in (0, {MIN_SEPARATION / 2}), got {config.success_tolerance!r}"
        )
    if not config.success_tolerance < config.displace_distance < MIN_SEPARATION:
        raise ValueError(
            f"displace_distance: expected metres in (success_tolerance={config.success_tolerance}, "
            f"{MIN_SEPARATION}), got {config.displace_distance!r}"
        )
    if config.task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {config.task!r}")


class TabletopEnv(LastFrameRender, gym.Env):
    """Move the cubes away from where they start, then put each back where it started.

    A floating parallel gripper (a free body welded to a mocap target) works over a table with three 4 cm
    cubes, coloured red, green and blue in an order drawn at every reset, and three grey marked spots on
    which the cubes are set down in between. A fixed front camera (and optionally a camera on the gripper)
    gives the observations.

    ## Action Space
    `Box(-1, 1, (4,), float32)`: the gripper's displacement (dx, dy, dz) in units of `max_delta` metres,
    clipped to the workspace, and a grip command (> 0 closes the fingers, <= 0 opens them).

    ## Observation Space
    `Dict` with `"front"`: `Box(0, 255, (H, W, 3), uint8)`, the front camera; `"agent_pos"`:
    `Box(-inf, inf, (4,), float32)`, the tool centre point's xyz and the finger opening (m); and `"wrist"`,
    like `"front"`, when `wrist_camera` is on.

    ## Rewards
    1.0 on the step that succeeds, else 0.0. `info` carries what the metrics and the expert need:
    `cube_names` (colours in cube order), `spot_names` (left to right), `cube_poses` and `start_poses`
    ((n, 7): position and wxyz quaternion), `spot_positions` (n, 3), `gripper_pos`, `gripper_opening`,
    `grasped` (the cube touching both finger pads, or -1), `phase`, `displaced` and `returned` (n bools),
    `success`, `dist` (the mean distance of the cubes to their starts, the paper's "Dist"),
    `environment_state` (the cube positions, flat float32) and `applied_action` (float32 (4,): what the last
    step did with its action, the displacement the workspace let through in action units and the grip as ±1;
    zeros after a reset). The applied action is the move of the gripper's target (a mocap body) after the
    workspace's clip: a push into the edge moves nothing, so inverse dynamics trains on it (vplan/loop/idm.py).
    The gripper follows its target through a weld with a lag: at the default 10 Hz it covers ~94% of a step's
    move within the step and the rest in the next; at 50 Hz only ~25%, so there an action's motion spreads over
    several frames.

    ## Episode End
    The phase is `"displace"` until every cube is at least `displace_distance` from its start and not
    held, then `"return"` for good. The episode terminates with success in the return phase once every cube
    is within `success_tolerance` of its start and the gripper holds none. The env truncates it after
    `max_episode_steps` (400) steps (`gymnasium.make`'s own `max_episode_steps=` adds a `TimeLimit`; the
    earlier limit ends the episode).

    ## Rendering
    Offscreen through `MUJOCO_GL` (EGL if libEGL is found, else OSMesa), chosen when this module is imported
    before mujoco. The GL context is made at the first reset; a process forked after its parent rendered
    cannot make one, so vectorise with `AsyncVectorEnv(..., context="spawn")` once the parent has rendered.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "dist_unit": "m", "render_fps": TabletopConfig.control_hz}

    def __init__(
        self, config: TabletopConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any
    ) -> None:
        self.config = env_settings(TabletopConfig, config, overrides, render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control_hz}

        self.model = _load_model(self.config.num_cubes)
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (self.config.control_hz * self.model.opt.timestep))  # whole: see PHYSICS_HZ
        n = self.config.num_cubes
        self._cube_geoms = np.array([self.model.geom(f"cube{i}").id for i in range(n)])
        self._cube_qpos = np.array([self.model.jnt_qposadr[self.model.joint(f"cube{i}").id] for i in range(n)])
        self._spot_geoms = np.array([self.model.geom(f"spot{i}").id for i in range(n)])
        self._finger_qpos = np.array(
            [self.model.jnt_qposadr[self.model.joint(f"{s}_finger").id] for s in ("left", "right")]
        )
        self._gripper_body = self.model.body("gripper").id
        self._pad_geoms = (self.model.geom("left_pad").id, self.model.geom("right_pad").id)

        size = self.config.image_size
        image = spaces.Box(0, 255, (size, size, 3), np.uint8)
        obs_spaces: dict[str, spaces.Space] = {
            "front": image,
            "agent_pos": spaces.Box(-np.inf, np.inf, (4,), np.float32),
        }
        if self.config.wrist_camera:
            obs_spaces["wrist"] = image
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        # Made on first use: a GL context made before a fork hangs the children (gymnasium's
        # AsyncVectorEnv builds one env in the parent to read the spaces, then forks).
        self._renderer: mujoco.Renderer | None = None

        self._cube_names: list[str] = list(COLOURS)[:n]
        self._start_poses = np.zeros((n, 7))
        self._spot_positions = np.zeros((n, 3))
        self._phase = "displace"
        self._applied = np.zeros(4)  # the action the last step applied (info["applied_action"])
        self._front = np.zeros((size, size, 3), np.uint8)
        self._steps: int | None = None  # steps since the reset; None before the first

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        check_no_options(options)
        n, rng = self.config.num_cubes, self.np_random
        mujoco.mj_resetData(self.model, self.data)  # the gripper and its mocap target back home

        colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
        self._cube_names = colours
        self.model.geom_rgba[self._cube_geoms] = [COLOURS[c] for c in colours]

        points = _sample_separated(rng, 2 * n)
        starts, spots = points[:n], points[n:]
        spots = spots[np.argsort(spots[:, 0])]  # spot i is spot_names(n)[i]
        self._spot_positions = np.column_stack([spots, np.zeros(n)])
        self.model.geom_pos[self._spot_geoms, :2] = spots
        for i, (xy, yaw) in enumerate(zip(starts, rng.uniform(-0.3, 0.3, n))):
            adr = self._cube_qpos[i]
            self.data.qpos[adr : adr + 3] = (*xy, CUBE_HALF_SIZE)
            self.data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))

        self.data.qpos[self._finger_qpos] = FINGER_OPEN
        self.data.ctrl[:] = FINGER_OPEN
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)  # let the cubes settle on the table
        self._start_poses = self._cube_poses()
        self._phase = "displace"
        self._applied = np.zeros(4)
        self._steps = 0
        info = self._get_info()
        return self._get_obs(), info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        reward, terminated, info = self.simulate(action)
        truncated = not terminated and self._steps >= self.config.max_episode_steps
        return self._get_obs(), reward, terminated, truncated, info

    def simulate(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """The step without rendering: apply the action, step the physics, score the task; (reward, terminated,
        info). `vplan bench env` times it against `step` to tell the camera's share; `render()` still shows the
        last observation's frame."""
        if self._steps is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            # NaN would reach the mocap target, and MuJoCo would reset the whole simulation on its own
            raise ValueError(f"action: expected 4 finite numbers (dx, dy, dz, grip), got {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        self._steps += 1
        previous = self.data.mocap_pos[0].copy()
        target = previous + action[:3] * self.config.max_delta
        self.data.mocap_pos[0] = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        close = action[3] > 0
        self.data.ctrl[:] = 0.0 if close else FINGER_OPEN
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._applied = np.append((self.data.mocap_pos[0] - previous) / self.config.max_delta, 1.0 if close else -1.0)

        info = self._get_info()
        if self._phase == "displace" and info["displaced"].all():
            self._phase = "return"
            info = self._get_info()
        terminated = bool(info["success"])
        return float(terminated), terminated, info

    def set_state_from(self, other: TabletopEnv) -> dict[str, Any]:
        """Make this env a copy of `other` as it is now (the scene its reset drew and the simulation state), so
        stepping this one looks ahead without touching `other` (`vplan bench executor` rolls the expert out
        from the agent's state this way). Both need the same config. Returns the copy's `info`."""
        if other.config != self.config:
            raise ValueError(f"expected an env with this env's config {self.config}, got {other.config}")
        self.model.geom_rgba[self._cube_geoms] = other.model.geom_rgba[other._cube_geoms]
        self.model.geom_pos[self._spot_geoms] = other.model.geom_pos[other._spot_geoms]
        mujoco.mj_copyData(self.data, self.model, other.data)
        self._cube_names = list(other._cube_names)
        self._start_poses = other._start_poses.copy()
        self._spot_positions = other._spot_positions.copy()
        self._phase = other._phase
        self._applied = other._applied.copy()
        self._steps = other._steps
        if other._steps is not None:
            self._front = self._render_camera("front")  # render() shows the copy's state
        return self._get_info()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _render_camera(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = _make_renderer(self.model, self.config.image_size)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def _get_obs(self) -> dict[str, np.ndarray]:
        self._front = self._render_camera("front")
        obs = {"front": self._front.copy(), "agent_pos": self._agent_pos()}
        if self.config.wrist_camera:
            obs["wrist"] = self._render_camera("wrist")
        return obs

    def _agent_pos(self) -> np.ndarray:
        opening = self.data.qpos[self._finger_qpos].sum()
        return np.append(self.data.xpos[self._gripper_body], opening).astype(np.float32)

    def _cube_poses(self) -> np.ndarray:
        return np.stack([self.data.qpos[adr : adr + 7] for adr in self._cube_qpos]).copy()

    def _grasped(self) -> int:
        """Index of the cube that touches both finger pads, or -1."""
        contact = self.data.contact
        pairs = np.stack([contact.geom1, contact.geom2], axis=1)[: self.data.ncon]
        touching = []
        for pad in self._pad_geoms:
            other = np.concatenate([pairs[pairs[:, 0] == pad, 1], pairs[pairs[:, 1] == pad, 0]])
            touching.append(set(np.flatnonzero(np.isin(self._cube_geoms, other)).tolist()))
        both = sorted(touching[0] & touching[1])
        return both[0] if both else -1

    def _get_info(self) -> dict[str, Any]:
        poses = self._cube_poses()
        distance = np.linalg.norm(poses[:, :3] - self._start_poses[:, :3], axis=1)
        grasped = self._grasped()
        held = np.arange(len(poses)) == grasped
        displaced = (distance >= self.config.displace_distance) & ~held
        returned = distance <= self.config.success_tolerance
        success = self._phase == "return" and bool(returned.all()) and grasped == -1
        return {
            "cube_names": list(self._cube_names),
            "spot_names": spot_names(self.config.num_cubes),
            "cube_poses": poses,
            "start_poses": self._start_poses.copy(),
            "spot_positions": self._spot_positions.copy(),
            "gripper_pos": self.data.xpos[self._gripper_body].copy(),
            "gripper_opening": float(self.data.qpos[self._finger_qpos].sum()),
            "grasped": grasped,
            "phase": self._phase,
            "displaced": displaced,
            "returned": returned,
            "success": success,
            "dist": float(distance.mean()),
            "environment_state": poses[:, :3].flatten().astype(np.float32),
            "applied_action": self._applied.astype(np.float32),
        }


def _load_model(num_cubes: int) -> mujoco.MjModel:
    """Compile the packaged XML, dropping the cubes and spots beyond `num_cubes`."""
    xml = resources.files("vplan.envs").joinpath("assets", "tabletop.xml").read_text()
    spec = mujoco.MjSpec.from_string(xml)
    for i in range(num_cubes, MAX_CUBES):
        spec.delete(spec.body(f"cube{i}"))
        spec.delete(spec.geom(f"spot{i}"))
    return spec.compile()


def _make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """An offscreen renderer, or a RuntimeError that says how to get one (never a hang)."""
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    return make_gl_context(lambda: mujoco.Renderer(model, size, size))


def _sample_separated(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` xy points in the placement area, pairwise at least MIN_SEPARATION apart."""
    while True:
        points: list[np.ndarray] = []
        for _ in range(100 * count):
            candidate = rng.uniform(PLACE_LOW, PLACE_HIGH)
            if all(np.linalg.norm(candidate - p) >= MIN_SEPARATION for p in points):
                points.append(candidate)
                if len(points) == count:
                    return np.array(points)
