"""`vplan finetune`: the slow-fast loop on a tiny world model and a tiny collected dataset.

The inner loop's stored Temp-LoRA states reproduce the live adapter exactly; the outer loop changes only the
UNet's weights Φ (LoRA factors, VAE and text encoder bit-identical); a killed finetune resumes at the step it
reached and ends bit-identical to an uninterrupted one; `<out>/final` is a plain world-model checkpoint; the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vplan.cli import main
from vplan.data.collect import CollectConfig, collect
from vplan.envs import TabletopConfig
from vplan.errors import RunError, UsageError
from vplan.loop import finetune as ft
from vplan.loop.checkpoint import checkpoint_step, list_checkpoints
from vplan.loop.config import FinetuneConfig, OptimConfig
from vplan.loop.finetune import InnerEpisode, SlowFastTraining, episode_file, finetune, merged_weights
from vplan.loop.trainer import train
from vplan.memory import MemoryConfig, TempLoRAMemory
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import WorldModel

# A tiny model: 16×16 frames, 8×8 latents; chunks of 8 latents, so a ~130-frame episode has 16 chunks.
MEMORY = MemoryConfig(kind="temp_lora", rank=4, lr=1e-2, gradient_checkpointing=False)
OPTIM = OptimConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, save_every=2, log_every=1)


def tiny_config(image_size: int = 16, chunk_frames: int = 8) -> WorldModelConfig:
    return WorldModelConfig(
        unet=replace(UNetConfig.preset("tiny"), sample_size=image_size // 2, cross_attention_dim=16),
        diffusion=DiffusionConfig(num_inference_steps=2),
        vae=VAEConfig.tiny(image_size=image_size),
        text_encoder=TextEncoderConfig(kind="learned", dim=16, max_tokens=6, vocab_buckets=64),
        context_frames=3,
        chunk_frames=chunk_frames,
    )


def save_tiny(path: Path, **kwargs) -> Path:
    torch.manual_seed(0)
    WorldModel(tiny_config(**kwargs)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=2, out=str(root / "data")))
    return root, root / "data", save_tiny(root / "wm")


def config(data: Path, wm: Path | None, out: Path, **overrides) -> FinetuneConfig:
    values = {"data": str(data), "worldmodel": wm if wm is None else str(wm), "memory": MEMORY, "episodes": 1, "holdout_episodes": 1,
              "optim": OPTIM, "out": str(out), **overrides}
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def finetuned(setup):
    """An uninterrupted 4-step finetune."""
    root, data, wm = setup
    final = finetune(config(data, wm, root / "uninterrupted"))
    return root / "uninterrupted", final


def content(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A safetensors file's metadata and tensors (its bytes are not stable: the header's metadata order varies)."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}


def same_content(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_stored_states_reproduce_the_live_adapter_exactly(setup, finetuned):
    """Replay the inner loop with a live memory: at every chunk its adapter equals the stored factors bit for bit,
    a memory loaded from them generates the same latents, and the outer loop's merged weights are exactly the
    weights the memory generates with (folded in)."""
    _, data, wm = setup
    out, _ = finetuned
    stored = InnerEpisode(episode_file(out, 0))
    assert len(stored.chunks) == (len(stored.latents) - 1) // 8 >= 10
    live_model, loaded_model, plain = (WorldModel.from_pretrained(wm) for _ in range(3))
    live, loaded = TempLoRAMemory(MEMORY, live_model), TempLoRAMemory(MEMORY, loaded_model)
    scaling = MEMORY.lora_alpha / MEMORY.rank
    targets = ft.lora_targets(plain, stored.lora_state(0))
    live.reset()
    for k, chunk in enumerate(stored.chunks):
        context, target, text = stored.triple(k)
        assert context.shape[0] == min(3, chunk.start) and target.shape[0] == 8
        state = stored.lora_state(k)
        expected = live.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[key], expected[key]) for key in state)
        if k == 0:  # the first chunk's state is the reset adapter: B = 0, so ΔW = 0
            assert all(torch.count_nonzero(t) == 0 for key, t in state.items() if "lora_B" in key)
        if k < 3:
            loaded.load_state_dict(state)
            generated = [memory.generate(context[None], [text], generator=torch.Generator().manual_seed(k))
                         for memory in (live, loaded)]
            assert torch.equal(*generated)
            live.condition(context[None])  # folded: the UNet holds W + ΔW as the agent generates with
            folded = dict(live_model.named_parameters())
            for name, weight in merged_weights(plain, state, scaling, targets).items():
                assert torch.equal(weight, folded[name]), name
        previous = stored.latents[max(0, chunk.start - 8) : chunk.start][None]
        live.update(previous, target[None])
    live.close()
    loaded.close()


def test_outer_loop_changes_only_the_slow_weights(setup, finetuned, tmp_path):
    _, _, wm = setup
    out, _ = finetuned
    files = sorted((out / "inner").glob("episode-*.safetensors"))
    contents = {f: content(f) for f in files}
    episodes = [InnerEpisode(f) for f in files]
    lora_before = [e.lora_state(k) for e in episodes for k in range(len(e.chunks))]
    model = WorldModel.from_pretrained(wm)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    training = SlowFastTraining(model, episodes, MEMORY)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"unet.{name}" for name, _ in model.unet.named_parameters()}

    batch = training.batch(torch.Generator().manual_seed(0), 2)
    loss, _ = training.loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    for item in batch["items"]:  # the stored factors are constants: no gradient reaches them
        assert all(not t.requires_grad and t.grad is None for t in item["lora"].values())
    model.zero_grad(set_to_none=True)

    # each sample is scored with its chunk's Temp-LoRA state merged in: not the base weights
    context, target, text = episodes[0].triple(1)
    item = {"context": context, "target": target, "text": text, "lora": episodes[0].lora_state(1)}
    assert any(t.abs().sum() > 0 for name, t in item["lora"].items() if "lora_B" in name)  # after an update
    base = {**item, "lora": {name: torch.zeros_like(t) if "lora_B" in name else t for name, t in item["lora"].items()}}
    with torch.no_grad():
        losses = [training.loss({"items": [it]}, torch.Generator().manual_seed(1))[0] for it in (item, base, item)]
    assert losses[0] == losses[2] and losses[0] != losses[1]

    train(training, replace(OPTIM, steps=2), tmp_path / "outer", "outer")
    after = model.state_dict()
    assert not any(k.startswith("unet.") and "lora" in k for k in after)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("unet.") for name in changed)
    assert all(same_content(content(f), contents[f]) for f in files)
    lora_after = [e.lora_state(k) for e in episodes for k in range(len(e.chunks))]
    assert all(torch.equal(a[key], b[key]) for a, b in zip(lora_before, lora_after) for key in a)


def test_killed_finetune_resumes_at_the_step_it_reached(setup, finetuned, monkeypatch, capsys):
    root, data, wm = setup
    _, uninterrupted = finetuned
    cfg = config(data, wm, root / "killed")
    original = SlowFastTraining.loss
    calls = []

    def interrupted_loss(self, batch, generator):  # SIGINT during step 3: the trainer saves step 3 and stops
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, generator)

    monkeypatch.setattr(SlowFastTraining, "loss", interrupted_loss)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    monkeypatch.setattr(SlowFastTraining, "loss", original)
    assert (root / "killed" / "checkpoint-0000003").is_dir() and not (root / "killed" / "final").exists()
    assert "stopped at step 3: checkpoint in" in capsys.readouterr().out  # and how to go on

    with pytest.raises(UsageError, match=r"other settings: optim\.lr=0\.001 when it began, 0\.002 now;"):  # the
        # outer loop continues as it began
        finetune(replace(cfg, optim=replace(OPTIM, lr=2e-3)))

    # A kill during the inner loop: a missing episode file is redone, bit-identical (the others are kept).
    inner_file = episode_file(root / "killed", 0)
    stored = content(inner_file)
    inner_file.unlink()
    settings = root / "killed" / "inner" / "settings.json"
    stored_settings = json.loads(settings.read_text())
    del stored_settings["memory"]["replay_first"]  # as written before that setting existed: at its default, the same
    del stored_settings["optim"]  # as one round wrote it before it recorded the outer loop's settings
    assert "gradient_checkpointing" not in stored_settings["memory"]  # the states do not depend on it ...
    stored_settings["memory"]["gradient_checkpointing"] = False  # ... as recorded before 2026-12-06
    settings.write_text(json.dumps(stored_settings))
    with pytest.raises(UsageError, match=r"other settings: memory\.rank=\d+ when it began, 8 now;"):  # the stored
        # states depend on it
        finetune(replace(cfg, memory=replace(MEMORY, rank=8)))
    capsys.readouterr()
    # turned on after running out of memory (refused, the finished episodes were lost): the same states
    final = finetune(replace(cfg, memory=replace(MEMORY, gradient_checkpointing=True, merge_for_generation=False,
                                                 update_on="observed")))
    assert same_content(content(inner_file), stored)
    assert "(step 3)" in capsys.readouterr().out  # "resuming from .../checkpoint-0000003 (step 3)"
    ours, theirs = load_file(final / "unet.safetensors"), load_file(uninterrupted / "unet.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_out_of_memory_before_the_first_checkpoint_keeps_the_inner_loops_work(setup, finetuned, tmp_path,
                                                                               monkeypatch, capsys):
    """The advice (a lower batch size) was refused on the rerun, as another outer-loop setting, so the inner loop's
    stored states had to be thrown away with the folder."""
    from vplan.memory.temp_lora import TempLoRAMemory

    root, data, wm = setup
    _, uninterrupted = finetuned
    cfg = config(data, wm, tmp_path / "oom")
    original = SlowFastTraining.loss

    def out_of_memory(self, batch, generator):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(SlowFastTraining, "loss", out_of_memory)
    with pytest.raises(RunError, match=r"out of memory at step 1 with batch_size=4 .*lower optim\.batch_size$"):
        finetune(replace(cfg, optim=replace(OPTIM, batch_size=4)))
    monkeypatch.setattr(SlowFastTraining, "loss", original)
    stored = content(episode_file(tmp_path / "oom", 0))
    capsys.readouterr()
    final = finetune(cfg)  # batch_size=2 as advised: taken, the inner loop's states kept
    printed = capsys.readouterr().out
    assert "optim.batch_size changed before anything that depends on it was kept" in printed
    # what to do with it (vplan rl says so; finetune ended at the folder's name, helper-209)
    assert f"the agent with it: vplan run worldmodel={final}; the paper's table with it: vplan bench planning " \
           f"finetuned={final}\n" in printed
    assert same_content(content(episode_file(tmp_path / "oom", 0)), stored)
    ours, theirs = load_file(final / "unet.safetensors"), load_file(uninterrupted / "unet.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # as if begun so
    with pytest.raises(UsageError, match=r"other settings: optim\.lr=0\.001 when it began, 0\.002 now; choose"):
        finetune(replace(cfg, optim=replace(OPTIM, lr=2e-3)))  # with a checkpoint, the outer loop is pinned
    finetune(replace(cfg, worldmodel=os.path.relpath(wm)))  # the same model, its path spelled otherwise: taken
    other = WorldModel.from_pretrained(wm)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1.0)
    other.save_pretrained(tmp_path / "other_wm")  # named by its files' hashes, which meant nothing to a user
    with pytest.raises(UsageError, match=r"other settings: worldmodel= \(its files differ from those it began with"):
        finetune(replace(cfg, worldmodel=str(tmp_path / "other_wm")))

    # out of memory in the inner loop: one line saying what to change, not a traceback
    monkeypatch.setattr(TempLoRAMemory, "_update", lambda self, previous, new: out_of_memory(None, None, None))
    with pytest.raises(RunError, match=r"inner loop: out of memory in episode 0, chunk 0 .*memory\.gradient_"
                                       r"checkpointing=true \(the same command goes on\)$"):
        finetune(config(data, wm, tmp_path / "inner_oom"))
    monkeypatch.undo()
    capsys.readouterr()  # nothing stored yet: any setting may change (it was "delete that folder")
    finetune(config(data, wm, tmp_path / "inner_oom", memory=replace(MEMORY, rank=2)))
    assert "memory.rank changed before anything that depends on it was kept" in capsys.readouterr().out


def test_a_model_folder_as_out_is_refused_before_anything_is_written_there(setup, tmp_path):
    root, data, wm = setup
    model = tmp_path / "model"
    shutil.copytree(wm, model)
    before = sorted(p.name for p in model.iterdir())
    with pytest.raises(UsageError, match="holds a model checkpoint"):
        finetune(config(data, wm, model))
    assert sorted(p.name for p in model.iterdir()) == before


def test_another_commands_folder_as_out_is_refused_before_anything_is_written_there(setup, finetuned, tmp_path,
                                                                                     capsys):
    """finetune wrote its checkpoints and final/ into a `vplan run` folder and into the dataset it read, and `vplan
    train` went on from a finetune's checkpoints and replaced its final/ (helper-192)."""
    root, data, wm = setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("agent: {}\nenv: {}\nepisodes: 1\n")  # a run's record, in short
    recorded = tmp_path / "recorded"  # a dataset without a config.yaml, as `vplan run record=true` writes one
    shutil.copytree(data, recorded)
    (recorded / "config.yaml").unlink()
    for out, said in ((run, "holds another command's settings"), (data, "holds another command's settings"),
                      (recorded, r"holds a dataset \(meta/info.json\)")):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(UsageError, match=said):
            finetune(config(data, wm, out))
        assert sorted(p.name for p in out.iterdir()) == before
    before = sorted(p.name for p in finetuned[0].iterdir())
    with pytest.raises(SystemExit) as stop:
        main(["train", "component=worldmodel", f"data={data}", "holdout_episodes=1", f"out={finetuned[0]}",
              "component.vae=shipped:tabletop/worldmodel"])
    assert stop.value.code == 2 and "holds a `vplan finetune` run (inner/settings.json)" in capsys.readouterr().err
    # nor another kind of command: a bench's results.json there refused the finetune's own resume (helper-201)
    with pytest.raises(SystemExit) as stop:
        main(["bench", "env", "steps=5", "episodes=1", f"out={finetuned[0]}"])
    assert stop.value.code == 2 and "holds a `vplan finetune` run (inner/settings.json)" in capsys.readouterr().err
    assert sorted(p.name for p in finetuned[0].iterdir()) == before


def test_a_refused_resume_names_its_settings_as_the_command_spells_them():
    """The record holds the episodes' indices (20 by default, or hundreds) and, before 2026-12-07, no rounds for
    one: "episodes=[0, 1] ... [0, 1, 2]", "rounds='unset'" (helper-195)."""
    from vplan.loop.finetune import _differences

    cfg = FinetuneConfig(data="d", worldmodel="w", memory=MEMORY)
    assert _differences(["episodes", "rounds", "worldmodel_unet_sha256"], {"episodes": [0, 1]},
                        {"episodes": [0, 1, 2], "rounds": 2}, cfg) == [
        "episodes=2 when it began, 3 now", "rounds=1 when it began, 2 now",
        "worldmodel= (its files differ from those it began with)"]
    assert _differences(["episodes"], {"episodes": [0, 1]}, {"episodes": [0, 2]}, cfg) == [
        "episodes=[0, 1] when it began, [0, 2] now"]  # as many, others: the indices say which


def test_a_base_among_the_results_out_replaces_is_refused(setup, finetuned, tmp_path, monkeypatch):
    """A finetune of `<out>/final` into the same out= (its inner/ and checkpoints deleted to save space) deleted
    its own base at the first outer step; stopped before a checkpoint, neither base nor result was left."""
    from vplan.shipped import check_outside_results

    root, data, _ = setup
    chain = tmp_path / "chain"
    shutil.copytree(finetuned[1], chain / "final")
    with pytest.raises(UsageError, match=rf"^worldmodel={chain / 'final'} lies in out={chain}, whose results this "
                                         "run replaces; copy it elsewhere"):
        finetune(config(data, chain / "final", chain))
    assert sorted(p.name for p in chain.iterdir()) == ["final"]
    monkeypatch.chdir(tmp_path)  # spelt relatively, or otherwise
    for spec in ("chain", "chain/final/", "./chain/checkpoint-0000004", "chain/checkpoint"):
        with pytest.raises(UsageError, match="lies in out="):
            check_outside_results("chain", {"worldmodel": spec})
    check_outside_results("chain", {"worldmodel": "chain/inner", "idm": "shipped:tabletop/idm", "vae": None,
                                    "init": "chain/final2"})
    check_outside_results("chain/final", {"worldmodel": "chain/final2"})  # a sibling


def test_a_stopped_continuation_leaves_no_stale_final(setup, finetuned, tmp_path, monkeypatch):
    """More optim.steps continue a finished run; stopped, it once left the shorter run's final/ in place, which
    `vplan run worldmodel=<out>/final` then took for the result."""
    root, data, wm = setup
    out = tmp_path / "continued"
    shutil.copytree(finetuned[0], out)
    assert (out / "final").is_dir()

    def stopped(self, batch, generator):
        raise KeyboardInterrupt

    with pytest.raises(UsageError, match="past optim.steps=3"):  # refused: the result stays as it was (exit 2, not 1)
        finetune(config(data, wm, out, optim=replace(OPTIM, steps=3)))
    assert (out / "final").is_dir()
    monkeypatch.setattr(SlowFastTraining, "loss", stopped)
    with pytest.raises(KeyboardInterrupt):
        finetune(config(data, wm, out, optim=replace(OPTIM, steps=6)))
    assert not (out / "final").exists()


def test_damaged_records_of_a_finetune_are_one_line_errors_naming_the_file(setup, finetuned, tmp_path):
    """A disk fault in what a finetune keeps: tracebacks (SafetensorError, JSONDecodeError) before."""
    root, data, wm = setup
    out = tmp_path / "damaged"
    shutil.copytree(finetuned[0], out)
    inner_file = episode_file(out, 0)
    inner_file.write_bytes(inner_file.read_bytes()[: inner_file.stat().st_size // 2])
    with pytest.raises(RunError, match=r"episode-000000.safetensors cannot be read \(SafetensorError: .*\); delete "
                                       r"it, and the inner loop redoes that episode"):
        ft.InnerEpisode(inner_file)
    newest = list_checkpoints(out)[-1]
    (newest / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(RunError, match=r"cannot be read \(SafetensorError: .*\); delete it and the checkpoints after "):
        ft._load_outer_weights(WorldModel.from_pretrained(wm), out, checkpoint_step(newest))
    (out / "inner" / "settings.json").write_text('{"format": "vplan-fine')
    with pytest.raises(RunError, match=r"settings.json is damaged \(JSONDecodeError: .*\); choose another out="):
        finetune(config(data, wm, out, optim=replace(OPTIM, steps=6)))


def test_final_is_a_plain_world_model_checkpoint(setup, finetuned):
    _, _, wm = setup
    _, final = finetuned
    model = WorldModel.from_pretrained(final)
    assert not getattr(model.unet, "peft_config", None)
    start = load_file(wm / "unet.safetensors")
    tuned = load_file(final / "unet.safetensors")
    assert tuned.keys() == start.keys() and not any("lora" in k for k in tuned)
    assert any(not torch.equal(start[k], tuned[k]) for k in start)
    first = torch.zeros(1, 1, 4, 8, 8)
    chunk = model.generate(first, ["pick up the red cube"], generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (1, 8, 4, 8, 8)


def test_bad_inputs_are_usage_errors(setup, tmp_path):
    root, data, wm = setup
    with pytest.raises(UsageError, match="vplan collect"):
        finetune(config(tmp_path / "nothing", wm, tmp_path / "a"))
    with pytest.raises(UsageError, match="frames are 16x16"):
        finetune(config(data, save_tiny(tmp_path / "wm32", image_size=32), tmp_path / "b"))
    with pytest.raises(UsageError, match="no episode has the 201 frames"):
        finetune(config(data, save_tiny(tmp_path / "long", chunk_frames=200), tmp_path / "c"))
    with pytest.raises(ValueError, match="memory=temp_lora"):
        config(data, wm, tmp_path / "d", memory=MemoryConfig(kind="anchor"))
    with pytest.raises(UsageError, match="holdout_episodes=2"):
        finetune(config(data, wm, tmp_path / "e", holdout_episodes=2))
    # a typo in the adapter's layers: once found, settings.json held it, and the fixed command was refused
    with pytest.raises(UsageError, match=r"^memory.target_modules: expected names of modules in the UNet"):
        finetune(config(data, wm, tmp_path / "g", memory=replace(MEMORY, target_modules=("bogus",))))
    assert not (tmp_path / "g").exists()
    from vplan.errors import RunError

    with pytest.raises(RunError, match=r"inner loop: Temp-LoRA's adapter diverged .* in episode 0, chunk \d+; start "
                                       r"again with a lower memory.lr"):
        finetune(config(data, wm, tmp_path / "f", memory=replace(MEMORY, lr=1e30)))
    assert not list((tmp_path / "f" / "inner").glob("episode-*"))  # nothing diverged is stored


def test_episodes_on_held_out_seeds_are_named(setup, tmp_path, capsys):
    """`vplan run record=true` records seeds 10000+, the scenes a default evaluation of the result plays."""
    from vplan.errors import VplanWarning
    from vplan.loop.finetune import _chosen_episodes, _usable_episodes

    def _episodes(cfg: FinetuneConfig, span: int = 9) -> list[int]:
        return _chosen_episodes(cfg, *_usable_episodes(cfg), span)

    root, data, wm = setup
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=2, seed=9999, out=str(tmp_path / "d")))
    with pytest.warns(VplanWarning, match=r"1 of the episodes to finetune on were recorded on seeds 10000..10000, "
                                          r"which vplan run.* evaluate the result on others \(seed=10001\)"):
        _episodes(config(tmp_path / "d", wm, tmp_path / "out", episodes=2, holdout_episodes=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplanWarning)
        _episodes(config(data, wm, tmp_path / "out"))  # seeds 0 and 1
    exploring = tmp_path / "exploring"  # the same episodes, said to be collected with exploration
    shutil.copytree(data, exploring)
    recorded = (exploring / "config.yaml").read_text()
    (exploring / "config.yaml").write_text(recorded.replace("explore_fraction: 0.0", "explore_fraction: 0.3"))
    with pytest.warns(VplanWarning, match=r"collected with explore_fraction=0.3: its random segments are labelled"):
        _episodes(config(exploring, wm, tmp_path / "out"))
    capsys.readouterr()
    _episodes(config(data, wm, tmp_path / "out", episodes=5))  # fewer than asked: said
    said = capsys.readouterr().out
    assert "episodes=5: " in said and "has 1 of a chunk or more besides the 1 held out; finetuning on 1" in said
    # an episode too short for a chunk: the next one takes its place (it left one episode fewer)
    from types import SimpleNamespace

    lengths = SimpleNamespace(episode_meta=lambda e: {"length": (5, 20, 30)[e]})
    assert _chosen_episodes(config(data, wm, tmp_path / "out", episodes=2), lengths, [0, 1, 2], 9) == [1, 2]
    assert "skipping 1 episodes shorter than one chunk (9 frames): [0]" in capsys.readouterr().out


def test_trainer_checkpoints_without_the_finetune_record_are_refused(setup, finetuned, tmp_path):
    """The record of what made the stored states lives in inner/: checkpoints left without it (inner/ deleted,
    or an out of `vplan train`) would be resumed whatever made them, and `final` be their model."""

    root, data, wm = setup
    out = tmp_path / "out"
    shutil.copytree(finetuned[0], out)
    shutil.rmtree(out / "inner")
    with pytest.raises(UsageError, match=r"holds training checkpoints but no finetune record"):
        finetune(config(data, wm, out, memory=replace(MEMORY, rank=2)))


def test_without_worldmodel_the_datasets_envs_shipped_model_is_taken(setup, tmp_path):
    import json

    _, data, _ = setup
    # 16x16 frames: every shipped model (64x64) is refused after it is chosen, so the message names the choice.
    with pytest.raises(UsageError, match="worldmodel=shipped:tabletop/worldmodel is for 64x64"):
        finetune(config(data, None, tmp_path / "a"))
    other = tmp_path / "data"
    shutil.copytree(data, other)
    info = json.loads((other / "meta" / "info.json").read_text())
    for robot_type, expected in (("vplan_blockworld", "worldmodel=shipped:blockworld/worldmodel is for 64x64"),
                                 ("vplan_rlbench", "robot_type 'vplan_rlbench' names no env with a shipped world "
                                                   "model; pass worldmodel=DIR"),
                                 ("so100", "robot_type 'so100' (recorded outside vplan's envs) names no env with a "
                                           "shipped world model")):  # the last: the dataset of no vplan env below
        (other / "meta" / "info.json").write_text(json.dumps({**info, "robot_type": robot_type}))
        with pytest.raises(UsageError, match=re.escape(expected)):
            finetune(config(other, None, tmp_path / robot_type))
    # with worldmodel= given, a dataset of no vplan env finetunes it, and the result keeps the base model's env
    base = tmp_path / "base"
    torch.manual_seed(0)
    WorldModel(tiny_config()).save_pretrained(base, trained_on_env="tabletop")
    final = finetune(config(other, base, tmp_path / "so100_given", optim=replace(OPTIM, steps=1)))
    from vplan.shipped import trained_on_env

    assert trained_on_env(str(final)) == "tabletop"
    (other / "meta" / "info.json").write_text(json.dumps({**info, "features": {
        k: v for k, v in info["features"].items() if k != "observation.images.front"}}))
    with pytest.raises(UsageError, match="expected the camera feature 'observation.images.front'"):
        finetune(config(other, base, tmp_path / "no_camera"))


def test_cli_end_to_end_and_one_line_errors(setup, tmp_path, capsys):
    _, data, wm = setup
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "vplan.cli", "finetune", f"data={data}", f"worldmodel={wm}", f"out={out}",
               "episodes=1", "holdout_episodes=1", "memory.rank=4", "memory.gradient_checkpointing=false",
               "optim.steps=2", "optim.batch_size=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # a tiny model: one thread is faster
    assert result.returncode == 0, result.stderr
    assert "triples from 1 episode " in result.stdout and f"written to {out / 'final'}" in result.stdout
    assert "peak lr 2e-06)" in result.stdout  # 2 of the 20 warm-up steps; the configured 2e-05 is never reached
    WorldModel.from_pretrained(out / "final")
    for args, expected in ((["memory=none"], "memory=temp_lora"), ([f"data={tmp_path / 'none'}"], "vplan collect")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["finetune", f"worldmodel={wm}", f"out={tmp_path / 'bad'}", *args])
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1


def test_rounds_alternate_the_loops_and_a_killed_run_ends_bit_identical(setup, finetuned, tmp_path, monkeypatch,
                                                                         capsys):
    """rounds=2 over 2 episodes: round 1 stores episode 0 with the starting Φ (as one round does), the outer loop
    trains to step 2, round 2 stores episode 1 with Φ at step 2, then trains on both to step 4. A kill in round 2's
    inner loop is rerun to the same final weights."""
    root, data, wm = setup
    rounds = config(data, wm, tmp_path / "rounds", episodes=2, holdout_episodes=0, rounds=2)
    final = finetune(rounds)
    said = capsys.readouterr().out
    assert " triples from 2 episodes" in said  # round 2's outer loop: round 1's triples too
    assert "resuming from" not in said  # round 2 goes on from round 1's checkpoint: no resumption to announce
    out = tmp_path / "rounds"
    assert same_content(content(episode_file(out, 0)), content(episode_file(finetuned[0], 0)))

    def states_of_episode_1(model: WorldModel, path: Path) -> tuple[dict, dict]:
        episode = ft._usable_episodes(rounds)[0].episode(1)
        memory = TempLoRAMemory(MEMORY, model.eval())
        ft.run_inner_episode(model, memory, episode["observation.images.front"], list(episode["subgoal"]), path, 1)
        memory.close()
        return content(path)

    at_step_2 = WorldModel.from_pretrained(wm)
    at_step_2.load_state_dict(load_file(out / "checkpoint-0000002" / "model.safetensors"))
    assert same_content(content(episode_file(out, 1)), states_of_episode_1(at_step_2, tmp_path / "phi2.safetensors"))
    starting = states_of_episode_1(WorldModel.from_pretrained(wm), tmp_path / "phi0.safetensors")
    assert not same_content(content(episode_file(out, 1)), starting)

    original = ft.run_inner_episode

    def killed_on_episode_1(model, memory, frames, texts, path, episode):
        if episode == 1:
            raise KeyboardInterrupt
        return original(model, memory, frames, texts, path, episode)

    killed = replace(rounds, out=str(tmp_path / "killed"))
    monkeypatch.setattr(ft, "run_inner_episode", killed_on_episode_1)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        finetune(killed)
    monkeypatch.setattr(ft, "run_inner_episode", original)
    assert not episode_file(tmp_path / "killed", 1).exists()
    # what was kept and how to go on (only "interrupted" was said)
    assert "stopped in the inner loop: 1 of 2 episodes' states kept in" in capsys.readouterr().out

    def killed_at_once(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # nothing kept: it said "0 of 2 episodes' states kept ... goes on from them"
        patch.setattr(ft, "run_inner_episode", killed_at_once)
        with pytest.raises(KeyboardInterrupt):
            finetune(replace(rounds, out=str(tmp_path / "killed_at_once")))
    assert ("stopped in the inner loop before any episode's state was kept; the same command starts again"
            in capsys.readouterr().out)
    # when checkpoints are saved and losses logged changes no weight: a resume may change both
    resumed = finetune(replace(killed, optim=replace(OPTIM, save_every=1, log_every=3)))
    # round 1's outer loop ended at checkpoint 2: only round 2's resumes from it
    assert capsys.readouterr().out.count("resuming from") == 1
    ours, theirs = load_file(resumed / "unet.safetensors"), load_file(final / "unet.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    # A damaged round-2 episode deleted, as its error says: redone from Φ at round 1's end, whose checkpoint is
    # kept beside the newest two (it was pruned, and the redo refused with no way on but a new out=).
    assert sorted(p.name for p in list_checkpoints(tmp_path / "killed")) == [
        "checkpoint-0000002", "checkpoint-0000003", "checkpoint-0000004"]
    stored = content(episode_file(tmp_path / "killed", 1))
    episode_file(tmp_path / "killed", 1).unlink()
    again = finetune(replace(killed, optim=replace(OPTIM, save_every=1, log_every=3)))
    assert same_content(content(episode_file(tmp_path / "killed", 1)), stored)
    ours = load_file(again / "unet.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    with pytest.raises(ValueError, match="rounds: expected at most episodes=2"):
        replace(rounds, rounds=3)
    with pytest.raises(UsageError, match="other settings: optim.steps=4 when it began, 6 now; choose"):  # later
        # rounds' states depend on the outer loop
        finetune(replace(rounds, optim=replace(OPTIM, steps=6)))
    with pytest.raises(UsageError, match=r"other settings: rounds=2 when it began, 1 now; choose"):  # not optim.steps
        finetune(replace(rounds, rounds=1))
