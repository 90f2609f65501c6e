"""Typed config of the episodic memory (configs/memory/{none,anchor,temp_lora}.yaml extend `MemoryConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vplan.utils.settings import check_ints

KINDS = ("none", "anchor", "temp_lora")
UPDATE_ON = ("imagined", "observed")
# The UNet's attention projections: spatial self- and cross-attention, the temporal attentions and the input
# temporal transformer all name them so in diffusers' `Attention`.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class MemoryConfig:
    """Which episodic memory keeps an episode's chunks consistent, and how Temp-LoRA learns.

    `none` conditions each chunk on the last `context_frames` latents only (AVDC-like); `anchor` also keeps the
    episode's first latent frame in every chunk's context (StreamingT2V-like); `temp_lora` trains a LoRA
    adapter on the UNet's attention projections after every chunk (SlowFast-VGen's fast learning). The
    `temp_lora`-only fields are checked for every kind, so a preset never carries a bad value unnoticed.
    """

    kind: str = field(default="none", metadata={"help": f"One of {KINDS}."})
    rank: int = field(default=32, metadata={"help": "temp_lora: LoRA rank r."})
    alpha: float | None = field(
        default=None, metadata={"help": "temp_lora: LoRA alpha; the update is scaled by alpha / rank. None: rank."}
    )
    target_modules: list[str] = field(
        default_factory=lambda: list(ATTENTION_PROJECTIONS),
        metadata={"help": "temp_lora: module names (peft `target_modules`) that get the adapter; default: every "
                  "attention projection of the UNet."},
    )
    lr: float = field(default=1e-4, metadata={"help": "temp_lora: Adam learning rate."})
    steps_per_chunk: int = field(
        default=1,
        metadata={"help": "temp_lora: Adam steps per update (per chunk). One step on 16 latent frames costs about "
                  "as much CPU time as generating a chunk, so one keeps the update within a chunk's execution."},
    )
    merge_for_generation: bool = field(
        default=True,
        metadata={"help": "temp_lora: fold the adapter into the attention weights while generating (no LoRA cost "
                  "per denoising step; measured ~15% of a chunk unmerged). The base weights are copied before "
                  "and copied back, bit for bit, before any update, reset or close. False: peft's unmerged forward."},
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={"help": "temp_lora: recompute each UNet resnet, temporal conv and transformer in the backward "
                  "pass instead of keeping its activations (torch.utils.checkpoint). Measured with the default "
                  "UNet on 16 latent frames: the update's extra peak RSS +219 MB instead of +407 MB, for 0.68-0.71 s "
                  "instead of 0.53 s per update; hidden where a chunk's execution takes as long (a robot at 10 Hz: "
                  "0.8 s), not in a simulator, where `vplan run` waits for it (an episode ~20% longer)."},
    )
    replay_first: bool = field(
        default=False,
        metadata={"help": "temp_lora: every update after an episode's first also scores the first update's "
                  "sequence (the real context and the first chunk) and averages the two losses: a rehearsal of "
                  "the scene the episode started in, so the adapter does not drift with what the model drew. "
                  "Not in the paper. Measured with the shipped model (docs/experiments.md, `vplan eval "
                  "consistency`, 20 episodes): no scene cut where the default had 12, SRC 3 points above the "
                  "default's on fresh seeds but not above none's; each update costs ~1.9x (1.5 s on 2 cores), too "
                  "long to hide behind 0.8 s of execution."},
    )
    update_on: str = field(
        default="imagined",
        metadata={"help": f"One of {UPDATE_ON}: which latents the caller hands to `update` — the imagined chunk "
                  "(open loop, as in the paper) or the encoded frames the env returned (closed loop). The memory "
                  "trains on whatever it is given; this tells the caller which to pass."},
    )
    seed: int = field(
        default=0, metadata={"help": "temp_lora: seeds the adapter's initialisation and the update's noise."}
    )

    def __post_init__(self) -> None:
        from vplan.utils.settings import check_field_types, check_seed

        check_field_types(self)  # lr=True, merge_for_generation="false" (truthy)
        check_seed(self.seed)
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.update_on not in UPDATE_ON:
            raise ValueError(f"update_on: expected one of {UPDATE_ON}, got {self.update_on!r}")
        check_ints(self, ("rank", "steps_per_chunk"))
        if not (math.isfinite(self.lr) and self.lr > 0):  # its type: check_field_types
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
                                           and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha: expected a positive number or None (= rank), got {self.alpha!r}")
        if isinstance(self.target_modules, str):  # list("to_q") would be its letters
            raise ValueError(f"target_modules: expected a list of module names, got the string {self.target_modules!r}")
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(m, str) and m.strip() for m in self.target_modules):
            raise ValueError(f"target_modules: expected a non-empty list of module names, got {self.target_modules!r}")

    @property
    def lora_alpha(self) -> float:
        """The alpha peft gets: `alpha`, or `rank` (a scale of 1) when unset."""
        return float(self.rank if self.alpha is None else self.alpha)
