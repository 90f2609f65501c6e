"""What a task is, independent of the simulator that runs it: its name, the env it runs on, the instruction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TaskConfig:
    """A task preset (configs/task/*.yaml)."""

    name: str = field(metadata={"help": "Task name, as in configs/task/<name>.yaml."})
    env: str = field(metadata={"help": "The env the task is defined for (configs/env/<env>.yaml)."})
    instruction: str = field(metadata={"help": "What the user says; the planner decomposes it into subgoals."})

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError(f"task {self.name!r}: expected a non-empty instruction, got {self.instruction!r}")

    @classmethod
    def preset(cls, name: str) -> TaskConfig:
        """The task preset configs/task/<name>.yaml (`return_cubes`, ...) as a TaskConfig."""
        from vplan.configs import load_preset, preset_names

        if name not in preset_names("task"):  # a task of one's own is no preset
            raise ValueError(f"task: expected a preset in {preset_names('task')}, got {name!r} (a task of your own: "
                             "pass TaskConfig(name=..., env=..., instruction=...))")
        values = load_preset("task", name)
        return cls(**{key: value for key, value in values.items() if key != "defaults"})


def task_progress(info: Mapping[str, Any]) -> float:
    """How far the task got, in [0, 1], from the env's final info (0 for an env this does not know): unlike Dist,
    an agent that does nothing scores 0. return_cubes: half for the cubes displaced, half for those returned;
    retrace: the waypoints passed on the way back, the first (the start, where an agent that never moved stands)
    only once another is; success is 1 (a one-chunk path's only waypoint is the start)."""
    if "displaced" in info and "returned" in info:
        if info.get("phase") == "return":
            return 0.5 + 0.5 * float(np.mean(info["returned"]))
        return 0.5 * float(np.mean(info["displaced"]))
    if "passed" in info:
        if info.get("success"):
            return 1.0
        passed = np.asarray(info["passed"], bool)
        return float(passed.mean()) if info.get("phase") == "return" and passed[1:].any() else 0.0
    return 0.0
