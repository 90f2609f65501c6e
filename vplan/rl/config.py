"""The settings of `vplan rl` (its rewards and the VLM judge's among them), apart from the loop that runs them, so
that reading or checking them imports no torch (the CLI checks every command's settings before it loads torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

import numpy as np
from omegaconf import MISSING

from vplan.chat import ChatEndpointConfig, short
from vplan.config import AgentConfig
from vplan.memory.config import MemoryConfig
from vplan.planner.config import PlannerConfig
from vplan.shipped import AgentCheckpoints
from vplan.tasks import TaskConfig
from vplan.utils.settings import check_field_types, check_ints, check_seed, check_threads

TERMS = ("outcome", "executability", "consistency", "idm_reproduction", "vlm")  # the weighted rewards


@dataclass
class RewardConfig:
    """Weights of the rewards in the sum each continuation is ranked by (0: off)."""

    outcome: float = field(default=1.0, metadata={"help": "Weight of task success + progress."})
    progress_weight: float = field(default=0.5, metadata={"help": "Share of progress within the outcome reward."})
    executability: float = field(default=0.5, metadata={"help": "Weight of executed-vs-imagined agreement."})
    consistency: float = field(default=0.1, metadata={"help": "Weight of minus scene cuts per imagined chunk."})
    idm_reproduction: float = field(
        default=0.0, metadata={"help": "Weight of the IDM-reproduction check; needs action_worldmodel."}
    )
    action_worldmodel: str | None = field(
        default=None, metadata={"help": "Action-conditioned world model (same frames) for idm_reproduction."}
    )
    vlm: float = field(default=0.0, metadata={"help": "Weight of the VLM yes/no reward; needs vlm_reward.enabled."})

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in (*TERMS, "progress_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"rewards.{name}: expected a finite weight >= 0, got {value!r}")
        if not any(getattr(self, name) > 0 for name in TERMS):
            raise ValueError("rewards: every weight is 0, so every reward is 0 and nothing is learned; give one "
                             "a weight above 0 (the defaults: outcome=1 executability=0.5 consistency=0.1)")
        if self.idm_reproduction > 0 and not (self.action_worldmodel or "").strip():
            raise ValueError("rewards.idm_reproduction > 0: expected rewards.action_worldmodel=DIR (an "
                             f"action-conditioned world model), got {self.action_worldmodel!r}")
        if self.idm_reproduction == 0 and (self.action_worldmodel or "").strip():  # else set and never asked
            raise ValueError(f"rewards.action_worldmodel={self.action_worldmodel}: expected a weight for the reward "
                             "it serves (rewards.idm_reproduction=W > 0), got 0; give one, or leave it unset")


DEFAULT_QUESTION = (
    'These frames come from a video of a robot. Do they show "{subgoal}", with the objects moving as real objects '
    "would (no teleporting, melting or vanishing)? Answer yes or no."
)


VLM_ENDPOINT = ("the VLM reward", "vlm_reward.api_key")  # how messages name the VLM's endpoint and its key


@dataclass
class VLMRewardConfig(ChatEndpointConfig):
    """Whether and how the VLM reward asks an OpenAI-compatible vision chat endpoint (`ChatEndpointConfig`, whose
    model must read images) about each chunk."""

    enabled: bool = field(
        default=False, metadata={"help": "Ask the VLM at all (off by default: one request per chunk costs money)."}
    )
    max_requests: int = field(
        default=200,
        metadata={"help": "Budget: most questions one VLMReward sends (cache hits are free; retries count once)."},
    )
    frames_per_question: int = field(
        default=4, metadata={"help": "Frames of a chunk sent with its question, evenly spaced from first to last."}
    )
    question: str = field(
        default=DEFAULT_QUESTION,
        metadata={"help": "The question's template; `{subgoal}` is replaced by the chunk's subgoal text."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_requests < 1:
            raise ValueError(f"max_requests: expected a positive int (enabled=False sends none), got "
                             f"{self.max_requests!r}")
        if not 1 <= self.frames_per_question <= 32:
            raise ValueError(f"frames_per_question: expected an int in [1, 32], got {self.frames_per_question!r}")
        try:
            fields = {name for _, name, _, _ in Formatter().parse(self.question) if name is not None}
        except ValueError:
            fields = None
        if fields != {"subgoal"}:
            raise ValueError(f"question: expected a template whose only field is {{subgoal}}, got "
                             f"{short(self.question, 80)}")


OBJECTIVES = ("rwr", "dpo")


@dataclass
class RLConfig(AgentCheckpoints):
    """Settings of `vplan rl`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    planner: PlannerConfig = field(default_factory=PlannerConfig, metadata={"help": "Planner (configs/planner/)."})
    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="none"), metadata={"help": "Episodic memory of the rollouts."}
    )
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={"help": "Execution and replanning."})
    worldmodel: str | None = field(
        default=None, metadata={"help": "World model to finetune; null: the env's shipped one."}
    )
    idm: str | None = field(default=None, metadata={"help": "IDM checkpoint; null: the env's shipped one."})
    iterations: int = field(default=2, metadata={"help": "Explore-score-finetune rounds."})
    seeds_per_iteration: int = field(default=2, metadata={"help": "Task seeds explored per iteration."})
    seed: int = field(default=0, metadata={"help": "First exploration seed (training scenes: 0..9999)."})
    plan_offsets: list[int] = field(
        default_factory=lambda: [-1, 0, 1],
        metadata={"help": "The G plan variants: chunks added to every subgoal (planner.chunk_offset)."},
    )
    continuations: int = field(default=2, metadata={"help": "K executor continuations per plan."})
    rewards: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "Reward weights."})
    vlm_reward: VLMRewardConfig = field(default_factory=VLMRewardConfig, metadata={"help": "VLM yes/no reward."})
    objective: str = field(default="rwr", metadata={"help": "Executor objective: rwr (reward-weighted) | dpo."})
    rwr_beta: float = field(default=1.0, metadata={"help": "RWR temperature: weights exp(advantage / beta)."})
    dpo_beta: float = field(default=100.0, metadata={
        "help": "Diffusion-DPO's beta: the loss is -log σ(-β·margin), the margin the chosen chunk's loss change "
                "from the reference minus the rejected's; Wallace et al.'s code halves its beta (their 5000 for SD1.5 "
                "is dpo_beta=2500)."})
    penalty: float = field(default=1e-3, metadata={"help": "Weight of the L2 pull toward the reference weights."})
    lora_rank: int = field(default=8, metadata={"help": "Rank of the executor's LoRA."})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the LoRA."})
    steps_per_iteration: int = field(default=20, metadata={"help": "LoRA steps after each exploration round."})
    batch_size: int = field(default=4, metadata={"help": "Chunks (rwr) or pairs (dpo) per step."})
    planner_lr: float = field(default=1.0, metadata={"help": "Step of the offsets' logits per unit advantage."})
    eval_episodes: int = field(default=5, metadata={"help": "Held-out episodes before and after (0: none)."})
    eval_seed: int = field(default=10000, metadata={"help": "First held-out seed of the before/after evaluation."})
    out: str = field(default="runs/rl", metadata={"help": "Run directory (checkpoint, final model, metrics)."})
    threads: int = field(default=2, metadata={"help": "torch threads."})

    @property
    def explored_end(self) -> int:
        """One past the last task seed exploration plays."""
        return self.seed + self.iterations * self.seeds_per_iteration

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ints(self, ("iterations", "seeds_per_iteration", "continuations", "lora_rank", "steps_per_iteration",
                          "batch_size"))
        check_threads(self)
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes: expected an int >= 0, got {self.eval_episodes!r}")
        check_seed(self.seed)
        check_seed(self.eval_seed, "eval_seed")
        if self.continuations < 2:  # advantages are standardised within a plan's K: one gives none (0)
            raise ValueError(f"continuations: expected at least 2 (the executor learns from how continuations of "
                             f"one plan differ), got {self.continuations}")
        if not self.plan_offsets or len(set(self.plan_offsets)) != len(self.plan_offsets):
            raise ValueError(f"plan_offsets: expected distinct ints, one per plan, got {self.plan_offsets!r}")
        if self.planner.chunk_offset not in self.plan_offsets:  # the before column's plan, kept on a tie
            raise ValueError(f"planner.chunk_offset: expected one of plan_offsets {self.plan_offsets} (the plan "
                             f"before finetuning, which exploration compares with), got {self.planner.chunk_offset}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("rwr_beta", "dpo_beta", "lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {getattr(self, name)!r}")
        for name in ("penalty", "planner_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {getattr(self, name)!r}")
        if self.rewards.vlm > 0 and not self.vlm_reward.enabled:
            raise ValueError("rewards.vlm > 0: expected vlm_reward.enabled=true (and its endpoint)")
        if self.vlm_reward.enabled and self.rewards.vlm == 0:  # else the endpoint is set up and never asked
            raise ValueError("vlm_reward.enabled=true: expected a weight for its reward (rewards.vlm=W > 0), got 0")
        explored_end = self.explored_end
        held_out_end = self.eval_seed + self.eval_episodes
        if self.eval_episodes and max(self.seed, self.eval_seed) < min(explored_end, held_out_end):
            raise ValueError(f"eval_seed: the held-out seeds {self.eval_seed}..{held_out_end - 1} overlap the explored "
                             f"ones, {self.seed}..{explored_end - 1}; pass seeds that do not (the default: "
                             "exploration from seed=0, held-out from eval_seed=10000)")
