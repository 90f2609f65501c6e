"""What an env must offer the agent, checked from settings and spaces alone: one env, not a vector of them; the
actions the IDM predicts; observations as a dict holding the camera's frame at the world model's size and, while
stalls are detected, the gripper's xyz; instructions as long as the world model's chunks.

Torch-free, so that the CLI checks it from the checkpoints' config.json files before a model loads (~5 s on 2
cores); `VideoPlanningAgent.check_env` checks the same for callers from Python, with the models it holds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import is_dataclass, replace
from typing import Any

import numpy as np
from gymnasium import spaces

from vplan.config import AgentConfig
from vplan.errors import SettingMismatchError, UsageError
from vplan.policies.config import ADDED_LATER as IDM_ADDED_LATER
from vplan.policies.config import IDMConfig, describe_action_space
from vplan.shipped import recorded_config
from vplan.worldmodel.config import ADDED_LATER as WORLDMODEL_ADDED_LATER
from vplan.worldmodel.config import WorldModelConfig


def detected_stall_steps(config: AgentConfig, discrete: bool, chunk_frames: int) -> int:
    """The steps over which the agent judges a stall: `config.stall_steps`, or 0 (off) for discrete moves and for
    a count that no chunk of `chunk_frames` frames reaches before its last step."""
    steps = 0 if discrete else config.stall_steps
    return steps if steps < chunk_frames else 0


def check_env_fits(env: Any, config: AgentConfig, action_space: spaces.Space, image_size: int, chunk_frames: int,
                   stall_steps: int) -> None:
    """A SettingMismatchError (a UsageError and a ValueError) where `env` cannot drive an agent of these settings:
    it is a vector env (one agent per sub-env), the IDM predicts other actions than the env takes
    (`action_space`: another kind of space, their number or shape, moves not numbered from 0, or a Box bounded
    otherwise than [-1, 1]: the IDM's units; behind a wrapper declaring none, as gymnasium's ClipAction does, the
    unwrapped env's bounds), its observations are not a dict holding the camera (a uint8 frame of
    `image_size`) and, with `stall_steps`, the state key (the gripper's xyz first), or its instructions last
    another number of steps than the world model's `chunk_frames`."""
    if hasattr(env, "single_action_space"):  # gymnasium's VectorEnv: batched spaces, a batch of actions per step
        raise SettingMismatchError(f"env: expected one env, got a vector env of {getattr(env, 'num_envs', '?')} "
                                   "sub-envs (a batch of actions per step); a vector env: one agent per sub-env, "
                                   "each given obs[key][i] (check_env takes one env made with the same settings)")
    theirs, ours = env.action_space, action_space
    if describe_action_space(theirs) != describe_action_space(ours):
        raise SettingMismatchError(f"the IDM predicts {describe_action_space(ours)}, the env takes "
                                   f"{describe_action_space(theirs)}; pass worldmodel=DIR and idm=DIR trained on "
                                   "this env's episodes")
    inner = getattr(getattr(env, "unwrapped", env), "action_space", theirs)
    if _unbounded(theirs) and isinstance(inner, spaces.Box) and inner.shape == theirs.shape:
        theirs = inner  # gymnasium's ClipAction declares no bounds: the env's own say what an action means
    if isinstance(ours, spaces.Box) and not (np.all(theirs.low == ours.low) and np.all(theirs.high == ours.high)):
        raise SettingMismatchError(
            f"the IDM's actions lie in [-1, 1] in each dimension (its env's units, e.g. the tabletop's max_delta "
            f"per step and the grip's sign), the env's action space is bounded by low={_numbers(theirs.low)} "
            f"high={_numbers(theirs.high)}; wrap the env to take actions in [-1, 1] (gymnasium.wrappers."
            "RescaleAction(env, -1.0, 1.0), where that is what its bounds mean) or pass checkpoints trained on "
            "its actions")
    observations = getattr(env.observation_space, "spaces", None)
    if not isinstance(observations, Mapping):  # only a Dict space has keys
        raise SettingMismatchError(
            f"the env's observations are a {type(env.observation_space).__name__}, the agent reads a dict: the "
            f"camera's frame under {config.camera!r} (agent.camera)" + (f" and the gripper's xyz under "
            f"{config.state_key!r} (agent.state_key)" if stall_steps else "") + "; wrap the env to "
            "return such a dict (gymnasium.wrappers.TransformObservation with a Dict observation_space)")
    keys = sorted(observations)
    for setting, key in observation_keys(config, stall_steps).items():
        if key not in keys:
            hint = ("the key of the gripper's position, or agent.stall_steps=0 to turn stall detection off"
                    if setting == "agent.state_key" else "the key of one of its cameras")
            raise SettingMismatchError(f"{setting}={key!r}: the env's observations hold {keys}; pass {hint}")
    camera = observations[config.camera]
    shape = getattr(camera, "shape", None)
    if shape is not None and (tuple(shape) != (image_size, image_size, 3) or np.dtype(camera.dtype) != np.uint8):
        raise SettingMismatchError(f"observation_space[{config.camera!r}] (agent.camera): "
                                   + frame_mismatch(tuple(shape), camera.dtype, image_size))
    state = observations.get(config.state_key) if stall_steps else None
    if getattr(state, "shape", None) is not None and math.prod(state.shape) < 3:
        raise SettingMismatchError(
            f"observation_space[{config.state_key!r}] (agent.state_key): expected the gripper's xyz first "
            f"(3 values or more) for stall detection, got shape {tuple(state.shape)}; pass the key of the "
            "gripper's position, or agent.stall_steps=0 to turn stall detection off")
    check_chunk_steps(getattr(getattr(env, "unwrapped", env), "config", None), chunk_frames, "the world model")


def observation_keys(config: AgentConfig, stall_steps: int) -> dict[str, str]:
    """The observation keys the agent reads, by the setting that names each: the camera, and the gripper's state
    where stalls are detected."""
    keys = {"agent.camera": config.camera}
    if stall_steps:
        keys["agent.state_key"] = config.state_key
    return keys


def check_chunk_steps(env_config: Any, frames: int, model: str) -> None:
    """A SettingMismatchError where the env's instructions last `chunk_steps` steps (the blockworld's) and the world
    model (`model`, as a message names it) imagines chunks of another number of frames: each chunk would span two
    instructions (an agent's plans and an evaluation's figures then mean another thing)."""
    steps = getattr(env_config, "chunk_steps", None)
    if steps is not None and steps != frames:
        raise SettingMismatchError(f"env.chunk_steps={steps}: {model} imagines {frames}-frame chunks, one per "
                                   f"instruction of the path; set env.chunk_steps={frames}")


def check_idm_reads(space: spaces.Space, checkpoint: str, idm_space: spaces.Space) -> None:
    """A UsageError where an IDM reads other actions (`idm_space`) than the env's `space` holds: eval worldmodel's
    reads of the generated and the real chunks would agree, meaninglessly (a blockworld IDM's moves off tabletop
    frames: "same move 100%")."""
    reads, takes = describe_action_space(idm_space), describe_action_space(space)
    if reads != takes:
        raise UsageError(f"idm={checkpoint} reads {reads} off the frames, and the env takes {takes}; pass an IDM "
                         "trained on this env's episodes")


def check_takes_actions(space: spaces.Space, setting: str, checkpoint: str, config: WorldModelConfig) -> None:
    """A UsageError where `config` is an action model taking another number of values per action than the env's
    `space` holds (a Discrete's move: one), named by its `setting` and `checkpoint`."""
    width = int(np.prod(space.shape))
    if config.uses_actions and config.action_dim != width:
        values = f"{width} value{'s' if width != 1 else ''}"
        raise UsageError(f"{setting}={checkpoint}: an action model of action_dim {config.action_dim}, and the env's "
                         f"actions have {values}; pass one trained on this env's actions")


def check_idm_reads_frames(idm: str, reads: int, size: int) -> None:
    """A SettingMismatchError where the IDM (`idm`, its checkpoint) reads frames of another size than the world
    model draws."""
    if reads != size:
        raise SettingMismatchError(f"idm={idm} reads {reads}x{reads} frames, the world model draws {size}x{size}; "
                                   "pass an IDM trained on the world model's frames")


def check_checkpoints_fit_env(env_config: Any, worldmodel: str | None, idm: str | None, agent: AgentConfig | None,
                              action_models: Mapping[str, str | None] | None = None) -> None:
    """The checks above from the checkpoints' recorded settings and an env made from `env_config` (it makes no
    frame): with `agent`, the agent's whole contract; without, only the actions that the IDM reads and that the
    world models in `action_models` (setting -> checkpoint or None) take (eval worldmodel's); with both models, an
    IDM reading the world model's frame size. Nothing for an adapter's env (making one may start its simulator) or a
    checkpoint whose settings cannot be read (its loader names what is wrong)."""
    from vplan.envs import env_name, make_env

    if not is_dataclass(env_config) or env_name(env_config) in ("rlbench", "minerl"):
        return
    model = recorded_config(worldmodel, WorldModelConfig, WORLDMODEL_ADDED_LATER) if worldmodel else None
    reader = recorded_config(idm, IDMConfig, IDM_ADDED_LATER) if idm else None
    actors = {name: (spec, config) for name, spec in (action_models or {}).items() if spec and (
        config := recorded_config(spec, WorldModelConfig, WORLDMODEL_ADDED_LATER)) is not None and config.uses_actions}
    if (agent is None and reader is None and not actors) or (agent is not None and (model is None or reader is None)):
        return
    if model is not None and reader is not None:  # (eval worldmodel's IDM reads its generated frames too)
        check_idm_reads_frames(idm, reader.image_size, model.vae.image_size)
    if agent is not None:
        if hasattr(env_config, "image_size"):  # the command renders at the model's size
            try:
                env_config = replace(env_config, image_size=model.vae.image_size)
            except ValueError:  # a size no env renders (a damaged config.json): the command's loader names it
                return
    env = make_env(env_config)
    try:
        if agent is None:
            if reader is not None:
                check_idm_reads(env.action_space, idm, reader.action_space())
            for name, (spec, config) in actors.items():
                check_takes_actions(env.action_space, name, spec, config)
        else:
            chunk_frames = model.chunk_frames
            check_env_fits(env, agent, reader.action_space(), model.vae.image_size, chunk_frames,
                           detected_stall_steps(agent, reader.discrete, chunk_frames))
    finally:
        env.close()


def frame_mismatch(shape: tuple[int, ...], dtype: Any, size: int) -> str:
    """What is wrong with a camera frame (or its space) of `shape` and `dtype` for a world model drawing
    `size`x`size` frames, and what to do: the same words for an observation and for an env's declared space."""
    other_size = len(shape) == 3 and 3 in shape and sorted(shape) != sorted((size, size, 3))
    batched = len(shape) == 4 and tuple(shape[1:]) in ((size, size, 3), (size, size, 4))
    return (f"expected a uint8 frame of shape ({size}, {size}, 3), the world model's, got {np.dtype(dtype)} "
            f"{tuple(shape)}; " + (f"make the env with image_size={size}" if other_size else
                                   "one env's frame, not a batch or a stack of them (a vector env: one agent per "
                                   "sub-env, each given obs[key][i])" if batched else
                                   "an RGB image as height x width x 3 values from 0 to 255"))


def _numbers(values: np.ndarray) -> str:
    """An array's numbers as a short list ([-0.03, ...], not float32's -0.029999999329447746)."""
    return "[" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + "]"


def _unbounded(space: Any) -> bool:
    """Whether `space` is a Box with no bound at all (what gymnasium's ClipAction declares)."""
    return isinstance(space, spaces.Box) and bool(np.all(np.isneginf(space.low)) and np.all(np.isposinf(space.high)))
