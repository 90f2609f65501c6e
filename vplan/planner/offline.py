"""The default planner: the task's decomposition, filled in with the scene's facts. No network, deterministic."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vplan.errors import VplanWarning
from vplan.planner.config import PlannerConfig
from vplan.planner.skills import Skill, TaskSkills, task_skills
from vplan.planner.subgoal import Plan, Subgoal
from vplan.tasks import TaskConfig


class Planner:
    """Base of the planners: `plan(instruction, info, first_frame=None) -> Plan`."""

    def __init__(self, config: PlannerConfig, task_config: TaskConfig) -> None:
        self.config = config
        self.task_config = task_config
        self.task_skills: TaskSkills = task_skills(task_config.name)

    def plan(self, instruction: str, info: Mapping[str, Any], first_frame: np.ndarray | None = None) -> Plan:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the planner holds (the LLM planner's HTTP client); it can still plan afterwards."""

    def skill_texts(self, info: Mapping[str, Any]) -> list[str] | None:
        """The texts of the task's skills for this scene, the labels the world model learned; None for a task of
        one's own without `skills()` (only the LLM planner needs them)."""
        try:
            return [skill.text for skill in self.task_skills.skills(info)]
        except NotImplementedError:
            return None

    def to_subgoals(self, sequence: Sequence[Skill], info: Mapping[str, Any]) -> list[Subgoal]:
        """Subgoals for a sequence of skills: chunks = ceil(estimated steps / chunk_frames), capped.

        One env step is one frame (10 Hz), so a subgoal of s steps spans ceil(s / chunk_frames) chunks of
        `chunk_frames` frames; the estimate is the task's (`TaskSkills.estimate_steps`). On return_cubes
        (seeds 0-39, 480 subgoals) this gives the chunks the expert's own labels span, ceil(steps / 8), for
        446 subgoals and one more for 34, never fewer; a plan spans ~24 chunks where the expert's whole episode
        is ~17 (each subgoal rounds up to whole chunks). `chunk_offset` shifts every estimate (at least 1 chunk).
        """
        steps = list(self.task_skills.estimate_steps(sequence, info))
        if len(steps) != len(sequence):  # zip below would drop the subgoals past the shorter
            raise ValueError(f"task {self.task_config.name!r}: {type(self.task_skills).__name__}.estimate_steps gave "
                             f"{len(steps)} step counts for {len(sequence)} skills; expected one per skill")
        cap, offset = self.config.max_chunks_per_subgoal, self.config.chunk_offset
        needed = [max(1, math.ceil(n / self.config.chunk_frames) + offset) for n in steps]
        capped = [(skill.text, n) for skill, n in zip(sequence, needed) if n > cap]
        if capped:  # retrace's way back grows with the path: the plan would end before it is walked
            text, n = capped[0]
            warnings.warn(f"planner: {text!r} takes about {n} chunks, cut to max_chunks_per_subgoal={cap}, so "
                          f"the plan ends before it is done; raise planner.max_chunks_per_subgoal to {n}",
                          VplanWarning, stacklevel=2)
        return [Subgoal(skill.text, min(cap, n), skill.check) for skill, n in zip(sequence, needed)]


class OfflinePlanner(Planner):
    """Decomposes the configured task with its skill library (vplan/planner/skills.py).

    The instruction is recorded in the plan, not parsed: the offline planner knows its task's decomposition
    only. `first_frame` is not used. The same `info` always gives the same plan.
    """

    def plan(self, instruction: str, info: Mapping[str, Any], first_frame: np.ndarray | None = None) -> Plan:
        del first_frame
        sequence, library = self.task_skills.decompose(info), type(self.task_skills).__name__
        if not sequence:
            raise ValueError(f"task {self.task_config.name!r}: {library}.decompose returned no skills for this "
                             "scene; expected at least one")
        known = self.skill_texts(info)
        unknown = [skill.text for skill in sequence if known is not None and skill.text not in known]
        if unknown:  # a typo would be imagined under a text no episode was labelled with, unsaid
            raise ValueError(f"task {self.task_config.name!r}: {library}.decompose returned {unknown[0]!r}, which is "
                             f"not one of its skills {known}; decompose from the skills (their texts are the labels "
                             "the world model learned)")
        subgoals = self.to_subgoals(sequence, info)
        return Plan(tuple(subgoals), source="offline", instruction=instruction)
