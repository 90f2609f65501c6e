"""`vplan train`: the real command, a few steps of each component on a tiny dataset, checkpoints and resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from vplan.data.collect import CollectConfig, collect
from vplan.data.dataset import EpisodeDataset
from vplan.envs import TabletopConfig
from vplan.loop.checkpoint import list_checkpoints
from vplan.shipped import trained_on_env
from vplan.tasks import TaskConfig
from vplan.worldmodel.model import WorldModel

TINY_VAE = ["component.vae.block_out_channels=[8,16]", "component.vae.norm_num_groups=4", "component.vae.image_size=16"]
# the model's vae.* and unet.sample_size are left to component.vae (the trained VAE's settings)
TINY_WORLD_MODEL = [
    "model@component.model=tiny",  # configs/model/tiny.yaml
    "component.model.unet.cross_attention_dim=32",
    "component.model.text_encoder.kind=learned",
    "component.model.text_encoder.dim=32",
    "component.model.text_encoder.vocab_buckets=64",
    "component.model.context_frames=2",
    "component.model.chunk_frames=2",
    "component.model.diffusion.num_inference_steps=2",
]

TINY_MODEL = {
    "unet": {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4, "sample_size": 8,
             "cross_attention_dim": 32},
    "text_encoder": {"kind": "learned", "dim": 32, "vocab_buckets": 64},
    "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4, "image_size": 16},
    "context_frames": 2,
    "chunk_frames": 2,
}


def vplan_train(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vplan.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=3, out=str(out)))
    return out


def test_stopped_after_the_last_step_says_the_same_command_writes_final(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A Ctrl-C while the VAE's scaling factor and held-out PSNR were computed said only "interrupted"."""
    from vplan.loop import train as train_module
    from vplan.loop.config import TrainConfig, VAETrainConfig
    from vplan.loop.config import OptimConfig
    from vplan.loop.train import train_component
    from vplan.worldmodel.config import VAEConfig

    cfg = TrainConfig(component=VAETrainConfig(vae=VAEConfig.tiny(image_size=16), optim=OptimConfig(
        steps=2, batch_size=2, warmup_steps=1)), data=str(tiny_dataset), out=str(tmp_path / "vae"), holdout_episodes=1)
    estimate = train_module.estimate_scaling_factor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "estimate_scaling_factor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_component(cfg)
    assert f"stopped after the last step, before {tmp_path / 'vae' / 'final'} was written; the same command " \
           "writes it" in capsys.readouterr().out
    monkeypatch.setattr(train_module, "estimate_scaling_factor", estimate)
    assert train_component(cfg).is_dir()

    # stopped while the world model's latents were encoded (before any checkpoint): it said only "interrupted"
    from vplan.loop.config import WorldModelTrainConfig
    from vplan.worldmodel.config import WorldModelConfig

    monkeypatch.setattr(train_module, "episode_latents", interrupted)
    world = TrainConfig(component=WorldModelTrainConfig(model=WorldModelConfig(**TINY_MODEL), vae=str(
        tmp_path / "vae" / "final")), data=str(tiny_dataset), out=str(tmp_path / "wm"), holdout_episodes=1)
    with pytest.raises(KeyboardInterrupt):
        train_component(world)
    assert "stopped before the first training step; the same command starts it, reading the latents encoded so " \
           f"far from {tiny_dataset / '.cache' / 'latents'}" in capsys.readouterr().out


def test_a_dataset_no_larger_than_its_held_out_part_says_what_to_change(tiny_dataset, tmp_path, capsys, monkeypatch):
    result = vplan_train("component=vae", f"data={tiny_dataset}", f"out={tmp_path / 'out'}", "holdout_episodes=3")
    assert result.returncode == 2 and result.stderr.strip().endswith(
        "has 3 episodes; expected more than holdout_episodes=3 (lower holdout_episodes=, or collect more episodes)")
    assert not (tmp_path / "out").exists()
    from vplan.cli import main

    # from meta/info.json, before the command's module and its models load (it came after ~12 s, helper-209)
    monkeypatch.setattr("vplan.cli.Command.load", lambda command: pytest.fail(f"{command.name} loaded"))
    for args in (["train", "component=worldmodel"], ["finetune"]):
        with pytest.raises(SystemExit) as stop:
            main([*args, f"data={tiny_dataset}", f"out={tmp_path / 'out'}", "holdout_episodes=3"])
        assert stop.value.code == 2
        assert "has 3 episodes; expected more than holdout_episodes=3" in capsys.readouterr().err


def test_vae_then_world_model_train_save_and_resume(tiny_dataset, tmp_path):
    optim = ["component.optim.batch_size=2", "component.optim.save_every=2", "holdout_episodes=1"]
    vae_out = tmp_path / "vae"
    result = vplan_train("component=vae", f"data={tiny_dataset}", f"out={vae_out}", "component.optim.steps=2", *optim, *TINY_VAE)
    assert result.returncode == 0, result.stderr
    assert "held-out reconstruction PSNR" in result.stdout
    assert (vae_out / "final" / "diffusion_pytorch_model.safetensors").is_file()
    metrics = json.loads((vae_out / "final" / "metrics.json").read_text())  # the printed figure, kept
    assert f"PSNR {metrics['reconstruction_psnr_db']:.2f} dB on {metrics['frames']} frames" in result.stdout
    assert metrics["held_out_episodes"] == [2]

    wm_out = tmp_path / "wm"
    common = [f"data={tiny_dataset}", f"out={wm_out}", f"component.vae={vae_out / 'final'}", *optim, *TINY_WORLD_MODEL]
    result = vplan_train("component=worldmodel", "component.optim.steps=2", *common)
    assert result.returncode == 0, result.stderr
    result = vplan_train("component=worldmodel", "component.optim.steps=4", *common)  # resumes at step 2
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout + result.stderr
    assert (wm_out / "checkpoint-0000004").is_dir()
    # Continuing with other settings, or on another VAE's latents, would mix two runs in one model: refused.
    result = vplan_train("component=worldmodel", "component.optim.steps=6", "component.optim.lr=1e-3", *common)
    assert result.returncode == 2 and "other settings: component.optim.lr=" in result.stderr
    (vae_out / "final" / "notes.txt").write_text("retrained")
    result = vplan_train("component=worldmodel", "component.optim.steps=6", *common)
    assert result.returncode == 2 and "vae=" in result.stderr and "its files changed" in result.stderr
    (vae_out / "final" / "notes.txt").unlink()
    assert not (wm_out / "checkpoint-0000006").exists()

    assert trained_on_env(str(wm_out / "final")) == "tabletop"  # the dataset's env, so a run elsewhere warns
    model = WorldModel.from_pretrained(wm_out / "final")
    assert (model.config.vae.image_size, model.config.unet.sample_size) == (16, 8)  # the VAE's, not the preset's
    first = torch.zeros(1, 1, 4, 8, 8)
    chunk = model.generate(first, ["pick up the red cube"], generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (1, 2, 4, 8, 8)
    assert model.decode(chunk).shape == (1, 2, 16, 16, 3)


def test_a_vae_and_a_world_model_train_and_resume_under_several_processes(tiny_dataset, tmp_path):
    """As `accelerate launch --multi_gpu` runs it, here on the CPU under torchrun: the first process alone
    encodes the latents, writes and prints; a refusal is every process's; a run goes on under another count."""
    import os

    optim = ["component.optim.batch_size=2", "component.optim.save_every=2", "holdout_episodes=1"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "vplan.cli", "train", f"data={tiny_dataset}", *optim]
    vae_out = tmp_path / "vae"  # the VAE's loss calls encode and decode, not its forward: trained through DDP too
    result = subprocess.run([*torchrun, "component=vae", f"out={vae_out}", "component.optim.steps=1", *TINY_VAE],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("held-out reconstruction PSNR") == 1
    world_model = ["component=worldmodel", f"out={tmp_path / 'wm'}", f"component.vae={vae_out / 'final'}",
                   *TINY_WORLD_MODEL]
    for steps in (2, 4):  # the second resumes at step 2
        result = subprocess.run([*torchrun, *world_model, f"component.optim.steps={steps}"], capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("world model written to") == 1
    assert result.stdout.count("resuming from") == 1
    assert [c.name for c in list_checkpoints(tmp_path / "wm")] == ["checkpoint-0000002", "checkpoint-0000004"]
    # a refusal is every process's (the first's alone left the others waiting for it)
    result = subprocess.run([*torchrun, *world_model, "component.optim.steps=6", "component.optim.lr=1e-3"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and result.stderr.count("other settings: component.optim.lr=") == 2
    result = vplan_train(f"data={tiny_dataset}", *optim, *world_model, "component.optim.steps=6")  # one process
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and (tmp_path / "wm" / "checkpoint-0000006").is_dir()
    assert WorldModel.from_pretrained(tmp_path / "wm" / "final").config.chunk_frames == 2


def test_a_resume_on_a_dataset_that_grew_is_refused(tiny_dataset, tmp_path, capsys):
    """Its last `holdout_episodes` are other episodes now: the run would train on the ones it held out."""
    import shutil

    from vplan.cli import main

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    args = ["train", "component=vae", f"data={data}", f"out={tmp_path / 'vae'}", "holdout_episodes=1",
            "component.optim.batch_size=2", "component.optim.save_every=1", *TINY_VAE]
    main([*args, "component.optim.steps=1"])
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=4, out=str(data)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([*args, "component.optim.steps=2"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "holds 4 episodes now, 3 when" in err
    assert "(then 2..2) would be trained on" in err
    assert len(list_checkpoints(tmp_path / "vae")) == 1  # nothing trained on the moved split


def test_holdout_episodes_0_trains_on_every_episode_and_pins_their_number(tiny_dataset, tmp_path, capsys,
                                                                          monkeypatch):
    """A dataset of a few episodes (a run's recording of one) could not be trained on whole: 0 was refused."""
    from vplan.cli import main
    from vplan.loop import train as train_module

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    args = ["train", "component=vae", f"data={data}", f"out={tmp_path / 'vae'}", "holdout_episodes=0",
            "component.optim.batch_size=2", "component.optim.save_every=1", *TINY_VAE]
    read = []
    frames = train_module._frames
    monkeypatch.setattr(train_module, "_frames", lambda dataset, episodes: read.append(list(episodes)) or
                        frames(dataset, episodes))
    main([*args, "component.optim.steps=1"])
    assert read == [[0, 1, 2]]  # trained on all three; none scored
    assert "no held-out figure (holdout_episodes=0)" in capsys.readouterr().out
    assert json.loads((tmp_path / "vae" / "split.json").read_text()) == {"episodes": 3, "held_out": []}
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=4, out=str(data)))
    with pytest.raises(SystemExit) as stopped:  # nothing held out to leak, but the training set would change
        main([*args, "component.optim.steps=2"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "holds 4 episodes now, 3 when" in err
    assert "the episodes trained on would change part-way" in err


def test_a_vae_takes_the_dataset_frame_size_and_says_so(tiny_dataset, tmp_path, capsys):
    from diffusers import AutoencoderKL

    from vplan.cli import main

    small = ["component.vae.block_out_channels=[8,16]", "component.vae.norm_num_groups=4", "holdout_episodes=1"]
    # the 64x64 default on 16x16 frames (refused before; a 16 px VAE is the only one these frames can train)
    main(["train", "component=vae", f"data={tiny_dataset}", f"out={tmp_path / 'vae'}", "component.optim.steps=1",
          *small])
    assert "component.vae.image_size=16, the dataset's frames (not 64)" in capsys.readouterr().out
    assert AutoencoderKL.from_pretrained(tmp_path / "vae" / "final").config.sample_size == 16
    # a VAE that cannot read them: refused before anything is written
    with pytest.raises(SystemExit) as stopped:
        main(["train", "component=vae", f"data={tiny_dataset}", f"out={tmp_path / 'deep'}", *small,
              "component.vae.block_out_channels=[4,4,4,4,4,4]"])
    assert stopped.value.code == 2
    assert ("the dataset's frames are 16x16, which component.vae cannot read: image_size: expected a multiple of "
            "the downsampling factor 32") in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()


def test_training_episodes_on_held_out_seeds_are_named(tmp_path):
    """`vplan run record=true` records seeds 10000+, the scenes a default evaluation of what is trained plays;
    `vplan finetune` said so, `vplan train` did not."""
    import warnings

    from vplan.errors import VplanWarning
    from vplan.loop.train import _split

    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    data = tmp_path / "d"
    with pytest.warns(VplanWarning, match="seeds 10000..10001"):  # collect says so too
        collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=3, seed=9999, out=str(data)))
    with pytest.warns(VplanWarning, match=r"1 of the episodes to train on were recorded on seeds 10000..10000"):
        _split(str(data), 1, "`vplan collect`")  # 9999 and 10000 trained on, 10001 held out
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplanWarning)
        _split(str(data), 2, "`vplan collect`")  # 9999 alone


def test_a_damaged_dataset_found_as_it_opens_is_the_error_found_later(tiny_dataset, tmp_path):
    """Every error opening the data ended "make one with `vplan collect out=DIR`" (which refuses a folder holding
    a dataset) and exited 2, a damaged video found later 1."""
    from vplan.errors import DamagedDatasetError
    from vplan.loop.train import _split

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    episodes = next(data.glob("meta/episodes/*/*.parquet"))
    episodes.write_bytes(episodes.read_bytes()[:100])
    with pytest.raises(DamagedDatasetError, match="the dataset is damaged") as error:
        _split(str(data), 1, "`vplan collect`")
    assert "make one" not in str(error.value)


def test_missing_dataset_and_missing_vae_are_one_line_errors(tiny_dataset, tmp_path):
    result = vplan_train(f"data={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "vplan collect" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = vplan_train(f"data={tiny_dataset}", "holdout_episodes=1", f"component.vae={tmp_path / 'novae'}",
                         f"out={tmp_path / 'out'}", *TINY_WORLD_MODEL)
    assert result.returncode == 2
    assert f"component.vae={tmp_path / 'novae'}: no trained VAE there" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything is written
    from vplan.errors import UsageError
    from vplan.loop.train import _load_vae
    from vplan.shipped import resolve_checkpoint

    # a world model's checkpoint gives its own VAE (was refused: the IDM for the shipped model needed an export)
    shipped = WorldModel.from_pretrained("shipped:tabletop/worldmodel").vae
    for spec in ("shipped:tabletop/worldmodel", str(resolve_checkpoint("shipped:tabletop/worldmodel"))):
        vae = _load_vae(spec)
        assert vae.config.scaling_factor == shipped.config.scaling_factor and not vae.training
        assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(UsageError, match=r"^component.vae=shipped:tabletop/idm: holds no VAE; .*shipped:tabletop/wor"):
        _load_vae("shipped:tabletop/idm", env="tabletop")
    with pytest.raises(UsageError, match=r"no trained VAE there; .*\(shipped:blockworld/worldmodel\) for its VAE, "
                                         r"or component.vae=null to train on real frames"):
        _load_vae(str(tmp_path / "novae"), optional=True, env="blockworld")  # the IDM's: it trains without one too
    with pytest.raises(UsageError, match="component.vae=.*: an IDM's checkpoint, which holds no VAE; train one"):
        _load_vae(str(resolve_checkpoint("shipped:tabletop/idm")))
    (tmp_path / "other_model").mkdir()  # another tool's model
    (tmp_path / "other_model" / "config.json").write_text('{"kind": "something else"}')
    with pytest.raises(UsageError, match="component.vae=.*: not a VAE .*no diffusion_pytorch_model.safetensors there"):
        _load_vae(str(tmp_path / "other_model"))
    # a VAE training's run folder, or one of its checkpoints: the final/ to pass is named, as for worldmodel= (it
    # said only "no trained VAE there"; helper-200)
    run = tmp_path / "vae_run"
    (run / "checkpoint-0000060").mkdir(parents=True)
    (run / "checkpoint-0000060" / "trainer_state.json").write_text("{}")
    with pytest.raises(UsageError, match=r"a training checkpoint, for resuming, not loading; run the same command "):
        _load_vae(str(run / "checkpoint-0000060"))
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match=fr"component.vae={run}: a training run's directory; pass "
                                         fr"component.vae={run / 'final'}$"):
        _load_vae(str(run))
    result = vplan_train(f"data={tiny_dataset}", "holdout_episodes=1", f"component.vae={run}", *TINY_WORLD_MODEL,
                         f"component.init={tmp_path / 'noinit'}", f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and "a training run's directory" in result.stderr  # before torch loads
    old_format = tmp_path / "v21"  # a LeRobot v2.1 dataset: its own one-line refusal, not a traceback from the
    (old_format / "meta").mkdir(parents=True)  # early check of component.vae (helper-201)
    (old_format / "meta" / "info.json").write_text('{"codebase_version": "v2.1"}')
    result = vplan_train("component=worldmodel", f"data={old_format}", f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "expected 'v3.0'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = vplan_train(f"data={tiny_dataset}", "holdout_episodes=1", "component.vae=shipped:tabletop/worldmodel",
                         *TINY_WORLD_MODEL, f"component.init={tmp_path / 'noinit'}", f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and f"component.init={tmp_path / 'noinit'}: no checkpoint at" in result.stderr
    assert not (tmp_path / "out").exists()
    other_camera = tmp_path / "top_camera"  # a LeRobot dataset recorded elsewhere, its camera named otherwise
    shutil.copytree(tiny_dataset, other_camera)
    info = json.loads((other_camera / "meta" / "info.json").read_text())
    info["features"]["observation.images.top"] = info["features"].pop("observation.images.front")
    (other_camera / "meta" / "info.json").write_text(json.dumps(info))
    result = vplan_train("component=vae", f"data={other_camera}", "holdout_episodes=1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "expected the camera feature 'observation.images.front'" in result.stderr
    assert "found ['observation.images.top']" in result.stderr


def test_a_clip_too_long_and_an_init_among_the_results_are_refused_before_anything_is_written(
        tiny_dataset, tmp_path, monkeypatch):
    """The clip was found after the latents were made, naming no setting; an init in out's final/ was deleted at
    the first step."""
    from vplan.errors import UsageError
    from vplan.loop import train as train_module
    from vplan.loop.config import TrainConfig, WorldModelTrainConfig
    from vplan.loop.config import OptimConfig
    from vplan.loop.train import train_component
    from vplan.worldmodel.config import WorldModelConfig

    WorldModel(WorldModelConfig(**TINY_MODEL)).vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    monkeypatch.setattr(train_module, "episode_latents", lambda *args, **kwargs: pytest.fail("latents made"))
    longest = max(int(EpisodeDataset(tiny_dataset).episode_meta(e)["length"]) for e in (0, 1))
    component = WorldModelTrainConfig(model=WorldModelConfig(**{**TINY_MODEL, "chunk_frames": longest}),
                                      vae=str(tmp_path / "vae"), optim=OptimConfig(steps=1, batch_size=1))
    with pytest.raises(UsageError, match=rf"^no training episode is long enough for a {longest + 2}-frame clip "
                                         rf"\(component.model.context_frames \+ chunk_frames; the longest has "
                                         rf"{longest} frames\)"):
        train_component(TrainConfig(component=component, data=str(tiny_dataset), out=str(tmp_path / "wm"),
                                    holdout_episodes=1))
    assert not (tmp_path / "wm").exists()
    # a model to start from among the results this run replaces: its final/ went at the first step
    WorldModel(WorldModelConfig(**TINY_MODEL)).save_pretrained(tmp_path / "wm" / "final")
    component = WorldModelTrainConfig(model=WorldModelConfig(**TINY_MODEL), vae=str(tmp_path / "vae"),
                                      init=str(tmp_path / "wm" / "final"), optim=OptimConfig(steps=1, batch_size=1))
    with pytest.raises(UsageError, match=r"^component.init=.*/wm/final lies in out=.*/wm, whose results this run"):
        train_component(TrainConfig(component=component, data=str(tiny_dataset), out=str(tmp_path / "wm"),
                                    holdout_episodes=1))


def test_boundary_fraction_starts_chunks_on_a_new_subgoal():
    from vplan.loop.config import WorldModelTrainConfig
    from vplan.loop.train import WorldModelTraining
    from vplan.worldmodel.config import WorldModelConfig

    config = WorldModelTrainConfig(model=WorldModelConfig(**TINY_MODEL), boundary_fraction=1.0)
    texts = [["a"] * 5 + ["b"] * 6 + ["c"] * 5, ["d"] * 16]  # subgoals b and c start at frames 5 and 11
    latents = [torch.arange(len(t), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 4, 8, 8) for t in texts]
    training = WorldModelTraining(config, latents, texts, vae=None)
    assert training.boundaries == [(0, 6), (0, 12)]  # the chunks' first frames
    for step in range(20):
        batch = training.batch(torch.Generator().manual_seed(step), 4)
        # as with the agent: the context ends on the subgoal's first frame, where its first action is taken
        last_context = batch["context"][:, -1, 0, 0, 0].tolist()
        assert [{5.0: "b", 11.0: "c"}[frame] for frame in last_context] == batch["texts"]
    config.boundary_fraction = 0.0
    seen = {t for step in range(20) for t in WorldModelTraining(config, latents, texts, vae=None).batch(
        torch.Generator().manual_seed(step), 4)["texts"]}
    assert "d" in seen  # uniform clips come from every episode
    lengths = {WorldModelTraining(config, latents, texts, vae=None).batch(torch.Generator().manual_seed(step), 2)[
        "context"].shape[1] for step in range(40)}
    # every context length from a first frame to the window: the agent starts each episode from one frame
    assert lengths == set(range(1, config.model.context_frames + 1))
    with pytest.raises(ValueError, match="boundary_fraction"):
        WorldModelTrainConfig(boundary_fraction=1.5)


def test_init_starts_from_another_world_model_but_keeps_this_vae(tiny_dataset, tmp_path, capsys):
    from dataclasses import replace

    from vplan.errors import UsageError
    from vplan.loop.config import WorldModelTrainConfig
    from vplan.loop.train import WorldModelTraining
    from vplan.worldmodel.config import WorldModelConfig

    model_config = WorldModelConfig(**TINY_MODEL)
    torch.manual_seed(1)
    source = WorldModel(model_config)
    with torch.no_grad():
        for parameter in source.parameters():  # not what a fresh model would draw again
            parameter.add_(torch.randn_like(parameter) * 0.01)
    source.save_pretrained(tmp_path / "source")
    texts = [["a"] * 8]
    latents = [torch.zeros(8, 4, 8, 8)]
    vae = WorldModel(model_config).vae  # this env's VAE
    training = WorldModelTraining(WorldModelTrainConfig(model=model_config, init=str(tmp_path / "source")), latents,
                                  texts, vae=vae)
    for name, tensor in source.unet.state_dict().items():
        assert torch.equal(training.module.unet.state_dict()[name], tensor), name
    for name, tensor in vae.state_dict().items():
        assert torch.equal(training.module.vae.state_dict()[name], tensor), name
    scratch = WorldModelTraining(WorldModelTrainConfig(model=model_config), latents, texts, vae=vae)
    assert not torch.equal(scratch.module.unet.conv_in.weight, source.unet.conv_in.weight)
    assert "another noise process" not in capsys.readouterr().out
    flow = replace(model_config, diffusion=replace(model_config.diffusion, objective="flow", sampler="flow_euler"))
    WorldModelTraining(WorldModelTrainConfig(model=flow, init=str(tmp_path / "source")), latents, texts, vae=vae)
    assert "another noise process (objective epsilon, here flow)" in capsys.readouterr().out  # loaded, and said

    # a resumed run takes its weights from its own checkpoint: the source need not exist any more
    missing = WorldModelTrainConfig(model=model_config, init=str(tmp_path / "deleted"))
    with pytest.raises(UsageError, match="component.init="):
        WorldModelTraining(missing, latents, texts, vae=vae)
    resumed = WorldModelTraining(missing, latents, texts, vae=vae, resuming=True)
    from vplan.loop.config import TrainConfig
    from vplan.loop.train import train_component

    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    with pytest.raises(UsageError, match=r"^component.init=.*/deleted: no checkpoint at"):  # before any is written
        train_component(TrainConfig(component=replace(missing, vae=str(tmp_path / "vae")), data=str(tiny_dataset),
                                    out=str(tmp_path / "out"), holdout_episodes=1))
    assert not (tmp_path / "out").exists()
    assert torch.equal(resumed.module.unet.conv_in.weight, scratch.module.unet.conv_in.weight)
    # an init whose config.json does not parse, a MiniLM folder without its weights: refused as early (they were
    # found after the latents, config.yaml, split.json and checkpoints.json were written)
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "config.json").write_text("not json")
    unreadable = replace(missing, vae=str(tmp_path / "vae"), init=str(tmp_path / "unreadable"))
    minilm = replace(missing, vae=str(tmp_path / "vae"), init=None, model=replace(
        model_config, unet=replace(model_config.unet, cross_attention_dim=384),
        text_encoder=replace(model_config.text_encoder, kind="minilm", dim=384, path=str(tmp_path / "none"))))
    # a VAE for other frames than the dataset's: a traceback from the latent cache, after config.yaml was written
    from vplan.worldmodel.vae import build_vae

    build_vae(replace(model_config.vae, image_size=32)).save_pretrained(tmp_path / "vae32", safe_serialization=True)
    other_vae_size = replace(missing, vae=str(tmp_path / "vae32"), init=None)
    # an init of another architecture: found after the latents were made
    other_architecture = replace(missing, vae=str(tmp_path / "vae"), init=str(tmp_path / "source"), model=replace(
        model_config, unet=replace(model_config.unet, block_out_channels=(8, 24))))
    for component, said in ((unreadable, r"^component.init=.*/unreadable: .*config.json: expected JSON"),
                            (other_architecture, r"^component.init=.*/source: .*shape"),
                            (minilm, r"^component.model.text_encoder.path=.* holds no model.safetensors; .*, or set "
                                     r"component.model.text_encoder.kind=learned"),
                            (other_vae_size, r"^the dataset's frames are 16x16; component.vae=.*vae32 reads 32x32 "
                                             r"frames: pass a VAE trained on this dataset's frames$")):
        with pytest.raises(UsageError, match=said):
            train_component(TrainConfig(component=component, data=str(tiny_dataset), out=str(tmp_path / "out"),
                                        holdout_episodes=1))
        assert not (tmp_path / "out").exists()

    wider = replace(model_config, unet=replace(model_config.unet, block_out_channels=(8, 24)))
    with pytest.raises(UsageError, match="component.init=.*shape"):
        WorldModelTraining(WorldModelTrainConfig(model=wider, init=str(tmp_path / "source")), latents, texts, vae=vae)

    # init dropped on a resume (allowed): config.yaml still says where the run began (it was rewritten as null)
    from omegaconf import OmegaConf

    began = replace(missing, vae=str(tmp_path / "vae"), init=str(tmp_path / "source"),
                    optim=replace(missing.optim, steps=1, warmup_steps=1))
    out = tmp_path / "from_source"
    train_component(TrainConfig(component=began, data=str(tiny_dataset), out=str(out), holdout_episodes=1))
    train_component(TrainConfig(component=replace(began, init=None, optim=replace(began.optim, steps=2)),
                                data=str(tiny_dataset), out=str(out), holdout_episodes=1))
    assert OmegaConf.load(out / "config.yaml").component.init == str(tmp_path / "source")


def test_a_world_model_on_exploratory_data_warns(tiny_dataset, tmp_path):
    """Exploratory segments carry the text of the subgoal the expert was pursuing, not what their frames show."""
    import warnings

    from omegaconf import OmegaConf

    from vplan.errors import VplanWarning
    from vplan.loop.config import TrainConfig, WorldModelTrainConfig
    from vplan.loop.config import OptimConfig
    from vplan.loop.train import train_component
    from vplan.worldmodel.config import WorldModelConfig

    model_config = WorldModelConfig(**TINY_MODEL)
    WorldModel(model_config).vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    exploring = tmp_path / "exploring"
    shutil.copytree(tiny_dataset, exploring)
    recorded = OmegaConf.load(exploring / "config.yaml")
    recorded.explore_fraction = 0.2
    OmegaConf.save(recorded, exploring / "config.yaml")

    def train_on(data, out: str) -> None:
        component = WorldModelTrainConfig(model=model_config, vae=str(tmp_path / "vae"),
                                          optim=OptimConfig(steps=1, batch_size=1, warmup_steps=1))
        train_component(TrainConfig(component=component, data=str(data), out=str(tmp_path / out), holdout_episodes=1))

    with pytest.warns(VplanWarning, match=r"collected with explore_fraction=0.2: its random segments are labelled "
                                          r"with the subgoal the expert was pursuing"):
        train_on(exploring, "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplanWarning)
        train_on(tiny_dataset, "b")  # expert-only


def test_a_resume_of_a_run_that_records_no_settings_is_a_warning_not_a_result_line(tmp_path):
    """It was printed to stdout, among the results, and so missed by `2>warnings.log`."""
    from vplan.errors import VplanWarning
    from vplan.loop.config import TrainConfig, VAETrainConfig
    from vplan.loop.train import _record_config
    from vplan.worldmodel.config import VAEConfig

    cfg = TrainConfig(component=VAETrainConfig(vae=VAEConfig.tiny(image_size=16)), data="data", out=str(tmp_path))
    with pytest.warns(VplanWarning, match="does not record the settings it was begun with"):
        _record_config(cfg, tmp_path, resuming=True, write=False)
