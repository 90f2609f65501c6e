"""Rewards behind one interface: `Reward.score(rollout) -> float | None`, higher is better, combined by the
weights in `RewardConfig` (weight 0 switches a reward off; None from a reward means "no signal" and adds
nothing). Each is a reading of one explored episode (`EpisodeRollout`):

- `outcome`: did the plan work, grounded in the env — 1 for success, plus `progress_weight` × the task's
  progress from the final `info` (tabletop: cubes displaced, then returned; blockworld: waypoints passed on the
  way back);
- `executability`: how closely the executed frames followed the imagined ones (1 − mean absolute pixel
  difference, the agent's drift): what the executor drew was physically reachable;
- `consistency`: minus the scene cuts per imagined chunk (PySceneDetect, the eval's pinned detector);
- `idm_reproduction` (issue 9): the actions the IDM read off an imagined chunk, fed to an action-conditioned world
  model from the same context, should reproduce that chunk (1 − mean absolute pixel difference);
- `vlm`: a vision-language model's yes/no per chunk (vplan/rl/vlm_reward.py), off by default.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from vplan.errors import RunError
from vplan.rl.config import RewardConfig
from vplan.rl.rollout import EpisodeRollout
from vplan.tasks import task_progress


class Reward(Protocol):
    """A named score of one explored episode; higher is better; None for no signal."""

    name: str

    def score(self, rollout: EpisodeRollout) -> float | None: ...


class OutcomeReward:
    name = "outcome"

    def __init__(self, progress_weight: float = 0.5) -> None:
        self.progress_weight = progress_weight

    def score(self, rollout: EpisodeRollout) -> float:
        info = rollout.final_info
        return float(bool(info.get("success", False))) + self.progress_weight * task_progress(info)


class ExecutabilityReward:
    name = "executability"

    def score(self, rollout: EpisodeRollout) -> float | None:
        drift = [d for chunk in rollout.chunks for d in chunk.drift]
        return 1.0 - float(np.mean(drift)) if drift else None


class ConsistencyReward:
    name = "consistency"

    def score(self, rollout: EpisodeRollout) -> float | None:
        from vplan.eval.consistency_metrics import scene_cuts

        if not rollout.chunks:
            return None
        return -scene_cuts(rollout.imagined_video) / len(rollout.chunks)


class IDMReproductionReward:
    """Feed the IDM's actions for each imagined chunk to an action-conditioned world model from the same
    context: a chunk whose actions reproduce it is one the actions can explain."""

    name = "idm_reproduction"

    def __init__(self, action_model: Any, seed: int = 0) -> None:
        if not action_model.config.uses_actions:
            raise ValueError(f"expected an action-conditioned world model, got conditioning="
                             f"{action_model.config.conditioning!r}")
        self.model, self.seed = action_model.eval(), seed

    def check_fits(self, world_model: Any, idm: Any) -> None:
        """A ValueError where the action model cannot read what the agent hands it, said before any episode:
        the IDM's actions (their size), the world model's context latents (one VAE for both models), and its
        chunks (their length)."""
        from vplan.worldmodel.latent_cache import vae_fingerprint

        takes = self.model.config.action_dim
        if idm.config.num_moves:
            raise ValueError(f"the IDM reads discrete moves (num_moves={idm.config.num_moves}), and the action model "
                             f"takes vectors of {takes} values")
        if idm.config.action_dim != takes:
            raise ValueError(f"the IDM's actions have {idm.config.action_dim} values, and the action model takes "
                             f"{takes}")
        if vae_fingerprint(self.model.vae) != vae_fingerprint(world_model.vae):
            raise ValueError("its VAE is not the world model's, whose context latents it would be given; train it on "
                             "the world model's VAE (component.vae=<that VAE>)")
        frames, reads = world_model.config.chunk_frames, self.model.config.chunk_frames
        if reads < frames:  # it would be asked to redraw every chunk, and refuse after the first episode
            raise ValueError(f"it draws chunks of up to {reads} frames, and the world model's are {frames}; train it "
                             f"with component.model.chunk_frames={frames}")

    @torch.no_grad()
    def score(self, rollout: EpisodeRollout) -> float | None:
        scores = []
        for chunk in rollout.chunks:
            actions = torch.as_tensor(np.asarray(chunk.actions, np.float32)).reshape(1, len(chunk.actions), -1)
            context = chunk.context[:, -self.model.config.context_frames:]
            latents = self.model.generate(context, [chunk.text], num_frames=len(chunk.frames), actions=actions,
                                          generator=torch.Generator().manual_seed(self.seed))
            reproduced = self.model.decode(latents)[0].numpy().astype(np.float32)
            scores.append(1.0 - float(np.abs(reproduced - chunk.frames.astype(np.float32)).mean()) / 255.0)
        return float(np.mean(scores)) if scores else None


class RewardSet:
    """The configured rewards; `score(rollout)` fills `rollout.rewards` and `rollout.reward` (the weighted sum)."""

    def __init__(self, rewards: list[tuple[Reward, float]]) -> None:
        self.rewards = rewards

    def score(self, rollout: EpisodeRollout) -> float:
        """The weighted sum; a RunError for a NaN or infinite term (a diverged model), which no advantage can use."""
        total = 0.0
        for reward, weight in self.rewards:
            value = reward.score(rollout)
            if value is not None:
                if not math.isfinite(float(value)):
                    raise RunError(f"the {reward.name} reward is {float(value)} for task seed {rollout.task_seed}, "
                                   f"plan {rollout.plan_index}, continuation {rollout.continuation}; check the model "
                                   f"it reads (a diverged checkpoint?), or run without it: rewards.{reward.name}=0 "
                                   "in another out=DIR")
                rollout.rewards[reward.name] = float(value)
                total += weight * float(value)
        rollout.reward = total
        return total

    def complete_group(self, plans: list[list[EpisodeRollout]]) -> None:
        """Make the totals of a group that is compared within itself (a task seed's plans × continuations) fair:
        a term one rollout got no score for (a VLM reply that was not yes/no, a spent request budget) adds to its
        total the mean of that term over its plan's other continuations (which it is compared with), or over the
        whole group where none of its plan's has one, so a missing answer neither rewards nor punishes it at
        either level. Its `rewards` keep only what was scored."""
        everyone = [rollout for continuations in plans for rollout in continuations]
        for reward, weight in self.rewards:
            group = [r.rewards[reward.name] for r in everyone if reward.name in r.rewards]
            if not group or len(group) == len(everyone):
                continue
            for continuations in plans:
                scored = [r.rewards[reward.name] for r in continuations if reward.name in r.rewards]
                fill = float(np.mean(scored if scored else group))
                for rollout in continuations:
                    if reward.name not in rollout.rewards:
                        rollout.reward += weight * fill

    def close(self) -> None:
        for reward, _ in self.rewards:
            if hasattr(reward, "close"):
                reward.close()


def make_rewards(config: RewardConfig, vlm: Any = None, world_model: Any = None, idm: Any = None) -> RewardSet:
    """The rewards with a weight above 0 (`vlm`: a `VLMReward`, needed when config.vlm > 0); given the agent's
    `world_model` and `idm`, the IDM-reproduction reward's action model is checked against them."""
    rewards: list[tuple[Reward, float]] = []
    if config.outcome > 0:
        rewards.append((OutcomeReward(config.progress_weight), config.outcome))
    if config.executability > 0:
        rewards.append((ExecutabilityReward(), config.executability))
    if config.consistency > 0:
        rewards.append((ConsistencyReward(), config.consistency))
    if config.idm_reproduction > 0:
        from vplan.worldmodel.model import CheckpointError, WorldModel

        try:
            reward = IDMReproductionReward(WorldModel.from_pretrained(config.action_worldmodel))
            if world_model is not None:  # not after the first explored episode
                reward.check_fits(world_model, idm)
        except ValueError as error:  # another kind of model, a broken file, one that does not fit the agent
            raise CheckpointError(f"rewards.action_worldmodel={config.action_worldmodel}: {error}") from None
        rewards.append((reward, config.idm_reproduction))
    if config.vlm > 0:
        if vlm is None:
            raise ValueError("rewards.vlm > 0: expected the VLM reward switched on (vlm_reward.enabled=true)")
        rewards.append((vlm, config.vlm))
    return RewardSet(rewards)
