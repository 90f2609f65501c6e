"""The settings of `vplan train` (each component's and the optimiser's) and `vplan finetune`, apart from the loops
that run them, so that reading or checking them imports no torch (the CLI checks every command's settings before
it loads torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from vplan.configs import preset_names
from vplan.constants import ACTION, ACTION_APPLIED
from vplan.memory.config import MemoryConfig
from vplan.policies.config import IDMConfig
from vplan.utils.settings import FINETUNE_FILE, check_field_types, check_ints, check_seed
from vplan.worldmodel.config import VAEConfig, WorldModelConfig


@dataclass
class OptimConfig:
    """Optimisation settings shared by every component."""

    steps: int = field(default=1000, metadata={"help": "Optimizer steps in all (a resumed run counts on)."})
    batch_size: int = field(default=8, metadata={"help": "Samples per step."})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    cooldown_steps: int = field(
        default=0, metadata={"help": "Final steps (at most all) over which lr falls linearly to 0."}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm; 0 disables clipping."})
    save_every: int = field(default=200, metadata={"help": "Steps between checkpoints."})
    log_every: int = field(default=20, metadata={"help": "Steps between loss-log lines."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and of the batch order."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ints(self, ("steps", "batch_size", "save_every", "log_every"))
        check_ints(self, ("warmup_steps", "cooldown_steps"), low=0)
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        check_seed(self.seed)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): warm-up, constant, then cool-down to 0.

        A function of the step alone, so a resumed run follows the schedule an uninterrupted one would have.
        """
        warmup = min(1.0, (step + 1) / max(1, self.warmup_steps))
        span = min(self.cooldown_steps, self.steps)
        cooldown = min(1.0, (self.steps - step) / span) if span else 1.0
        return self.lr * min(warmup, cooldown)

    def peak_lr(self) -> float:
        """The highest rate the schedule reaches: below `lr` where warm-up and cool-down overlap (a short run)."""
        return max(map(self.lr_at, range(self.steps)))


@dataclass
class VAETrainConfig:
    """`component=vae`: the frame autoencoder."""

    name: str = field(default="vae", metadata={"help": "The component (configs/component/vae.yaml)."})
    vae: VAEConfig = field(default_factory=VAEConfig, metadata={"help": "Size of the autoencoder."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(steps=2700, batch_size=8, lr=1e-3, warmup_steps=50),
        metadata={"help": "Optimisation (AdamW, schedule, checkpoints)."},
    )


@dataclass
class WorldModelTrainConfig:
    """`component=worldmodel`: the masked conditional video diffusion model (UNet; learned text encoder if any)."""

    name: str = field(default="worldmodel", metadata={"help": "The component (configs/component/worldmodel.yaml)."})
    model: WorldModelConfig = field(
        default_factory=WorldModelConfig, metadata={"help": "The model's size and settings (configs/model/ presets)."}
    )
    vae: str = field(default="checkpoints/vae/final", metadata={"help": "Trained VAE (`vplan train component=vae`)."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(steps=5000, batch_size=4, lr=2e-4, cooldown_steps=1500),
        metadata={"help": "Optimisation (AdamW, schedule, checkpoints)."},
    )
    boundary_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of clips whose context ends on a subgoal's first frame (the chunk starts at the "
                  "next), where only the text says what comes next."},
    )
    init: str | None = field(
        default=None,
        metadata={"help": "Start from this world model's weights (a directory or shipped:<env>/worldmodel of the "
                  "same architecture; its VAE is not used), e.g. another env's, or a text-conditioned one for "
                  "conditioning=text+action (the action encoder starts fresh); null: from scratch. A resumed run "
                  "continues from its own checkpoint instead."},
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 <= self.boundary_fraction <= 1:
            raise ValueError(f"boundary_fraction: expected a share in [0, 1], got {self.boundary_fraction}")


def check_holdout(data: str, episodes: int, holdout: int) -> None:
    """A UsageError where the dataset `data` of `episodes` episodes leaves none to learn from after the last
    `holdout` are held out."""
    from vplan.errors import UsageError

    if episodes <= holdout:
        raise UsageError(f"{data} has {episodes} episodes; expected more than holdout_episodes={holdout} (lower "
                         "holdout_episodes=, or collect more episodes)")


@dataclass
class TrainConfig:
    """Settings of `vplan train`."""

    component: Any = field(default=MISSING, metadata={"help": "What to train (configs/component/)."})
    data: str = field(default="data/return_cubes", metadata={"help": "Episode dataset (`vplan collect`)."})
    out: str = field(default="checkpoints/${component.name}", metadata={"help": "Checkpoints and the final model."})
    holdout_episodes: int = field(default=10, metadata={
        "help": "Last episodes kept out of training (the VAE and the IDM are scored on them after it; the world model "
                "by `vplan eval worldmodel` on fresh episodes); 0: train on every one."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ints(self, ("holdout_episodes",), low=0)
        default = next((f.default for f in fields(self.component) if f.name == "name"), None)
        name = self.component.name
        # it names the default out= folder only: a world model was trained into checkpoints/idm
        if name != default and name in preset_names("component"):
            raise ValueError(f"component.name={name} names another component, and only the default out= folder; "
                             f"choose the component with component={name}")

    def how_to_make_data(self) -> str:
        """The command that makes a dataset at `data` (the CLI's refusal of a `data=` without one says it)."""
        return f"`vplan collect out={self.data}`"


FINETUNE_RECORD = Path(FINETUNE_FILE)  # in a finetune's out=: how its stored states were made
LABELS = {"applied": ACTION_APPLIED, "commanded": ACTION}  # component.label -> the dataset feature it reads


@dataclass
class IDMTrainConfig:
    """`component=idm`: the inverse-dynamics CNN (frame_t, frame_t+1) → action.

    The defaults made the shipped `shipped:tabletop/idm` (README) from the 300-episode exploratory dataset in
    23 min on an otherwise idle 2-CPU-core machine: ~6.5 min passing 60 training and the 10 held-out episodes
    (~13,000 frames) through the VAE, then 10,000 steps of batch 64, the lr cooled to 0 over the last 2,500
    (~17 min). Held-out MAE (dx, dy, dz) 0.039 / 0.116 / 0.095 against 0.388 / 0.293 / 0.442 for the mean
    action; 2,000 steps without the cool-down and 20 episodes through the VAE gave 0.063 / 0.171 / 0.140.
    """

    name: str = field(default="idm", metadata={"help": "The component (configs/component/idm.yaml)."})
    idm: IDMConfig = field(default_factory=IDMConfig, metadata={"help": "Size of the CNN and what it reads."})
    vae: str | None = field(
        default="checkpoints/vae/final",
        metadata={"help": "Trained VAE (`vplan train component=vae`) whose reconstructions the IDM also trains "
                  "on; null: real frames only."},
    )
    label: str = field(
        default="applied",
        metadata={"help": "The action the IDM learns to read: `applied` (the dataset's `action.applied`, what the "
                  "env did: pushes into the workspace's edge move nothing) or `commanded` (the recorded `action`)."},
    )
    vae_fraction: float = field(
        default=0.5, metadata={"help": "Share of training samples taken from VAE-reconstructed transitions."}
    )
    vae_episodes: int = field(
        default=60,
        metadata={"help": "Training episodes (spread evenly over them) passed through the VAE; ~5.5 s each on "
                  "2 CPU cores for ~190 frames."},
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=10000, batch_size=64, lr=1e-3, warmup_steps=100, cooldown_steps=2500, save_every=500, log_every=50
        ),
        metadata={"help": "Optimisation (AdamW, schedule, checkpoints)."},
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.label not in LABELS:
            raise ValueError(f"label: expected one of {sorted(LABELS)}, got {self.label!r}")
        if not 0.0 <= self.vae_fraction <= 1.0:
            raise ValueError(f"vae_fraction: expected a share in [0, 1], got {self.vae_fraction}")
        check_ints(self, ("vae_episodes",))


@dataclass
class FinetuneConfig:
    """Settings of `vplan finetune`."""

    data: str = field(
        default="data/return_cubes",
        metadata={"help": "Episode dataset (`vplan collect`, or `vplan run record=true`'s <out>/episodes)."},
    )
    worldmodel: str | None = field(
        default=None,
        metadata={"help": "The slow-learned world model to start from: a directory or shipped:<env>/worldmodel; "
                  "null: the shipped one of the env the dataset was recorded in."},
    )
    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"),
        metadata={"help": "The fast learner (configs/memory/temp_lora.yaml); only temp_lora has states to store. "
                  "The inner loop learns from the ground-truth chunks (update_on is not used)."},
    )
    episodes: int = field(
        default=20,
        metadata={"help": "Episodes to finetune on: the first ones of the dataset that are not held out and hold a "
                  "chunk (a shorter one is skipped, the next taking its place). Measured "
                  "with the shipped model on 2 CPU cores (2026-12-04): ~17 chunks and 13 s of inner loop per episode, "
                  "~32 MB stored per episode (rank-32 factors are 1.9 MB per chunk)."},
    )
    holdout_episodes: int = field(
        default=10, metadata={"help": "Last episodes never used (as in `vplan train`); 0 uses them all."}
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=300, batch_size=4, lr=2e-5, warmup_steps=20, save_every=50, log_every=10
        ),
        metadata={"help": "Outer loop (slow learning of Φ): AdamW at the slow learning rate. Measured with the "
                  "shipped model on 2 CPU cores (2026-12-04): 1.9 s per step of batch 4, so ~9 min for 300 steps."},
    )
    rounds: int = field(
        default=1,
        metadata={"help": "Alternations of the two loops (Algorithm 1b). The episodes are split into `rounds` "
                  "groups, as if they arrived one group after another: round r runs the inner loop on group r "
                  "with the slow weights Φ the outer loop reached in round r - 1, then the outer loop trains on "
                  "every triple stored so far, up to step optim.steps·(r + 1)/rounds of one lr schedule. 1: the "
                  "inner loop on every episode with the starting Φ, then the outer loop."},
    )
    out: str = field(
        default="checkpoints/finetune",
        metadata={"help": "Inner-loop states (inner/), trainer checkpoints, and the finetuned model (final/)."},
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.memory.kind != "temp_lora":
            raise ValueError(f"memory: expected memory=temp_lora (the fast learner whose states the loop stores), "
                             f"got kind {self.memory.kind!r}")
        check_ints(self, ("episodes", "rounds"))
        check_ints(self, ("holdout_episodes",), low=0)
        if self.rounds > min(self.episodes, self.optim.steps):
            raise ValueError(f"rounds: expected at most episodes={self.episodes} and optim.steps={self.optim.steps} "
                             f"(each round needs an episode and an outer-loop step), got {self.rounds}")

    def how_to_make_data(self) -> str:
        """The commands that make a dataset at `data` (the CLI's refusal of a `data=` without one says them)."""
        return f"`vplan collect out={self.data}` or `vplan run record=true`"
