"""Embedded MuJoCo blockworld: a first-person agent with Minecraft-like moves in a voxel world (vplan/Blockworld-v0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from vplan.envs.blockworld.meshing import build_meshes
from vplan.envs.blockworld.motion import WALK_STEP, AgentState, ceiling, rise_ahead, step
from vplan.envs.blockworld.rendering import (
    EYE_HEIGHT,
    SceneRenderer,
    build_scene,
    fits,
    heading_quat,
    room_for,
    write_meshes,
)
from vplan.envs.blockworld.retrace import (
    PATH_MARGIN,
    RETURN_INSTRUCTION,
    TURN_STEPS,
    RetracePath,
    RetraceScore,
    plan_path,
)
from vplan.envs.blockworld.terrain import MAX_HEIGHT, VoxelWorld, generate_world
from vplan.envs.discrete_moves import move_space, to_move
from vplan.envs.settings import LastFrameRender, check_no_options, env_settings
from vplan.errors import UsageError
from vplan.utils.settings import check_field_types, check_ints

TASKS = ("retrace",)
JUMP_LIFT = 0.5  # blocks the camera is raised in the frame right after a jump
HEAD_CLEARANCE = 0.1  # blocks the lifted camera stays below a block overhead: more than its near plane reaches
WORLD_ATTEMPTS = 20  # worlds drawn per reset before giving up on finding a path
HOME_RADIUS = WALK_STEP / 2  # blocks from the start within which the agent is back there


class NoPathError(UsageError, RuntimeError):
    """No world drawn holds a path of the chosen settings: the CLI says it in one line (exit code 2); still a
    RuntimeError for library callers."""


@dataclass
class BlockworldConfig:
    """Settings of the blockworld env; the defaults are the benchmark's."""

    image_size: int = field(default=64, metadata={"help": "Height and width of the camera image (pixels)."})
    world_size: int = field(default=40, metadata={"help": "Width and depth of the world (blocks)."})
    path_chunks: int = field(default=6, metadata={"help": "Instructions (chunks) in the outbound path."})
    chunk_steps: int = field(
        default=8,
        metadata={"help": "Steps per instruction: the world model's chunk_frames. A turn takes "
                  f"{TURN_STEPS} of them, so at least {TURN_STEPS}."},
    )
    success_radius: float = field(
        default=1.0, metadata={"help": "Distance (blocks) within which the return passes a waypoint."}
    )
    max_episode_steps: int = field(
        default=200,
        metadata={"help": "Steps after which the env truncates an episode: at least the task's shortest "
                  f"solution, the way out, a turn about and the way back (2 * path_chunks * chunk_steps + "
                  f"{2 * TURN_STEPS})."},
    )
    control_hz: int = field(default=10, metadata={"help": "Env steps per simulated second (the video's fps)."})
    task: str = field(default="retrace", metadata={"help": f"One of {TASKS}."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ints(self, ("image_size", "world_size", "path_chunks", "chunk_steps", "max_episode_steps", "control_hz"),
                   low=None)
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size: expected an int in [8, 1024], got {self.image_size!r}")
        if not 4 * PATH_MARGIN <= self.world_size <= 256:
            raise ValueError(f"world_size: expected an int in [{4 * PATH_MARGIN}, 256], got {self.world_size!r}")
        if not 1 <= self.path_chunks <= 32:
            raise ValueError(f"path_chunks: expected an int in [1, 32], got {self.path_chunks!r}")
        if not TURN_STEPS <= self.chunk_steps <= 64:
            raise ValueError(f"chunk_steps: expected an int in [{TURN_STEPS}, 64], got {self.chunk_steps!r}")
        if not 0 < self.success_radius <= 4:
            raise ValueError(f"success_radius: expected blocks in (0, 4], got {self.success_radius!r}")
        shortest = 2 * self.path_chunks * self.chunk_steps + 2 * TURN_STEPS  # out, a turn about, back
        if self.max_episode_steps < shortest:
            raise ValueError(
                f"max_episode_steps: expected at least the retrace's shortest solution, 2 * path_chunks * chunk_steps "
                f"+ {2 * TURN_STEPS} = {shortest} steps, in the config (gymnasium.make's own max_episode_steps= only "
                f"adds a TimeLimit), got {self.max_episode_steps!r}"
            )
        if not 1 <= self.control_hz <= 100:
            raise ValueError(f"control_hz: expected an int in [1, 100], got {self.control_hz!r}")
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")


class BlockworldEnv(LastFrameRender, gym.Env):
    """Walk a path given as instructions through a voxel world, then go back to the start along it.

    A seeded world of textured blocks (grass, dirt, stone, wood, leaves, water; textures drawn in code) seen
    through the first-person camera of an agent that moves like a Minecraft player, one discrete move a step
    (kinematic, checked against the voxel grid: envs/blockworld/motion.py). MuJoCo renders the scene; the
    terrain is one merged mesh per block face material.

    ## Action Space
    `Discrete(5)`, a `vplan.envs.discrete_moves.Move`: forward and back walk 0.5 block, turns are 15 degrees,
    jump walks forward climbing up to one block (and shows the camera half a block higher for that frame).

    ## Observation Space
    `Dict` with `"front"`: `Box(0, 255, (H, W, 3), uint8)`, the agent's camera (eye 1.62 blocks above the feet,
    70 degree field of view, 10 degrees down); and `"agent_pos"`: `Box(0, high, (4,), float32)`, the feet's
    (x, y, z) in blocks and the heading in degrees (clockwise from +x seen from above).

    ## Rewards
    1.0 on the step that ends the episode with success (see Episode End), else 0.0. `info` carries what the
    metrics and the expert need: `position` (x, y, z), `heading`, `rise_ahead` (what a forward move would
    take: 0 a walk, 1 a jump, 2 impossible), `blocked` (the last move was), `step` (steps taken), `phase`
    (`"outbound"`, then `"return"`), `chunk` (index of the chunk the next step belongs to), `instruction` (its
    text), `instructions` (the outbound path's), `path` (the planned position after every outbound step,
    (n * chunk_steps + 1, 2)), `waypoints` (n, 2), `waypoint_dists` (the return's closest distance to each, inf
    before the return), `passed`, `dist` (their mean: the task's metric), `success` and `environment_state`
    (the waypoints, flat float32).

    ## Episode End
    The first `path_chunks * chunk_steps` steps are the outbound path, one instruction per `chunk_steps`;
    then the return. `success` holds when every waypoint and the turning point have been passed within
    `success_radius` on the return and the agent is back at the start (within a quarter block); the episode
    terminates then, with reward 1 (so `success` and the reward agree), and the env truncates it after
    `max_episode_steps` (200) steps (`gymnasium.make`'s own `max_episode_steps=` adds a `TimeLimit`; the earlier
    limit ends the episode).

    ## Rendering
    Offscreen through `MUJOCO_GL` (EGL if libEGL is found, else OSMesa), chosen when `vplan.envs` is imported
    before mujoco. The GL context is made at the first reset; a process forked after its parent rendered
    cannot make one, so vectorise with `AsyncVectorEnv(..., context="spawn")` once the parent has rendered.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "dist_unit": "blocks", "render_fps": BlockworldConfig.control_hz}

    def __init__(
        self, config: BlockworldConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any
    ) -> None:
        self.config = env_settings(BlockworldConfig, config, overrides, render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control_hz}

        size = self.config.image_size
        high = np.array([self.config.world_size, self.config.world_size, MAX_HEIGHT, 360.0], np.float32)
        self.observation_space = spaces.Dict(
            {
                "front": spaces.Box(0, 255, (size, size, 3), np.uint8),
                "agent_pos": spaces.Box(np.zeros(4, np.float32), high, (4,), np.float32),
            }
        )
        self.action_space = move_space()
        # The scene is compiled at the first reset (its mesh room depends on the world) and the renderer made
        # on first use: a GL context made before a fork hangs the children (gymnasium's AsyncVectorEnv builds
        # one env in the parent to read the spaces, then forks).
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderer: SceneRenderer | None = None
        self._meshes_uploaded = False

        self.world: VoxelWorld | None = None
        self.path: RetracePath | None = None
        self._agent = AgentState(0.0, 0.0, 0.0, 0.0)
        self._score: RetraceScore | None = None
        self._steps = 0
        self._blocked = False
        self._front = np.zeros((size, size, 3), np.uint8)

    @property
    def agent(self) -> AgentState:
        """The agent's current state."""
        return self._agent

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        check_no_options(options)
        cfg = self.config
        self.world = self.path = None  # a reset that fails leaves no episode to step (it stepped the last one's)
        for _ in range(WORLD_ATTEMPTS):
            world = generate_world(self.np_random, cfg.world_size)
            path = plan_path(world, self.np_random, cfg.path_chunks, cfg.chunk_steps)
            if path is not None:
                break
        else:
            raise NoPathError(
                f"found no outbound path of {cfg.path_chunks} chunks in {WORLD_ATTEMPTS} worlds of "
                f"{cfg.world_size} blocks; use fewer path_chunks or a larger world_size"
            )
        self.world, self.path = world, path
        self._agent = path.start
        self._score = RetraceScore(path.waypoints, cfg.success_radius, turning_point=path.positions[-1])
        self._steps = 0
        self._blocked = False
        self._load_world(world)
        return self._get_obs(), self._get_info()

    def simulate(self, action: int | np.integer) -> tuple[float, bool, dict[str, Any]]:
        """The step without rendering: move the agent and score the task; (reward, terminated, info). `render()`
        still shows the last observation's frame. `vplan bench env` times it against `step`."""
        if self.path is None or self.world is None:
            raise RuntimeError("call reset() before step()")
        move = to_move(action)  # ValueError naming the valid moves
        self._agent, self._blocked = step(self.world, self._agent, move)
        self._steps += 1
        if self._steps >= self.path.steps:  # the return: from the turning point on, every position counts
            self._score.update(self._agent.xy)
        info = self._get_info()
        terminated = info["success"]
        return float(terminated), terminated, info

    def step(self, action: int | np.integer) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        reward, terminated, info = self.simulate(action)
        truncated = not terminated and self._steps >= self.config.max_episode_steps
        return self._get_obs(), reward, terminated, truncated, info

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _load_world(self, world: VoxelWorld) -> None:
        """Put the world's meshes into the scene, rebuilding it when they do not fit."""
        meshes = build_meshes(world)
        if self.model is None or not fits(self.model, meshes):
            self.model = build_scene(room_for(meshes, self.model), self.config.world_size, self.config.image_size)
            self.data = mujoco.MjData(self.model)
            if self._renderer is not None:
                self._renderer.set_model(self.model)
        write_meshes(self.model, meshes)
        self._meshes_uploaded = False

    def _get_obs(self) -> dict[str, np.ndarray]:
        self._front = self._render_eye()
        agent = self._agent
        agent_pos = np.array([agent.x, agent.y, agent.z, agent.heading], np.float32)
        return {"front": self._front.copy(), "agent_pos": agent_pos}

    def _render_eye(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = SceneRenderer(self.model, self.config.image_size)
            self._meshes_uploaded = False
        if not self._meshes_uploaded:
            self._renderer.upload_meshes()
            self._meshes_uploaded = True
        agent = self._agent
        self.data.mocap_pos[0] = (agent.x, agent.y, eye_height(self.world, agent))
        self.data.mocap_quat[0] = heading_quat(agent.heading)
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        return self._renderer.render(self.data)

    def _get_info(self) -> dict[str, Any]:
        path, score, agent = self.path, self._score, self._agent
        outbound = self._steps < path.steps
        chunk = self._steps // self.config.chunk_steps
        waypoints = path.waypoints
        return {
            "position": np.array([agent.x, agent.y, agent.z]),
            "heading": float(agent.heading),
            "rise_ahead": rise_ahead(self.world, agent),
            "blocked": self._blocked,
            "step": self._steps,
            "phase": "outbound" if outbound else "return",
            "chunk": chunk,
            "instruction": path.instructions[chunk] if outbound else RETURN_INSTRUCTION,
            "instructions": path.instructions,
            "path": path.positions.copy(),
            "waypoints": waypoints,
            "waypoint_dists": score.closest.copy(),
            "passed": score.passed,
            "dist": score.mean,
            "success": score.success and bool(np.linalg.norm(agent.xy - path.positions[0]) <= HOME_RADIUS),
            "environment_state": waypoints.ravel().astype(np.float32),
        }


def eye_height(world: VoxelWorld, agent: AgentState) -> float:
    """The camera's height: `EYE_HEIGHT` above the feet, raised `JUMP_LIFT` in the frame after a jump, but no
    higher than `HEAD_CLEARANCE` below a block over the agent's head (a jump under leaves two blocks up drew its
    frame from inside them, on 18 of 300 seeds' planned paths)."""
    eye = agent.z + EYE_HEIGHT
    if not agent.airborne:
        return eye
    return min(eye + JUMP_LIFT, ceiling(world, agent.x, agent.y, agent.z) - HEAD_CLEARANCE)
