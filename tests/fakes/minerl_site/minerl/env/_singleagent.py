"""Fake of minerl/env/_singleagent.py and _multiagent.py (minerllabs/minerl v0.4.4): `_SingleAgentEnv`.

The real env talks to Minecraft; this one moves an agent on a flat world, with the real old-gym API:
`seed(seed=None, seed_spaces=True)` (an int, forgotten after every reset, as in MineRL), `reset() -> obs`,
`step(action_dict) -> (obs, reward, done, info)`, `render(mode)` with metadata "render.modes", `task`
(the EnvSpec). Unlike the real env (whose action check is commented out), every key of an action must
belong to the spec's action space and hold a value inside it.

The world: the agent starts at (0, 0) facing yaw 0; Minecraft's yaw is in degrees, grows clockwise seen
from above, and facing yaw t means moving along (x, z) = (-sin t, cos t). `forward` / `back` move
WALK_PER_TICK blocks per tick; `camera` = [delta pitch, delta yaw] turns the head. The goal (a diamond block)
is GOAL_DISTANCE blocks away in a direction drawn from the seed. As in navigate_specs (NavigationDecorator with
randomize_compass_location, max_randomized_distance=8), the compass points at a target up to `compass_spread`
(8) blocks from the goal, also drawn from the seed. The compass angle is the target's bearing from the facing
direction, in [-180, 180], positive to the right (MineRL's tutorial steers with camera yaw += k * angle).
Touching the goal (within one block) gives +100 and ends the episode; the Dense variants add the distance
gained each tick towards the compass target (RewardForDistanceTraveledToCompassTarget), so a goal reached
can score less than the 160 MineRL's Dense success rule asks. The pov shows a sky shaded by yaw, ground striped by
position, and the goal as a cyan column when it is within 35 degrees of the view's centre.

As in the real env, the server quits at the spec's `max_episode_steps` ticks (navigate_specs: ServerQuitFromTimeUp),
so the episode's done may come from Minecraft on the step gym's TimeLimit ends it; and a lost connection
(`connection_lost = True`) answers a step with a random observation, done, and info {"error": ...}
(_multiagent.py).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, Tuple

import gym
import numpy as np

WALK_PER_TICK = 0.2158  # 4.317 blocks/s at 20 ticks/s
GOAL_DISTANCE = 64.0
TOUCH_DISTANCE = 1.0
HALF_FOV = 35.0


class _SingleAgentEnv(gym.Env):
    metadata = {"render.modes": ["human", "rgb_array"], "video_frames_per_second": 20}

    def __init__(self, env_spec, instances=None, is_fault_tolerant: bool = True, verbose: bool = False,
                 _xml_mutator_to_be_deprecated=None):
        self.task = env_spec
        self.instances = instances if instances is not None else []
        self.observation_space = env_spec.observation_space
        self.action_space = env_spec.action_space
        self._seed = None
        self.done = True
        self._last_pov = None
        self.position = np.zeros(2)
        self.yaw = 0.0
        self.pitch = 0.0
        self.goal = np.zeros(2)
        self.compass_spread = 8.0
        self.compass_target = np.zeros(2)
        self.resets = 0
        self.ticks = 0
        self.connection_lost = False

    def seed(self, seed=None, seed_spaces=True):
        assert isinstance(seed, int) or seed is None, "Seed must be an int!"
        self._seed = seed
        if seed_spaces:
            self.observation_space.seed(self._seed)
            self.action_space.seed(self._seed)

    def reset(self) -> Dict[str, Any]:
        try:
            seed = self._seed if self._seed is not None else int.from_bytes(os.urandom(4), "big")
            rng = np.random.RandomState(seed)
            bearing = rng.uniform(0.0, 360.0)
            self.goal = GOAL_DISTANCE * np.array([-np.sin(np.radians(bearing)), np.cos(np.radians(bearing))])
            spread, turn = self.compass_spread * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
            self.compass_target = self.goal + spread * np.array([np.cos(turn), np.sin(turn)])
            self.position = np.zeros(2)
            self.yaw, self.pitch = 0.0, 0.0
            self.done = False
            self.resets += 1
            self.ticks = 0
            return self._observation()
        finally:
            self._seed = None  # MineRL: "you gotta send it yourself" before every reset

    def step(self, action: Dict[str, Any]) -> Tuple[Dict[str, Any], float, bool, Dict[str, Any]]:
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset()")
        for key, value in action.items():
            if key not in self.action_space.spaces:
                raise ValueError(f"unknown action key {key!r}; the action space has {list(self.action_space.spaces)}")
            if value not in self.action_space.spaces[key]:
                raise ValueError(f"action[{key!r}] = {value!r} is not in {self.action_space.spaces[key]}")
        if self.connection_lost:
            self.done = True
            return self.observation_space.sample(), 0.0, True, {"error": "Connection timed out!"}
        self.ticks += 1
        camera = np.asarray(action.get("camera", np.zeros(2)), dtype=np.float64)
        self.pitch = float(np.clip(self.pitch + camera[0], -90.0, 90.0))
        self.yaw = float((self.yaw + camera[1]) % 360.0)
        walk = int(action.get("forward", 0)) - int(action.get("back", 0))
        before = self._distance(self.compass_target)
        self.position = self.position + walk * WALK_PER_TICK * self._facing()
        reward = (before - self._distance(self.compass_target)) if self.task.dense else 0.0
        if self._distance(self.goal) <= TOUCH_DISTANCE:
            reward += 100.0
            self.done = True
        if self.ticks >= self.task.max_episode_steps:  # the server's time-up quit
            self.done = True
        return self._observation(), float(reward), self.done, {}

    def render(self, mode="human"):
        assert mode in self.metadata["render.modes"]
        return self._last_pov

    def close(self):
        pass

    # ---- the flat world
    def _facing(self) -> np.ndarray:
        return np.array([-np.sin(np.radians(self.yaw)), np.cos(np.radians(self.yaw))])

    def _distance(self, point: np.ndarray) -> float:
        return float(np.linalg.norm(point - self.position))

    def compass_angle(self) -> float:
        return self._bearing(self.compass_target)

    def _bearing(self, point: np.ndarray) -> float:
        """Degrees from the facing direction to `point`, in [-180, 180], positive to the right."""
        delta = point - self.position
        goal_yaw = np.degrees(np.arctan2(-delta[0], delta[1]))
        return float((goal_yaw - self.yaw + 180.0) % 360.0 - 180.0)

    def _observation(self) -> Dict[str, Any]:
        height, width = self.observation_space.spaces["pov"].shape[:2]
        pov = np.zeros((height, width, 3), np.uint8)
        horizon = int(np.clip(height / 2 + self.pitch / 90.0 * height / 2, 1, height - 1))
        shade = int(100 + 100 * (np.cos(np.radians(self.yaw)) + 1) / 2)
        pov[:horizon] = [shade // 2, shade // 2 + 40, min(255, shade + 50)]
        columns = np.arange(width)
        stripes = ((columns + int(self.position[0] * 4) + int(self.position[1] * 4)) // 4) % 2
        pov[horizon:] = np.where(stripes[None, :, None] == 1, [70, 130, 40], [110, 80, 40]).astype(np.uint8)
        goal = self._bearing(self.goal)
        if abs(goal) < HALF_FOV:
            centre = int(width / 2 + goal / HALF_FOV * width / 2)
            half = max(1, int(8 / max(self._distance(self.goal), 1.0) * width / 8))
            pov[max(horizon - 2 * half, 0):horizon, max(centre - half, 0):min(centre + half, width)] = [60, 220, 220]
        self._last_pov = pov
        return OrderedDict([
            ("pov", pov),
            ("compass", OrderedDict([("angle", np.array(self.compass_angle(), dtype=np.float32))])),
            ("inventory", OrderedDict([("dirt", np.array(0, dtype=np.int64))])),
        ])
