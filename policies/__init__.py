"""Policies for vplan's envs: scripted experts that label every step with its subgoal."""

from __future__ import annotations

from vplan.policies.retrace_expert import RetraceExpert
from vplan.policies.return_cubes_expert import SUBGOAL_TEMPLATES, ReturnCubesExpert, subgoal_texts

EXPERTS = {"return_cubes": ReturnCubesExpert, "retrace": RetraceExpert}


def make_expert(task: str, **kwargs: float | int | None) -> ReturnCubesExpert | RetraceExpert:
    """The scripted expert for `task`, built with the expert's keyword arguments (noise_std, ...)."""
    if task not in EXPERTS:
        raise ValueError(f"expected a task with a scripted expert, one of {sorted(EXPERTS)}, got {task!r}")
    return EXPERTS[task](**kwargs)


__all__ = ["EXPERTS", "SUBGOAL_TEMPLATES", "RetraceExpert", "ReturnCubesExpert", "make_expert", "subgoal_texts"]
