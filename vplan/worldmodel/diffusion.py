"""Masked conditional latent video diffusion (SlowFast-VGen's slow learning) and its samplers.

The model sees `context ⊕ chunk` along time: the context latents enter clean, the chunk's latents are noised, and
only the chunk is scored (training) or updated (sampling). The whole sequence shares one timestep embedding, as
`UNet3DConditionModel` takes one timestep per sample; that is the paper's masked formulation.

Two objectives: ε-prediction on a DDPM noise schedule (the paper), sampled with DDIM or DPM-Solver++; and flow
matching / rectified flow (RAFI), `x_σ = (1 - σ)·x0 + σ·ε` with velocity target `ε - x0` and UNet timestep `σ·T`,
which is exactly what diffusers' `FlowMatchEulerDiscreteScheduler.scale_noise` / `step` assume.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from vplan.worldmodel.config import DiffusionConfig
from vplan.worldmodel.unet import UNet3D


def make_scheduler(config: DiffusionConfig) -> SchedulerMixin:
    """A fresh sampler: schedulers keep per-call state (step index, multistep history), so never share one."""
    if config.sampler == "flow_euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps)
    betas = {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "timestep_spacing": "trailing",
    }
    if config.sampler == "ddim":
        # clip_sample=False: latents are not bounded to [-1, 1] like pixels are.
        return DDIMScheduler(**betas, clip_sample=False)
    return DPMSolverMultistepScheduler(**betas, algorithm_type="dpmsolver++")


def _set_timesteps(scheduler: SchedulerMixin, config: DiffusionConfig, device: torch.device) -> None:
    """`set_timesteps`, with flow sigmas 1, (n-1)/n, ..., 1/n.

    FlowMatchEuler's own `set_timesteps(n)` spaces n sigmas from 1 down to 1/T inclusive, so its last Euler step
    (1/T to 0) does no work and n steps act like n - 1.
    """
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        steps = config.num_inference_steps
        scheduler.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)], device=device)
    else:
        scheduler.set_timesteps(config.num_inference_steps, device=device)


def _noise_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The training-time forward process matching `make_scheduler`'s betas."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
    )


def _text_condition(text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded tokens: the 3D UNet ignores attention masks (see `vplan.worldmodel.unet`)."""
    if text_states.ndim != 3 or text_mask.shape != text_states.shape[:2]:
        raise ValueError(
            f"expected text_states (B, L, D) and text_mask (B, L), got {tuple(text_states.shape)} and "
            f"{tuple(text_mask.shape)}"
        )
    return text_states * text_mask[..., None].to(text_states.dtype)


def _null_condition(null_states: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`null_states` (1 or B, L, D) on `like`'s device and dtype, broadcast to its batch."""
    batch, length, dim = like.shape
    if null_states.ndim != 3 or null_states.shape[0] not in (1, batch) or null_states.shape[1:] != (length, dim):
        raise ValueError(f"expected null_states (1 or {batch}, {length}, {dim}), got {tuple(null_states.shape)}")
    return null_states.to(device=like.device, dtype=like.dtype).expand(batch, -1, -1)


def _check_latents(latents: torch.Tensor, name: str) -> None:
    if latents.ndim != 5 or latents.shape[1] < 1:
        raise ValueError(f"expected {name} of shape (B, T >= 1, C, h, w), got {tuple(latents.shape)}")


def add_training_noise(
    latents: torch.Tensor, config: DiffusionConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One noise level per sample of `latents` (B, ...), drawn after the noise: `(noisy, target, unet_timesteps,
    level)` with a DDPM timestep and ε target, or a flow sigma and velocity target ε - x0; `level` in [0, 1]."""
    batch, device, dtype = latents.shape[0], latents.device, latents.dtype
    rand_device = generator.device if generator is not None else torch.device("cpu")
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
    if config.objective == "epsilon":
        timesteps = torch.randint(
            0, config.num_train_timesteps, (batch,), generator=generator, device=rand_device
        ).to(device)
        noisy = _noise_scheduler(config).add_noise(latents, noise, timesteps)
        return noisy, noise, timesteps, timesteps.float() / config.num_train_timesteps
    sigmas = torch.rand((batch,), generator=generator, device=rand_device).to(device=device, dtype=dtype)
    sigma = sigmas.view(batch, *([1] * (latents.ndim - 1)))
    return (1.0 - sigma) * latents + sigma * noise, noise - latents, sigmas * config.num_train_timesteps, sigmas


def masked_diffusion_loss(
    unet: UNet3D,
    context_latents: torch.Tensor,
    target_latents: torch.Tensor,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    config: DiffusionConfig,
    null_states: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    frame_inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Denoising loss on the target chunk given the clean context, `(loss, logs)`: the mean, or with
    `reduction="none"` one per sample (B,) (what RL reweights and compares; the same generator state gives the
    same noise, timesteps and text dropout, so two models can be scored on identical draws, in eval mode: in
    train mode the UNet's temporal-convolution dropout draws from torch's global generator).

    Latents are (B, T, C, h, w). With probability `config.text_dropout` a sample's text is replaced by
    `null_states` (the encoding of the empty text), which classifier-free guidance needs at sampling time, and its
    `frame_inputs` (B, T_context + T_target, F; see `UNet3D.predict`) by zeros, so the condition drops whole.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    _check_latents(context_latents, "context_latents")
    _check_latents(target_latents, "target_latents")
    if context_latents.shape[0] != target_latents.shape[0] or context_latents.shape[2:] != target_latents.shape[2:]:
        raise ValueError(
            f"expected context and target latents to share batch and (C, h, w), got "
            f"{tuple(context_latents.shape)} and {tuple(target_latents.shape)}"
        )
    if config.text_dropout > 0 and null_states is None:
        raise ValueError("expected null_states when text_dropout > 0, got None")
    batch, device = target_latents.shape[0], target_latents.device
    rand_device = generator.device if generator is not None else torch.device("cpu")
    noisy, goal, unet_timesteps, level = add_training_noise(target_latents, config, generator)

    states = _text_condition(text_states, text_mask)
    dropped = torch.zeros(batch, dtype=torch.bool)
    if config.text_dropout > 0:
        dropped = torch.rand((batch,), generator=generator, device=rand_device) < config.text_dropout
        keep = (~dropped).to(device=device, dtype=states.dtype).view(batch, 1, 1)
        states = keep * states + (1.0 - keep) * _null_condition(null_states, states)
        if frame_inputs is not None:
            frame_inputs = frame_inputs * keep.to(frame_inputs.dtype)

    sequence = torch.cat([context_latents, noisy], dim=1)
    prediction = unet.predict(sequence, unet_timesteps, states, frame_inputs)[:, context_latents.shape[1]:]
    per_sample = F.mse_loss(prediction.float(), goal.float(), reduction="none").flatten(1).mean(1)
    loss = per_sample.mean() if reduction == "mean" else per_sample
    logs = {"loss": per_sample.mean().item(), "noise_level": level.mean().item(), "text_dropped": dropped.float().mean().item()}
    return loss, logs


@torch.no_grad()
def sample_chunk(
    unet: UNet3D,
    context_latents: torch.Tensor,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    num_frames: int,
    config: DiffusionConfig,
    null_states: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    frame_inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate the `num_frames` latents (B, num_frames, C, h, w) that follow the clean `context_latents`.

    At every step the UNet sees the clean context followed by the current chunk, and only the chunk is advanced
    by the scheduler. With `config.guidance_scale > 1` the conditional and the null-text passes run as one batch
    (the null pass with zero `frame_inputs`, (B, T_context + num_frames, F) when given).
    """
    _check_latents(context_latents, "context_latents")
    if num_frames < 1:
        raise ValueError(f"expected num_frames >= 1, got {num_frames}")
    guided = config.guidance_scale != 1.0
    if guided and null_states is None:
        raise ValueError(f"expected null_states when guidance_scale > 1, got None (scale {config.guidance_scale})")
    batch, context_len, channels, height, width = context_latents.shape
    device, dtype = context_latents.device, context_latents.dtype

    states = _text_condition(text_states, text_mask).to(device=device, dtype=dtype)
    context = context_latents
    if guided:
        states = torch.cat([states, _null_condition(null_states, states)])
        context = torch.cat([context, context])
        if frame_inputs is not None:
            frame_inputs = torch.cat([frame_inputs, torch.zeros_like(frame_inputs)])

    scheduler = make_scheduler(config)
    _set_timesteps(scheduler, config, device)
    # All three samplers start from unit noise and take the sample unscaled: DDIM's and DPM-Solver's
    # `init_noise_sigma` / `scale_model_input` are 1 / identity, and FlowMatchEuler has neither.
    latents = randn_tensor((batch, num_frames, channels, height, width), generator=generator, device=device,
                           dtype=dtype)
    for i, t in enumerate(scheduler.timesteps):
        chunk = torch.cat([latents, latents]) if guided else latents
        sequence = torch.cat([context, chunk], dim=1)
        output = unet.predict(sequence, t.expand(sequence.shape[0]), states, frame_inputs)[:, context_len:]
        if guided:
            conditional, unconditional = output.chunk(2)
            output = unconditional + config.guidance_scale * (conditional - unconditional)
        step = scheduler.step(output, t, latents, generator=generator)
        # DDIM steps to `t - 1000 // steps`, which for some step counts (6, 7, 11, ...) ends at timestep 0 rather
        # than past it, leaving that timestep's noise in the sample: its last step takes the clean estimate
        last_ddim = isinstance(scheduler, DDIMScheduler) and i == len(scheduler.timesteps) - 1
        latents = step.pred_original_sample if last_ddim else step.prev_sample
    return latents
