"""The imagined tabletop (vplan/WorldModel-v0): an action-conditioned world model as a gymnasium env, after DIAMOND.

torch and the world model are imported when an env is made, not with `vplan.envs` (diffusers takes seconds).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

from vplan.envs.settings import env_settings
from vplan.utils.settings import check_field_types, check_int, check_ints

if TYPE_CHECKING:
    import torch

    from vplan.worldmodel.model import WorldModel

_SEED_HIGH = 2**62
GRIP_ACTION_DIM = 4  # the tabletop's actions: dx, dy, dz and the grip command


@dataclass
class WorldModelEnvConfig:
    """Settings of the imagined env; the world model's own config (chunk and context lengths, sampler) is its."""

    checkpoint: str = field(
        default="shipped:tabletop/worldmodel_action",
        metadata={"help": "An action-conditioned world model (`vplan train component=worldmodel "
                  "component.model.conditioning=action`): a directory or shipped:tabletop/worldmodel_action."},
    )
    text: str = field(
        default="", metadata={"help": "Subgoal text for a text+action model ('' is the null text); reset option too."}
    )
    max_episode_steps: int = field(
        default=400,
        metadata={"help": "Steps after which the env truncates its rollouts (the tabletop's)."},
    )

    def __post_init__(self) -> None:
        check_field_types(self)  # built in Python too (`WorldModelEnv(max_episode_steps="10")`)
        check_ints(self, ("max_episode_steps",))


# A forked child (a worker of gymnasium's AsyncVectorEnv, forked by default on Linux) sees its parent's pid here.
_IMPORTED_IN = os.getpid()


class WorldModelEnv(gym.Env):
    """The tabletop as an action-conditioned world model imagines it: actions in, imagined frames out.

    Each step imagines one frame. The model was trained on chunks whose every frame attends to every action of
    the chunk, so a frame cannot be drawn before the chunk's later actions are known, and buffering a chunk of
    actions would return each frame up to a chunk late (or make the agent act blind). Instead each step samples a
    chunk from the last `context_frames` frames with the step's action as the chunk's first action and null
    tokens for the rest (not known yet; training drops action tails the same way, `action_tail_dropout`), and
    keeps the chunk's first frame. Observations are then causal (frame t + 1 follows action t), at the price of a
    whole chunk's sampling per frame; `step_batch` runs many rollouts in one UNet call. Generation stays in latent
    space (the history is latents); each new frame is decoded once, for the observation.

    ## Action Space
    The tabletop's: `Box(-1, 1, (action_dim,), float32)` (4: gripper dx, dy, dz and grip), clipped like it, and
    the grip read as the tabletop reads it (> 0 closes: +1, else -1, the values the model learned from). A
    non-finite action is refused.

    ## Observation Space
    `Box(0, 255, (H, W, 3), uint8)`: the latest frame (the tabletop's `"front"` camera, at the VAE's image size;
    the first is the real start frame, later ones decoded from latents). There is no `agent_pos`, and `info` has
    no `success`, `dist` or poses: only pixels are imagined (`info`: `imagined`, `step`, `texts`).

    ## Starting State
    `reset(seed, options)` starts from a real first frame: `options["frame"]` (uint8 (H, W, 3), or (T, H, W, 3)
    context frames), `options["dataset"]` and `options["episode"]` (the first frame of that episode of a
    `vplan collect` dataset), or by default the front camera of the embedded tabletop reset with a seed drawn
    from `seed`. `options["text"]` sets the subgoal of a text+action model (an action model refuses it).

    ## Rewards
    0.0: the imagined world scores nothing itself (rewards are the RL issue's).

    ## Episode End
    Never terminates; the env truncates after `max_episode_steps` (`gymnasium.make`'s own `max_episode_steps=`
    adds a `TimeLimit`; the earlier limit ends the episode).

    ## Randomness
    Each rollout samples from its own torch generator seeded from its reset seed, so rollout i of
    `step_batch` equals a single env reset with seed i and fed the same actions (up to float rounding of
    batched kernels).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        config: WorldModelEnvConfig | None = None,
        model: WorldModel | None = None,
        render_mode: str | None = "rgb_array",
        **overrides: Any,
    ) -> None:
        self.config = env_settings(WorldModelEnvConfig, config, overrides, render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        if os.getpid() != _IMPORTED_IN:  # torch's OpenMP pool, once the parent ran it, hangs a forked child's ops
            import torch

            torch.set_num_threads(1)  # one thread needs no pool (torch's DataLoader workers run so too)
        if model is None:
            from vplan.shipped import warn_if_trained_elsewhere
            from vplan.worldmodel.model import WorldModel

            model = WorldModel.from_pretrained(self.config.checkpoint)
            warn_if_trained_elsewhere({"checkpoint": self.config.checkpoint}, "tabletop")  # it imagines the tabletop
        if not model.config.uses_actions:
            raise ValueError(
                f"expected an action-conditioned world model (conditioning 'action' or 'text+action'), got "
                f"conditioning={model.config.conditioning!r}; train one with `vplan train component=worldmodel "
                "component.model.conditioning=action`"
            )
        self.model = model.eval()
        size = model.config.vae.image_size
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (model.config.action_dim,), np.float32)
        self._tabletop: gym.Env | None = None  # made on the first default reset
        self._history: torch.Tensor | None = None  # latents (B, <= context_frames, C, h, w)
        self._generators: list[torch.Generator] = []
        self._texts: list[str] = []
        self._frames = np.zeros((1, size, size, 3), np.uint8)
        self._steps = 0

    # -- gymnasium API (one rollout)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and not isinstance(options, Mapping):  # dict() gave "dictionary update sequence ..."
            raise ValueError(f"options: expected a dict of reset options (frame, dataset, episode, text) or None, got "
                             f"{type(options).__name__}")
        options = dict(options or {})
        unknown = set(options) - {"frame", "dataset", "episode", "text"}
        if unknown:
            raise ValueError(f"expected reset options among frame, dataset, episode, text; got {sorted(unknown)}")
        if "frame" in options and "dataset" in options:
            raise ValueError("options: expected a frame or a dataset to start from, got both")
        if "episode" in options and "dataset" not in options:
            raise ValueError("options: 'episode' is an episode of options['dataset'], which is missing")
        if isinstance(options.get("episode"), np.integer):  # an index from numpy, as reset_batch takes its seeds
            options["episode"] = int(options["episode"])
        if "episode" in options:
            check_int(options["episode"], "options['episode']", low=0)  # 1.9 read as 1, None a TypeError
        if not isinstance(options.get("text", ""), str):  # a text+action model failed at step, an action model kept it
            raise ValueError(f"options['text']: expected a string, got {options['text']!r:.80}")
        if "text" in options:
            self._check_reads_text("options['text']")
        torch_seed, frames = self._start_frames(options, self.np_random)
        self._start([torch_seed], frames[None], [options.get("text", self.config.text)])
        return self._frames[0].copy(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)  # float32 would turn a huge finite action into inf
        if self._history is not None and self._history.shape[0] > 1:
            raise ValueError(f"step() steps one rollout, and reset_batch started {self._history.shape[0]}; call "
                             "step_batch with one action per rollout (or reset() for one)")
        if self._history is not None and action.shape != self.action_space.shape:
            raise ValueError(f"expected an action of shape {self.action_space.shape}, got {action.shape} (step_batch "
                             "takes a batch)")
        obs, rewards, terminated, truncated, info = self.step_batch(action[None])
        return obs[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def render(self) -> np.ndarray | None:
        """The latest frame (of rollout 0)."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        return self._frames[0].copy()

    def close(self) -> None:
        if self._tabletop is not None:
            self._tabletop.close()
            self._tabletop = None
        self._history, self._generators = None, []  # the rollouts' latents (on the model's device)

    # -- batched rollouts

    def reset_batch(
        self, seeds: list[int], frames: np.ndarray | None = None, texts: list[str] | None = None
    ) -> np.ndarray:
        """Start len(seeds) rollouts at once; returns their first frames (B, H, W, 3).

        `frames` (B, H, W, 3) or (B, T, H, W, 3) are their real first frames; by default each is the embedded
        tabletop reset as `reset(seed=seeds[i])` would. Rollout i samples exactly as a single env reset with
        seed `seeds[i]` (and the same frame) does.
        """
        seeds = list(seeds)  # a numpy array's truth value is ambiguous
        if not seeds:
            raise ValueError("expected at least one seed, got none")
        for i, seed in enumerate(seeds):  # as reset(seed=) takes them (any int >= 0): 1.7 was read as 1, None a
            check_int(int(seed) if isinstance(seed, np.integer) else seed, f"seeds[{i}]", low=0)  # TypeError
        if isinstance(texts, str) or (texts is not None and not all(isinstance(text, str) for text in texts)):
            raise ValueError(f"texts: expected a list of strings, one per seed, got {texts!r:.80}")
        if texts is not None and len(texts) != len(seeds):
            raise ValueError(f"expected one text per seed ({len(seeds)}), got {len(texts)}")
        if texts is not None:
            self._check_reads_text("texts")
        options: list[dict[str, Any]] = [{} for _ in seeds]
        if frames is not None:
            frames = np.asarray(frames)
            size = self.observation_space.shape  # each rollout's frame is checked alone below, naming its shape
            if frames.ndim not in (4, 5) or len(frames) != len(seeds) or frames.dtype != np.uint8:
                raise ValueError(f"expected uint8 frames (B={len(seeds)}, [T,] {', '.join(map(str, size))}), got "
                                 f"{frames.dtype} {frames.shape}")
            options = [{"frame": f} for f in frames]
        starts = [self._start_frames(o, seeding.np_random(int(s))[0]) for o, s in zip(options, seeds)]
        length = min(len(f) for _, f in starts)  # one context length for the batch
        self._start([t for t, _ in starts], np.stack([f[-length:] for _, f in starts]),
                    texts or [self.config.text] * len(seeds))
        return self._frames.copy()

    def _check_reads_text(self, name: str) -> None:
        """A ValueError naming `name` where the model is conditioned on actions alone: a text given to it was taken
        and reported in `info["texts"]`, as if it steered the rollout."""
        if self.model.config.conditioning == "action":
            raise ValueError(f"{name}: this world model is conditioned on actions alone (conditioning 'action') and "
                             "reads no text; leave it out, or load a text+action model")

    def step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every rollout by one action (B, action_dim) in one UNet call per denoising step: the next frames
        (B, H, W, 3), rewards (B,), terminated (B,), truncated (B,) and info."""
        import torch

        if self._history is None:
            raise gym.error.ResetNeeded("call reset() or reset_batch() before step()")
        batch = self._history.shape[0]
        actions = np.asarray(actions, dtype=np.float64)  # checked and clipped before float32 (1e300 is finite)
        if actions.shape != (batch, *self.action_space.shape):
            raise ValueError(f"expected actions of shape ({batch}, {self.action_space.shape[0]}), got {actions.shape}")
        if not np.isfinite(actions).all():  # NaN would reach the latents and black out the rest of the rollout
            raise ValueError(f"actions: expected finite numbers, got {actions.tolist()}")
        actions = np.clip(actions, self.action_space.low, self.action_space.high).astype(np.float32)
        if actions.shape[1] == GRIP_ACTION_DIM:  # the tabletop reads its grip as closed or open (> 0), and the model
            actions[:, 3] = np.where(actions[:, 3] > 0, 1.0, -1.0)  # learned from ±1: any other value as those
        model = self.model
        with torch.no_grad():
            chunk = model.generate(
                self._history, self._texts, generator=self._generators,
                actions=torch.from_numpy(actions)[:, None].to(self._history.device),
            )
            frame = chunk[:, :1]
            self._history = torch.cat([self._history, frame], dim=1)[:, -model.config.context_frames:]
            self._frames = model.decode(frame)[:, 0].cpu().numpy()
        self._steps += 1
        truncated = np.full(batch, self._steps >= self.config.max_episode_steps)
        return (self._frames.copy(), np.zeros(batch, np.float32), np.zeros(batch, bool), truncated,
                self._info())

    # -- internals

    def _start(self, torch_seeds: list[int], frames: np.ndarray, texts: list[str]) -> None:
        """Encode the first frames (B, T, H, W, 3); one sampling generator per rollout."""
        import torch

        self._generators = [torch.Generator().manual_seed(seed) for seed in torch_seeds]
        device = next(self.model.unet.parameters()).device
        with torch.no_grad():
            latents = self.model.encode(torch.from_numpy(np.array(frames, dtype=np.uint8)).to(device))
        self._history = latents[:, -self.model.config.context_frames:]
        self._texts = list(texts)
        self._frames = np.ascontiguousarray(frames[:, -1])
        self._steps = 0

    def _start_frames(self, options: dict[str, Any], rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """One rollout's sampling seed and real first frames (T, H, W, 3). The seed is drawn from `rng` first
        (then the tabletop's), so `reset` and `reset_batch` draw alike."""
        torch_seed = int(rng.integers(_SEED_HIGH))
        return torch_seed, self._first_frames(options, rng)

    def _first_frames(self, options: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        if "frame" in options:
            return self._check_frames(np.asarray(options["frame"]))
        if "dataset" in options:
            from vplan.constants import OBS_IMAGE_FRONT
            from vplan.data import EpisodeDataset

            episode = EpisodeDataset(options["dataset"]).episode(int(options.get("episode", 0)))
            return self._check_frames(np.asarray(episode[OBS_IMAGE_FRONT][:1]))
        if self._tabletop is None:
            from vplan.envs.tabletop_v0 import TabletopConfig, TabletopEnv

            self._tabletop = TabletopEnv(TabletopConfig(image_size=self.observation_space.shape[0]))
        obs, _ = self._tabletop.reset(seed=int(rng.integers(_SEED_HIGH)))
        return obs["front"][None]

    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim == 3:
            frames = frames[None]
        shape = self.observation_space.shape
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != shape or len(frames) < 1:
            raise ValueError(f"expected uint8 frames ([T,] {', '.join(map(str, shape))}), got {frames.dtype} "
                             f"{frames.shape}")
        return frames

    def _info(self) -> dict[str, Any]:
        return {"imagined": True, "step": self._steps, "texts": list(self._texts)}
