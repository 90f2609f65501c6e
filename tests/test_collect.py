"""`vplan collect`: expert episodes on disk, read back exactly, safe against a kill, resumable."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from vplan.constants import ACTION, OBS_ENV_STATE, OBS_STATE, SUBGOAL
from vplan.data import EPISODE_META, EpisodeDataset
from vplan.data.collect import CollectConfig, collect, rollout_expert
from vplan.envs import TabletopConfig, make_env
from vplan.policies import make_expert
from vplan.tasks import TaskConfig

TASK = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")


def small_config(out, **kwargs) -> CollectConfig:
    return CollectConfig(env=TabletopConfig(image_size=16), task=TASK, out=str(out), **kwargs)


def test_round_trip_is_exact_for_actions_state_and_text(tmp_path):
    cfg = small_config(tmp_path / "ds", episodes=2, seed=7)
    collect(cfg)
    dataset = EpisodeDataset(cfg.out)
    assert dataset.num_episodes == 2
    env, expert = make_env(cfg.env), make_expert("return_cubes")
    for episode in range(2):
        expected, subgoals, summary = rollout_expert(env, expert, seed=7 + episode)
        got = dataset.episode(episode)
        for key in (ACTION, OBS_STATE, OBS_ENV_STATE):
            np.testing.assert_array_equal(got[key], expected[key])
        assert list(got[SUBGOAL]) == subgoals
        assert got[EPISODE_META]["seed"] == 7 + episode
        assert got[EPISODE_META]["success"] == summary["success"]
        assert got[EPISODE_META]["instruction"] == TASK.instruction
        frames = got["observation.images.front"].astype(float)
        mse = np.mean((frames - expected["observation.images.front"].astype(float)) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-10)) > 30  # lossy video, but close
    # row t holds the observation before step t and the action taken from it: row 0 is the reset's, and
    # replaying the actions from the reset gives the next rows' states (the round trip above could not tell)
    got = dataset.episode(0)
    obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(got[OBS_STATE][0], obs["agent_pos"])
    for t in range(3):
        obs, *_ = env.step(got[ACTION][t])
        np.testing.assert_array_equal(got[OBS_STATE][t + 1], obs["agent_pos"])
    env.close()


def test_resume_adds_only_the_missing_episodes(tmp_path, capsys):
    collect(small_config(tmp_path / "ds", episodes=1))
    collect(small_config(tmp_path / "ds", episodes=2))
    assert "resuming" in capsys.readouterr().out
    dataset = EpisodeDataset(tmp_path / "ds")
    assert [dataset.episode_meta(i)["seed"] for i in range(2)] == [0, 1]
    from vplan.errors import UsageError

    with pytest.raises(UsageError, match=r"the next is 2, not 102 \(seed=100\); pass seed=0 to continue it"):
        collect(small_config(tmp_path / "ds", episodes=4, seed=100))  # would skip scenes, or repeat them
    # another way of collecting: the env's action scale, or noise, would mix two kinds of episode in one dataset
    moved_more = replace(small_config(tmp_path / "ds", episodes=4), env=TabletopConfig(image_size=16, max_delta=0.05))
    with pytest.raises(UsageError, match=r"its actions were recorded with \{'max_delta': 0.03, 'control_hz': 10\}, "
                                         r"asked \{'max_delta': 0.05"):
        collect(moved_more)
    # once "vplan collect"
    with pytest.raises(UsageError, match=r"^[^:]*/[^ ]* ran with other settings: noise_std=0\.0 when it began, "
                                         r"0\.1 now"):
        collect(small_config(tmp_path / "ds", episodes=4, noise_std=0.1))
    with pytest.raises(UsageError, match="ran with other settings: noise_std="):  # said "nothing to do" before
        collect(small_config(tmp_path / "ds", episodes=2, noise_std=0.1))
    assert EpisodeDataset(tmp_path / "ds").num_episodes == 2
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match=r"seeds 10000..10000 are the held-out scenes"):
        collect(small_config(tmp_path / "late", episodes=1, seed=10000))


@pytest.mark.parametrize("lost", ["data/chunk-000/file-000.parquet", "videos"])
def test_a_damaged_dataset_is_not_appended_to(tmp_path, lost):
    """A copy cut short (a data file or the videos gone): collect appended to it and called it whole; vplan
    train found the damage later."""
    import shutil

    from vplan.errors import DamagedDatasetError

    collect(small_config(tmp_path / "ds", episodes=1))
    path = tmp_path / "ds" / lost
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DamagedDatasetError, match=r"/ds/.* is missing; the dataset is damaged"):
        collect(small_config(tmp_path / "ds", episodes=2))
    assert json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["total_episodes"] == 1


def test_a_relative_out_with_a_colon_is_a_folder_not_a_uri_or_protocol(tmp_path, monkeypatch):
    """pyarrow read "run:2/..." as a URI and ffmpeg as the protocol "run": collect failed, and a dataset written
    by its absolute path was called damaged when read by its relative one."""
    monkeypatch.chdir(tmp_path)
    collect(small_config("run:2", episodes=1))
    collect(small_config("run:2", episodes=2))
    dataset = EpisodeDataset("run:2")
    assert dataset.num_episodes == 2 and len(dataset.episode(1)["observation.images.front"]) > 0


def test_a_different_env_config_is_refused(tmp_path):
    from vplan.errors import UsageError

    collect(small_config(tmp_path / "ds", episodes=1))
    cfg = small_config(tmp_path / "ds", episodes=2)
    with pytest.raises(UsageError, match="choose another out=DIR"):
        collect(replace(cfg, env=TabletopConfig(image_size=24)))


def test_the_agents_episodes_a_run_recorded_are_not_appended_to(tmp_path):
    """`vplan run record=true` writes <run>/episodes with an expert dataset's columns and no config.yaml of its
    own: collect once took it for a dataset begun before settings were recorded, and appended expert episodes."""
    from vplan.errors import UsageError

    collect(small_config(tmp_path / "run" / "episodes", episodes=1, seed=10000))  # the seeds a run plays
    (tmp_path / "run" / "episodes" / "config.yaml").unlink()  # as run writes it
    (tmp_path / "run" / "config.yaml").write_text("record: true\n")
    with pytest.raises(UsageError, match=r"holds the agent's episodes that `vplan run record=true` recorded"):
        collect(small_config(tmp_path / "run" / "episodes", episodes=2))
    (tmp_path / "link").symlink_to(tmp_path / "run" / "episodes")
    with pytest.raises(UsageError, match=r"holds the agent's episodes"):  # however it is named
        collect(small_config(tmp_path / "link", episodes=2))
    with pytest.MonkeyPatch.context() as patch, pytest.raises(UsageError, match=r"holds the agent's episodes"):
        patch.chdir(tmp_path / "run" / "episodes")
        collect(small_config(".", episodes=2))
    assert EpisodeDataset(tmp_path / "run" / "episodes").num_episodes == 1
    (tmp_path / "run" / "config.yaml").write_text("record: false\n")  # a folder of that name, not the run's
    collect(small_config(tmp_path / "run" / "episodes", episodes=2, seed=10000))
    assert EpisodeDataset(tmp_path / "run" / "episodes").num_episodes == 2


def test_noisy_exploring_collection_is_applied_and_reproduced_episode_by_episode(tmp_path):
    """The expert's noise and exploration reach the data, and are drawn per seed: a dataset collected in two
    sessions equals one collected in one."""
    noisy = {"noise_std": 0.05, "explore_fraction": 0.2}
    collect(small_config(tmp_path / "straight", episodes=2, **noisy))
    collect(small_config(tmp_path / "resumed", episodes=1, **noisy))
    collect(small_config(tmp_path / "resumed", episodes=2, **noisy))
    collect(small_config(tmp_path / "plain", episodes=1))
    straight, resumed, plain = (EpisodeDataset(tmp_path / name) for name in ("straight", "resumed", "plain"))
    for episode in range(2):
        np.testing.assert_array_equal(straight.episode(episode)[ACTION], resumed.episode(episode)[ACTION])
    collect(small_config(tmp_path / "noise", episodes=1, noise_std=0.05))  # each alone reaches the data
    collect(small_config(tmp_path / "explore", episodes=1, explore_fraction=0.2))
    actions = {name: EpisodeDataset(tmp_path / name).episode(0)[ACTION] for name in ("straight", "plain", "noise",
                                                                                   "explore")}
    for a, b in itertools.combinations(actions, 2):
        assert len(actions[a]) != len(actions[b]) or not np.array_equal(actions[a], actions[b]), (a, b)


def test_killed_collect_keeps_finished_episodes_and_resumes(tmp_path):
    out = tmp_path / "ds"
    info = out / "meta" / "info.json"
    command = [sys.executable, "-m", "vplan.cli", "collect", "episodes=50", f"out={out}", "env.image_size=16"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if info.exists() and json.loads(info.read_text())["total_episodes"] >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("collect wrote no episodes in time")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finished = EpisodeDataset(out).num_episodes
    assert 2 <= finished < 50
    for episode in range(finished):
        EpisodeDataset(out).episode(episode)  # every committed episode reads back
    result = subprocess.run(
        [*command[:-3], f"episodes={finished + 1}", f"out={out}", "env.image_size=16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    dataset = EpisodeDataset(out)
    assert dataset.num_episodes == finished + 1
    assert [dataset.episode_meta(i)["seed"] for i in range(finished + 1)] == list(range(finished + 1))


def test_a_sigterm_stops_collect_as_ctrl_c_does(tmp_path):
    """A job scheduler's stop (SIGTERM) killed the command at once, mid-episode, saying nothing."""
    out = tmp_path / "ds"
    info = out / "meta" / "info.json"
    command = [sys.executable, "-m", "vplan.cli", "collect", "episodes=50", f"out={out}", "env.image_size=16"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (info.exists() and json.loads(info.read_text())["total_episodes"]):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    kept = EpisodeDataset(out).num_episodes
    assert process.returncode == 143, err
    assert f"interrupted: {kept} episode(s) kept in {out}" in err
    assert err.endswith("vplan collect: terminated (SIGTERM)\n")
    assert 1 <= kept < 50


def test_interrupted_collect_says_what_it_kept(tmp_path, monkeypatch, capsys):
    import vplan.data.collect as collect_module
    from vplan.cli import main

    rollout, calls = collect_module.rollout_expert, []

    def interrupted(env, expert, seed):  # Ctrl-C during the second episode
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rollout(env, expert, seed)

    monkeypatch.setattr(collect_module, "rollout_expert", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "episodes=3", f"out={tmp_path / 'ds'}", "env.image_size=16"])
    assert exit_info.value.code == 130
    assert "interrupted: 1 episode(s) kept in" in capsys.readouterr().err
    assert EpisodeDataset(tmp_path / "ds").num_episodes == 1


def test_a_failed_first_reset_still_closes_the_env(tmp_path, monkeypatch):
    """The first reset ran outside the code that closed the env: RLBench's CoppeliaSim was left running."""
    import vplan.envs

    closed = []

    class FailingEnv:
        def reset(self, seed=None):
            raise RuntimeError("the task could not be placed")

        def close(self):
            closed.append(True)

    monkeypatch.setattr(vplan.envs, "make_env", lambda config: FailingEnv())
    with pytest.raises(RuntimeError, match="could not be placed"):
        collect(small_config(tmp_path / "ds"))
    assert closed == [True]


def test_an_env_of_ones_own_is_recorded_only_as_the_contract_says():
    """Any observation but agent_pos was recorded as a camera (a float vector failed deep in the writer), and an
    info without environment_state was a bare KeyError."""
    import gymnasium as gym

    from vplan.data.collect import dataset_features

    class Canvas(gym.Env):
        observation_space = gym.spaces.Dict({
            "front": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "agent_pos": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
            "target": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        })
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    info = {"environment_state": np.zeros(2, np.float32), "success": False}
    with pytest.raises(ValueError, match=r"^observation 'target': expected a camera \(uint8, height x width x 3\) "
                                         r"or 'agent_pos', got Box.*put it in agent_pos or in "
                                         r"info\['environment_state'\]"):
        dataset_features(Canvas(), info)
    with pytest.raises(ValueError, match=r"^info: expected 'environment_state'.*got the keys \['success'\]"):
        dataset_features(Canvas(), {"success": False})
    del Canvas.observation_space.spaces["target"]
    features = dataset_features(Canvas(), info)
    assert features["observation.images.front"]["dtype"] == "video" and features["action"]["shape"] == [2]


def test_a_step_whose_info_breaks_the_contract_is_refused_at_the_step(tmp_path):
    """An env giving `applied_action` in step()'s info but not reset()'s (or the reverse) played a whole episode,
    then the writer named a column the features lacked; an info without `success` was a bare KeyError; an
    `environment_state` given as a list, an AttributeError (helper-202)."""
    from vplan.data.collect import EpisodeRecorder, dataset_features
    from vplan.data.lerobot_format import EpisodeWriter

    env = make_env(TabletopConfig(image_size=16))
    obs, info = env.reset(seed=0)
    action = np.zeros(4, np.float32)
    next_obs, reward, _, _, next_info = env.step(action)
    bare = {k: v for k, v in info.items() if k != "applied_action"}
    for before, after, said in [(bare, next_info, "is in step()'s info but not in the info before this step"),
                                (info, {k: v for k, v in next_info.items() if k != "applied_action"},
                                 "is in the info before this step (reset()'s or the last step's) but not in step()'s"),
                                (info, {k: v for k, v in next_info.items() if k != "success"}, "expected 'success'")]:
        with pytest.raises(ValueError, match=re.escape(said)):
            EpisodeRecorder().add(obs, before, action, "reach", reward, after, False)
    listed = {**info, "environment_state": info["environment_state"].tolist()}
    features = dataset_features(env, listed)
    recorder = EpisodeRecorder()
    recorder.add(obs, listed, action, "reach", reward, {**next_info, "environment_state": [0.0] * 9}, True)
    # the row of step t holds the state the action was taken in, not the one it led to (helper-204's mutation)
    assert np.array_equal(recorder.frames()[OBS_ENV_STATE][0], info["environment_state"])
    with EpisodeWriter.create_or_resume(tmp_path / "d", fps=10, features=features) as writer:
        writer.add_episode(recorder.frames(), recorder.subgoals)
    assert writer.num_frames == 1
    env.close()
