"""The latent cache `vplan train component=worldmodel` reads: encoded once per VAE, refreshed when a video changes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from vplan.constants import OBS_IMAGE_FRONT
from vplan.data import EpisodeDataset
from vplan.data.collect import CollectConfig, collect
from vplan.envs import TabletopConfig
from vplan.tasks import TaskConfig
from vplan.worldmodel import latent_cache
from vplan.worldmodel.config import VAEConfig
from vplan.worldmodel.latent_cache import LATENTS_DIR, episode_latents, vae_fingerprint
from vplan.worldmodel.vae import build_vae, encode_frames


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=2, out=str(out)))
    return out


def tiny_vae(seed: int = 0):
    torch.manual_seed(seed)
    return build_vae(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, image_size=16)).eval()


def count_encodes(monkeypatch) -> list[int]:
    calls: list[int] = []

    def counting(vae, frames, *args, **kwargs):
        calls.append(len(frames))
        return encode_frames(vae, frames, *args, **kwargs)

    monkeypatch.setattr(latent_cache, "encode_frames", counting)
    return calls


def cache_files(dataset_dir, vae) -> list[str]:
    return sorted(p.name for p in (dataset_dir / ".cache" / LATENTS_DIR / vae_fingerprint(vae)).glob("*.npy"))


def test_latents_are_encoded_once_per_vae_and_read_back_bit_exactly(dataset_dir, monkeypatch):
    dataset, vae = EpisodeDataset(dataset_dir), tiny_vae()
    calls = count_encodes(monkeypatch)
    first = episode_latents(dataset, [0, 1], vae)
    assert len(calls) == 2 and len(cache_files(dataset_dir, vae)) == 2
    expected = encode_frames(vae, torch.from_numpy(np.array(dataset.episode(1)[OBS_IMAGE_FRONT])))
    assert torch.equal(first[1], expected) and first[1].shape[1:] == (4, 8, 8)

    calls.clear()
    again = episode_latents(EpisodeDataset(dataset_dir), [0, 1], vae)  # a new process's view: from the cache
    assert calls == []
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # laid out as the cache reads back (encode_frames' output is strided): decoding either gave other last bits
    assert all(a.is_contiguous() and a.stride() == b.stride() for a, b in zip(first, again))

    moved = tiny_vae()  # the same VAE, saved and loaded from two spellings of one path: the same fingerprint
    moved.save_pretrained(dataset_dir.parent / "vae")
    loaded = [AutoencoderKL.from_pretrained(path) for path in (dataset_dir.parent / "vae",
                                                                dataset_dir.parent / ".." / dataset_dir.parent.name / "vae")]
    assert vae_fingerprint(loaded[0]) == vae_fingerprint(loaded[1]) == vae_fingerprint(vae)

    other = tiny_vae(seed=1)  # other weights: another fingerprint, encoded afresh
    assert vae_fingerprint(other) != vae_fingerprint(vae)
    rescaled = tiny_vae()  # the same weights, another scaling factor: other latents, another fingerprint
    rescaled.register_to_config(scaling_factor=0.5)
    assert vae_fingerprint(rescaled) != vae_fingerprint(vae)
    episode_latents(EpisodeDataset(dataset_dir), [0], other)
    assert len(calls) == 1 and len(cache_files(dataset_dir, other)) == 1


def test_a_rewritten_video_is_encoded_again_and_its_stale_entry_deleted(dataset_dir, monkeypatch):
    dataset, vae = EpisodeDataset(dataset_dir), tiny_vae(seed=2)
    episode_latents(dataset, [0], vae)
    before = cache_files(dataset_dir, vae)
    video = dataset_dir / dataset.frames_version(OBS_IMAGE_FRONT, 0).split(":")[0]
    status = video.stat()
    os.utime(video, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
    calls = count_encodes(monkeypatch)
    episode_latents(EpisodeDataset(dataset_dir), [0], vae)
    after = cache_files(dataset_dir, vae)
    assert len(calls) == 1 and len(before) == len(after) == 1 and before != after


def test_without_the_dataset_cache_nothing_is_written(dataset_dir, monkeypatch):
    vae = tiny_vae(seed=3)
    calls = count_encodes(monkeypatch)
    for _ in range(2):
        episode_latents(EpisodeDataset(dataset_dir, cache=False), [0], vae)
    assert len(calls) == 2 and cache_files(dataset_dir, vae) == []


def test_a_cache_file_cut_short_is_made_again(dataset_dir, monkeypatch):
    """A crash of the machine can leave an empty file under the final name (the rename reached the disk, the data
    did not); it must not break every later read."""
    vae = tiny_vae(seed=4)
    first = episode_latents(EpisodeDataset(dataset_dir), [0], vae)
    latents_file = dataset_dir / ".cache" / LATENTS_DIR / vae_fingerprint(vae) / cache_files(dataset_dir, vae)[0]
    frames_file = next((dataset_dir / ".cache").rglob("file-000.mp4.*.npy"))
    latents_file.write_bytes(b"")
    frames_file.write_bytes(b"")
    calls = count_encodes(monkeypatch)
    again = episode_latents(EpisodeDataset(dataset_dir), [0], vae)
    assert len(calls) == 1 and torch.equal(again[0], first[0])
    assert latents_file.stat().st_size > 0 and frames_file.stat().st_size > 0
