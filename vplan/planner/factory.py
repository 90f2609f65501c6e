"""`make_planner(config, task_config)`: the planner of `config.kind`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vplan.planner.config import PlannerConfig
from vplan.planner.llm import LLMPlanner
from vplan.planner.offline import OfflinePlanner, Planner
from vplan.tasks import TaskConfig

if TYPE_CHECKING:
    from vplan.chat import ChatEndpoint


def make_planner(
    config: PlannerConfig, task_config: TaskConfig | str, endpoint: ChatEndpoint | None = None
) -> Planner:
    """An `OfflinePlanner` (kind=offline) or an `LLMPlanner` (kind=llm) for the task (a `TaskConfig`, or the name
    of a preset in configs/task/, as `VideoPlanningAgent.from_pretrained` takes it). `endpoint`: an LLM planner's
    to share (another planner's `.endpoint`, so that giving up after failed requests holds for both)."""
    if isinstance(task_config, str):
        task_config = TaskConfig.preset(task_config)
    if config.kind == "offline":
        return OfflinePlanner(config, task_config)
    if config.kind == "llm":
        return LLMPlanner(config, task_config, endpoint)
    raise ValueError(f"kind: expected one of ('offline', 'llm'), got {config.kind!r}")
