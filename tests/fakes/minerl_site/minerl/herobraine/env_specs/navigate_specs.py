"""Fake of minerl/herobraine/env_specs/navigate_specs.py and simple_embodiment.py (minerllabs/minerl v0.4.4).

The navigate spaces as the real handlers define them: observations `pov` Box(0, 255, (64, 64, 3), uint8),
`compass` {`angle`: Box(-180, 180, ())}, `inventory` {`dirt`}; actions forward, back, left, right, jump,
sneak, sprint, attack (Discrete(2) each), `camera` Box(-180, 180, (2,)) [delta pitch, delta yaw] and `place`
Enum('none', 'dirt'). Success is the real rule: summed rewards >= 100 (>= 160 for the Dense variants).
"""

from typing import List

import numpy as np

from minerl.herobraine.env_spec import EnvSpec
from minerl.herobraine.hero import spaces

NAVIGATE_STEPS = 6000
SIMPLE_KEYBOARD_ACTION = ["forward", "back", "left", "right", "jump", "sneak", "sprint", "attack"]


class Navigate(EnvSpec):
    def __init__(self, dense, extreme, *args, resolution=(64, 64), **kwargs):
        suffix = "Extreme" if extreme else ""
        suffix += "Dense" if dense else ""
        name = "MineRLNavigate{}-v0".format(suffix)
        self.dense, self.extreme = dense, extreme
        self.resolution = resolution
        super().__init__(name, *args, max_episode_steps=NAVIGATE_STEPS, **kwargs)

    def create_observation_space(self):
        width, height = self.resolution
        return spaces.Dict({
            "pov": spaces.Box(0, 255, (height, width, 3), dtype=np.uint8),
            "compass": spaces.Dict({"angle": spaces.Box(low=-180.0, high=180.0, shape=(), dtype=np.float32)}),
            "inventory": spaces.Dict({"dirt": spaces.Box(low=0, high=2304, shape=(), dtype=np.int64)}),
        })

    def create_action_space(self):
        actions = {key: spaces.Discrete(2) for key in SIMPLE_KEYBOARD_ACTION}
        actions["camera"] = spaces.Box(low=-180, high=180, shape=[2], dtype=np.float32)
        actions["place"] = spaces.Enum("none", "dirt", default="none")
        return spaces.Dict(actions)

    def determine_success_from_rewards(self, rewards: List[float]) -> bool:
        reward_threshold = 100.0
        if self.dense:
            reward_threshold += 60
        return sum(rewards) >= reward_threshold
