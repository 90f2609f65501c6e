"""Low-level actions of a chunk → cross-attention tokens (LeAP: the executed actions as a cause of the frames).

Step i of a chunk gets one token: a small MLP of the action that leads into chunk frame i, plus a learned
position embedding for i, so the tokens tell the steps apart. The tokens sit beside the subgoal text's tokens
(`text+action`) or replace them (`action`); see `WorldModelConfig.conditioning`. A frame, though, cannot tell
which token is its own (the 3D UNet's frames carry no position, and every frame reads the same tokens), so
`WorldModelConfig.action_frame_embedding` also hands each frame its own action through the UNet's frame
embedding (`UNet3D.add_frame_embedding`).

A step whose action is not known yet (the tail of a chunk imagined one step at a time, `WorldModelEnv`) or dropped
for classifier-free guidance gets a learned null token instead of the MLP's output. The null condition is
therefore the all-null token set, and training drops actions together with the text, so guidance works unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ActionEncoder(nn.Module):
    """Actions (B, k <= num_steps, action_dim) → tokens (B, num_steps, dim); steps past k, or not `known`, are null."""

    def __init__(self, action_dim: int, num_steps: int, dim: int) -> None:
        super().__init__()
        self.action_dim, self.num_steps = action_dim, num_steps
        self.mlp = nn.Sequential(nn.Linear(action_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(num_steps, dim) * 0.02)

    def forward(self, actions: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """`known` (B, num_steps) bool marks the steps whose action conditions the chunk; by default the first k."""
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim or actions.shape[1] > self.num_steps:
            raise ValueError(
                f"expected actions of shape (B, k <= {self.num_steps}, {self.action_dim}), got {tuple(actions.shape)}"
            )
        batch, steps = actions.shape[:2]
        device = self.position_embedding.device
        full = torch.zeros(batch, self.num_steps, self.action_dim, device=device, dtype=self.position_embedding.dtype)
        full[:, :steps] = actions.to(device=device, dtype=full.dtype)
        if known is None:
            known = (torch.arange(self.num_steps, device=device) < steps).expand(batch, -1)
        if known.shape != (batch, self.num_steps):
            raise ValueError(f"expected known of shape ({batch}, {self.num_steps}), got {tuple(known.shape)}")
        known = known.to(device)[..., None]
        tokens = torch.where(known, self.mlp(full), self.null_token.expand_as(self.position_embedding))
        return tokens + self.position_embedding

    def null(self, batch_size: int = 1) -> torch.Tensor:
        """The unconditional token set (batch_size, num_steps, dim): every step null."""
        return (self.null_token + self.position_embedding).expand(batch_size, -1, -1)
