"""Episodic memory on a tiny world model: Temp-LoRA's exact reset, LoRA-only updates, save/load, no text, snapshots,
the overlap worker; the anchor and none baselines; config presets."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from vplan.memory import AnchorFrameMemory, MemoryConfig, MemorySnapshot, NoMemory, TempLoRAMemory, make_memory
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import WorldModel
from vplan.worldmodel.text_encoder import LearnedTextEncoder

DIM, TOKENS, LATENT = 16, 6, 8  # tiny VAE: 16×16 frames → 8×8 latents
CONTEXT, CHUNK = 3, 4


class RecordingTextEncoder(nn.Module):
    """The learned encoder, recording every list of texts it is asked to encode."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = LearnedTextEncoder(TextEncoderConfig(kind="learned", dim=DIM, max_tokens=TOKENS, vocab_buckets=64))
        self.calls: list[list[str]] = []

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(texts))
        return self.inner(texts)


def tiny_model(objective: str = "epsilon", seed: int = 0) -> WorldModel:
    diffusion = DiffusionConfig(num_inference_steps=2) if objective == "epsilon" else \
        DiffusionConfig(objective="flow", sampler="flow_euler", num_inference_steps=2)
    config = WorldModelConfig(
        unet=replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM),
        diffusion=diffusion,
        vae=VAEConfig.tiny(image_size=16),
        text_encoder=TextEncoderConfig(kind="learned", dim=DIM, max_tokens=TOKENS, vocab_buckets=64),
        context_frames=CONTEXT,
        chunk_frames=CHUNK,
    )
    torch.manual_seed(seed)
    return WorldModel(config, text_encoder=RecordingTextEncoder()).eval()


def lora(**overrides) -> MemoryConfig:
    # A larger lr than the default so that one update visibly moves a tiny model's outputs.
    return MemoryConfig(**{"kind": "temp_lora", "rank": 4, "lr": 1e-2, **overrides})


def latents(frames: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def base_weights(model: WorldModel, memory: TempLoRAMemory | None = None) -> dict[int, torch.Tensor]:
    """Clones of the UNet's non-adapter parameters, keyed by identity (the adapter renames wrapped weights)."""
    skip = {id(p) for p in memory.trainable_parameters().values()} if memory else set()
    return {id(p): p.detach().clone() for p in model.unet.parameters() if id(p) not in skip}


def assert_same_base(model: WorldModel, before: dict[int, torch.Tensor]) -> None:
    now = {id(p): p for p in model.unet.parameters()}
    for key, tensor in before.items():
        assert torch.equal(now[key], tensor)


# ---------------------------------------------------------------------------------------------- temp_lora


@pytest.mark.parametrize("merge", [True, False])
def test_reset_gives_back_the_base_model_exactly(merge: bool) -> None:
    model = tiny_model()
    history = latents(5)
    base = model.generate(history, ["pick up the red cube"], generator=seeded())
    memory = make_memory(lora(merge_for_generation=merge), model)
    assert isinstance(memory, TempLoRAMemory) and not memory.active
    assert torch.equal(memory.generate(history, ["pick up the red cube"], generator=seeded()), base)

    memory.update(history[:, -CHUNK:], latents(CHUNK, seed=2))
    memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    remembered = memory.generate(history, ["pick up the red cube"], generator=seeded())
    assert memory.active and memory.folded == merge
    assert not torch.equal(remembered, base)

    memory.reset()
    assert not memory.active and memory.updates == 0 and not memory.folded
    assert torch.equal(memory.generate(history, ["pick up the red cube"], generator=seeded()), base)
    # A second episode starts from the same adapter, optimizer and noise: it learns exactly the same.
    memory.update(history[:, -CHUNK:], latents(CHUNK, seed=2))
    memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    assert torch.equal(memory.generate(history, ["pick up the red cube"], generator=seeded()), remembered)


def test_merged_and_unmerged_generation_agree() -> None:
    outputs = []
    for merge in (True, False):
        model = tiny_model()
        memory = make_memory(lora(merge_for_generation=merge), model)
        memory.update(latents(CHUNK), latents(CHUNK, seed=2))
        outputs.append(memory.generate(latents(CONTEXT), ["go"], generator=seeded()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_reading_the_adapter_between_generations_changes_nothing(tmp_path: Path) -> None:
    model = tiny_model()
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    first = memory.generate(latents(CONTEXT), ["go"], generator=seeded())  # folds W + ΔW into the weights
    memory.state_dict()
    memory.save(tmp_path / "memory.safetensors")
    with pytest.raises(ValueError, match="missing"):
        memory.load_state_dict({})
    assert torch.equal(memory.generate(latents(CONTEXT), ["go"], generator=seeded()), first)


def test_close_leaves_the_world_model_as_it_was(tmp_path: Path) -> None:
    model = tiny_model()
    keys = list(model.unet.state_dict())
    flags = [p.requires_grad for p in model.unet.parameters()]
    before = base_weights(model)
    base = model.generate(latents(2), ["go"], generator=seeded())
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    memory.generate(latents(2), ["go"], generator=seeded())  # folds the adapter into the weights
    with pytest.raises(ValueError, match="temp_lora"):
        model.save_pretrained(tmp_path / "refused")  # the world model refuses to save with the adapter attached
    memory.close()
    memory.close()  # twice: nothing
    assert list(model.unet.state_dict()) == keys
    assert [p.requires_grad for p in model.unet.parameters()] == flags
    assert_same_base(model, before)
    assert torch.equal(model.generate(latents(2), ["go"], generator=seeded()), base)
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(RuntimeError, match="closed"):
        memory.update(latents(CHUNK), latents(CHUNK))
    make_memory(lora(), model).close()  # the adapter name is free again


def test_a_second_ctrl_c_while_closing_still_gives_the_model_back(monkeypatch) -> None:
    """`close` marked the memory closed first: interrupted in the worker's shutdown, it never removed the adapter,
    and every later close returned at once, the world model unsavable for the session."""
    model = tiny_model()
    keys = list(model.unet.state_dict())
    memory = make_memory(lora(), model)
    memory.update_async(latents(CHUNK), latents(CHUNK, seed=2))
    memory.wait()
    monkeypatch.setattr(memory._executor, "shutdown", lambda wait=True: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        memory.close()
    assert list(model.unet.state_dict()) == keys


def test_a_with_block_raises_its_own_error_not_a_failed_updates(monkeypatch) -> None:
    memory = make_memory(lora(), tiny_model())
    monkeypatch.setattr(memory, "_update", lambda previous, new: 1 / 0)
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match=r"a background update failed too \(ZeroDivisionError"):
        with pytest.raises(KeyError, match="the body's"), memory:
            memory.update_async(latents(CHUNK), latents(CHUNK))
            raise KeyError("the body's")
    with pytest.raises(ZeroDivisionError), make_memory(lora(), tiny_model()) as other:  # no error of its own: raised
        monkeypatch.setattr(other, "_update", lambda previous, new: 1 / 0)
        other.update_async(latents(CHUNK), latents(CHUNK))


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
def test_an_update_changes_only_the_lora_parameters(objective: str) -> None:
    model = tiny_model(objective)
    memory = make_memory(lora(steps_per_chunk=2), model)
    before = base_weights(model, memory)
    adapter = {name: p.detach().clone() for name, p in memory.trainable_parameters().items()}
    assert adapter and all(".temp_lora." in name for name in adapter)

    logs = memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    assert logs["steps"] == 2 and logs["frames"] == 2 * CHUNK and torch.isfinite(torch.tensor(logs["loss"]))
    memory.generate(latents(CONTEXT), ["go"])  # folding and unfolding keep the base exact too
    memory.update(latents(CHUNK, seed=3), latents(CHUNK, seed=4))
    assert_same_base(model, before)
    trained = {id(p) for p in memory.trainable_parameters().values()}
    assert all(p.grad is None for p in model.unet.parameters() if id(p) not in trained)
    changed = [name for name, p in memory.trainable_parameters().items() if not torch.equal(p, adapter[name])]
    assert any("lora_B" in name for name in changed) and any("lora_A" in name for name in changed)


def test_gradient_checkpointing_puts_back_an_instance_forward_it_found() -> None:
    """The wrapping ended with `del module.forward`, which removed a hook installed on the instance (as
    accelerate's add_hook_to_module installs them)."""
    from diffusers.models.resnet import ResnetBlock2D

    from vplan.memory.temp_lora import checkpointed

    model = tiny_model()
    block = next(m for m in model.unet.modules() if isinstance(m, ResnetBlock2D))
    hooked = block.forward
    block.forward = hooked
    with checkpointed(model.unet):
        assert block.forward is not hooked
    assert vars(block)["forward"] is hooked


def test_gradient_checkpointing_learns_the_same(monkeypatch) -> None:
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    states, counts = [], []
    for checkpointing in (False, True):
        model = tiny_model()
        memory = make_memory(lora(gradient_checkpointing=checkpointing), model)
        calls.clear()
        memory.update(latents(CHUNK), latents(CHUNK, seed=2))
        memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
        counts.append(len(calls))
        assert not any("forward" in vars(module) for module in model.unet.modules())  # unwrapped after
        states.append(memory.state_dict())
    assert counts[0] == 0 and counts[1] > 0  # it was on only when asked
    for name, tensor in states[0].items():
        torch.testing.assert_close(states[1][name], tensor, rtol=1e-5, atol=1e-7)


def test_replay_first_rehearses_the_episodes_first_sequence() -> None:
    """With `replay_first` the first update is the plain one; later ones also score the first sequence, which a
    snapshot keeps."""
    first, second = (latents(CONTEXT), latents(CHUNK, seed=2)), (latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    states = {}
    for replay in (False, True):
        memory = make_memory(lora(replay_first=replay), tiny_model())
        memory.update(*first)
        states[replay, 1] = memory.state_dict()
        snapshot = memory.snapshot()
        memory.update(*second)
        states[replay, 2] = memory.state_dict()
        if replay:
            memory.restore(snapshot)
            memory.update(*second)
            for name, tensor in memory.state_dict().items():
                assert torch.equal(tensor, states[True, 2][name]), name
            memory.reset()  # a new episode: the same two updates learn the same again
            memory.update(*first)
            memory.update(*second)
            for name, tensor in memory.state_dict().items():
                assert torch.equal(tensor, states[True, 2][name]), name
    for name, tensor in states[False, 1].items():
        assert torch.equal(states[True, 1][name], tensor), name
    assert any(not torch.equal(states[True, 2][n], t) for n, t in states[False, 2].items())


def test_the_adapter_round_trips_exactly_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = tiny_model()
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    mask = os.umask(0o022)
    try:
        memory.save(tmp_path / "memory.safetensors")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "memory.safetensors").stat().st_mode) == 0o644  # safetensors wrote 0600
    saved = load_file(tmp_path / "memory.safetensors")
    state = memory.state_dict()
    assert set(saved) == set(state) and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert not any("temp_lora" in k for k in saved)  # peft's adapter-name-free keys

    other = tiny_model()  # the same base weights (same seed), a fresh adapter
    loaded = make_memory(lora(), other)
    loaded.load(tmp_path / "memory.safetensors")
    assert loaded.active
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert torch.equal(loaded.generate(latents(CONTEXT), ["go"], generator=seeded()),
                       memory.generate(latents(CONTEXT), ["go"], generator=seeded()))

    with pytest.raises(ValueError, match="missing"):
        loaded.load_state_dict({k: v for k, v in state.items() if "to_q" not in k})
    make_memory(MemoryConfig(kind="anchor"), other).save(tmp_path / "anchor.safetensors")
    with pytest.raises(ValueError, match="expected a 'temp_lora' memory"):
        loaded.load(tmp_path / "anchor.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="does not read"):
        loaded.load(tmp_path / "broken.safetensors")
    # alpha scales the update without changing a tensor's shape: a file saved under another is refused
    scaled = make_memory(replace(lora(), alpha=4.0 * lora().rank), tiny_model())
    with pytest.raises(ValueError, match=r"saved with another alpha 4\.0 \(this memory's: 16\.0\)"):
        scaled.load(tmp_path / "memory.safetensors")


def test_a_file_of_another_rank_or_keys_or_with_nan_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A rank-2 file in a rank-4 memory was said to be of another alpha, and once loaded into a memory of that
    alpha, of an unnamed shape; other keys did not name the file; a NaN one was loaded."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    small = make_memory(lora(rank=2), tiny_model())
    small.save(tmp_path / "rank2.safetensors")
    memory = make_memory(lora(), tiny_model())
    before = memory.state_dict()
    with pytest.raises(ValueError, match=r"rank2\.safetensors: holds a rank-2 adapter \('.*lora_[AB]\.weight' of "
                                         r"shape .*\), this memory's rank is 4; .*\(memory\.rank=2\)"):
        memory.load(tmp_path / "rank2.safetensors")
    memory.save(tmp_path / "good.safetensors")
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        metadata, state = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, tmp_path / "missing.safetensors", metadata=metadata)
    with pytest.raises(ValueError, match=r"missing\.safetensors: expected the temp_lora memory's .* 1 missing"):
        memory.load(tmp_path / "missing.safetensors")
    save_file({**state, first: torch.full_like(state[first], float("nan"))}, tmp_path / "nan.safetensors",
              metadata=metadata)
    with pytest.raises(ValueError, match=rf"nan\.safetensors: '{first}' holds non-finite values"):
        memory.load(tmp_path / "nan.safetensors")
    for name, tensor in memory.state_dict().items():  # refused before anything changed
        assert torch.equal(tensor, before[name]), name
    memory.close()
    small.close()


def test_learning_goes_on_from_a_loaded_adapter_as_from_a_reset() -> None:
    """Whatever the memory did before, a load then the same update gives the same adapter."""
    first = make_memory(lora(), tiny_model())
    first.update(latents(CHUNK), latents(CHUNK, seed=2))
    state = first.state_dict()
    fresh, used = make_memory(lora(), tiny_model()), make_memory(lora(), tiny_model())
    for seed in range(3):  # its Adam moments, noise draws and update count move on
        used.update(latents(CHUNK, seed=10 + seed), latents(CHUNK, seed=20 + seed))
    for memory in (fresh, used):
        memory.load_state_dict(state)
        memory.update(latents(CHUNK, seed=3), latents(CHUNK, seed=4))
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, used.state_dict()[name]), name


def test_making_a_memory_leaves_the_gpus_generators_alone(monkeypatch) -> None:
    """peft draws LoRA A on the CPU; `torch.manual_seed` would also reseed every GPU's generator, which
    `fork_rng(devices=[])` does not give back."""
    from vplan.rl.objectives import add_rl_adapter

    models, reseeded = [tiny_model(), tiny_model()], []  # (tiny_model seeds the process itself)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    make_memory(lora(), models[0]).close()
    add_rl_adapter(models[1].unet, rank=2, seed=0)
    assert reseeded == []


def test_an_update_leaves_the_process_wide_generator_alone() -> None:
    """The update runs on a worker thread beside the caller: gradient checkpointing must not save and set the
    global RNG there (it would rewind the caller's draws)."""
    memory = make_memory(lora(gradient_checkpointing=True, steps_per_chunk=3), tiny_model())
    torch.manual_seed(7)
    expected = torch.cat([torch.rand(1) for _ in range(200_000)])  # one by one, as drawn below
    torch.manual_seed(7)
    memory.update_async(latents(CHUNK), latents(CHUNK, seed=2))
    drawn = []
    while memory.pending and len(drawn) < len(expected):  # the caller draws while the update runs
        drawn.append(torch.rand(1))
    memory.wait()
    assert len(drawn) > 100 and torch.equal(torch.cat(drawn), expected[: len(drawn)])


def test_the_update_is_action_agnostic() -> None:
    model = tiny_model()
    encoder = model.text_encoder
    memory = make_memory(lora(steps_per_chunk=2), model)
    assert encoder.calls == [[""]]  # the null text, once, when the memory is built
    null = model.encode_text([""])[0]
    encoder.calls.clear()
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    hook = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        memory.update(latents(CHUNK, batch=2), latents(CHUNK, seed=2, batch=2))
        memory.update_async(latents(CHUNK, batch=2), latents(CHUNK, seed=3, batch=2))
        memory.wait()
    finally:
        hook.remove()
    assert encoder.calls == []  # no text is encoded for an update, and none can be passed
    assert len(seen) == 4
    for states in seen:
        assert torch.equal(states, null.expand(2, -1, -1))


def test_snapshot_and_restore_continue_exactly() -> None:
    model = tiny_model()
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    snapshot = memory.snapshot()
    assert isinstance(snapshot, MemorySnapshot) and snapshot.kind == "temp_lora"
    at_snapshot = memory.generate(latents(CONTEXT), ["go"], generator=seeded(1))
    memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    memory.update(latents(CHUNK, seed=3), latents(CHUNK, seed=4))
    after = memory.state_dict()
    chunk = memory.generate(latents(CONTEXT), ["go"], generator=seeded())

    memory.restore(snapshot)
    assert memory.updates == 1
    # generation right after a restore uses the restored adapter (the folded weights were the later one's)
    assert torch.equal(memory.generate(latents(CONTEXT), ["go"], generator=seeded(1)), at_snapshot)
    memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))  # same optimizer state and update noise
    memory.update(latents(CHUNK, seed=3), latents(CHUNK, seed=4))
    for name, tensor in memory.state_dict().items():
        assert torch.equal(tensor, after[name]), name
    assert torch.equal(memory.generate(latents(CONTEXT), ["go"], generator=seeded()), chunk)

    memory.reset()
    memory.restore(snapshot)  # a snapshot outlives a reset
    assert memory.active
    # with replay_first, the episode's first sequence is the snapshot's too, not that of the episode under way
    replaying = make_memory(lora(replay_first=True), tiny_model())
    replaying.update(latents(CHUNK), latents(CHUNK, seed=2))
    snapshot_with_first = replaying.snapshot()
    replaying.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    after = replaying.state_dict()
    replaying.reset()
    replaying.update(latents(CHUNK, seed=7), latents(CHUNK, seed=8))  # another episode's first sequence
    replaying.restore(snapshot_with_first)
    replaying.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))
    for name, tensor in replaying.state_dict().items():
        assert torch.equal(tensor, after[name]), name
    with pytest.raises(ValueError, match="expected a MemorySnapshot of kind 'temp_lora', got 'none'"):
        memory.restore(make_memory(MemoryConfig(kind="none"), model).snapshot())
    other_rank = make_memory(lora(rank=2), tiny_model()).snapshot()
    before = memory.state_dict()
    with pytest.raises(ValueError, match="of shape"):  # another adapter: refused before anything changes
        memory.restore(other_rank)
    assert all(torch.equal(tensor, before[name]) for name, tensor in memory.state_dict().items())


def test_overlapped_update_equals_the_synchronous_one() -> None:
    sync_model, async_model = tiny_model(), tiny_model()
    sync, overlapped = make_memory(lora(), sync_model), make_memory(lora(), async_model)
    history = latents(CONTEXT)
    threads = []
    hook = async_model.unet.register_forward_pre_hook(lambda *args: threads.append(threading.current_thread()))
    for step in range(3):
        expected = sync.generate(history, ["go"], generator=seeded(step))
        chunk = overlapped.generate(history, ["go"], generator=seeded(step))  # waits for the update in flight
        assert torch.equal(chunk, expected)
        sync.update(history, expected)
        overlapped.update_async(history, chunk)
        history = torch.cat([history, chunk], dim=1)[:, -CONTEXT:]
    logs = overlapped.wait()
    hook.remove()
    assert logs is not None and overlapped.last_update == logs and not overlapped.pending
    assert overlapped.wait() is None  # nothing in flight any more
    assert {t.name.startswith("vplan-memory-temp_lora") for t in threads} == {True, False}  # updates on the worker
    for name, tensor in sync.state_dict().items():
        assert torch.equal(tensor, overlapped.state_dict()[name]), name


def test_update_async_learns_from_its_inputs_as_they_were_when_called(monkeypatch) -> None:
    """"The inputs are copied, so the caller may reuse them": a caller that fills its buffers again while the
    worker trains must not change what the update learns (no test changed them; helper-204)."""
    sync, overlapped = make_memory(lora(), tiny_model()), make_memory(lora(), tiny_model())
    previous, new = latents(CHUNK), latents(CHUNK, seed=2)
    sync.update(previous, new)
    update, go = overlapped._update, threading.Event()

    def after_the_caller_moved_on(*args):
        go.wait(timeout=30)
        return update(*args)

    monkeypatch.setattr(overlapped, "_update", after_the_caller_moved_on)
    overlapped.update_async(previous, new)
    previous.zero_(), new.zero_()  # the caller reuses its buffers
    go.set()
    overlapped.wait()
    for name, tensor in sync.state_dict().items():
        assert torch.equal(tensor, overlapped.state_dict()[name]), name
    overlapped.close()


def test_an_error_in_the_worker_is_raised_by_wait(monkeypatch) -> None:
    memory = make_memory(lora(), tiny_model())

    def broken(previous, new):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(memory, "_update", broken)
    memory.update_async(latents(CHUNK), latents(CHUNK))
    with pytest.raises(RuntimeError, match="worker failed"):
        memory.wait()
    memory.close()


def test_a_failed_update_is_raised_by_the_next_reset_which_still_resets(monkeypatch) -> None:
    model = tiny_model()
    base = model.generate(latents(CONTEXT), ["go"], generator=seeded())
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    assert memory.active and memory.updates == 1
    monkeypatch.setattr(memory, "_update", lambda previous, new: 1 / 0)
    memory.update_async(latents(CHUNK), latents(CHUNK))
    with pytest.raises(ZeroDivisionError):
        memory.reset()
    assert not memory.active and memory.updates == 0
    assert torch.equal(memory.generate(latents(CONTEXT), ["go"], generator=seeded()), base)
    memory.close()


@pytest.mark.parametrize("back", ["restore", "load_state_dict"])
def test_a_failed_update_is_raised_by_restore_and_load_which_still_go_back(monkeypatch, back) -> None:
    """They raised the error and went back to nothing: the user had to call them twice, as reset did not."""
    memory = make_memory(lora(), tiny_model())
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    saved = memory.snapshot() if back == "restore" else memory.state_dict()
    memory.update(latents(CHUNK, seed=3), latents(CHUNK, seed=4))
    monkeypatch.setattr(memory, "_update", lambda previous, new: 1 / 0)
    memory.update_async(latents(CHUNK), latents(CHUNK))
    with pytest.raises(ZeroDivisionError):
        getattr(memory, back)(saved)
    monkeypatch.undo()
    assert memory.updates == (1 if back == "restore" else 0)  # a state_dict is the weights alone
    expected = saved.state["weights"] if back == "restore" else saved
    now = memory.snapshot().state["weights"] if back == "restore" else memory.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(now[name], tensor), name
    memory.close()


def test_a_memory_made_or_updated_in_inference_mode_learns_as_outside_it() -> None:
    """Inference mode is per thread: the worker's update ran, and one in the caller's inference mode failed with
    torch's "Inference tensors cannot be saved for backward"."""
    states = []
    for inference in (False, True):
        memory = make_memory(lora(), tiny_model())
        with torch.inference_mode(inference):
            memory.update(latents(CHUNK), latents(CHUNK, seed=2))
        states.append(memory.state_dict())
        memory.close()
    model = tiny_model()
    with torch.inference_mode():  # the whole evaluation in it: the adapter was made of inference tensors
        memory = make_memory(lora(), model)
        memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    states.append(memory.state_dict())
    memory.close()
    for state in states[1:]:
        for name, tensor in states[0].items():
            assert torch.equal(state[name], tensor), name
    # restored inside it: Adam's state was made of inference tensors, and every later update failed
    memory = make_memory(lora(), tiny_model())
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    snapshot = memory.snapshot()
    with torch.inference_mode():
        memory.restore(snapshot)
    memory.update(latents(CHUNK), latents(CHUNK, seed=3))
    memory.update_async(latents(CHUNK), latents(CHUNK, seed=4))
    memory.wait()
    memory.close()
    with torch.inference_mode():
        frozen = tiny_model()
    with pytest.raises(ValueError, match=r"built or loaded inside torch.inference_mode\(\)"):
        make_memory(lora(), frozen)


@pytest.mark.parametrize("kind", ["none", "anchor", "temp_lora"])
def test_an_action_conditioned_world_model_is_refused(kind) -> None:
    """Its null condition is null action tokens, and generate takes no actions: Temp-LoRA learned under a
    condition the model never saw, then generate failed deep inside the world model."""
    from vplan.errors import SettingMismatchError

    model = tiny_model()
    model.config = replace(model.config, conditioning="action")
    with pytest.raises(SettingMismatchError, match=f"conditioned on 'action', and the {kind} memory conditions it on"):
        make_memory(MemoryConfig(kind=kind), model)


def test_a_diverging_update_names_the_learning_rate() -> None:
    from vplan.errors import RunError

    memory = make_memory(lora(lr=1e30, steps_per_chunk=3), tiny_model())
    with pytest.raises(RunError, match=r"Temp-LoRA loss is (nan|inf) at update \d+; lower its lr \(1e\+30: memory.lr"):
        for seed in range(5):  # it was reported a chunk later, by the decoder, as NaN latents
            memory.update(latents(CHUNK, seed=seed), latents(CHUNK, seed=seed + 1))
    memory.close()


def test_non_finite_latents_to_learn_from_are_refused_by_name_not_blamed_on_the_lr() -> None:
    memory = make_memory(lora(), tiny_model())
    bad = latents(CHUNK, seed=2)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="new: expected finite latents, got NaN or inf"):
        memory.update(latents(CHUNK), bad)
    with pytest.raises(ValueError, match="previous: expected finite latents"):
        memory.update_async(bad, latents(CHUNK))
    assert memory.updates == 0
    # generated from, the NaN chunk was blamed on the checkpoint (none) or on a diverged Temp-LoRA's lr
    with pytest.raises(ValueError, match="history: expected finite latents"):
        memory.generate(bad, ["a"], generator=seeded())
    memory.close()


def test_a_step_to_non_finite_weights_or_a_non_finite_chunk_names_the_cause() -> None:
    """A finite loss can step the adapter to inf (as `eval consistency temp_lora.lr=1000` does at its third
    update), or to weights so large the next chunk is NaN (lr 1e30): both were first reported by the decoder, as
    NaN latents, with no word of memory.lr."""
    from vplan.errors import RunError

    memory = make_memory(lora(), tiny_model())
    step = memory._optimizer.step

    def step_to_inf() -> None:
        step()
        next(iter(memory.trainable_parameters().values())).data.fill_(float("inf"))

    memory._optimizer.step = step_to_inf
    with pytest.raises(RunError, match=r"Temp-LoRA weights are not finite after update 1 \(its loss was [0-9.]+\); "
                                       r"lower its lr \(0.01: memory.lr"):
        memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    memory.close()
    memory = make_memory(lora(lr=1e30), tiny_model())
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    assert all(torch.isfinite(p).all() for p in memory.trainable_parameters().values())
    with pytest.raises(RunError, match=r"memory temp_lora drew a chunk of NaN or infinite latents \(a diverged "
                                       r"Temp-LoRA, after 1 update\(s\): lower its lr \(1e\+30: memory.lr"):
        memory.generate(latents(CONTEXT), ["a"], generator=seeded())
    memory.close()
    model = tiny_model()
    with torch.no_grad():
        model.unet.conv_out.bias.fill_(float("nan"))
    memory = make_memory(MemoryConfig(kind="none"), model)
    with pytest.raises(RunError, match=r"memory none drew a chunk .* \(the world model itself: check the checkpoint"):
        memory.generate(latents(CONTEXT), ["a"], generator=seeded())


def test_an_update_keeps_each_module_in_its_mode_and_the_callers_thread_count(monkeypatch) -> None:
    """A submodule put in eval mode went back to train mode (unet.train(flag) sets every one); the worker kept
    the thread count it started with (torch keeps one per thread)."""
    model = tiny_model()
    model.train()
    model.unet.conv_in.eval()
    memory = make_memory(lora(), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    assert model.unet.training and not model.unet.conv_in.training
    seen = []
    hook = model.unet.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    memory.update_async(latents(CHUNK), latents(CHUNK, seed=2))  # the worker starts at 1 thread (conftest)
    memory.wait()
    torch.set_num_threads(2)
    memory.update_async(latents(CHUNK), latents(CHUNK, seed=3))
    memory.wait()
    hook.remove()
    assert seen[0] == 1 and seen[-1] == 2, seen
    memory.close()


def test_an_update_of_a_model_in_train_mode_draws_no_dropout() -> None:
    """A freshly built WorldModel is in train mode, where the temporal convolutions' dropout is on."""
    learned = []
    for draws in (1, 2):
        model = tiny_model()
        for module in model.unet.modules():  # the tiny model's zero-initialised convolutions hide the dropout
            if isinstance(module, torch.nn.Conv3d):
                torch.nn.init.normal_(module.weight, std=0.1, generator=seeded(5))
        model.train()
        memory = make_memory(lora(), model)
        torch.rand(draws)  # the process-wide generator elsewhere: dropout masks drawn from it would differ
        memory.update(latents(CHUNK), latents(CHUNK, seed=2))
        learned.append(memory.state_dict())
        assert model.training  # the caller's mode is kept
        memory.close()
    assert all(torch.equal(tensor, learned[1][name]) for name, tensor in learned[0].items())


def test_an_interrupted_fold_is_undone_by_reset(monkeypatch) -> None:
    """The base weights were overwritten before the memory noted it: reset then kept W + ΔW for good."""
    from peft.tuners.lora import Linear

    model = tiny_model()
    before = base_weights(model)
    memory = make_memory(lora(merge_for_generation=True), model)
    memory.update(latents(CHUNK), latents(CHUNK, seed=2))
    calls, delta = [], Linear.get_delta_weight

    def interrupted(layer, adapter):
        calls.append(adapter)
        if len(calls) == 3:  # Ctrl-C, or out of GPU memory, a few layers in
            raise KeyboardInterrupt
        return delta(layer, adapter)

    monkeypatch.setattr(Linear, "get_delta_weight", interrupted)
    with pytest.raises(KeyboardInterrupt):
        memory.generate(latents(CONTEXT), ["go"], generator=seeded())
    monkeypatch.undo()
    unbroken = make_memory(lora(merge_for_generation=True), tiny_model())
    unbroken.update(latents(CHUNK), latents(CHUNK, seed=2))
    expected = unbroken.generate(latents(CONTEXT), ["go"], generator=seeded())
    unbroken.close()  # the next generate folds again: it drew from half-folded weights
    assert torch.equal(memory.generate(latents(CONTEXT), ["go"], generator=seeded()), expected)
    memory.reset()
    assert_same_base(model, before)
    memory.close()


def test_a_unet_with_another_adapter_is_refused() -> None:
    from peft import LoraConfig

    model = tiny_model()
    model.unet.add_adapter(LoraConfig(r=2, target_modules=["proj_in"]), adapter_name="user")
    with pytest.raises(ValueError, match=r"expected a UNet without adapters, got \['user'\]"):
        make_memory(lora(), model)  # it switched the user's adapter off, and left empty wrappers on close


def test_an_interrupted_wait_keeps_waiting_for_the_update_in_flight(monkeypatch) -> None:
    from concurrent.futures import Future

    memory = make_memory(lora(), tiny_model())
    release = threading.Event()

    def slow(previous, new):
        release.wait(10)
        return {"loss": 1.0}

    monkeypatch.setattr(memory, "_update", slow)
    memory.update_async(latents(CHUNK), latents(CHUNK))
    result = Future.result

    def interrupted(future, timeout=None):
        raise KeyboardInterrupt  # Ctrl-C while the caller waits

    monkeypatch.setattr(Future, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        memory.wait()
    resets, reset = [], memory._reset
    monkeypatch.setattr(memory, "_reset", lambda: resets.append(1))
    with pytest.raises(KeyboardInterrupt):
        memory.reset()  # the next episode's reset, interrupted in turn
    assert not resets  # the update still runs: its adapter and optimizer are not reset under it
    monkeypatch.setattr(memory, "_reset", reset)
    monkeypatch.setattr(Future, "result", result)
    assert memory.pending  # not forgotten: a reset now would wait for it, not run beside it
    release.set()
    assert memory.wait() == {"loss": 1.0} and not memory.pending
    memory.close()


def test_temp_lora_config_errors() -> None:
    from vplan.errors import UsageError

    model = tiny_model()
    with pytest.raises(ValueError, match="match none") as error:
        make_memory(lora(target_modules=["nothing"]), model)
    assert isinstance(error.value, UsageError)  # the CLI says it in one line, whichever command built the memory
    with pytest.raises(ValueError, match="Linear layers only"):
        make_memory(lora(target_modules=["to_out"]), model)
    memory = make_memory(lora(), model)
    with pytest.raises(ValueError, match="already attached"):
        make_memory(lora(), model)
    with pytest.raises(ValueError, match=r"expected new latents of shape \(B, T >= 1, 4, 8, 8\)"):
        memory.update(latents(CHUNK), torch.zeros(1, 2, 4, 16, 16))
    with pytest.raises(ValueError, match="one batch size"):
        memory.update_async(latents(CHUNK), latents(CHUNK, batch=2))
    memory.close()


# ---------------------------------------------------------------------------------------------- baselines


def test_anchor_keeps_the_first_frame_in_every_context() -> None:
    model = tiny_model()
    memory = make_memory(MemoryConfig(kind="anchor"), model)
    assert isinstance(memory, AnchorFrameMemory) and memory.anchor is None
    first = latents(1)
    assert torch.equal(memory.condition(first), first)  # it fits and starts with the anchor: unchanged
    chunks = [latents(CHUNK, seed=s) for s in (2, 3)]
    history = torch.cat([first, *chunks], dim=1)
    context = memory.condition(history)
    assert context.shape[1] == CONTEXT  # the anchor plus the last context_frames - 1 latents
    assert torch.equal(context[:, 0], first[:, 0]) and torch.equal(context[:, 1:], history[:, -(CONTEXT - 1):])
    window = history[:, -CONTEXT:]  # a caller that keeps only the recent window gets the anchor all the same
    assert torch.equal(memory.condition(window), context)
    # generate() is the world model's generate on that context; without the anchor the output differs.
    chunk = memory.generate(history, ["go"], generator=seeded())
    assert torch.equal(chunk, model.generate(context, ["go"], generator=seeded()))
    assert not torch.equal(chunk, model.generate(history, ["go"], generator=seeded()))

    state = memory.state_dict()
    assert torch.equal(state["anchor"], first)
    snapshot = memory.snapshot()
    memory.reset()
    assert memory.anchor is None
    memory.update(latents(CHUNK, seed=7), latents(CHUNK, seed=8))  # an update before any condition sets it too
    assert torch.equal(memory.anchor, latents(CHUNK, seed=7)[:, :1])
    memory.restore(snapshot)
    assert torch.equal(memory.anchor, first)
    memory.load_state_dict({})
    assert memory.anchor is None
    with pytest.raises(ValueError, match="anchor"):
        memory.load_state_dict({"anchor": torch.zeros(1, 2, 4, LATENT, LATENT)})


def test_anchor_needs_room_for_recent_context() -> None:
    model = tiny_model()
    model.config = replace(model.config, context_frames=1)
    with pytest.raises(ValueError, match="context_frames >= 2"):
        make_memory(MemoryConfig(kind="anchor"), model)


def test_none_is_only_the_recent_context(tmp_path: Path) -> None:
    model = tiny_model()
    memory = make_memory(MemoryConfig(kind="none"), model)
    assert isinstance(memory, NoMemory)
    history = latents(6)
    assert memory.condition(history) is history
    # what it read, kept on its own: a view kept the whole history alive (vplan rl stores each chunk's)
    last = memory.last_context
    assert torch.equal(last, history[:, -CONTEXT:]) and last.untyped_storage().nbytes() == last.numel() * 4
    memory.update_async(history[:, :CHUNK], history[:, -CHUNK:])
    assert memory.wait() == {}
    assert torch.equal(memory.generate(history, ["go"], generator=seeded()),
                       model.generate(history, ["go"], generator=seeded()))
    assert memory.state_dict() == {}
    memory.save(tmp_path / "none.safetensors")
    memory.load(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="unexpected"):
        memory.load_state_dict({"anchor": history[:, :1]})


# ---------------------------------------------------------------------------------------------- config


def test_config_checks() -> None:
    with pytest.raises(ValueError, match=r"kind: expected one of \('none', 'anchor', 'temp_lora'\), got 'lora'"):
        MemoryConfig(kind="lora")
    with pytest.raises(ValueError, match="update_on: expected one of"):
        MemoryConfig(update_on="dreamed")
    with pytest.raises(ValueError, match="rank: expected a positive int, got 0"):
        MemoryConfig(rank=0)
    with pytest.raises(ValueError, match="lr: expected a positive finite number"):
        MemoryConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="target_modules"):
        MemoryConfig(target_modules=[])
    with pytest.raises(ValueError, match="target_modules: expected a list of module names, got the string 'to_q'"):
        MemoryConfig(target_modules="to_q")  # was read as the modules 't', 'o', '_', 'q'
    with pytest.raises(ValueError, match="merge_for_generation: expected true or false, got 'false'"):
        MemoryConfig(merge_for_generation="false")  # truthy
    with pytest.raises(ValueError, match="lr: expected a number, got True"):
        MemoryConfig(lr=True)
    assert MemoryConfig(rank=8).lora_alpha == 8.0 and MemoryConfig(rank=8, alpha=4).lora_alpha == 4.0
    with pytest.raises(ValueError, match="expected a MemoryConfig with kind='anchor'"):
        AnchorFrameMemory(MemoryConfig(kind="none"), tiny_model())


def test_the_adapter_is_scaled_by_alpha_over_rank() -> None:
    """Every other test runs alpha = rank (scaling 1), where an alpha that never reached peft changed nothing."""
    model = tiny_model()
    memory = make_memory(lora(alpha=16), model)
    memory.update(latents(CHUNK, seed=2), latents(CHUNK, seed=3))  # the wrapped layers are in place while active
    scalings = [module.scaling for module in model.unet.modules() if isinstance(getattr(module, "scaling", None), dict)]
    assert scalings and all(scaling == {"temp_lora": 16 / 4} for scaling in scalings)
    memory.close()


@pytest.mark.parametrize("preset", ["none", "anchor", "temp_lora"])
def test_presets_compose_into_memory_config(preset: str) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vplan.cli import SCHEMAS

    # The CLI registers this schema (registering all of SCHEMAS would import every command's module: slow).
    assert SCHEMAS[("memory", "memory_schema")] == "vplan.memory.config:MemoryConfig"
    ConfigStore.instance().store(group="memory", name="memory_schema", node=MemoryConfig)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vplan.configs", version_base="1.3"):
        cfg = compose(config_name=f"memory/{preset}", overrides=["memory.steps_per_chunk=3"])
    config = OmegaConf.to_object(cfg.memory)
    assert isinstance(config, MemoryConfig) and config.kind == preset and config.steps_per_chunk == 3
    if preset == "temp_lora":
        assert (config.rank, config.lr, config.target_modules) == (32, 1e-4, ["to_q", "to_k", "to_v", "to_out.0"])
