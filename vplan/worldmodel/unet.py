"""The video backbone: diffusers' `UNet3DConditionModel` (ModelScope's UNet) with LoRA support.

diffusers' 3D UNet lacks `PeftAdapterMixin`, so `UNet3D` mixes it in: Temp-LoRA memory then adds a named
adapter with `unet.add_adapter(LoraConfig(...), adapter_name="temp_lora")` and toggles it with
`disable_adapters()` / `enable_adapters()`.

Per-frame conditions: `add_frame_embedding` gives the UNet an MLP whose output, one vector per frame, is added
to that frame's timestep embedding in every res-block (forward pre-hooks on diffusers' `time_emb_proj`, in place
only during `predict`), which is how an action-conditioned model hands each frame its own action.

Layout: diffusers' UNet takes `(B, C, T, H, W)`; the rest of vplan uses `(B, T, C, H, W)`. `UNet3D.predict` is
the one place that transposes.

Text padding: in diffusers 0.42 `UNet3DConditionModel.forward` accepts an `attention_mask` but its 3D blocks
never pass it to the cross-attention (and there is no `encoder_attention_mask`), so a token mask would be
silently ignored. vplan instead zeroes padded tokens (the cross-attention's key/value projections have no bias,
so a zero token adds no content, only a constant softmax term), and the text encoder pads every text to one
fixed length (`TextEncoderConfig.max_tokens`), so a text's conditioning never depends on what else is in the
batch.

Attention batch: the input temporal transformer and every temporal attention attend over frames once per clip
and latent position, so their attention batch is clips × h × w: 65,536 at 256 clips of 16×16 latents, past
what CUDA's attention kernels take in one call (a grid dimension holds 65,535; pytorch/pytorch#146704). Every
attention of the UNet therefore runs `ChunkedAttnProcessor`, which hands diffusers' own processor at most
`MAX_ATTENTION_BATCH` sequences at a time; below that (always, at the sizes the CPU runs) it is that processor.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet3DConditionModel
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from vplan.worldmodel.config import UNetConfig


# The most attention sequences one call gets: 128 clips × 16×16 latent positions, what ran on an H200 (256
# clips, 65,536 sequences, failed there in both cuDNN's and CUDA's attention).
MAX_ATTENTION_BATCH = 32_768


class ChunkedAttnProcessor(AttnProcessor2_0):
    """diffusers' `AttnProcessor2_0`, called on pieces of at most `max_batch` sequences (see the module
    docstring); each sequence's attention is independent of the others', so the result is the same."""

    def __init__(self, max_batch: int = MAX_ATTENTION_BATCH) -> None:
        super().__init__()
        if max_batch < 1:
            raise ValueError(f"expected max_batch >= 1, got {max_batch}")
        self.max_batch = max_batch

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = hidden_states.shape[0]
        if batch <= self.max_batch:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        pieces = []
        for start in range(0, batch, self.max_batch):
            part = slice(start, start + self.max_batch)
            pieces.append(super().__call__(
                attn,
                hidden_states[part],
                None if encoder_hidden_states is None else encoder_hidden_states[part],
                None if attention_mask is None else attention_mask[part],
                None if temb is None else temb[part],
            ))
        return torch.cat(pieces)


class UNet3D(UNet3DConditionModel, PeftAdapterMixin):
    """`UNet3DConditionModel` plus peft adapters (`add_adapter`, `set_adapter`, `disable_adapters`, ...)."""

    def add_frame_embedding(self, size: int) -> None:
        """Per-frame conditioning: an MLP of a `size`-vector per frame whose output is added to that frame's
        timestep embedding in every res-block (as DIAMOND conditions on actions). The 3D UNet's frames carry no
        position, so a cross-attention token cannot say which frame it is for; this can. Its last layer starts at
        zero, so the UNet first computes what it did without it."""
        dim = self.time_embedding.linear_2.out_features
        self.frame_embedding = nn.Sequential(nn.Linear(size, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.frame_embedding[2].weight)
        nn.init.zeros_(self.frame_embedding[2].bias)
        # found once here, not on every denoising step; their `time_emb_proj` is read at each call, so a LoRA
        # wrapper put in its place later is what gets the hook
        self._timed_resnets = [
            module for module in self.modules()
            if isinstance(module, ResnetBlock2D) and module.time_emb_proj is not None
        ]

    def predict(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_states: torch.Tensor,
        frame_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output for `latents` (B, T, C, h, w) at per-sample `timesteps` (B,), in the same layout.

        A UNet with a frame embedding (`add_frame_embedding(F)`) takes `frame_inputs` (B, T, F), one vector per
        frame; None means zeros (nothing known).
        """
        embedding = self._modules.get("frame_embedding")  # set by add_frame_embedding
        hooks = []
        if embedding is None and frame_inputs is not None:
            raise ValueError("expected no frame_inputs: this UNet has no frame embedding")
        if embedding is not None:
            batch, frames = latents.shape[:2]
            size = embedding[0].in_features
            if frame_inputs is None:
                frame_inputs = latents.new_zeros(batch, frames, size)
            if frame_inputs.shape != (batch, frames, size):
                raise ValueError(
                    f"expected frame_inputs of shape ({batch}, {frames}, {size}), got {tuple(frame_inputs.shape)}"
                )
            # diffusers repeats the timestep embedding per frame, batch-major, before the res-blocks read it
            per_frame = embedding(frame_inputs.to(latents.dtype)).reshape(batch * frames, -1)
            hooks = [resnet.time_emb_proj.register_forward_pre_hook(lambda _, args: (args[0] + per_frame,))
                     for resnet in self._timed_resnets]
        try:
            out = self(latents.transpose(1, 2), timesteps, encoder_hidden_states=text_states, return_dict=False)[0]
        finally:
            for hook in hooks:
                hook.remove()
        return out.transpose(1, 2)


def build_unet(config: UNetConfig, frame_input_size: int = 0) -> UNet3D:
    """A freshly initialised `UNet3D` of the given size, with a frame embedding of `frame_input_size`-vectors
    (`UNet3D.predict`'s `frame_inputs`) unless 0."""
    unet = UNet3D(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=config.down_block_types,
        up_block_types=config.up_block_types,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
    )
    unet.set_attn_processor(ChunkedAttnProcessor())
    if frame_input_size:
        unet.add_frame_embedding(frame_input_size)
    return unet
