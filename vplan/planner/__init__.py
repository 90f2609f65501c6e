"""Subgoal planners: the offline planner (default) and the OpenAI-compatible LLM planner.

`make_planner(PlannerConfig(...), task_config).plan(instruction, info, first_frame=None) -> Plan`.
"""

from vplan.errors import PlannerFallbackWarning
from vplan.planner.config import LLMPlannerConfig, PlannerConfig, redact_secrets
from vplan.planner.offline import OfflinePlanner, Planner
from vplan.planner.skills import TASK_SKILLS, Skill, TaskSkills, task_skills
from vplan.planner.subgoal import PREDICATES, Check, Plan, Subgoal
from vplan.utils.import_utils import lazy_exports


__all__ = [
    "PREDICATES",
    "TASK_SKILLS",
    "Check",
    "LLMPlanner",
    "LLMPlannerConfig",
    "OfflinePlanner",
    "Plan",
    "Planner",
    "PlannerConfig",
    "PlannerFallbackWarning",
    "Skill",
    "Subgoal",
    "TaskSkills",
    "make_planner",
    "redact_secrets",
    "task_skills",
]


# Imported on first use: the LLM planner's grounding loads torch, and reading or checking a PlannerConfig must not
# (the CLI checks every command's settings before it loads torch).
_LAZY = {"make_planner": "factory", "LLMPlanner": "llm"}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
