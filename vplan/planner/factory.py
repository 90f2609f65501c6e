"""`make_planner(config, task_config)`: the planner of `config.kind`."""

from __future__ import annotations

from vplan.planner.config import PlannerConfig
from vplan.planner.llm import LLMPlanner
from vplan.planner.offline import OfflinePlanner, Planner
from vplan.tasks import TaskConfig


def make_planner(config: PlannerConfig, task_config: TaskConfig | str) -> Planner:
    """An `OfflinePlanner` (kind=offline) or an `LLMPlanner` (kind=llm) for the task (a `TaskConfig`, or the name
    of a preset in configs/task/, as `VideoPlanningAgent.from_pretrained` takes it)."""
    if isinstance(task_config, str):
        task_config = TaskConfig.preset(task_config)
    if config.kind == "offline":
        return OfflinePlanner(config, task_config)
    if config.kind == "llm":
        return LLMPlanner(config, task_config)
    raise ValueError(f"kind: expected one of ('offline', 'llm'), got {config.kind!r}")
