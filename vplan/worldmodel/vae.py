"""The frame autoencoder: a small diffusers `AutoencoderKL` trained on the env's frames.

The world model diffuses in its latent space (64×64×3 frames → 4×16×16 latents with the default config), where
a UNet3D step is ~30× cheaper than on pixels. Frames cross this module as channel-last uint8 (or float in
[0, 1]) arrays, the layout envs and datasets use; latents leave it as (B, T, C, h, w) scaled by
`vae.config.scaling_factor`, so the diffusion model sees roughly unit-variance inputs.

Encoding uses the posterior mean, not a sample: context frames then map to the same latents every time, so
a generated chunk depends only on the diffusion noise. Training (`vae_loss`) samples the posterior, which
keeps the decoder tolerant of the small errors the diffusion model makes in latent space.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from vplan.worldmodel.config import VAEConfig

# diffusers' config.json key -> VAEConfig field, for a VAE folder `vplan train component=vae` wrote
_DIFFUSERS_KEYS = {"block_out_channels": "block_out_channels", "latent_channels": "latent_channels",
                   "layers_per_block": "layers_per_block", "norm_num_groups": "norm_num_groups",
                   "sample_size": "image_size", "scaling_factor": "scaling_factor",
                   "mid_block_add_attention": "mid_block_attention"}


def vae_config_from_diffusers(config: Any) -> VAEConfig:
    """The `VAEConfig` of a diffusers `AutoencoderKL` config.json (`save_pretrained`'s), checked as a vplan config
    is: diffusers fills a missing key with its own default (scaling 0.18215) and leaves a wrong type to fail deep
    inside torch. A ValueError names the key."""
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    if config.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"expected _class_name 'AutoencoderKL', got {config.get('_class_name')!r}")
    missing = [key for key in _DIFFUSERS_KEYS if key != "mid_block_add_attention" and key not in config]
    if missing:
        raise ValueError(f"expected keys {missing}, found none")
    blocks = config["block_out_channels"]
    if not isinstance(blocks, list):
        raise ValueError(f"block_out_channels: expected a list of channel counts, got {blocks!r}")
    try:
        return VAEConfig(**{field_name: config[key] for key, field_name in _DIFFUSERS_KEYS.items() if key in config})
    except ValueError as err:  # named by the file's key: `sample_size`, not `image_size`
        message = str(err)
        for key, field_name in _DIFFUSERS_KEYS.items():
            if message.startswith(f"{field_name}:"):
                message = key + message[len(field_name):]
        raise ValueError(message) from None


def build_vae(config: VAEConfig) -> AutoencoderKL:
    """A freshly initialised `AutoencoderKL`; `config.image_size` becomes its `sample_size`, checked on use."""
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.image_size,
        scaling_factor=config.scaling_factor,
        mid_block_add_attention=config.mid_block_attention,
    )


def _to_pixels(vae: AutoencoderKL, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Channel-last frames (..., H, W, 3), uint8 or float in [0, 1] → (N, 3, H, W) in [-1, 1], and the lead shape."""
    if not isinstance(frames, torch.Tensor):  # an env's numpy frames: an AttributeError on `.to` deep below
        raise ValueError(f"frames: expected a torch tensor, got {type(frames).__name__} "
                         "(torch.from_numpy(frames) takes an env's uint8 frames)")
    if frames.ndim not in (4, 5) or frames.shape[-1] != 3:
        raise ValueError(
            "frames: expected a channel-last RGB tensor (N, H, W, 3) or (B, T, H, W, 3), "
            f"got shape {tuple(frames.shape)}"
        )
    height, width = frames.shape[-3:-1]
    size = vae.config.sample_size
    if (height, width) != (size, size):
        raise ValueError(f"frames of {height}×{width} given; this VAE was trained on {size}×{size}")
    lead = tuple(frames.shape[:-3])
    param = next(vae.parameters())
    x = frames.reshape(-1, height, width, 3).to(param.device)
    if frames.dtype == torch.uint8:
        x = x.to(param.dtype) / 255.0
    else:
        x = x.to(param.dtype)
        if not torch.isfinite(x).all():
            raise ValueError("frames: NaN or infinite values; expected uint8, or float values in [0, 1]")
        if x.numel() and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(
                f"frames: expected uint8, or float values in [0, 1], got {frames.dtype} values in "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]"
            )
    return x.permute(0, 3, 1, 2) * 2.0 - 1.0, lead


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, frames: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Scaled posterior-mean latents of channel-last frames.

    `frames` (B, T, H, W, 3) gives (B, T, C, h, w); (N, H, W, 3) gives (N, C, h, w). Frames go through the
    encoder `chunk_size` at a time, so a whole dataset can be encoded without holding every activation.
    """
    pixels, lead = _to_pixels(vae, frames)
    means = [vae.encode(chunk).latent_dist.mean for chunk in pixels.split(chunk_size)]
    latents = torch.cat(means) * vae.config.scaling_factor
    return latents.reshape(*lead, *latents.shape[1:])


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """uint8 channel-last frames of scaled latents.

    (B, T, C, h, w) gives (B, T, H, W, 3); (N, C, h, w) gives (N, H, W, 3).
    """
    channels = vae.config.latent_channels
    if latents.ndim not in (4, 5) or latents.shape[-3] != channels:
        raise ValueError(
            f"latents: expected (N, {channels}, h, w) or (B, T, {channels}, h, w), got shape {tuple(latents.shape)}"
        )
    if not torch.isfinite(latents).all():  # NaN casts to an arbitrary uint8: black frames, not an error
        raise ValueError("latents: NaN or infinite values (from a diverged model?)")
    lead = tuple(latents.shape[:-3])
    param = next(vae.parameters())
    z = latents.reshape(-1, *latents.shape[-3:]).to(device=param.device, dtype=param.dtype)
    z = z / vae.config.scaling_factor
    pixels = torch.cat([vae.decode(chunk).sample for chunk in z.split(chunk_size)])
    frames = ((pixels.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return frames.reshape(*lead, *frames.shape[1:])


def vae_loss(vae: AutoencoderKL, frames: torch.Tensor, config: VAEConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss on a batch of channel-last frames: reconstruction of a posterior sample + weighted KL.

    The KL is averaged over latent elements (diffusers sums it), so `kl_weight` does not depend on the latent
    size. `logs` holds the terms and the batch PSNR (dB, pixels in [0, 1]).
    """
    pixels, _ = _to_pixels(vae, frames)
    posterior = vae.encode(pixels).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1 = F.l1_loss(recon, pixels)
    l2 = F.mse_loss(recon, pixels)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    recon_term = {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[config.recon_loss]
    loss = recon_term + config.kl_weight * kl
    mse01 = l2.detach() / 4.0  # [-1, 1] → [0, 1] pixel units
    logs = {
        "loss": loss.item(),
        "l1": l1.item(),
        "l2": l2.item(),
        "kl": kl.item(),
        "psnr": (10.0 * torch.log10(1.0 / mse01.clamp_min(1e-10))).item(),
    }
    return loss, logs


def estimate_scaling_factor(vae: AutoencoderKL, frames: torch.Tensor) -> float:
    """1 / std of the unscaled posterior-mean latents of `frames` (Stable Diffusion's recipe).

    Call after training on a few thousand frames and store it with `vae.register_to_config(scaling_factor=s)`,
    so `encode_frames` hands the diffusion model unit-variance latents and the value is saved with the VAE.
    """
    latents = encode_frames(vae, frames) / vae.config.scaling_factor
    return float(1.0 / latents.float().std())
