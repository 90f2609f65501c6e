"""The baselines: no memory (AVDC-like) and the anchor frame (StreamingT2V-like)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vplan.memory.base import EpisodicMemory, check_state
from vplan.memory.config import MemoryConfig

if TYPE_CHECKING:
    from vplan.worldmodel.model import WorldModel


class NoMemory(EpisodicMemory):
    """Only the recent context conditions a chunk: `condition` returns the history unchanged (the world model
    keeps its last `context_frames`), and updates learn nothing."""

    kind = "none"

    def _reset(self) -> None:
        pass

    def _condition(self, history: torch.Tensor) -> torch.Tensor:
        return history

    def _update(self, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
        return {}

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state(state, {}, self.kind)

    def _snapshot(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        pass


class AnchorFrameMemory(EpisodicMemory):
    """The episode's first latent frame stays in every chunk's context.

    The anchor is the first latent the memory sees after `reset` (the first frame of the first `condition`
    history, or of the first `update`'s `previous` if that comes first). Fitting the context in the world
    model's `context_frames` (the length it was trained on, 1–4 by default): the anchor plus the last
    `context_frames - 1` latents of the history; a history that still fits whole and starts with the anchor
    is passed unchanged (no duplicate anchor early in the episode). So the anchor needs `context_frames >= 2`,
    and it costs one frame of recent context. The UNet's temporal attention has no position limit, but the
    model was only trained on up to `context_frames` clean frames, so the context never grows beyond it.
    """

    kind = "anchor"

    def __init__(self, config: MemoryConfig, world_model: WorldModel) -> None:
        super().__init__(config, world_model)
        frames = world_model.config.context_frames
        if frames < 2:
            raise ValueError(f"anchor memory: expected a world model with context_frames >= 2 (the anchor plus at "
                             f"least one recent frame), got context_frames={frames}")
        self._anchor: torch.Tensor | None = None

    @property
    def anchor(self) -> torch.Tensor | None:
        """The anchor latent (B, 1, C, h, w), or None before the episode's first latent was seen."""
        return self._anchor

    def _reset(self) -> None:
        self._anchor = None

    def _set_anchor(self, latents: torch.Tensor) -> torch.Tensor:
        if self._anchor is None:
            self._anchor = latents[:, :1].detach().clone()
        elif self._anchor.shape[0] != latents.shape[0]:
            raise ValueError(f"expected a batch of {self._anchor.shape[0]} (the anchor's), got {latents.shape[0]}; "
                             "reset() the memory between episodes")
        return self._anchor

    def _condition(self, history: torch.Tensor) -> torch.Tensor:
        anchor = self._set_anchor(history).to(device=history.device, dtype=history.dtype)
        frames = self.world_model.config.context_frames
        if history.shape[1] <= frames and torch.equal(history[:, :1], anchor):
            return history
        return torch.cat([anchor, history[:, -(frames - 1):]], dim=1)

    def _update(self, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
        self._set_anchor(previous)
        return {}

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self._anchor is None else {"anchor": self._anchor.clone()}

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self._anchor = None
            return
        if set(state) != {"anchor"}:
            raise ValueError(f"expected the anchor memory's tensors ['anchor'] or none, got {sorted(state)}")
        anchor, shape = state["anchor"], tuple(self.world_model.latent_shape)
        if anchor.ndim != 5 or anchor.shape[1] != 1 or tuple(anchor.shape[2:]) != shape:
            raise ValueError(f"expected 'anchor' of shape (B, 1, {', '.join(map(str, shape))}), "
                             f"got {tuple(anchor.shape)}")
        self._anchor = anchor.clone()

    def _snapshot(self) -> dict[str, Any]:
        return self._state_dict()

    def _restore(self, state: dict[str, Any]) -> None:
        self._load_state_dict(state)
