"""What every vplan env shares: its typed config with keyword overrides and its render mode (checked first in
`__init__`), and `render()` as the camera image of the last observation."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

Config = TypeVar("Config")
Context = TypeVar("Context")

_gl_pid: int | None = None  # the process that made the first GL context of any env (forked children inherit it)


def make_gl_context(make: Callable[[], Context]) -> Context:
    """`make()` (a MuJoCo renderer or GL context), or a RuntimeError that says how to get one, never a hang: a
    process forked from one that had rendered cannot make a GL context, and a missing GL backend is named."""
    global _gl_pid
    if _gl_pid is not None and _gl_pid != os.getpid():
        raise RuntimeError(
            "this process was forked from one that had already rendered, and a GL context cannot be made after "
            "that (the renderer hangs); start workers with the 'spawn' or 'forkserver' multiprocessing context, "
            "e.g. gymnasium.vector.AsyncVectorEnv(env_fns, context='spawn')"
        )
    try:
        context = make()
    except Exception as err:  # the GL backends raise assorted errors (ImportError, RuntimeError, EGL errors)
        raise RuntimeError(
            f"cannot create an offscreen MuJoCo renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {err}. "
            "MuJoCo reads MUJOCO_GL once, when it is first imported: set MUJOCO_GL=egl (or osmesa) in the "
            "environment, or import vplan.envs before mujoco. Install EGL with apt-get install libegl1 "
            "libgl1-mesa-dri, or OSMesa with apt-get install libosmesa6 and set MUJOCO_GL=osmesa."
        ) from err
    _gl_pid = os.getpid()
    return context


def env_settings(
    config_class: type[Config],
    config: Config | None,
    overrides: dict[str, Any],
    render_mode: str | None,
    render_modes: list[str],
) -> Config:
    """`config` (or `config_class()`; a dict of its fields, as a spec read back from JSON holds it) with `overrides`
    applied, after refusing unknown override names and a render mode the env does not have, so
    `gymnasium.make(id, num_cubes=2)` and a typo fail the same clear way."""
    name = config_class.__name__
    unknown = set(overrides) - {f.name for f in fields(config_class)}
    if unknown:
        raise ValueError(f"expected {name} fields as overrides, got unknown {sorted(unknown)}")
    if render_mode not in (None, *render_modes):
        raise ValueError(f"render_mode: expected one of {render_modes} or None, got {render_mode!r}")
    if isinstance(config, dict):  # a spec read back from JSON (EnvSpec.to_json writes the dataclass as a dict)
        unknown = set(config) - {f.name for f in fields(config_class)}
        if unknown:
            raise ValueError(f"config: expected {name} fields, got unknown {sorted(unknown)}")
        config = config_class(**config)
    if config is not None and not isinstance(config, config_class):
        raise ValueError(f"config: expected a {name} (or a dict of its fields), got {type(config).__name__}")
    config = config if config is not None else config_class()
    return replace(config, **overrides) if overrides else config


def check_no_options(options: dict[str, Any] | None) -> None:
    """Refuse `reset(options=...)` for an env that reads none, rather than ignore what the caller meant."""
    if options:
        raise ValueError(f"options: this env's reset takes none (its settings are in its config), got "
                         f"{sorted(options)}")


class LastFrameRender:
    """`render()` for an env whose picture of the current state is its last observation's camera image.

    Mix in before `gymnasium.Env`; the env keeps that image in `self._front` (uint8, H×W×3).
    """

    render_mode: str | None
    _front: np.ndarray

    def render(self) -> np.ndarray | None:
        """The camera image of the last observation: the current state's, except after `simulate` (the step
        without rendering, for `vplan bench env`), which leaves it as it was."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        return self._front.copy()
