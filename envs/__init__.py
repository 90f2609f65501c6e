"""vplan's gymnasium environments, registered on import (`import vplan.envs`)."""

from __future__ import annotations

import gymnasium

from vplan.envs.blockworld import BlockworldConfig
from vplan.envs.minerl_adapter import MineRLConfig, require_minerl
from vplan.envs.rlbench_adapter import RLBenchConfig, require_rlbench
from vplan.envs.tabletop_v0 import TabletopConfig
from vplan.envs.worldmodel_env import WorldModelEnvConfig

ENV_IDS = {
    "tabletop": "vplan/Tabletop-v0",
    "blockworld": "vplan/Blockworld-v0",
    "rlbench": "vplan/RLBench-v0",
    "minerl": "vplan/MineRL-v0",
}
_ENTRY_POINTS = {
    "tabletop": ("vplan.envs.tabletop_v0:TabletopEnv", TabletopConfig),
    "blockworld": ("vplan.envs.blockworld.blockworld_v0:BlockworldEnv", BlockworldConfig),
    # The adapters import their simulators (RLBench, MineRL) only when an env is made.
    "rlbench": ("vplan.envs.rlbench_adapter:RLBenchEnv", RLBenchConfig),
    "minerl": ("vplan.envs.minerl_adapter:MineRLEnv", MineRLConfig),
}
_CONFIG_ENV_IDS = {config_class: ENV_IDS[name] for name, (_, config_class) in _ENTRY_POINTS.items()}
# The imagined tabletop (an action-conditioned world model) is an env but not an env config group: it has no
# tasks, expert or scene info for collect/run/bench, so it is made by id or by make_env, not by `env=`.
WORLD_MODEL_ENV_ID = "vplan/WorldModel-v0"
_CONFIG_ENV_IDS[WorldModelEnvConfig] = WORLD_MODEL_ENV_ID
# An adapter runs the tasks of the embedded env it stands in for (same task names, same info keys).
TASKS_OF_ENV = {"rlbench": "tabletop"}
_REQUIRE_SIMULATOR = {RLBenchConfig: require_rlbench, MineRLConfig: require_minerl}

# Every env truncates its episodes itself at its config's max_episode_steps (so a config passed to
# gymnasium.make is obeyed): none is registered with a TimeLimit. Importing again (importlib.reload, a second
# import path) must not re-register: gymnasium warns on that.
for _name, (_entry_point, _) in _ENTRY_POINTS.items():
    if ENV_IDS[_name] not in gymnasium.registry:
        gymnasium.register(id=ENV_IDS[_name], entry_point=_entry_point)
if WORLD_MODEL_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=WORLD_MODEL_ENV_ID, entry_point="vplan.envs.worldmodel_env:WorldModelEnv")


# The env settings that say what an action means (an action of 1 moves the gripper max_delta metres, within a
# step of 1 / control_hz s): an inverse-dynamics model reads actions in the units of the env it learned from.
ACTION_UNIT_SETTINGS = ("max_delta", "control_hz")


def action_units(config: object) -> dict[str, float]:
    """The `ACTION_UNIT_SETTINGS` an env config of continuous actions has, by name (empty for one of discrete
    moves, whose actions mean the same at any setting)."""
    if not hasattr(config, "max_delta"):
        return {}
    return {name: getattr(config, name) for name in ACTION_UNIT_SETTINGS if hasattr(config, name)}


def require_simulator(config: object) -> None:
    """For an adapter's config, raise `SimulatorNotInstalledError` naming the install steps if its simulator
    is missing (a `UsageError`: the CLI prints one line and exits with code 2); nothing for embedded envs."""
    check = _REQUIRE_SIMULATOR.get(type(config))
    if check is not None:
        check()


def task_envs(env: str) -> set[str]:
    """The envs whose tasks `env` can run: itself, and for an adapter the embedded env it stands in for."""
    return {env, TASKS_OF_ENV.get(env, env)}


def env_name(config: object) -> str:
    """The name of the env a config dataclass configures (its `configs/env/<name>.yaml`, a key of `ENV_IDS`)."""
    for name, (_, config_class) in _ENTRY_POINTS.items():
        if type(config) is config_class:
            return name
    names = [cls.__name__ for _, cls in _ENTRY_POINTS.values()]
    got = repr(config) if isinstance(config, str) else type(config).__name__  # omegaconf's MISSING: '???'
    raise ValueError(f"expected an env config, one of {names}, got {got}")


def make_env(
    config: TabletopConfig | BlockworldConfig | RLBenchConfig | MineRLConfig | WorldModelEnvConfig,
) -> gymnasium.Env:
    """The registered env for a config dataclass, truncated at the config's `max_episode_steps` (with gymnasium's
    `TimeLimit` too, so `env.spec.max_episode_steps` says it)."""
    env_id = _CONFIG_ENV_IDS.get(type(config))
    if env_id is None:
        names = [cls.__name__ for cls in _CONFIG_ENV_IDS]
        raise ValueError(f"expected an env config, one of {names}, got {type(config).__name__}")
    return gymnasium.make(env_id, config=config, max_episode_steps=config.max_episode_steps)


__all__ = [
    "ENV_IDS",
    "BlockworldConfig",
    "MineRLConfig",
    "RLBenchConfig",
    "TASKS_OF_ENV",
    "TabletopConfig",
    "WORLD_MODEL_ENV_ID",
    "WorldModelEnvConfig",
    "action_units",
    "env_name",
    "make_env",
    "require_simulator",
    "task_envs",
]
