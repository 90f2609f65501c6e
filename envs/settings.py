"""What every vplan env does first in `__init__`: its typed config with keyword overrides, and its render mode."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

Config = TypeVar("Config")


def env_settings(
    config_class: type[Config],
    config: Config | None,
    overrides: dict[str, Any],
    render_mode: str | None,
    render_modes: list[str],
) -> Config:
    """`config` (or `config_class()`) with `overrides` applied, after refusing unknown override names and a
    render mode the env does not have, so `gymnasium.make(id, num_cubes=2)` and a typo fail the same clear way."""
    name = config_class.__name__
    unknown = set(overrides) - {f.name for f in fields(config_class)}
    if unknown:
        raise ValueError(f"expected {name} fields as overrides, got unknown {sorted(unknown)}")
    if render_mode not in (None, *render_modes):
        raise ValueError(f"render_mode: expected one of {render_modes} or None, got {render_mode!r}")
    config = config if config is not None else config_class()
    return replace(config, **overrides) if overrides else config
