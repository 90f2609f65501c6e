"""RLBench adapter (vplan/RLBench-v0): RLBench's `Environment` / `TaskEnvironment` in vplan's gymnasium contract.

Written against RLBench's source (stepjam/RLBench 02720bb: rlbench/environment.py, task_environment.py,
action_modes/{action_mode,arm_action_modes,gripper_action_modes}.py, observation_config.py,
backend/scene.py) and PyRep's (stepjam/PyRep 8f420be). Neither can be installed on vplan's own machines
(CoppeliaSim 4.1 is a separate download), so this module is tested against a fake that mirrors their
signatures (tests/fakes/), not against the real simulator. See the README for the install steps.

Known traps in RLBench's source that this adapter works around:

- `import rlbench` imports gymnasium and registers `rlbench/<task>-{state,vision}-v0` for every bundled
  task (rlbench/__init__.py). It is imported only inside the env, after `require_rlbench()`.
- `MoveArmThenGripper` (action_modes/action_mode.py) has no `action_bounds()` (the base class raises
  NotImplementedError), so RLBench's own gym wrapper cannot use it. vplan's action space is its own
  `Box(-1, 1, (4,))`, mapped here to an absolute end-effector pose plus RLBench's discrete gripper.
- `Task.load` imports only `rlbench/task_ttms/<name>.ttm`; the return_cubes task
  (vplan.envs.rlbench_return_cubes) builds its scene in code instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vplan.envs.adapters import SimulatorNotInstalledError, resize_rgb
from vplan.envs.tabletop_v0 import TASKS, WORKSPACE_HIGH, WORKSPACE_LOW, check_return_cubes_settings, spot_names
from vplan.envs.settings import LastFrameRender, check_no_options, env_settings
from vplan.errors import first_line
from vplan.utils.import_utils import is_package_available

ARM_ACTION_MODES = ("ik", "planning")
RLBENCH_INSTALL = (
    "install CoppeliaSim 4.1.0 (EDU, Ubuntu build from coppeliarobotics.com), export COPPELIASIM_ROOT=<its "
    "folder>, LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$COPPELIASIM_ROOT and QT_QPA_PLATFORM_PLUGIN_PATH=$COPPELIASIM_ROOT, "
    "then pip install git+https://github.com/stepjam/PyRep.git@8f420be8064b1970aae18a9cfbc978dfb15747ef, "
    "then pip install --no-deps git+https://github.com/stepjam/RLBench.git@02720bba4c73fe02eb75df946b8791b806028a9d "
    "numpy Pillow pyquaternion scipy natsort (the commits this adapter is written against; RLBench asks for PyRep "
    "by an unpinned URL, which pip refuses beside the pinned one); "
    "without a display, run an X server for its rendering, headless too (RLBench's README: 'Running Headless'; "
    "vplan's README: 'RLBench and MineRL adapters'); or use the embedded simulator: env=tabletop"
)


@dataclass
class RLBenchConfig:
    """Settings of the RLBench adapter; the defaults match the embedded tabletop's where both have them."""

    image_size: int = field(default=64, metadata={"help": "Height and width of the observed images (pixels)."})
    render_size: int = field(
        default=128, metadata={"help": "Resolution RLBench's cameras render at before resizing to image_size."}
    )
    wrist_camera: bool = field(default=False, metadata={"help": "Add RLBench's wrist camera as obs['wrist']."})
    num_cubes: int = field(default=3, metadata={"help": "Number of cubes (and marked spots), 1 to 3."})
    max_episode_steps: int = field(
        default=400, metadata={"help": "Steps after which the env truncates an episode."}
    )
    max_delta: float = field(default=0.03, metadata={"help": "End-effector displacement (m) for an action of 1."})
    arm_action_mode: str = field(
        default="ik",
        metadata={"help": f"One of {ARM_ACTION_MODES}: RLBench's EndEffectorPoseViaIK or EndEffectorPoseViaPlanning."},
    )
    success_tolerance: float = field(
        default=0.02, metadata={"help": "Distance (m) from its start within which a cube counts as returned."}
    )
    displace_distance: float = field(
        default=0.06, metadata={"help": "Distance (m) from its start beyond which a cube counts as displaced."}
    )
    headless: bool = field(default=True, metadata={"help": "Run CoppeliaSim without its window."})
    task: str = field(default="return_cubes", metadata={"help": f"One of {TASKS}."})

    def __post_init__(self) -> None:
        check_return_cubes_settings(self)
        if not 8 <= self.render_size <= 2048:
            raise ValueError(f"render_size: expected an int in [8, 2048], got {self.render_size!r}")
        if self.arm_action_mode not in ARM_ACTION_MODES:
            raise ValueError(f"arm_action_mode: expected one of {ARM_ACTION_MODES}, got {self.arm_action_mode!r}")


def require_rlbench() -> None:
    """Raise `SimulatorNotInstalledError` (one line: the install steps) unless RLBench can run here."""
    missing = [module for module in ("rlbench", "pyrep") if not is_package_available(module)]
    if missing:
        raise SimulatorNotInstalledError(
            f"env=rlbench needs RLBench and PyRep on CoppeliaSim 4.1 (not installed: {', '.join(missing)}): "
            + RLBENCH_INSTALL
        )
    root = os.environ.get("COPPELIASIM_ROOT")
    if not root:
        raise SimulatorNotInstalledError(
            "env=rlbench: COPPELIASIM_ROOT is not set (PyRep needs it to find CoppeliaSim 4.1): " + RLBENCH_INSTALL
        )
    if not os.path.isdir(root):  # PyRep refuses it too, but only when the simulator starts
        raise SimulatorNotInstalledError(
            f"env=rlbench: COPPELIASIM_ROOT={root} is not a folder (PyRep needs CoppeliaSim 4.1 there): "
            + RLBENCH_INSTALL
        )


def _import_rlbench() -> SimpleNamespace:
    """The RLBench and PyRep names the adapter uses; `SimulatorNotInstalledError` if they do not import."""
    require_rlbench()
    try:
        from rlbench.action_modes.action_mode import MoveArmThenGripper
        from rlbench.action_modes.arm_action_modes import (
            EndEffectorPoseViaIK,
            EndEffectorPoseViaPlanning,
            RelativeFrame,
        )
        from rlbench.action_modes.gripper_action_modes import Discrete
        from rlbench.backend.exceptions import InvalidActionError
        from rlbench.environment import Environment
        from rlbench.observation_config import CameraConfig, ObservationConfig

        from vplan.envs.rlbench_return_cubes import MISC_KEY, ReturnCubes, quaternion_matrix
    except Exception as error:  # pyrep's cffi module raises ImportError or OSError without CoppeliaSim's libraries
        raise SimulatorNotInstalledError(
            f"env=rlbench: RLBench is installed but does not import ({first_line(error, with_type=True)}): "
            + RLBENCH_INSTALL
        ) from error
    return SimpleNamespace(
        CameraConfig=CameraConfig,
        Discrete=Discrete,
        EndEffectorPoseViaIK=EndEffectorPoseViaIK,
        EndEffectorPoseViaPlanning=EndEffectorPoseViaPlanning,
        Environment=Environment,
        InvalidActionError=InvalidActionError,
        MISC_KEY=MISC_KEY,
        MoveArmThenGripper=MoveArmThenGripper,
        ObservationConfig=ObservationConfig,
        RelativeFrame=RelativeFrame,
        ReturnCubes=ReturnCubes,
        quaternion_matrix=quaternion_matrix,
    )


class RLBenchEnv(LastFrameRender, gym.Env):
    """RLBench's Panda moving cubes away and back, seen by RLBench's front camera (vplan/RLBench-v0).

    ## Action Space
    `Box(-1, 1, (4,), float32)`, as on the tabletop: the end effector's displacement (dx, dy, dz) in units
    of `max_delta` metres along the task's axes, clipped to the tabletop's tool workspace around the task's
    centre (from outside it, the tip moves towards it by at most `max_delta` per axis and step), and a grip
    command (> 0 closes, <= 0 opens). It is sent to RLBench as `MoveArmThenGripper` with
    an absolute `EndEffectorPoseViaIK` (or `...ViaPlanning`) pose that keeps the gripper's starting
    orientation, and RLBench's `Discrete` gripper (1 open, 0 closed). An arm target that RLBench rejects
    (`InvalidActionError`: no IK solution or path) leaves the arm where it is, still applies the grip, and
    sets `info["invalid_action"]`.

    ## Observation Space
    `Dict` with `"front"`: `Box(0, 255, (H, W, 3), uint8)`, RLBench's front camera rendered at
    `render_size` and box-filtered to `image_size`; `"agent_pos"`: `Box(-inf, inf, (4,), float32)`, the
    gripper tip's position in the task frame and the finger opening (m, the sum of the two finger joints);
    and `"wrist"` when `wrist_camera` is on.

    ## Rewards
    RLBench's: 1.0 when the task's success conditions hold, else 0.0. `info` has the tabletop's keys,
    positions in the task frame (origin on the table top at the task's centre, the world's axes):
    `cube_names`, `spot_names`, `cube_poses`, `start_poses`, `spot_positions`, `gripper_pos`,
    `gripper_opening`, `grasped`, `phase`, `displaced`, `returned`, `success`, `dist`,
    `environment_state`, `applied_action` (float32 (4,): the tip's move in the last step in units of
    `max_delta`, then the grip command as ±1, 0 where none was sent; zeros after a reset); plus `descriptions`
    (RLBench's task descriptions) and `invalid_action`. An arm target rejected twice (the hold fails too) sends
    no grip.

    ## Episode End
    Terminates when RLBench's `TaskEnvironment.step` reports termination (the task's success: every cube
    displaced at some step, then all back within `success_tolerance` with none held). The env truncates itself
    after the config's `max_episode_steps` (so a config passed to `gymnasium.make` is obeyed);
    `reset(options=...)` is refused: it reads none.

    ## Seeding
    RLBench draws from numpy's global RNG; `reset(seed=...)` seeds it (as RLBench's own gym wrapper does)
    from the env's `np_random`, so a seeded reset is reproducible. CoppeliaSim is launched at the first
    reset, not at construction; one process can run one CoppeliaSim.

    ## Version History
    * v0: initial version.
    """

    # render_fps is nominal: an RLBench step lasts until the arm has reached its target.
    metadata = {"render_modes": ["rgb_array"], "dist_unit": "m", "render_fps": 10}

    def __init__(
        self, config: RLBenchConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any
    ) -> None:
        self.config = env_settings(RLBenchConfig, config, overrides, render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self._rl = _import_rlbench()  # fails here, with the install steps, when RLBench cannot run

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

        self._environment: Any = None  # rlbench.environment.Environment, launched at the first reset
        self._task_env: Any = None  # rlbench.task_environment.TaskEnvironment
        self._tip_quaternion = np.array([0.0, 0.0, 0.0, 1.0])  # world xyzw, held for the whole episode
        self._base_pose = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        self._gripper_pos = np.zeros(3)
        self._steps: int | None = None  # steps since the reset; None before the first
        self._descriptions: list[str] = []
        self._front = np.zeros((size, size, 3), np.uint8)

    # ---------------------------------------------------------------- gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_no_options(options)
        super().reset(seed=seed)
        self._launch()
        np.random.seed(int(self.np_random.integers(2**32)))  # RLBench samples from numpy's global RNG
        descriptions, observation = self._task_env.reset()
        self._descriptions = list(descriptions)
        quaternion = np.asarray(observation.gripper_pose[3:], dtype=np.float64)
        self._tip_quaternion = quaternion / np.linalg.norm(quaternion)  # RLBench rejects non-unit quaternions
        self._steps = 0
        return self._convert(observation, success=False, invalid_action=False, applied=np.zeros(4))

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._steps is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():  # NaN became "hold and open", or PyRep's IK target
            raise ValueError(f"action: expected 4 finite numbers (dx, dy, dz, grip), got {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        grip = 0.0 if action[3] > 0 else 1.0  # RLBench's Discrete gripper: 1 open, 0 closed
        # Into the tool workspace, by at most max_delta per axis (the tip starts above it, and RLBench's
        # Jacobian IK fails on long jumps).
        step = np.clip(self._gripper_pos + action[:3] * self.config.max_delta, WORKSPACE_LOW, WORKSPACE_HIGH)
        target = self._gripper_pos + np.clip(step - self._gripper_pos, -self.config.max_delta, self.config.max_delta)
        invalid, before, gripped = False, self._gripper_pos.copy(), 1.0 if grip == 0.0 else -1.0
        try:
            observation, reward, terminate = self._task_env.step(self.rlbench_action(target, grip))
        except self._rl.InvalidActionError:
            invalid = True  # no IK solution or path: hold the arm, still apply the grip command
            try:
                observation, reward, terminate = self._task_env.step(self.rlbench_action(self._gripper_pos, grip))
            except self._rl.InvalidActionError:  # the arm first, then the grip: neither was carried out
                observation, reward, terminate, gripped = self._task_env.get_observation(), 0.0, False, 0.0
        tip = self._tip_in_task_frame(observation)  # what the step moved the tip by: what its frames show
        applied = np.append((tip - before) / self.config.max_delta, gripped)
        obs, info = self._convert(observation, success=reward > 0, invalid_action=invalid, applied=applied)
        self._steps += 1
        truncated = not terminate and self._steps >= self.config.max_episode_steps
        return obs, float(reward), bool(terminate), bool(truncated), info

    def close(self) -> None:
        if self._environment is not None:
            self._environment.shutdown()
            self._environment = None
            self._task_env = None
            self._steps = None

    # ---------------------------------------------------------------- mapping to and from RLBench
    def rlbench_action(self, target: np.ndarray, grip: float) -> np.ndarray:
        """RLBench's action for a tip target in the task frame: world (x, y, z, qx, qy, qz, qw), then the grip."""
        rotation = self._rl.quaternion_matrix(self._base_pose[3:])
        world = rotation @ np.asarray(target, dtype=np.float64) + self._base_pose[:3]
        return np.concatenate([world, self._tip_quaternion, [grip]])

    def _launch(self) -> None:
        if self._task_env is not None:
            return
        rl, config = self._rl, self.config
        frame = rl.RelativeFrame.WORLD
        if config.arm_action_mode == "ik":
            arm = rl.EndEffectorPoseViaIK(absolute_mode=True, frame=frame, collision_checking=False)
        else:
            arm = rl.EndEffectorPoseViaPlanning(absolute_mode=True, frame=frame, collision_checking=False)
        action_mode = rl.MoveArmThenGripper(arm_action_mode=arm, gripper_action_mode=rl.Discrete())
        self._environment = rl.Environment(
            action_mode=action_mode, obs_config=self._observation_config(), headless=config.headless
        )
        # Environment.get_task calls task_class(pyrep, robot): the task's settings travel in a partial.
        task_class = functools.partial(
            rl.ReturnCubes,
            num_cubes=config.num_cubes,
            success_tolerance=config.success_tolerance,
            displace_distance=config.displace_distance,
        )
        try:
            self._environment.launch()
            self._task_env = self._environment.get_task(task_class)
        except BaseException:  # a second launch in this process would find CoppeliaSim running: start over
            with contextlib.suppress(Exception):  # one that never started cannot shut down: the first error counts
                self._environment.shutdown()
            self._environment = self._task_env = self._steps = None
            raise

    def _observation_config(self) -> Any:
        """Only what the adapter reads: RGB of the front (and wrist) camera, the gripper pose and fingers."""
        rl, config = self._rl, self.config

        def camera(enabled: bool) -> Any:  # RLBench removes a camera whose rgb, depth and point cloud are off
            resolution = (config.render_size, config.render_size)
            return rl.CameraConfig(rgb=enabled, depth=False, point_cloud=False, mask=False, image_size=resolution)

        return rl.ObservationConfig(
            left_shoulder_camera=camera(False),
            right_shoulder_camera=camera(False),
            overhead_camera=camera(False),
            wrist_camera=camera(config.wrist_camera),
            front_camera=camera(True),
            joint_velocities=False,
            joint_positions=False,
            joint_forces=False,
            gripper_open=True,
            gripper_pose=True,
            gripper_joint_positions=True,
            task_low_dim_state=False,
        )

    def _tip_in_task_frame(self, observation: Any) -> np.ndarray:
        """The gripper tip's position in the task frame (the task base's), from an RLBench `Observation`."""
        self._base_pose = np.asarray(observation.misc[self._rl.MISC_KEY]["base_pose"], dtype=np.float64)
        rotation = self._rl.quaternion_matrix(self._base_pose[3:])
        return rotation.T @ (np.asarray(observation.gripper_pose[:3], dtype=np.float64) - self._base_pose[:3])

    def _convert(
        self, observation: Any, success: bool, invalid_action: bool, applied: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """vplan's observation and info from an RLBench `Observation` decorated by the return_cubes task."""
        state = observation.misc[self._rl.MISC_KEY]
        self._gripper_pos = self._tip_in_task_frame(observation)
        opening = float(np.sum(observation.gripper_joint_positions))
        size = self.config.image_size
        self._front = resize_rgb(observation.front_rgb, size)
        obs = {"front": self._front.copy(), "agent_pos": np.append(self._gripper_pos, opening).astype(np.float32)}
        if self.config.wrist_camera:
            obs["wrist"] = resize_rgb(observation.wrist_rgb, size)
        cube_poses = np.asarray(state["cube_poses"], dtype=np.float64)
        info = {
            "cube_names": list(state["cube_names"]),
            "spot_names": spot_names(self.config.num_cubes),
            "cube_poses": cube_poses,
            "start_poses": np.asarray(state["start_poses"], dtype=np.float64),
            "spot_positions": np.asarray(state["spot_positions"], dtype=np.float64),
            "gripper_pos": self._gripper_pos.copy(),
            "gripper_opening": opening,
            "grasped": int(state["grasped"]),
            "phase": state["phase"],
            "displaced": np.asarray(state["displaced"], dtype=bool),
            "returned": np.asarray(state["returned"], dtype=bool),
            "success": bool(success),
            "dist": float(state["dist"]),
            "environment_state": cube_poses[:, :3].flatten().astype(np.float32),
            "descriptions": list(self._descriptions),
            "invalid_action": invalid_action,
            "applied_action": np.asarray(applied, dtype=np.float32),
        }
        return obs, info
