"""Subgoal planners: the offline planner (default) and the OpenAI-compatible LLM planner.

`make_planner(PlannerConfig(...), task_config).plan(instruction, info, first_frame=None) -> Plan`.
"""

from vplan.planner.config import LLMPlannerConfig, PlannerConfig, redact_secrets
from vplan.planner.factory import make_planner
from vplan.planner.llm import LLMPlanner, PlannerFallbackWarning
from vplan.planner.offline import OfflinePlanner, Planner
from vplan.planner.skills import TASK_SKILLS, Skill, TaskSkills, task_skills
from vplan.planner.subgoal import PREDICATES, Check, Plan, Subgoal


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
