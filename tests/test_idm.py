"""Inverse dynamics: `vplan train component=idm` on a tiny dataset, checkpoints, input checks, learnability."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vplan.cli import main
from vplan.data import EpisodeDataset
from vplan.data.collect import CollectConfig, collect
from vplan.envs import TabletopConfig
from vplan.errors import UsageError
from vplan.loop.config import IDMTrainConfig, OptimConfig, TrainConfig
from vplan.loop.idm import Episode, IDMTraining, check_fits, error_report, evenly_spaced, load_episodes
from vplan.loop.train import train_component
from vplan.policies.config import IDMConfig
from vplan.policies.idm import IDMInputError, IDMPolicy, windows
from vplan.shipped import trained_on_env
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import VAEConfig, WorldModelConfig
from vplan.worldmodel.model import CheckpointError, WorldModel
from vplan.worldmodel.vae import build_vae

# (its image_size follows the dataset's frames: 16)
TINY_IDM = ["component.idm.channels=[8,16]", "component.idm.hidden_dim=32",
            "component.idm.norm_num_groups=4"]
SMALL_OPTIM = ["component.optim.batch_size=4", "component.optim.save_every=2", "component.optim.warmup_steps=1",
               "holdout_episodes=1"]


def vplan_train(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vplan.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 expert episodes at 16×16 with exploratory segments and action noise."""
    out = tmp_path_factory.mktemp("data") / "ds"
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    config = CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=3, out=str(out),
                           explore_fraction=0.2, noise_std=0.05)
    collect(config)
    return out


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """An (untrained) tiny VAE saved like `vplan train component=vae` saves one."""
    path = tmp_path_factory.mktemp("vae") / "final"
    torch.manual_seed(0)
    build_vae(VAEConfig.tiny(image_size=16)).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def policy() -> IDMPolicy:
    torch.manual_seed(0)
    return IDMPolicy(IDMConfig.tiny()).eval()


def random_frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (*shape, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# -- training through the CLI and train_component


def test_train_through_the_cli_with_a_vae_then_resume(tiny_dataset: Path, tiny_vae: Path, tmp_path: Path) -> None:
    out = tmp_path / "idm"
    common = [f"data={tiny_dataset}", f"out={out}", f"component.vae={tiny_vae}", *TINY_IDM, *SMALL_OPTIM]
    result = vplan_train("component=idm", "component.optim.steps=2", *common)
    assert result.returncode == 0, result.stderr
    assert "held-out error" in result.stdout and "VAE frames" in result.stdout and "real frames" in result.stdout
    assert "component.idm.image_size=16, the dataset's frames (not 64)" in result.stdout
    result = vplan_train("component=idm", "component.optim.steps=4", *common)  # resumes at step 2
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout + result.stderr
    assert (out / "checkpoint-0000004").is_dir()

    metrics = json.loads((out / "final" / "metrics.json").read_text())
    held_out = EpisodeDataset(tiny_dataset).episode(2)
    for source in ("real", "vae"):
        report = metrics[source]
        assert report["transitions"] == len(held_out["action"]) - 1
        assert len(report["mae"]) == len(report["baseline_mae"]) == 3
        assert 0.0 <= report["grip_accuracy"] <= 1.0
    assert metrics["held_out_episodes"] == [2]

    from diffusers import AutoencoderKL

    from vplan.worldmodel.latent_cache import vae_fingerprint

    recorded = json.loads((out / "final" / "config.json").read_text())["reads_vae"]  # whose decodes it learned
    assert recorded == vae_fingerprint(AutoencoderKL.from_pretrained(tiny_vae))
    policy = IDMPolicy.from_pretrained(out / "final")
    frames = held_out["observation.images.front"]
    actions = policy.actions_for_chunk(frames[:9])
    assert actions.shape == (8, 4) and actions.abs().max() <= 1.0
    assert set(actions[:, 3].tolist()) <= {-1.0, 1.0}


def test_an_idm_trained_on_every_episode_writes_no_held_out_figure(tiny_dataset: Path, tmp_path: Path, capsys):
    optim = OptimConfig(steps=1, batch_size=4, save_every=1, warmup_steps=1)
    cfg = TrainConfig(component=IDMTrainConfig(idm=IDMConfig.tiny(), vae=None, optim=optim), data=str(tiny_dataset),
                      out=str(tmp_path / "idm"), holdout_episodes=0)
    final = train_component(cfg)
    assert json.loads((final / "metrics.json").read_text()) == {"label": "applied", "held_out_episodes": []}
    assert f"IDM written to {final}; no held-out figure (holdout_episodes=0)" in capsys.readouterr().out


def test_an_idm_on_the_expert_alone_warns(tiny_dataset: Path, tmp_path: Path) -> None:
    """The README's default data= is the expert's: an IDM trained there never sees random motions, unsaid."""
    import shutil
    import warnings

    from omegaconf import OmegaConf

    from vplan.errors import VplanWarning

    expert_only, elsewhere = tmp_path / "expert_only", tmp_path / "elsewhere"
    for copy in (expert_only, elsewhere):
        shutil.copytree(tiny_dataset, copy)
    recorded = OmegaConf.load(expert_only / "config.yaml")
    recorded.explore_fraction, recorded.noise_std = 0.0, 0.0
    OmegaConf.save(recorded, expert_only / "config.yaml")
    (elsewhere / "config.yaml").unlink()  # a dataset vplan collect did not write: nothing to go by

    def train_on(data: Path) -> None:
        optim = OptimConfig(steps=1, batch_size=4, save_every=1, warmup_steps=1)
        train_component(TrainConfig(component=IDMTrainConfig(idm=IDMConfig.tiny(), vae=None, optim=optim),
                                    data=str(data), out=str(tmp_path / data.name / "idm"), holdout_episodes=0))

    with pytest.warns(VplanWarning, match=r"holds the expert alone \(collected without explore_fraction= or "
                                          r"noise_std=\): the IDM never sees .*explore_fraction=0.2 noise_std=0.05"):
        train_on(expert_only)
    for data in (tiny_dataset, elsewhere):
        with warnings.catch_warnings():
            warnings.simplefilter("error", VplanWarning)
            train_on(data)


def test_a_grip_learned_from_a_value_that_is_no_grip_is_warned_of(tiny_dataset: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """An env of one's own whose last action value is a motion axis (here always 0) trained with the default
    binary_gripper=true: learned as ±1 and then sent so, with a "grip accuracy" of 100% (helper-202). The tabletop's
    own grips (the test above, in error mode) are not warned of."""
    import vplan.loop.idm as idm_training
    from vplan.errors import VplanWarning

    load = idm_training.load_episodes

    def without_grip(*args, **kwargs):
        episodes = load(*args, **kwargs)
        for episode in episodes:
            episode.actions[:, -1] = 0.0
        return episodes

    monkeypatch.setattr(idm_training, "load_episodes", without_grip)
    optim = OptimConfig(steps=1, batch_size=4, save_every=1, warmup_steps=1)
    for binary, warned in ((True, 1), (False, 0)):
        idm = IDMConfig(**{**IDMConfig.tiny().to_dict(), "binary_gripper": binary})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_component(TrainConfig(component=IDMTrainConfig(idm=idm, vae=None, optim=optim),
                                        data=str(tiny_dataset), out=str(tmp_path / str(binary)), holdout_episodes=0))
        said = [w for w in caught if issubclass(w.category, VplanWarning) and "binary_gripper=true learns" in str(
            w.message)]
        assert len(said) == warned and all("binary_gripper=false" in str(w.message) for w in said)


def test_a_resume_past_its_steps_and_a_missing_vae_are_refused_before_the_data_is_read(
        tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """The step refusal came after the pass through the VAE: minutes on a real dataset. The missing VAE's names
    the IDM's way without one."""
    import vplan.loop.idm as idm_loop

    def train_to(steps: int) -> None:
        optim = OptimConfig(steps=steps, batch_size=4, save_every=2, warmup_steps=1)
        train_component(TrainConfig(component=IDMTrainConfig(idm=IDMConfig.tiny(), vae=None, optim=optim),
                                    data=str(tiny_dataset), out=str(tmp_path / "idm"), holdout_episodes=1))

    train_to(2)
    monkeypatch.setattr(idm_loop, "load_episodes", lambda *args: pytest.fail("the data was read"))
    missing = IDMTrainConfig(idm=IDMConfig.tiny(), vae=str(tmp_path / "novae"), optim=OptimConfig(steps=1))
    with pytest.raises(UsageError, match=r"no trained VAE there; .*or component.vae=null to train on real frames"):
        train_component(TrainConfig(component=missing, data=str(tiny_dataset), out=str(tmp_path / "other"),
                                    holdout_episodes=1))
    with pytest.raises(UsageError, match=r"checkpoint-0000002 is at step 2, past component.optim.steps=1"):
        train_to(1)


def test_train_component_without_a_vae(tiny_dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import vplan.loop.idm as idm_loop
    from vplan.constants import ACTION_APPLIED

    loaded = []
    load = idm_loop.load_episodes
    monkeypatch.setattr(idm_loop, "load_episodes", lambda dataset, indices, *rest: loaded.append(list(indices)) or
                        load(dataset, indices, *rest))
    idm = IDMConfig.tiny()
    optim = OptimConfig(steps=2, batch_size=4, save_every=2, warmup_steps=1)
    cfg = TrainConfig(component=IDMTrainConfig(idm=idm, vae=None, optim=optim), data=str(tiny_dataset),
                      out=str(tmp_path / "idm"), holdout_episodes=1)
    final = train_component(cfg)
    metrics = json.loads((final / "metrics.json").read_text())
    assert set(metrics) == {"label", "held_out_episodes", "real"} and metrics["label"] == "applied"
    assert loaded == [[0, 1], [2]] and metrics["held_out_episodes"] == [2]  # trained on none it is scored on
    # the baseline predicts the training transitions' mean action, scored on the held-out ones
    dataset = EpisodeDataset(tiny_dataset)
    actions = [torch.from_numpy(np.array(dataset.episode(i)[ACTION_APPLIED], np.float32))[:-1] for i in range(3)]
    continuous = slice(0, -1) if idm.binary_gripper else slice(None)
    expected = (torch.cat(actions[:2]).mean(0) - actions[2])[:, continuous].abs().mean(0)
    np.testing.assert_allclose(metrics["real"]["baseline_mae"], expected.numpy(), rtol=1e-5)
    assert metrics["real"]["transitions"] == len(actions[2])
    assert "VAE frames" not in capsys.readouterr().out
    assert IDMPolicy.from_pretrained(final).config == idm
    # the env settings its actions were recorded at, from the dataset `vplan collect` wrote
    assert EpisodeDataset(tiny_dataset).action_units == {"max_delta": 0.03, "control_hz": 10}
    assert json.loads((final / "config.json").read_text())["action_units"] == {"max_delta": 0.03, "control_hz": 10}
    assert trained_on_env(str(final)) == "tabletop"


def test_no_training_episode_is_reconstructed_when_training_samples_none(tiny_dataset: Path, tiny_vae: Path,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """vae_fraction=0: only the held-out episodes go through the VAE (each ~30 ms a frame on the CPU)."""
    import vplan.loop.idm as idm_loop

    reconstructed = []
    load = idm_loop.load_episodes
    monkeypatch.setattr(idm_loop, "load_episodes", lambda dataset, indices, config, vae, reconstruct, *rest:
                        reconstructed.append(reconstruct) or load(dataset, indices, config, vae, reconstruct, *rest))
    component = IDMTrainConfig(idm=IDMConfig.tiny(), vae=str(tiny_vae), vae_fraction=0.0,
                               optim=OptimConfig(steps=1, batch_size=2, warmup_steps=1))
    final = train_component(TrainConfig(component=component, data=str(tiny_dataset), out=str(tmp_path / "idm"),
                                        holdout_episodes=1))
    assert reconstructed == [{2}, {2}] and "vae" in json.loads((final / "metrics.json").read_text())


def test_a_damaged_dataset_is_one_line_and_exit_1(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data)
    video = next(data.glob("videos/*/*/*.mp4"))
    video.write_bytes(video.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "component=idm", f"data={data}", f"out={tmp_path / 'idm'}", "component.vae=null", *TINY_IDM,
              *SMALL_OPTIM])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1 and err.startswith(f"vplan train: error: {video} cannot be decoded"), err


def test_cli_errors_are_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    result = vplan_train("component=idm", f"data={tiny_dataset}", "component.vae_fraction=1.5")
    assert result.returncode == 2
    assert "vae_fraction" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("expected", "changes"),
    [
        ("no trained VAE", {"vae": "novae"}),
        # an IDM set for 64x64 frames reads the dataset's 16x16 (its size follows them), unless it cannot
        ("the dataset's frames are 16x16, which component.idm cannot read: image_size: expected a multiple of "
         "2 ** len(channels) = 32", {"idm": IDMConfig(channels=(4, 4, 4, 4, 4), norm_num_groups=4)}),
        ("the dataset's frames are 16x16; component.vae=", {"vae": "tiny32"}),  # its path, then the fix:
        ("vae32 reads 32x32 frames: pass a VAE trained on this dataset's frames", {"vae": "tiny32"}),
        ("this IDM predicts (3,)", {"idm": IDMConfig.tiny(), "vae": None, "idm_action_dim": 3}),
    ],
)
def test_what_does_not_fit_is_a_usage_error(tiny_dataset: Path, tiny_vae: Path, tmp_path: Path, expected, changes) -> None:
    idm = changes.get("idm", IDMConfig.tiny())
    if "idm_action_dim" in changes:
        idm = IDMConfig(**{**idm.to_dict(), "action_dim": changes["idm_action_dim"]})
    if changes.get("vae") == "tiny32":
        build_vae(VAEConfig.tiny(image_size=32)).save_pretrained(tmp_path / "vae32", safe_serialization=True)
    vae = {"novae": str(tmp_path / "novae"), "tiny": str(tiny_vae), "tiny32": str(tmp_path / "vae32"),
           None: None}[changes.get("vae")]
    component = IDMTrainConfig(idm=idm, vae=vae, optim=OptimConfig(steps=1, batch_size=2))
    cfg = TrainConfig(component=component, data=str(tiny_dataset), out=str(tmp_path / "out"), holdout_episodes=1)
    with pytest.raises(UsageError, match=re.escape(expected)):
        train_component(cfg)
    assert not (tmp_path / "out").exists()  # said before config.yaml and split.json were written


def test_labels_are_the_applied_actions_unless_asked(tiny_dataset: Path) -> None:
    dataset = EpisodeDataset(tiny_dataset)
    data = dataset.episode(0)
    config = IDMConfig.tiny()
    (applied,) = load_episodes(dataset, [0], config, None, set())
    (commanded,) = load_episodes(dataset, [0], config, None, set(), label="commanded")
    assert torch.equal(applied.actions, torch.from_numpy(np.array(data["action.applied"])))
    assert torch.equal(commanded.actions, torch.from_numpy(np.array(data["action"])))
    # inside the workspace the env applies what was commanded (clipped to [-1, 1]); the grip becomes ±1
    torch.testing.assert_close(applied.actions[:3, :3], commanded.actions[:3, :3].clamp(-1, 1))
    assert set(applied.actions[:, 3].tolist()) <= {-1.0, 1.0}
    older = SimpleNamespace(root=tiny_dataset, info={"features": {"action": {}}})  # collected before action.applied
    with pytest.raises(UsageError, match="component.label=commanded"):
        check_fits(older, IDMTrainConfig(idm=config), None)
    foreign = SimpleNamespace(root=tiny_dataset, info={"features": {}})  # no actions at all: nothing else to try
    with pytest.raises(UsageError, match="has no 'action' feature, so nothing to learn actions from") as error:
        check_fits(foreign, IDMTrainConfig(idm=config, label="commanded"), None)
    assert "component.label" not in str(error.value)
    with pytest.raises(ValueError, match="label: expected one of"):
        IDMTrainConfig(label="intended")


def test_batches_mix_real_and_reconstructed_transitions() -> None:
    frames = random_frames(5)
    episode = Episode(frames, torch.arange(20, dtype=torch.float32).reshape(5, 4), reconstructed=255 - frames)
    config = IDMTrainConfig(idm=IDMConfig.tiny(), vae_fraction=0.5)
    training = IDMTraining(config, [episode])
    batch = training.batch(torch.Generator().manual_seed(0), 64)
    assert batch["frames"].shape == (64, 2, 16, 16, 3) and batch["action"].shape == (64, 4)
    t = (batch["action"][:, 0] / 4).long()  # action t is (4t, 4t+1, 4t+2, 4t+3)
    assert int(t.max()) <= 3  # the last frame starts no transition
    real = (batch["frames"] == torch.stack([frames[t], frames[t + 1]], 1)).flatten(1).all(1)
    vae = (batch["frames"] == torch.stack([255 - frames[t], 255 - frames[t + 1]], 1)).flatten(1).all(1)
    assert bool((real ^ vae).all()) and 10 < int(vae.sum()) < 54
    again = training.batch(torch.Generator().manual_seed(0), 64)
    assert torch.equal(again["frames"], batch["frames"])  # batches are a function of the generator alone
    only_real = IDMTraining(IDMTrainConfig(idm=IDMConfig.tiny(), vae_fraction=0.0), [episode]).batch(
        torch.Generator().manual_seed(1), 32
    )
    t = (only_real["action"][:, 0] / 4).long()
    assert torch.equal(only_real["frames"], torch.stack([frames[t], frames[t + 1]], 1))


def test_evenly_spaced_and_error_report() -> None:
    assert evenly_spaced(list(range(10)), 3) == [0, 4, 9]  # np.linspace(0, 9, 3).round() = 0, 4.5 → 4, 9
    assert evenly_spaced([1, 2], 5) == [1, 2]
    target = torch.tensor([[1.0, 0.0, -1.0, 1.0], [0.0, 0.0, 1.0, -1.0]])
    predicted = torch.tensor([[0.5, 0.0, -1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    report = error_report(predicted, target, target.mean(0), binary_gripper=True)
    assert report["mae"] == [0.25, 0.5, 0.0]
    assert report["baseline_mae"] == [0.5, 0.0, 1.0]
    assert report["grip_accuracy"] == 0.5 and report["transitions"] == 2


# -- the policy API


def test_predict_and_actions_for_chunk_agree(policy: IDMPolicy) -> None:
    frames = random_frames(6)
    chunk = policy.actions_for_chunk(frames)
    pairs = policy.predict(frames[:-1], frames[1:])
    assert chunk.shape == pairs.shape == (5, 4)
    torch.testing.assert_close(chunk, pairs)
    torch.testing.assert_close(policy.actions_for_chunk(frames, context=3), pairs[2:])
    numpy_frames = frames.numpy()
    torch.testing.assert_close(policy.predict(numpy_frames[:-1], numpy_frames[1:]), pairs)  # numpy works too
    floats = policy.predict(frames[:-1].float() / 255, frames[1:].float() / 255)  # float in [0, 1] works too
    torch.testing.assert_close(floats, pairs)
    assert set(pairs[:, 3].tolist()) <= {-1.0, 1.0}


def test_history_windows_repeat_the_first_frame() -> None:
    frames = torch.arange(5).reshape(5, 1, 1, 1).expand(5, 2, 2, 3)
    got = windows(frames, [0, 1, 3], history_frames=3)[:, :, 0, 0, 0]
    assert got.tolist() == [[0, 0, 0, 1], [0, 0, 1, 2], [1, 2, 3, 4]]
    torch.manual_seed(0)
    policy = IDMPolicy(IDMConfig(image_size=16, channels=(8, 16), hidden_dim=32, norm_num_groups=4, history_frames=2))
    frames = random_frames(5)
    history = torch.stack([frames[[0, 0, 1, 2]], frames[[0, 1, 2, 3]]], 1)  # frames t-1, t for t = 0..3
    torch.testing.assert_close(policy.actions_for_chunk(frames), policy.predict(history, frames[1:]))
    with pytest.raises(IDMInputError, match="history_frames"):
        policy.predict(frames[:4], frames[1:])


def test_frames_the_idm_cannot_read(policy: IDMPolicy) -> None:
    frames = random_frames(3)
    with pytest.raises(IDMInputError, match="frames of 32×32 given; this IDM reads 16×16"):
        policy.predict(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(IDMInputError, match="channel-last"):
        policy.predict(frames.permute(0, 3, 1, 2), frames.permute(0, 3, 1, 2))
    with pytest.raises(IDMInputError, match="as many"):
        policy.predict(frames, frames[:2])
    with pytest.raises(IDMInputError, match=r"float values in \[0, 1\]"):
        policy.predict(frames.float(), frames.float())
    nan = frames.float() / 255
    nan[0, 0, 0, 0] = float("nan")  # passes a range check: it gave NaN moves and an open gripper
    with pytest.raises(IDMInputError, match="NaN or infinite"):
        policy.predict(nan, nan)
    with pytest.raises(IDMInputError, match="context"):
        policy.actions_for_chunk(frames[:1])
    with pytest.raises(IDMInputError, match="context"):
        policy.actions_for_chunk(frames, context=3)
    with pytest.raises(ValueError, match="context: expected a positive int, got 1.5"):
        policy.actions_for_chunk(frames, context=1.5)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        policy.predict(frames, frames, batch_size=0)
    window = windows(frames, range(2), policy.config.history_frames)
    assert torch.equal(policy.predict_windows(window.numpy()), policy.predict_windows(window))  # numpy as well
    with pytest.raises(IDMInputError, match="window: frames of 8×16 given"):
        policy.predict_windows(window[:, :, :8])
    # the CLI's one-line errors, and still a ValueError for library users
    assert issubclass(IDMInputError, UsageError) and issubclass(IDMInputError, ValueError)
    with pytest.raises(IDMInputError, match="8×16 given"):
        policy.predict(frames[:, :8], frames[:, :8])


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="multiple of 2 \\*\\* len\\(channels\\) = 4"):
        IDMConfig(image_size=18, channels=(8, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match="norm_num_groups"):
        IDMConfig(channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="action_dim"):
        IDMConfig(action_dim=1)
    with pytest.raises(ValueError, match="history_frames"):
        IDMConfig(history_frames=0)
    with pytest.raises(ValueError, match="unknown"):
        IDMConfig.from_dict({"image_size": 16, "wings": 2})
    with pytest.raises(ValueError, match="image_size: expected an int, got 16.0"):  # a hand-edited config.json
        IDMConfig.from_dict({"image_size": 16.0})
    with pytest.raises(ValueError, match="binary_gripper: expected true or false, got 'no'"):
        IDMConfig.from_dict({"binary_gripper": "no"})
    with pytest.raises(ValueError, match="vae_fraction"):
        IDMTrainConfig(vae_fraction=-0.1)


# -- checkpoints


def test_save_load_round_trip_is_bit_exact(policy: IDMPolicy, tmp_path: Path) -> None:
    with torch.no_grad():
        for parameter in policy.parameters():  # not the initialisation a fresh model would draw again
            parameter.add_(torch.randn_like(parameter) * 0.01)
    policy.save_pretrained(tmp_path / "idm")
    assert sorted(p.name for p in (tmp_path / "idm").iterdir()) == ["config.json", "model.safetensors"]
    loaded = IDMPolicy.from_pretrained(tmp_path / "idm")
    assert loaded.config == policy.config and not loaded.training
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    frames = random_frames(5, seed=3)
    window = windows(frames, range(4), 1)
    assert torch.equal(loaded.raw(window), policy.raw(window))


def test_missing_corrupted_and_foreign_checkpoints(policy: IDMPolicy, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config.json \(IDM\), found none"):
        IDMPolicy.from_pretrained(tmp_path / "nothing")
    good = tmp_path / "good"
    policy.save_pretrained(good)

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: expected this weights file"):
        IDMPolicy.from_pretrained(missing)

    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        IDMPolicy.from_pretrained(truncated)

    bad_json = tmp_path / "bad_json"
    shutil.copytree(good, bad_json)
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="expected JSON"):
        IDMPolicy.from_pretrained(bad_json)

    other = tmp_path / "other_config"  # weights of the tiny IDM, the config of a wider one
    shutil.copytree(good, other)
    payload = json.loads((other / "config.json").read_text())
    payload["config"]["channels"] = [8, 32]
    (other / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="another config"):
        IDMPolicy.from_pretrained(other)

    # a config.json asking for huge layers: refused from the weights' header, before any is built (a head of
    # 4 G parameters would have been allocated first)
    huge = json.loads(json.dumps(payload))
    huge["config"]["hidden_dim"] = 2**30
    (other / "config.json").write_text(json.dumps(huge))
    with pytest.MonkeyPatch.context() as patch:
        built = []
        init = IDMPolicy.__init__
        patch.setattr(IDMPolicy, "__init__", lambda self, config: built.append(
            str(torch.empty(0).device)) or init(self, config))
        with pytest.raises(CheckpointError, match="another config"):
            IDMPolicy.from_pretrained(other)
    assert built == ["meta"]  # only on the meta device

    payload["config"]["channels"] = [8, 30]
    (other / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="invalid IDM config: norm_num_groups"):
        IDMPolicy.from_pretrained(other)
    with pytest.raises(CheckpointError, match="expected a checkpoint directory with config.json \\(IDM\\)"):
        IDMPolicy.from_pretrained(tmp_path)

    world_model = tmp_path / "worldmodel"  # a world-model checkpoint is not an IDM
    world_model.mkdir()
    (world_model / "config.json").write_text(json.dumps({"kind": "vplan-worldmodel", "format_version": 1}))
    with pytest.raises(CheckpointError, match="expected kind 'vplan-idm', got 'vplan-worldmodel'"):
        IDMPolicy.from_pretrained(world_model)
    with pytest.raises(CheckpointError, match="expected kind 'vplan-worldmodel', got 'vplan-idm'"):
        WorldModel.from_pretrained(good)  # nor the other way round


# -- learnability


def moving_square_transitions(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows where a 3×3 square moves by (2 dx, 2 dy) pixels and turns red (grip closed) or green (open)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((count, 2, 16, 16, 3), np.uint8)
    actions = np.zeros((count, 4), np.float32)
    for i in range(count):
        dx, dy = rng.integers(-1, 2, 2)
        x, y = rng.integers(2, 11, 2)
        closed = rng.random() < 0.5
        frames[i, 0, y : y + 3, x : x + 3] = (0, 255, 0) if rng.random() < 0.5 else (255, 0, 0)
        frames[i, 1, y + 2 * dy : y + 2 * dy + 3, x + 2 * dx : x + 2 * dx + 3] = (255, 0, 0) if closed else (0, 255, 0)
        actions[i] = (dx, dy, 0.0, 1.0 if closed else -1.0)
    return torch.from_numpy(frames), torch.from_numpy(actions)


def test_loss_goes_down_on_a_fixed_batch(tiny_dataset: Path) -> None:
    """A few steps on one batch of the dataset's transitions (real and through the VAE) fit it."""
    dataset = EpisodeDataset(tiny_dataset)
    data = dataset.episode(0)
    frames = torch.from_numpy(np.array(data["observation.images.front"]))
    episode = Episode(frames, torch.from_numpy(np.array(data["action"])), reconstructed=frames.flip(1))
    training = IDMTraining(IDMTrainConfig(idm=IDMConfig.tiny()), [episode])
    batch = training.batch(torch.Generator().manual_seed(0), 16)
    optimizer = torch.optim.Adam(training.module.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = training.loss(batch, torch.Generator())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_it_learns_to_read_motion_and_grip() -> None:
    """On held-out windows of a moving square, the trained IDM beats predicting the mean action."""
    torch.manual_seed(0)
    policy = IDMPolicy(IDMConfig.tiny())
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    frames, actions = moving_square_transitions(2048, seed=0)
    for step in range(300):
        index = torch.randint(len(frames), (32,), generator=torch.Generator().manual_seed(step))
        loss, _ = policy({"frames": frames[index], "action": actions[index]})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_frames, test_actions = moving_square_transitions(256, seed=1)
    predicted = policy.eval().predict(test_frames[:, 0], test_frames[:, 1])
    report = error_report(predicted, test_actions, actions.mean(0), binary_gripper=True)
    assert report["mae"][0] < 0.5 * report["baseline_mae"][0], report
    assert report["mae"][1] < 0.5 * report["baseline_mae"][1], report
    assert report["grip_accuracy"] > 0.95, report


def test_the_shipped_tabletop_idm_loads_and_reads_a_chunk() -> None:
    """`shipped:tabletop/idm` (package data) is the tabletop's IDM: 64×64 frames in, 4-d actions out."""
    from vplan.shipped import shipped_names

    assert "tabletop/idm" in shipped_names()
    policy = IDMPolicy.from_pretrained("shipped:tabletop/idm")
    assert not policy.training and policy.config.image_size == 64 and policy.config.action_dim == 4
    frames = torch.randint(0, 256, (9, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    actions = policy.actions_for_chunk(frames)
    assert actions.shape == (8, 4) and actions.abs().max() <= 1.0
    assert set(actions[:, 3].tolist()) <= {-1.0, 1.0}


def test_the_shipped_tabletop_idm_reads_the_experts_moves_on_fresh_frames() -> None:
    """On 40 steps of a held-out seed, the shipped IDM reads the move the env applied far better than the mean
    move does, and the grip: what training and use preprocess alike (the difference channel's sign, the channel
    or frame order) could break without any other test noticing (its MAE was 0.03-0.06, the mean's ~0.3)."""
    from vplan.envs.tabletop_v0 import TabletopEnv
    from vplan.policies.return_cubes_expert import ReturnCubesExpert

    env, expert = TabletopEnv(image_size=64), ReturnCubesExpert()
    try:
        obs, info = env.reset(seed=10000)
        expert.reset(info, seed=10000)
        frames, applied = [obs["front"]], []
        for _ in range(40):
            obs, _, _, _, info = env.step(expert.select_action(obs, info))
            frames.append(obs["front"])
            applied.append(info["applied_action"])
    finally:
        env.close()
    policy = IDMPolicy.from_pretrained("shipped:tabletop/idm")
    predicted = policy.actions_for_chunk(torch.from_numpy(np.stack(frames))).numpy()
    applied = np.stack(applied)
    mae = np.abs(predicted[:, :3] - applied[:, :3]).mean(0)
    baseline = np.abs(applied[:, :3] - applied[:, :3].mean(0)).mean(0)
    assert (mae < 0.5 * baseline).all(), (mae, baseline)
    assert np.mean(np.sign(predicted[:, 3]) == np.sign(applied[:, 3])) >= 0.95


# -- discrete moves (the blockworld)


@pytest.fixture(scope="module")
def moves_dataset(tmp_path_factory) -> Path:
    """3 blockworld retrace episodes at 16×16: each action is a move's integer."""
    from vplan.envs import BlockworldConfig

    out = tmp_path_factory.mktemp("moves") / "ds"
    task = TaskConfig.preset("retrace")
    collect(CollectConfig(env=BlockworldConfig(image_size=16), task=task, episodes=3, out=str(out)))
    return out


def test_a_vae_from_another_envs_model_is_warned_of(moves_dataset: Path, tmp_path: Path) -> None:
    """The tabletop's VAE draws blockworld frames at 11.8 dB: an IDM (or world model) trained through it was
    labelled blockworld, so nothing later warned either."""
    from test_train import TINY_MODEL

    from vplan.shipped import OtherEnvWarning

    tabletop = tmp_path / "tabletop_wm"
    WorldModel(WorldModelConfig.from_dict(TINY_MODEL)).save_pretrained(tabletop, trained_on_env="tabletop")
    config = IDMConfig(**{**IDMConfig.tiny().to_dict(), "num_moves": 5})
    component = IDMTrainConfig(idm=config, vae=str(tabletop), label="commanded",
                               optim=OptimConfig(steps=1, batch_size=4, warmup_steps=1))
    with pytest.warns(OtherEnvWarning, match="component.vae=.*tabletop_wm was trained on tabletop episodes, and this "
                                             "env is blockworld"):
        train_component(TrainConfig(component=component, data=str(moves_dataset), out=str(tmp_path / "idm"),
                                    holdout_episodes=1))


def test_a_moves_idm_is_a_classifier_trained_on_the_dataset_moves(moves_dataset: Path, tmp_path: Path, capsys) -> None:
    config = IDMConfig(**{**IDMConfig.tiny().to_dict(), "num_moves": 5})
    assert (config.action_dim, config.binary_gripper, config.outputs) == (1, False, 5)
    component = IDMTrainConfig(idm=config, vae=None, label="commanded",
                               optim=OptimConfig(steps=2, batch_size=4, save_every=2, warmup_steps=1))
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match="the expert alone .*explore_fraction=0.2 env=blockworld out=DIR"):  # no noise
        final = train_component(TrainConfig(component=component, data=str(moves_dataset), out=str(tmp_path / "idm"),
                                            holdout_episodes=1))
    assert "move accuracy" in capsys.readouterr().out
    real = json.loads((final / "metrics.json").read_text())["real"]
    assert set(real) == {"transitions", "accuracy", "baseline_accuracy"} and 0 < real["baseline_accuracy"] <= 1

    policy = IDMPolicy.from_pretrained(final)
    frames = EpisodeDataset(moves_dataset).episode(2)["observation.images.front"]
    moves = policy.actions_for_chunk(frames[:9])
    assert moves.shape == (8,) and moves.dtype == torch.int64 and 0 <= moves.min() and moves.max() < 5
    window = windows(torch.from_numpy(np.array(frames[:3])), [0, 1], 1)
    logits = policy.raw(window)
    assert torch.equal(policy.predict_windows(window), logits.argmax(1))
    loss, logs = policy({"frames": window, "action": torch.tensor([[0.0], [3.0]])})
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])))
    assert set(logs) == {"ce", "acc"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"label": "applied"}, "component.label=commanded"),  # the blockworld reports no applied action
        # both said at once, at the tabletop's defaults (it took two refusals; "collect it again" cannot help)
        ({"label": "applied", "num_moves": 0}, "holds moves and no 'action.applied' feature (an env of moves, like "
                                               "the blockworld, reports no applied action); train on the recorded "
                                               "moves: component.label=commanded component.idm.num_moves=5"),
        ({"num_moves": 0}, "component.idm.num_moves=N"),
        ({"num_moves": 3}, "set component.idm.num_moves"),  # the expert also jumps (move 4)
        # within the moves seen, but not the env's: refused only when the IDM met the env (helper-190)
        ({"num_moves": 6}, "recorded in vplan's blockworld, whose actions are one of 5 moves; set "
                           "component.idm.num_moves=5"),
    ],
)
def test_moves_that_do_not_fit_are_usage_errors(moves_dataset: Path, changes, expected) -> None:
    dataset = EpisodeDataset(moves_dataset)
    config = IDMConfig(**{**IDMConfig.tiny().to_dict(), "num_moves": changes.get("num_moves", 5)})
    label = changes.get("label", "commanded")
    with pytest.raises(UsageError, match=re.escape(expected)):  # from the metadata: before anything is written
        check_fits(dataset, IDMTrainConfig(idm=config, label=label), None)
    if 0 < changes.get("num_moves", 5) < 5:  # and again as they load (stats from elsewhere)
        with pytest.raises(UsageError, match=re.escape(expected)):
            load_episodes(dataset, [0, 1], config, None, set(), label=label)
    with pytest.raises(ValueError, match="num_moves"):
        IDMConfig(num_moves=-1)


class ReadsTheStep:
    """A stand-in IDM that reads the step off a window's frame t (filled with 10 t, or 10 t + 5 through "the
    VAE") and answers with that step's action as `evaluate`'s episodes encode it: (t / 10, 0, 0, grip +1)."""

    config = SimpleNamespace(history_frames=2, discrete=False, binary_gripper=True)

    def predict_windows(self, window: torch.Tensor) -> torch.Tensor:
        step = window[:, -2, 0, 0, 0].float() // 10  # frame t, the last of the history
        return torch.stack([step / 10, torch.zeros_like(step), torch.zeros_like(step), torch.ones_like(step)], 1)


def test_held_out_episodes_without_a_transition_are_refused_before_training(monkeypatch, tmp_path) -> None:
    """The refusal came from the held-out scoring, after the ~17 min of training."""
    from vplan.loop import idm as idm_loop

    def episode(length: int) -> Episode:
        return Episode(torch.zeros(length, 16, 16, 3, dtype=torch.uint8), torch.zeros(length, 4))

    held_out = [9]  # one frame; the training episode has five
    monkeypatch.setattr(idm_loop, "load_episodes",
                        lambda dataset, indices, *rest: [episode(1 if indices == held_out else 5)])
    monkeypatch.setattr(idm_loop, "train", lambda *args, **kwargs: pytest.fail("trained first"))
    with pytest.raises(UsageError, match="no held-out episode has two frames"):
        idm_loop.train_idm(IDMTrainConfig(idm=IDMConfig.tiny()), None, [0], held_out, tmp_path, None)


def test_held_out_evaluation_scores_each_transition_against_the_action_taken_from_its_first_frame():
    from vplan.loop.idm import evaluate

    def episode(length: int) -> Episode:
        frames = torch.stack([torch.full((4, 4, 3), 10 * t, dtype=torch.uint8) for t in range(length)])
        actions = torch.tensor([[t / 10, 0.0, 0.0, 1.0] for t in range(length)])
        return Episode(frames=frames, actions=actions, reconstructed=frames + 5)

    episodes, baseline = [episode(4), episode(6)], torch.tensor([0.1, 0.0, 0.0, 1.0])
    for reconstructed in (False, True):
        report = evaluate(ReadsTheStep(), episodes, baseline, reconstructed)
        assert report["transitions"] == 3 + 5  # the last frame of each has no next frame
        assert report["mae"] == pytest.approx([0.0, 0.0, 0.0]) and report["grip_accuracy"] == 1.0
        # the baseline: always the training mean given, against the held-out actions 0, .1, .2 and 0 .. .4
        assert report["baseline_mae"][0] == pytest.approx(np.mean(np.abs(np.r_[0:0.3:0.1, 0:0.5:0.1] - 0.1)))
    episodes[0].reconstructed = None
    with pytest.raises(TypeError):  # the VAE's frames are what it reads there, not the real ones
        evaluate(ReadsTheStep(), episodes, baseline, True)
