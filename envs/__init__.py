"""vplan's gymnasium environments, registered on import (`import vplan.envs`)."""

from __future__ import annotations

import gymnasium

from vplan.envs.tabletop_v0 import TabletopConfig

ENV_IDS = {"tabletop": "vplan/Tabletop-v0"}
_CONFIG_ENV_IDS = {TabletopConfig: ENV_IDS["tabletop"]}

# Importing again (importlib.reload, a second import path) must not re-register: gymnasium warns on that.
if ENV_IDS["tabletop"] not in gymnasium.registry:
    gymnasium.register(
        id=ENV_IDS["tabletop"],
        entry_point="vplan.envs.tabletop_v0:TabletopEnv",
        max_episode_steps=TabletopConfig.max_episode_steps,
    )


def make_env(config: TabletopConfig) -> gymnasium.Env:
    """The registered env for a config dataclass, truncated at the config's `max_episode_steps`."""
    env_id = _CONFIG_ENV_IDS.get(type(config))
    if env_id is None:
        names = [cls.__name__ for cls in _CONFIG_ENV_IDS]
        raise ValueError(f"expected an env config, one of {names}, got {type(config).__name__}")
    return gymnasium.make(env_id, config=config, max_episode_steps=config.max_episode_steps)


__all__ = ["ENV_IDS", "TabletopConfig", "make_env"]
