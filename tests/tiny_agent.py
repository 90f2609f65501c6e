"""Tiny, randomly initialised checkpoints for the agent's and `vplan run`'s tests: a world model drawing
64×64 frames (the tabletop's) with a learned text encoder, and an IDM reading them; seconds per episode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from vplan.policies.config import IDMConfig
from vplan.policies.idm import IDMPolicy
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import WorldModel

IMAGE = 64  # the tabletop's default frames
LATENT = 16  # three VAE levels: 64 / 4
CHUNK = 8  # the planner's default chunk_frames
DIM = 16


def tiny_world_model(seed: int = 0) -> WorldModel:
    config = WorldModelConfig(
        unet=replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM),
        diffusion=DiffusionConfig(num_inference_steps=1),
        vae=VAEConfig(block_out_channels=(8, 8, 16), norm_num_groups=4, image_size=IMAGE),
        text_encoder=TextEncoderConfig(kind="learned", dim=DIM, max_tokens=8, vocab_buckets=64),
        context_frames=2,
        chunk_frames=CHUNK,
    )
    torch.manual_seed(seed)
    return WorldModel(config).eval()


def tiny_idm(seed: int = 0) -> IDMPolicy:
    torch.manual_seed(seed)
    return IDMPolicy(IDMConfig.tiny(image_size=IMAGE)).eval()


def save_tiny_checkpoints(root: Path) -> tuple[Path, Path]:
    """(world-model directory, IDM directory) under `root`."""
    worldmodel, idm = root / "worldmodel", root / "idm"
    tiny_world_model().save_pretrained(worldmodel)
    tiny_idm().save_pretrained(idm)
    return worldmodel, idm
