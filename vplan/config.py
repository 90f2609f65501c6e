"""The agent's settings and `vplan run`'s, apart from the modules that run them, so that reading or checking them
imports no torch (the CLI composes and checks every command's settings before it loads torch)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from vplan.memory.config import MemoryConfig
from vplan.planner.config import PlannerConfig
from vplan.shipped import AgentCheckpoints
from vplan.tasks import TaskConfig
from vplan.utils.settings import check_field_types, check_ints, check_seed, check_threads

ACTIONS_FROM = ("imagined", "observed")
# the agent's timed stages (`agent.timings`, metrics.json's `stages_s`)
STAGES = (
    "planning", "generation", "encoding", "inverse_dynamics", "memory_wait", "memory_update", "execution"
)


@dataclass
class AgentConfig:
    """How the agent executes a plan: which observation it reads, when it replans, how it seeds sampling."""

    camera: str = field(default="front", metadata={"help": "The obs key of the camera the world model draws."})
    state_key: str = field(
        default="agent_pos",
        metadata={"help": "The obs key of the robot's state; its first three values are the gripper's position "
                  "in metres (stall detection; not read when stall_steps=0)."},
    )
    replan_drift: float | None = field(
        default=0.1,
        metadata={"help": "Replan when an observed frame's mean absolute difference from the imagined frame "
                  "(pixels in [0, 1]) exceeds this; null: never replan on drift. With the shipped tabletop models the "
                  "drift averaged 0.018 and peaked at 0.058 over 100 episodes (README), so 0.1 fires only on a "
                  "gross divergence."},
    )
    stall_steps: int = field(
        default=4, metadata={"help": "Steps over which a stall is judged; 0: no stall detection."}
    )
    stall_distance: float = field(
        default=0.004, metadata={"help": "The gripper stalls when it moves less than this (m) over stall_steps."}
    )
    stall_command: float = field(
        default=0.5,
        metadata={"help": "... while the actions asked for motion: the mean over those steps of the largest "
                  "absolute motion component (action units, 1 = the env's full step) at least this."},
    )
    actions_from: str = field(
        default="imagined",
        metadata={"help": f"One of {ACTIONS_FROM}: the frame the IDM reads as frame t for action t — the imagined "
                  "one (the chunk's actions read at once, open loop between frames) or the observed one (each "
                  "step, from the real frame towards the next imagined one: closed loop)."},
    )
    max_replans_per_chunk: int = field(default=1, metadata={"help": "Replans of one chunk at most."})
    max_replans: int = field(default=8, metadata={"help": "Replans per episode at most."})
    max_extra_chunks: int = field(
        default=0,
        metadata={"help": "Chunks a subgoal gets beyond its plan while its check is false (needs `info` in "
                  "act); 0: exactly the planned chunks. With the shipped models the checks mostly stay false, "
                  "so 1 made 34-38 chunks of a 23-26-chunk plan (time) without a success."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seeds the sampling noise: the commands sample episode seed s with seed + s; "
                             "the API's episode k uses seed + k unless reset gets a seed."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)  # "0.004" from Python was a bare TypeError; numpy's numbers (a sweep) as Python's
        if self.replan_drift is not None:
            if isinstance(self.replan_drift, bool) or not isinstance(self.replan_drift, numbers.Real):
                raise ValueError(f"replan_drift: expected a number or None, got {self.replan_drift!r}")
            self.replan_drift = float(self.replan_drift)
        check_seed(self.seed)
        for name in ("camera", "state_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: expected an obs key, got {getattr(self, name)!r}")
        if self.replan_drift is not None and not 0 <= self.replan_drift <= 1:
            raise ValueError(f"replan_drift: expected a difference in [0, 1] or null, got {self.replan_drift!r}")
        check_ints(self, ("stall_steps", "max_replans_per_chunk", "max_replans", "max_extra_chunks"), low=0)
        if not (math.isfinite(self.stall_distance) and self.stall_distance >= 0):
            raise ValueError(f"stall_distance: expected metres >= 0, got {self.stall_distance!r}")
        if not 0 <= self.stall_command <= 1:
            raise ValueError(f"stall_command: expected action units in [0, 1], got {self.stall_command!r}")
        if self.actions_from not in ACTIONS_FROM:
            raise ValueError(f"actions_from: expected one of {ACTIONS_FROM}, got {self.actions_from!r}")


@dataclass
class RunConfig(AgentCheckpoints):
    """Settings of `vplan run`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    planner: PlannerConfig = field(
        default_factory=PlannerConfig,
        metadata={"help": "Planner (configs/planner/); its chunk_frames is taken from the world model."},
    )
    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"), metadata={"help": "Episodic memory (configs/memory/)."}
    )
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={"help": "Execution and replanning."})
    worldmodel: str | None = field(
        default=None,
        metadata={"help": "World-model checkpoint (with its VAE): a directory or shipped:<env>/worldmodel; null: "
                  "the shipped one of the task's env."},
    )
    idm: str | None = field(
        default=None,
        metadata={"help": "IDM checkpoint: a directory or shipped:<env>/idm; null: the shipped one of the task's env."},
    )
    episodes: int = field(default=5, metadata={"help": "Episodes to run; episode i is reset with seed + i."})
    seed: int = field(default=10000, metadata={"help": "First seed (held out: training data uses 0..9999)."})
    out: str | None = field(
        default=None, metadata={"help": "Run directory; null: runs/<task>-<memory>-<date-time>."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Allow an `out` that already holds a run."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue the interrupted run in `out`: keep its finished episodes, run the rest (same "
                  "config; episodes may grow)."},
    )
    video: bool = field(default=True, metadata={"help": "Write an MP4 per episode (executed | imagined)."})
    record: bool = field(
        default=False, metadata={"help": "Also write the episodes as a dataset in <out>/episodes (to finetune on)."}
    )
    threads: int = field(default=2, metadata={"help": "torch threads (the memory's worker shares them)."})

    def __post_init__(self) -> None:
        check_field_types(self)  # numpy's numbers (a sweep from Python) as Python's
        check_ints(self, ("episodes",))
        check_threads(self)
        check_seed(self.seed)
        if self.resume and (self.out is None or self.overwrite):
            raise ValueError("resume=true: expected out=DIR of the run to continue, and overwrite=false")

