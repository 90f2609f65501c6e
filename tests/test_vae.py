"""The frame VAE on a tiny config and 16×16 synthetic frames."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from vplan.worldmodel.config import VAEConfig
from vplan.worldmodel.vae import build_vae, decode_latents, encode_frames, estimate_scaling_factor, vae_loss


@pytest.fixture
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return build_vae(VAEConfig.tiny(image_size=16))


def synthetic_frames(*lead: int, size: int = 16) -> torch.Tensor:
    """uint8 frames (*lead, size, size, 3): a grey table with one saturated square, like the tabletop."""
    g = torch.Generator().manual_seed(1)
    frames = torch.full((*lead, size, size, 3), 128, dtype=torch.uint8)
    flat = frames.reshape(-1, size, size, 3)
    for i, frame in enumerate(flat):
        y, x = torch.randint(0, size - 4, (2,), generator=g).tolist()
        frame[y : y + 4, x : x + 4] = torch.tensor([[220, 30, 30], [30, 200, 40], [30, 70, 220]][i % 3])
    return frames


def test_encode_decode_shapes(vae: AutoencoderKL) -> None:
    frames = synthetic_frames(2, 3)
    latents = encode_frames(vae, frames)
    assert latents.shape == (2, 3, 4, 8, 8)
    decoded = decode_latents(vae, latents)
    assert decoded.shape == (2, 3, 16, 16, 3) and decoded.dtype == torch.uint8

    flat = encode_frames(vae, frames[0])
    assert flat.shape == (3, 4, 8, 8)
    assert decode_latents(vae, flat).shape == (3, 16, 16, 3)


def test_encoding_is_deterministic_and_accepts_float_frames(vae: AutoencoderKL) -> None:
    frames = synthetic_frames(4)
    first = encode_frames(vae, frames)
    assert torch.equal(first, encode_frames(vae, frames))
    torch.testing.assert_close(encode_frames(vae, frames.float() / 255.0), first)
    torch.testing.assert_close(encode_frames(vae, frames, chunk_size=3), first)


def test_scaling_factor(vae: AutoencoderKL) -> None:
    frames = synthetic_frames(12)
    unscaled = encode_frames(vae, frames)
    decoded = decode_latents(vae, unscaled)
    scale = estimate_scaling_factor(vae, frames)
    vae.register_to_config(scaling_factor=scale)
    scaled = encode_frames(vae, frames)
    torch.testing.assert_close(scaled, unscaled * scale)
    assert scaled.std().item() == pytest.approx(1.0, rel=1e-4)
    # decoding divides the factor out again
    torch.testing.assert_close(decode_latents(vae, scaled).float(), decoded.float(), atol=1, rtol=0)


def test_training_steps_reduce_the_loss(vae: AutoencoderKL) -> None:
    config = VAEConfig.tiny(image_size=16)
    frames = synthetic_frames(8)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first, logs = vae_loss(vae, frames, config)
    assert set(logs) == {"loss", "l1", "l2", "kl", "psnr"}
    for _ in range(40):
        loss, _ = vae_loss(vae, frames, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, _ = vae_loss(vae, frames, config)
    assert last.item() < 0.5 * first.item()


def test_bad_inputs_are_clear_errors(vae: AutoencoderKL) -> None:
    with pytest.raises(ValueError, match="frames of 32×32 given; this VAE was trained on 16×16"):
        encode_frames(vae, synthetic_frames(2, size=32))
    with pytest.raises(ValueError, match="frames of 32×32 given"):
        vae_loss(vae, synthetic_frames(2, size=32), VAEConfig.tiny(image_size=16))
    with pytest.raises(ValueError, match="channel-last"):
        encode_frames(vae, synthetic_frames(2).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"expected a torch tensor, got ndarray \(torch.from_numpy"):
        encode_frames(vae, synthetic_frames(2).numpy())  # an env's frames as they come
    with pytest.raises(ValueError, match=r"float values in \[0, 1\]"):
        encode_frames(vae, synthetic_frames(2).float())
    with pytest.raises(ValueError, match="latents: expected"):
        decode_latents(vae, torch.zeros(2, 3, 8, 8))
    nan_frames = synthetic_frames(2).float() / 255
    nan_frames[0, 0, 0, 0] = float("nan")  # passes a [0, 1] range check: NaN compares false
    with pytest.raises(ValueError, match="frames: NaN or infinite"):
        encode_frames(vae, nan_frames)
    with pytest.raises(ValueError, match="latents: NaN or infinite"):  # cast to uint8, NaN gave black frames
        decode_latents(vae, torch.full((2, 4, 8, 8), float("nan")))


def test_decoded_pixels_past_the_range_are_clamped_not_wrapped(vae: AutoencoderKL, monkeypatch) -> None:
    """A trained VAE's decoder overshoots [-1, 1] a little; 1.1 must give 255, not 12 (uint8 wraps)."""
    from types import SimpleNamespace

    overshoot = torch.tensor([1.1, -1.1, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, 16, 16)
    monkeypatch.setattr(vae, "decode", lambda z: SimpleNamespace(sample=overshoot))
    assert decode_latents(vae, torch.zeros(1, 4, 8, 8))[0, 0, 0].tolist() == [255, 0, 128]


def test_save_load_round_trip(vae: AutoencoderKL, tmp_path) -> None:
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderKL.from_pretrained(tmp_path)
    assert loaded.config.scaling_factor == 0.5 and loaded.config.sample_size == 16
    frames = synthetic_frames(3)
    torch.testing.assert_close(encode_frames(loaded, frames), encode_frames(vae, frames))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"block_out_channels": ()}, "block_out_channels: expected"),
        ({"norm_num_groups": 5}, "norm_num_groups: expected"),
        ({"image_size": 17}, "image_size: expected a multiple of the downsampling factor 2"),
        ({"latent_channels": 0}, "latent_channels: expected"),
        ({"scaling_factor": 0.0}, "scaling_factor: expected"),
        ({"recon_loss": "l3"}, "recon_loss: expected one of"),
        ({"kl_weight": -1.0}, "kl_weight: expected"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    base = {"block_out_channels": (8, 16), "norm_num_groups": 4, "image_size": 16}
    with pytest.raises(ValueError, match=message):
        VAEConfig(**{**base, **overrides})


def test_default_config_maps_64_to_16_and_lists_become_tuples() -> None:
    config = VAEConfig(block_out_channels=[32, 64, 128])
    assert config.block_out_channels == (32, 64, 128)
    assert config.latent_size == 16


def test_a_resumed_vae_training_equals_an_uninterrupted_one(tmp_path) -> None:
    """The posterior sample draws from torch's global RNG, which a checkpoint keeps (the GPU's too)."""
    from vplan.loop.config import VAETrainConfig
    from vplan.loop.config import OptimConfig
    from vplan.loop.train import VAETraining
    from vplan.loop.trainer import train

    def run(out, steps: int) -> VAETraining:
        optim = OptimConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, save_every=2)
        training = VAETraining(VAETrainConfig(vae=VAEConfig.tiny(image_size=16), optim=optim), synthetic_frames(8))
        train(training, optim, out, "vae")
        return training

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    torch.manual_seed(123)  # a new process's global RNG is wherever it is
    resumed = run(tmp_path / "resumed", 4)
    for a, b in zip(straight.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)
