"""The settings of the evaluations and the benches that load the world model (`vplan eval ...`, `vplan bench
worldmodel|memory|planning|executor`), apart from the code that runs them, so that reading or checking them imports
no torch (the CLI checks every command's settings before it loads torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from vplan.config import AgentConfig
from vplan.eval.bench_record import OUT_HELP, check_model_is_timed
from vplan.eval.progress import check_resume_or_overwrite
from vplan.memory.config import KINDS, MemoryConfig
from vplan.planner.config import PlannerConfig
from vplan.tasks import TaskConfig
from vplan.utils.settings import check_field_types, check_ints, check_seed, check_threads
from vplan.worldmodel.config import CONDITIONINGS, WorldModelConfig

OBJECTIVE_OF = {"ddim": "epsilon", "dpmsolver++": "epsilon", "flow_euler": "flow"}


@dataclass
class BenchWorldModelConfig:
    """Settings of `vplan bench worldmodel`."""

    model: WorldModelConfig = field(
        default_factory=WorldModelConfig, metadata={"help": "Size of the model timed when checkpoint is null."}
    )
    checkpoint: str | None = field(default=None, metadata={"help": "Time a trained checkpoint's model instead."})
    samplers: list[str] = field(
        default_factory=lambda: ["dpmsolver++:5", "dpmsolver++:10", "ddim:10", "ddim:20", "flow_euler:4",
                                 "flow_euler:8"],
        metadata={"help": "sampler:steps entries to time."},
    )
    repeats: int = field(default=3, metadata={"help": "Timed generations per entry; the fastest is reported."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    out: str | None = field(default=None, metadata={"help": OUT_HELP})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_threads(self)
        if not self.samplers:
            raise ValueError("samplers: expected at least one entry like 'dpmsolver++:5', got []")
        seen: dict[tuple[str, int], str] = {}
        for spec in self.samplers:
            name, _, steps = spec.partition(":")
            if name not in OBJECTIVE_OF or not steps.isdigit():
                raise ValueError(f"samplers: expected entries like 'dpmsolver++:5' with a sampler in "
                                 f"{sorted(OBJECTIVE_OF)}, got {spec!r}")
            if int(steps) < 1:  # ddim:0 was said to name no sampler
                raise ValueError(f"samplers: {spec}: expected at least 1 sampling step")
            key = (name, int(steps))
            if key in seen:  # timed once, one row printed, yet listed twice in results.json's settings
                written = "" if seen[key] == spec else f" (as {seen[key]} and {spec})"
                raise ValueError(f"samplers: expected each sampler:steps once, got {name}:{int(steps)} twice{written}; "
                                 "remove one")
            seen[key] = spec
        check_model_is_timed(self)
        if self.repeats < 1 or self.threads < 1:
            raise ValueError(f"repeats and threads: expected positive numbers, got {self.repeats}, {self.threads}")


@dataclass
class BenchMemoryConfig:
    """Settings of `vplan bench memory`."""

    model: WorldModelConfig = field(
        default_factory=WorldModelConfig, metadata={"help": "Size of the model timed when checkpoint is null."}
    )
    checkpoint: str | None = field(
        default="shipped:tabletop/worldmodel",
        metadata={"help": "World-model checkpoint (a directory or shipped:<env>/worldmodel); null: a freshly "
                  "initialised model of `model`'s size."},
    )
    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"),
        metadata={"help": "The memory compared with none (configs/memory/): temp_lora or anchor."},
    )
    episodes: int = field(default=3, metadata={"help": "Timed episodes per mode; the mean is reported."})
    chunks: int = field(default=8, metadata={"help": "Chunks per episode."})
    execution_s: float = field(
        default=0.8, metadata={"help": "Simulated execution time per chunk (8 steps at 10 Hz: 0.8 s)."}
    )
    decode: bool = field(default=True, metadata={"help": "Decode every chunk to frames, as the agent does for IDM."})
    threads: int = field(default=2, metadata={"help": "torch threads (the worker thread shares the setting)."})
    isolate: bool = field(default=True, metadata={"help": "Run each mode in a fresh process (clean peak RSS)."})
    seed: int = field(default=0, metadata={"help": "Seeds the first frame and the sampling noise."})
    out: str | None = field(default=None, metadata={"help": OUT_HELP})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.memory.kind == "none":
            raise ValueError("memory: expected a memory to compare with none (memory=temp_lora or memory=anchor), "
                             "got memory=none")
        check_model_is_timed(self)
        check_ints(self, ("episodes", "chunks"))
        check_threads(self)
        if not (math.isfinite(self.execution_s) and 0 <= self.execution_s <= 60):  # a chunk of 8 steps
            raise ValueError(f"execution_s: expected seconds from 0 to 60 per chunk, got {self.execution_s!r}")
        check_seed(self.seed)


@dataclass
class AgentBenchConfig:
    """What the benches that run the agent on held-out seeds share (`vplan bench planning`, `bench executor`)."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    planner: PlannerConfig = field(default_factory=PlannerConfig, metadata={"help": "Planner (configs/planner/)."})
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={"help": "Execution and replanning."})
    worldmodel: str = field(
        default="shipped:${task.env}/worldmodel",
        metadata={"help": "The world model (bench planning: the slow-learned one; bench executor: its VAE also "
                  "encodes the expert-video row's frames)."},
    )
    idm: str = field(default="shipped:${task.env}/idm", metadata={"help": "Inverse-dynamics checkpoint."})
    episodes: int = field(default=20, metadata={"help": "Held-out episodes per row; episode i uses seed + i."})
    seed: int = field(default=10000, metadata={"help": "First seed (training data uses 0..9999)."})
    threads: int = field(default=2, metadata={"help": "torch threads."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ints(self, ("episodes",))
        check_threads(self)
        check_seed(self.seed)

    def load_agent(self, worldmodel: str, memory: MemoryConfig) -> Any:
        """A row's agent, loaded as `vplan run` loads it with these settings, `worldmodel` and `memory`."""
        from vplan.config import RunConfig
        from vplan.run import load_agent

        return load_agent(RunConfig(env=self.env, task=self.task, planner=self.planner, memory=memory,
                                    agent=self.agent, worldmodel=worldmodel, idm=self.idm,
                                    episodes=self.episodes, seed=self.seed, threads=self.threads))


@dataclass
class BenchPlanningConfig(AgentBenchConfig):
    """Settings of `vplan bench planning`."""

    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"),
        metadata={"help": "Temp-LoRA settings of the temp_lora rows (each row sets its own kind)."},
    )
    finetuned: str = field(
        default="checkpoints/finetune/final", metadata={"help": "The slow-fast finetuned one (`vplan finetune`)."}
    )
    out: str = field(default="runs/bench_planning_${task.env}", metadata={"help": "results.json, table.md, dist.png."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory.kind != "temp_lora":  # memory=none or anchor would be ignored: each row sets its kind
            raise ValueError(f"memory: the temp_lora rows' settings (each row picks its own memory), so expected "
                             f"kind 'temp_lora', got {self.memory.kind!r}; set memory.* keys, not memory=")


@dataclass
class BenchExecutorConfig(AgentBenchConfig):
    """Settings of `vplan bench executor` (env: tabletop only)."""

    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="none"),
        metadata={"help": "Episodic memory of the world-model row (configs/memory/)."},
    )
    out: str = field(default="runs/bench_executor", metadata={"help": "results.json and table.md."})

    def __post_init__(self) -> None:
        """Its env and camera refused here, before the CLI looks at the checkpoints (a wrong env was answered with
        "train a world model" for a bench that would then refuse it)."""
        from vplan.envs import env_name
        from vplan.envs.tabletop_v0 import TabletopConfig

        super().__post_init__()
        if not isinstance(self.task, TaskConfig):  # still MISSING (a config filled in later from Python)
            return
        if not isinstance(self.env, TabletopConfig) or self.task.name != "return_cubes":
            raise ValueError(f"bench executor needs env=tabletop task=return_cubes (the look-ahead copies the "
                             f"tabletop's state and runs its expert), got env={env_name(self.env)} "
                             f"task={self.task.name}")
        if self.agent.camera != "front":
            raise ValueError(f"bench executor's expert video is the front camera's; agent.camera="
                             f"{self.agent.camera!r} would hand the IDM another camera's frames than it reads")


FEATURES = ("vae", "resnet18")


@dataclass
class EvalConsistencyConfig:
    """Settings of `vplan eval consistency`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/); the env needs a revisit scenario."})
    task: TaskConfig = field(
        default=MISSING,
        metadata={"help": "Task config (configs/task/), checked against the env; the rollouts follow the env's revisit "
                  "scenario under its own subgoal texts, whatever task.instruction says."},
    )
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "World-model checkpoint (a directory or shipped:<env>/worldmodel); null: the env's "
                  "shipped one."},
    )
    episodes: int = field(
        default=2,
        metadata={"help": "Episodes (scenario seeds); every table figure is their mean."},
    )
    seed: int = field(default=10000, metadata={"help": "Episode i uses seed + i (training data uses 0..9999)."})
    chunks: int = field(
        default=32, metadata={"help": "Chunks generated per episode (the paper's long horizon: >= 32)."}
    )
    modes: list[str] = field(
        default_factory=lambda: list(KINDS), metadata={"help": f"Memory modes compared, a subset of {KINDS}."}
    )
    temp_lora: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"),
        metadata={"help": "Settings of the temp_lora mode (rank, lr, steps_per_chunk, ...)."},
    )
    features: str = field(
        default="vae",
        metadata={"help": f"SRC features, one of {FEATURES}: the world model's VAE encoder (not comparable to the "
                  "paper's absolute SRC) or ResNet-18 from resnet18_weights."},
    )
    resnet18_weights: str | None = field(
        default=None,
        metadata={"help": "features=resnet18: a local ResNet-18 .safetensors file (nothing is downloaded)."},
    )
    threads: int = field(default=2, metadata={"help": "torch threads."})
    out: str = field(default="runs/eval_consistency", metadata={"help": "Where metrics.json and the MP4s go."})
    video_episodes: int = field(default=1, metadata={"help": "Episodes with an MP4 per mode (0: no MP4s)."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue the evaluation interrupted in out (same settings and checkpoint files): its "
                  "finished rollouts are kept; episodes may grow."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace the evaluation out holds (finished or not) with a fresh one."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        check_resume_or_overwrite(self)
        from vplan.envs import env_name
        from vplan.eval.revisit import revisit_scenario_for
        from vplan.shipped import shipped_checkpoint

        revisit_scenario_for(env_name(self.env))  # an env without a revisit scenario: a clear error, early
        if self.checkpoint is None:
            self.checkpoint = shipped_checkpoint(env_name(self.env), "worldmodel")
        check_ints(self, ("episodes", "chunks"))
        check_threads(self)
        check_seed(self.seed)
        if self.chunks < 2:
            raise ValueError(f"chunks: expected at least 2 (PSNR drift is a slope over chunks), got {self.chunks}")
        self.modes = list(self.modes)
        if (not self.modes or not all(isinstance(mode, str) for mode in self.modes)  # [[none]]: unhashable
                or len(set(self.modes)) != len(self.modes) or not set(self.modes) <= set(KINDS)):
            raise ValueError(f"modes: expected distinct memory kinds from {KINDS}, got {self.modes!r}")
        if self.temp_lora.kind != "temp_lora":
            raise ValueError(f"temp_lora.kind: expected 'temp_lora', got {self.temp_lora.kind!r}")
        if self.features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {self.features!r}")
        if self.features == "resnet18" and not self.resnet18_weights:
            raise ValueError("resnet18_weights: expected a local ResNet-18 .safetensors file with features=resnet18, "
                             "got none")
        if self.features != "resnet18" and self.resnet18_weights:  # scored with the VAE, unsaid
            raise ValueError(f"resnet18_weights: used with features=resnet18 only, got it with features="
                             f"{self.features}; add features=resnet18, or leave resnet18_weights out")
        check_ints(self, ("video_episodes",), low=0)

    def memory_config(self, kind: str) -> MemoryConfig:
        """The memory config of a mode: `temp_lora`'s settings, or the baseline's kind."""
        return self.temp_lora if kind == "temp_lora" else MemoryConfig(kind=kind)


@dataclass
class EvalWorldModelConfig:
    """Settings of `vplan eval worldmodel`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "World-model checkpoint (a directory or shipped:<env>/worldmodel); null: the task's env's shipped "
                "one."})
    episodes: int = field(default=5, metadata={"help": "Held-out expert episodes to evaluate on."})
    seed: int = field(default=10000, metadata={"help": "Episode i uses seed + i (training data uses 0..9999)."})
    out: str = field(default="runs/eval_worldmodel", metadata={"help": "Where metrics.json and the MP4 go."})
    video_chunks: int = field(default=6, metadata={"help": "Chunks shown in the MP4 grid."})
    sampler: Optional[str] = field(default=None, metadata={"help": "Sampler override (default: the checkpoint's)."})
    steps: Optional[int] = field(default=None, metadata={"help": "Sampling-steps override."})
    guidance_scale: Optional[float] = field(default=None, metadata={"help": "Classifier-free guidance override."})
    rollout_chunks: int = field(
        default=8, metadata={"help": "Chunks imagined open loop from each episode's first context (0: none)."}
    )
    compare: Optional[str] = field(
        default=None,
        metadata={"help": "A second world-model checkpoint scored on the same open-loop rollouts, side by side."},
    )
    idm: Optional[str] = field(
        default=None,
        metadata={"help": "An inverse-dynamics checkpoint (e.g. shipped:tabletop/idm): also score the actions it reads "
                  "off each generated chunk against those it reads off the real chunk (what the agent would do)."},
    )
    conditioning: Optional[str] = field(
        default=None,
        metadata={"help": "text|action|text+action: the checkpoint must be conditioned so; `action` defaults "
                  "checkpoint to the task's env's shipped action model and compare to its shipped text model."},
    )
    threads: int = field(
        default=2, metadata={"help": "torch threads (the figures move in their last bits with the count)."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue the evaluation interrupted in out (same settings and checkpoint files): its "
                  "finished episodes are kept; episodes may grow."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace the evaluation out holds (finished or not) with a fresh one."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        check_resume_or_overwrite(self)
        if self.episodes < 1 or self.video_chunks < 0 or self.rollout_chunks < 0:
            raise ValueError(f"episodes >= 1, video_chunks >= 0 and rollout_chunks >= 0 expected, got {self.episodes}, "
                             f"{self.video_chunks}, {self.rollout_chunks}")
        check_seed(self.seed)
        check_threads(self)
        if self.conditioning not in (None, *CONDITIONINGS):
            raise ValueError(f"conditioning: expected one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        from vplan.envs import action_units, env_name
        from vplan.policies import EXPERTS
        from vplan.shipped import shipped_checkpoint

        if self.task.name not in EXPERTS:  # the episodes it scores on are the expert's, as `vplan collect`'s
            raise ValueError(f"task: eval worldmodel scores on the scripted expert's episodes, and {self.task.name!r} "
                             f"has none; expected one of {sorted(EXPERTS)}")
        # the task's env's shipped models, as `vplan run` takes (env=rlbench runs the tabletop's return_cubes)
        if (self.compare is not None or self.conditioning == "action") and self.rollout_chunks == 0:
            raise ValueError("compare= (and conditioning=action, which compares) scores the open-loop rollouts: "
                             "expected rollout_chunks >= 1, got 0")
        if self.conditioning in ("action", "text+action") and not action_units(self.env):  # as training refuses
            raise ValueError(f"conditioning={self.conditioning}: action conditioning reads continuous actions, and "
                             f"env {env_name(self.env)}'s are discrete moves; leave conditioning unset (text)")
        if self.conditioning == "action":
            self.compare = self.compare or shipped_checkpoint(self.task.env, "worldmodel")
        if self.checkpoint is None:
            if self.conditioning == "text+action":
                raise ValueError("conditioning=text+action: no such model ships; give checkpoint=DIR (one trained "
                                 "with component.model.conditioning=text+action)")
            component = "worldmodel_action" if self.conditioning == "action" else "worldmodel"
            self.checkpoint = shipped_checkpoint(self.task.env, component)
