"""A dataset's episodes as VAE latents, encoded once per VAE and kept beside the dataset's decoded-frame cache.

Encoding ~300 episodes takes minutes on a CPU, and `vplan train component=worldmodel` needs them at every
start, resumes included (`component=idm` reads them too, for its frames passed through the VAE). Each
episode's latents go to `<dataset>/.cache/latents/<VAE fingerprint>/episode-<index>.<frames digest>.npy`:
the fingerprint hashes the VAE's weights and config, the digest the episode's video file (size, mtime) and its
span in it, so another VAE or a rewritten video is encoded afresh and the episode's stale entry deleted.
Files are written atomically and read without pickle. A dataset opened with `cache=False`, or one whose
folder cannot be written, is encoded in memory every time. Cached latents are those of the first encoding, so
every later run trains on the same numbers, whatever device or thread count it encodes with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.constants import OBS_IMAGE_FRONT
from vplan.data.dataset import read_cache_file, write_cache_file
from vplan.worldmodel.vae import encode_frames

LATENTS_DIR = "latents"


def vae_fingerprint(vae: Any) -> str:
    """16 hex digits of a sha256 over the VAE's config and every weight's name, dtype, shape and bytes. The config's
    bookkeeping keys (`_name_or_path`, `_diffusers_version`, ...) are left out: the same VAE loaded from another
    path, or after a diffusers upgrade, finds its latents, unless the upgrade added a setting to AutoencoderKL's
    config (then they are encoded again, once)."""
    config = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def episode_latents(dataset: Any, episodes: list[int], vae: Any, progress: str | None = None) -> list[torch.Tensor]:
    """Scaled posterior-mean latents (T, C, h, w) of each of `episodes`' front-camera frames (what the world model
    sees), from the cache where it holds them, else encoded (on the GPU when there is one) and stored;
    `progress` names a tqdm bar."""
    from tqdm import tqdm

    folder = dataset.cache_dir / LATENTS_DIR / vae_fingerprint(vae) if dataset.cache_dir is not None else None
    device = next(vae.parameters()).device
    latents = []
    try:
        for episode in tqdm(episodes, desc=progress, unit="episode", disable=progress is None):
            cached = _cache_file(folder, dataset, episode) if folder is not None else None
            stored = read_cache_file(cached) if cached is not None else None
            if stored is not None:
                latents.append(torch.from_numpy(stored))
                continue
            if device.type == "cpu" and torch.cuda.is_available():
                vae.to("cuda")
            frames = torch.from_numpy(np.array(dataset.episode(episode)[OBS_IMAGE_FRONT]))
            with torch.no_grad():
                # contiguous, as a cached .npy reads back: decoded, a strided tensor differed in its last bits
                encoded = encode_frames(vae, frames).cpu().contiguous()
            if cached is not None:  # a read-only dataset keeps these latents in memory only
                write_cache_file(cached, encoded.numpy(), f"{cached.name.split('.')[0]}.*.npy")
            latents.append(encoded)
    finally:
        vae.to(device)
    return latents


def _cache_file(folder: Path, dataset: Any, episode: int) -> Path:
    version = dataset.frames_version(OBS_IMAGE_FRONT, episode)
    digest = hashlib.sha256(f"{OBS_IMAGE_FRONT}:{version}".encode()).hexdigest()[:16]
    return folder / f"episode-{episode:06d}.{digest}.npy"

