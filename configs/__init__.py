"""The Hydra presets of the commands (one YAML per command, and a folder per config group): which a group holds,
and one read as a plain dict for the library's own `preset` constructors."""

from __future__ import annotations

from importlib import resources
from typing import Any


def _folder(group: str) -> Any:
    """configs/<group>/ (`model@component.model` reads `model`)."""
    return resources.files(__name__) / group.split("@")[0]


def preset_names(group: str) -> list[str]:
    """The presets of a config group (`task`, `model`, `env`, ...)."""
    return sorted(p.name[: -len(".yaml")] for p in _folder(group).iterdir() if p.name.endswith(".yaml"))


def load_preset(group: str, name: str) -> dict[str, Any]:
    """The preset configs/<group>/<name>.yaml as a dict; a ValueError naming the group's presets otherwise."""
    from omegaconf import OmegaConf

    names = preset_names(group)
    if name not in names:
        raise ValueError(f"{group}: expected a preset in {names}, got {name!r}")
    return OmegaConf.to_container(OmegaConf.load(str(_folder(group) / f"{name}.yaml")))
