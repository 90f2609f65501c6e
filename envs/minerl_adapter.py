"""MineRL adapter (vplan/MineRL-v0): MineRL's navigate envs with vplan's discrete moves, in gymnasium's API.

MineRL 0.4.4's envs (minerllabs/minerl, tag v0.4.4: minerl/herobraine/env_specs/navigate_specs.py,
simple_embodiment.py, minerl/env/_singleagent.py) speak old gym (<0.20): `reset() -> obs`,
`step(action) -> (obs, reward, done, info)`, a dict action (`forward`, `back`, `left`, `right`, `jump`,
`sneak`, `sprint`, `attack` in {0, 1}, `camera` = [delta pitch, delta yaw] degrees, `place`) and a dict
observation (`pov` (64, 64, 3) uint8, `compass` {`angle`}, `inventory`). Shimmy's `GymV21CompatibilityV0`
(Farama-Foundation/Shimmy, shimmy/openai_gym_compatibility.py) turns that into gymnasium's API, and this
env maps vplan's `Move`s (vplan.envs.discrete_moves, shared with the blockworld) onto MineRL's action dict.

MineRL needs Minecraft 1.11 built with JDK 8 and old gym, so it lives in its own venv (see the README);
it is imported only inside the env. vplan's machines cannot run it: this module is tested against a fake that
mirrors MineRL's and old gym's signatures (tests/fakes/), with the real shimmy, never against Minecraft.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vplan.envs.adapters import SimulatorNotInstalledError, resize_rgb
from vplan.envs.discrete_moves import JUMPS, WALK, YAW_DELTA, Move, move_space, to_move
from vplan.envs.settings import LastFrameRender, check_no_options, env_settings
from vplan.errors import first_line
from vplan.utils.import_utils import is_package_available
from vplan.utils.settings import check_field_types

MINERL_ENV_IDS = (  # MineRL 0.4.4's navigate envs (minerl/herobraine/envs.py)
    "MineRLNavigate-v0",
    "MineRLNavigateDense-v0",
    "MineRLNavigateExtreme-v0",
    "MineRLNavigateExtremeDense-v0",
)
TICKS_PER_SECOND = 20  # MineRL steps Minecraft by one 50 ms tick per step
GOAL_TOUCH_REWARD = 100.0  # navigate_specs: RewardForTouchingBlockType, diamond_block, once only
KEYS = ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack")  # SIMPLE_KEYBOARD_ACTION
MAX_GYM_VERSION = (0, 20)  # MineRL 0.4.4 pins gym>=0.13.1,<0.20
MINERL_INSTALL = (
    "MineRL 0.4.4 needs its own venv with old gym and JDK 8: apt-get install openjdk-8-jdk (java on PATH or "
    "JAVA_HOME set), then in a fresh venv pip install 'setuptools<66' 'wheel<0.40' (gym 0.19's setup.py needs "
    "them), pip install --no-build-isolation gym==0.19.0 minerl==0.4.4 and pip install torch==2.13.0 "
    "-e '.[minerl]' (README: 'RLBench and MineRL adapters'); or use the embedded stand-in: env=blockworld"
)


@dataclass
class MineRLConfig:
    """Settings of the MineRL adapter; `env_id` picks MineRL's navigate variant (the task is `navigate`)."""

    env_id: str = field(default="MineRLNavigate-v0", metadata={"help": f"One of {MINERL_ENV_IDS}."})
    image_size: int = field(default=64, metadata={"help": "Height and width of obs['front'] (MineRL renders 64)."})
    ticks_per_move: int = field(
        default=5,
        metadata={"help": "Minecraft ticks (50 ms) per move, a divisor of 20; 5 walks about one block forward."},
    )
    max_episode_steps: int = field(
        default=1200, metadata={"help": "Moves after which the env truncates an episode (MineRL's own: 6000 ticks)."}
    )
    task: str = field(default="navigate", metadata={"help": "One of ('navigate',): the commands' task without task=."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.task != "navigate":
            raise ValueError(f"task: expected one of ('navigate',), got {self.task!r}")
        if self.env_id not in MINERL_ENV_IDS:
            raise ValueError(f"env_id: expected one of {MINERL_ENV_IDS}, got {self.env_id!r}")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size: expected an int in [8, 1024], got {self.image_size!r}")
        divisors = tuple(d for d in range(1, TICKS_PER_SECOND + 1) if TICKS_PER_SECOND % d == 0)
        if self.ticks_per_move not in divisors:
            raise ValueError(f"ticks_per_move: expected one of {divisors}, got {self.ticks_per_move!r}")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps: expected a positive int, got {self.max_episode_steps!r}")


def require_minerl() -> None:
    """Raise `SimulatorNotInstalledError` (one line: the install steps) unless MineRL can run here."""
    missing = [module for module in ("minerl", "gym", "shimmy") if not is_package_available(module)]
    if missing:
        raise SimulatorNotInstalledError(
            f"env=minerl needs MineRL with old gym and shimmy (not installed: {', '.join(missing)}): " + MINERL_INSTALL
        )
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SimulatorNotInstalledError(
            "env=minerl needs Java 8 (no java on PATH and no JAVA_HOME): " + MINERL_INSTALL
        )


def _import_minerl() -> SimpleNamespace:
    """Old gym (with MineRL's envs registered) and shimmy's converter; `SimulatorNotInstalledError` otherwise."""
    require_minerl()
    try:
        import gym as old_gym
        import minerl  # noqa: F401  (registers MineRL's envs in old gym's registry)
        from shimmy.openai_gym_compatibility import GymV21CompatibilityV0
    except Exception as error:
        raise SimulatorNotInstalledError(
            f"env=minerl: MineRL is installed but does not import ({first_line(error, with_type=True)}): "
            + MINERL_INSTALL
        ) from error
    version = tuple(int(part) for part in re.findall(r"\d+", old_gym.__version__)[:2])
    if version >= MAX_GYM_VERSION:
        raise SimulatorNotInstalledError(
            f"env=minerl: gym {old_gym.__version__} is installed, but MineRL 0.4.4 needs gym<0.20: " + MINERL_INSTALL
        )
    return SimpleNamespace(gym=old_gym, GymV21CompatibilityV0=GymV21CompatibilityV0)


class MineRLEnv(LastFrameRender, gym.Env):
    """Navigate in Minecraft (MineRL) with the blockworld's discrete moves (vplan/MineRL-v0).

    ## Action Space
    `Discrete(5)`: a `vplan.envs.discrete_moves.Move`. Each move lasts `ticks_per_move` Minecraft ticks:
    `FORWARD` / `BACK` hold MineRL's `forward` / `back` key; `JUMP` holds `forward` and `jump`;
    `TURN_LEFT` / `TURN_RIGHT` send `camera = [0, -/+TURN_DEGREES]` on the first tick and wait out the rest,
    so every move spans the same time. Pitch is never changed: the view stays level.

    ## Observation Space
    `Dict` with `"front"`: `Box(0, 255, (H, W, 3), uint8)`, MineRL's `pov` resized to `image_size`, and
    `"agent_pos"`: `Box(-180, 180, (1,), float32)`, MineRL's compass angle (degrees from the facing direction to the
    compass target, up to 8 blocks from the goal) — the only state of its own the agent observes in MineRL's
    navigate envs. MineRL reads it off Minecraft's compass needle, which swings with inertia (its Java source
    damps each tick's turn: from ~0 at an episode's start it takes some 20 ticks, 3–5 moves, to settle, and it lags
    each turn), so it is not a function of the current frame; the test fake's is exact (unverified on Minecraft).

    ## Rewards
    MineRL's, summed over the move's ticks (+100 on touching the diamond block; the Dense variants add the blocks
    moved towards the compass target). `info`: `compass_angle`, `success` (MineRL's own rule,
    `EnvSpec.determine_success_from_rewards` over the episode's rewards: 100, Dense 160, which a goal touched can
    miss), `episode_return`, `ticks`, `move`, `environment_state` (the compass angle, float32).

    ## Episode End
    Terminates when MineRL ends the episode with the goal touched (a +100 tick); truncated when it ends it otherwise
    (its own time limit, 6000 ticks), or after the config's `max_episode_steps` moves (the env truncates itself, so
    a config passed to `gymnasium.make` is obeyed). `reset(options=...)` is refused: it reads none.

    ## Seeding
    MineRL forgets its seed after every reset, so every reset passes one (drawn from `np_random`) through
    shimmy to MineRL's `seed()`: a seeded reset regenerates the same world.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICKS_PER_SECOND // MineRLConfig.ticks_per_move}

    def __init__(
        self, config: MineRLConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any
    ) -> None:
        self.config = env_settings(MineRLConfig, config, overrides, render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": TICKS_PER_SECOND // self.config.ticks_per_move}
        modules = _import_minerl()  # fails here, with the install steps, when MineRL cannot run
        # gym.make(env_id) in old gym, wrapped in MineRL's TimeLimit; Minecraft starts at the first reset.
        self._env = modules.GymV21CompatibilityV0(env_id=self.config.env_id)
        self._spec = self._env.gym_env.unwrapped.task  # MineRL's EnvSpec (navigate_specs.Navigate)
        self._action_keys = tuple(self._env.action_space.spaces)

        size = self.config.image_size
        self.observation_space = spaces.Dict(
            {
                "front": spaces.Box(0, 255, (size, size, 3), np.uint8),
                "agent_pos": spaces.Box(-180.0, 180.0, (1,), np.float32),
            }
        )
        self.action_space = move_space()
        self._rewards: list[float] = []
        self._moves: int | None = None  # moves since the reset; None before the first
        self._front = np.zeros((size, size, 3), np.uint8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_no_options(options)
        super().reset(seed=seed)
        minerl_seed = int(self.np_random.integers(2**31 - 1))
        observation, _ = self._env.reset(seed=minerl_seed)  # shimmy calls MineRL's seed(), then its reset()
        self._rewards = []
        self._moves = 0
        return self._convert(observation), self._info(observation, move=None)

    def step(self, action: int | np.integer) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._moves is None:
            raise RuntimeError("call reset() before step()")
        move = to_move(action)
        reward, terminated, truncated = 0.0, False, False
        touched = False
        for tick in range(self.config.ticks_per_move):
            observation, tick_reward, terminated, truncated, tick_info = self._env.step(self.minerl_action(move, tick))
            if "error" in tick_info:  # MineRL answers a lost connection with a random observation and done
                raise RuntimeError(f"MineRL lost its Minecraft instance ({tick_info['error']}); its observation is "
                                   "a random sample, so the episode cannot go on: reset the env")
            self._rewards.append(float(tick_reward))
            reward += float(tick_reward)
            touched = touched or tick_reward >= GOAL_TOUCH_REWARD / 2  # the Dense shaping is < 1 a tick
            if terminated or truncated:
                break
        info = self._info(observation, move)
        if terminated and not touched:
            # Navigate ends by touching the goal or by the server's time-up quit (on Minecraft's clock, which need
            # not fall on the tick gym's TimeLimit counts): without the touch, a timeout, not an end. Not MineRL's
            # success rule: on the Dense variants the shaping is measured to the compass target (up to 8 blocks
            # from the goal), so a goal touched can score under the 160 it asks
            terminated, truncated = False, True
        self._moves += 1
        truncated = truncated or (not terminated and self._moves >= self.config.max_episode_steps)
        return self._convert(observation), reward, bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._env.close()

    def minerl_action(self, move: Move, tick: int) -> dict[str, Any]:
        """MineRL's action dict for tick `tick` of `move`: every key of the env's action space, a no-op but the move."""
        action: dict[str, Any] = {}
        for key in self._action_keys:
            if key in KEYS:
                action[key] = 0
            elif key == "camera":
                action[key] = np.zeros(2, np.float32)
            elif key == "place":
                action[key] = "none"
        walk = WALK[move]
        if walk:
            action["forward" if walk > 0 else "back"] = 1
        if JUMPS[move]:
            action["jump"] = 1
        if tick == 0 and YAW_DELTA[move]:
            action["camera"] = np.array([0.0, YAW_DELTA[move]], np.float32)  # [delta pitch, delta yaw]
        return action

    def _convert(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        self._front = resize_rgb(observation["pov"], self.config.image_size)
        return {"front": self._front.copy(), "agent_pos": np.array([_compass_angle(observation)], np.float32)}

    def _info(self, observation: dict[str, Any], move: Move | None) -> dict[str, Any]:
        angle = _compass_angle(observation)
        return {
            "compass_angle": angle,
            "success": bool(self._spec.determine_success_from_rewards(list(self._rewards))),
            "episode_return": float(sum(self._rewards)),
            "ticks": len(self._rewards),
            "move": None if move is None else move.name.lower(),
            "environment_state": np.array([angle], np.float32),
        }


def _compass_angle(observation: dict[str, Any]) -> float:
    """MineRL's compass angle in degrees, in [-180, 180]."""
    return float(np.clip(np.asarray(observation["compass"]["angle"], dtype=np.float64), -180.0, 180.0))
