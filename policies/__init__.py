"""Policies for vplan's envs: scripted experts that label every step with its subgoal."""

from __future__ import annotations

from typing import Any

from vplan.policies.retrace_expert import RetraceExpert
from vplan.policies.return_cubes_expert import SUBGOAL_TEMPLATES, ReturnCubesExpert, subgoal_texts

EXPERTS = {"return_cubes": ReturnCubesExpert, "retrace": RetraceExpert}


def make_expert(task: str, env_config: Any = None, **kwargs: float | int | None) -> ReturnCubesExpert | RetraceExpert:
    """The scripted expert for `task`, built with the expert's keyword arguments (noise_std, ...) and fitted to
    `env_config` where it must be: the return_cubes expert steers in units of the env's `max_delta`."""
    if task not in EXPERTS:
        raise ValueError(f"expected a task with a scripted expert, one of {sorted(EXPERTS)}, got {task!r}")
    if task == "return_cubes" and getattr(env_config, "max_delta", None) is not None:
        kwargs.setdefault("max_delta", env_config.max_delta)
    return EXPERTS[task](**kwargs)


__all__ = ["EXPERTS", "SUBGOAL_TEMPLATES", "RetraceExpert", "ReturnCubesExpert", "make_expert", "subgoal_texts"]
