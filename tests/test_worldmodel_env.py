"""WorldModelEnv (vplan/WorldModel-v0) on a tiny random action-conditioned model: check_env, registration, starts,
truncation, and batched rollouts that agree with single ones."""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from vplan.data.collect import CollectConfig, collect
from vplan.envs import WORLD_MODEL_ENV_ID, TabletopConfig, WorldModelEnvConfig, make_env
from vplan.envs.worldmodel_env import WorldModelEnv
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import WorldModel

SIZE = 16


def tiny_config(conditioning: str = "action", action_frame_embedding: bool = False) -> WorldModelConfig:
    return WorldModelConfig(
        unet=replace(UNetConfig.preset("tiny"), sample_size=SIZE // 2, cross_attention_dim=16),
        diffusion=DiffusionConfig(num_inference_steps=2),
        vae=VAEConfig.tiny(image_size=SIZE),
        text_encoder=TextEncoderConfig(kind="learned", dim=16, max_tokens=4, vocab_buckets=64),
        context_frames=2,
        chunk_frames=3,
        conditioning=conditioning,
        action_frame_embedding=action_frame_embedding,
    )


@pytest.fixture(scope="module", params=[False, True], ids=["action_tokens", "action_frame_embedding"])
def checkpoint(tmp_path_factory, request):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wm") / "action"
    WorldModel(tiny_config(action_frame_embedding=request.param)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(checkpoint):
    return WorldModel.from_pretrained(checkpoint)


def test_passes_check_env_and_is_registered(checkpoint):
    made = gym.make(WORLD_MODEL_ENV_ID, config=WorldModelEnvConfig(checkpoint=checkpoint))
    env = made.unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught if "gymnasium" in w.filename] == []  # check_env warns of most problems
    assert env.observation_space == gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
    tabletop = gym.make("vplan/Tabletop-v0", image_size=SIZE)
    assert env.action_space == tabletop.action_space
    assert env.observation_space == tabletop.observation_space["front"]
    tabletop.close()

    made.reset(seed=0)  # the env truncates at its config's max_episode_steps itself
    made.unwrapped._steps = WorldModelEnvConfig.max_episode_steps - 1
    assert made.step(made.action_space.sample())[3]
    assert isinstance(make_env(WorldModelEnvConfig(checkpoint=checkpoint)).unwrapped, WorldModelEnv)
    env.close()


@pytest.mark.parametrize("field, value", [("max_episode_steps", "10"), ("max_episode_steps", 2.5), ("text", None)])
def test_bad_config_raises_naming_the_value(field, value):
    """A string or a float number of steps failed later as a bare TypeError (after the model had loaded)."""
    with pytest.raises(ValueError, match=f"^{field}: expected .*got {re.escape(repr(value))}$"):
        WorldModelEnvConfig(**{field: value})


def test_text_models_and_bad_starts_are_clear_errors(tmp_path, model):
    torch.manual_seed(0)
    WorldModel(tiny_config("text")).save_pretrained(tmp_path / "text")
    with pytest.raises(ValueError, match="expected an action-conditioned world model .* got conditioning='text'"):
        WorldModelEnv(WorldModelEnvConfig(checkpoint=str(tmp_path / "text")))
    from vplan.errors import UsageError

    with pytest.raises(UsageError, match=r"^an empty checkpoint path; give a directory or a shipped name \(shipped:"):
        WorldModelEnv(WorldModelEnvConfig(checkpoint=""))  # was the working directory, "." in the error
    env = WorldModelEnv(model=model)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())
    with pytest.raises(ValueError, match=r"expected uint8 frames \(\[T,\] 16, 16, 3\)"):
        env.reset(options={"frame": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="expected reset options among"):
        env.reset(options={"frames": None})
    with pytest.raises(ValueError, match=r"options: expected a dict of reset options .* got list"):  # Python's
        env.reset(options=["frame"])  # "dictionary update sequence element #0 has length 5; 2 is required"
    with pytest.raises(ValueError, match="expected a frame or a dataset to start from, got both"):
        env.reset(options={"frame": np.zeros((SIZE, SIZE, 3), np.uint8), "dataset": str(tmp_path)})
    with pytest.raises(ValueError, match=r"'episode' is an episode of options\['dataset'\], which is missing"):
        env.reset(options={"episode": 3})
    with pytest.raises(ValueError, match=r"options\['episode'\]: expected an int >= 0, got 1.9"):  # was episode 1
        env.reset(options={"dataset": str(tmp_path), "episode": 1.9})
    with pytest.raises(ValueError, match=r"options\['text'\]: expected a string, got None"):  # failed at step
        env.reset(options={"text": None})
    with pytest.raises(ValueError, match=r"options\['text'\]: this world model is conditioned on actions alone"):
        env.reset(options={"text": "pick up the red cube"})  # taken, and read as steering the rollout (helper-194)
    from vplan.shipped import OtherEnvWarning

    model.save_pretrained(tmp_path / "blockworld", trained_on_env="blockworld")
    with pytest.warns(OtherEnvWarning, match="was trained on blockworld episodes, and this env is tabletop"):
        WorldModelEnv(WorldModelEnvConfig(checkpoint=str(tmp_path / "blockworld"))).close()


def test_steps_imagine_from_the_given_frame_follow_the_actions_and_truncate(model):
    env = WorldModelEnv(model=model, max_episode_steps=2)
    frame = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    obs, info = env.reset(seed=1, options={"frame": frame})
    assert np.array_equal(obs, frame) and info["imagined"]
    push = env.step(np.array([1, 0, 0, 1], np.float32))
    assert push[1:4] == (0.0, False, False)
    env.reset(seed=1, options={"frame": frame})
    other = env.step(np.array([-1, 0, 0, -1], np.float32))
    assert np.abs(push[0].astype(int) - other[0].astype(int)).max() > 0  # the action changes the frame
    assert env.step(np.zeros(4, np.float32))[3] is True  # the second step hits max_episode_steps=2


def test_a_step_conditions_on_its_one_action_with_the_grip_read_as_the_tabletop_reads_it(model, monkeypatch):
    """The chunk sampled for a step gets the step's action alone (the rest unknown), its grip as ±1 (the tabletop
    closes on any value above 0; the model learned from ±1); a NaN action is refused, not drawn as black frames."""
    given = []
    generate = WorldModel.generate

    def spied(self, context, texts, *args, actions=None, **kwargs):
        given.append(actions.clone())
        return generate(self, context, texts, *args, actions=actions, **kwargs)

    monkeypatch.setattr(WorldModel, "generate", spied)
    env = WorldModelEnv(model=model)
    frame = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    observed = []
    for grip in (0.3, 1.0, -0.2, -1.0):
        env.reset(seed=1, options={"frame": frame})
        observed.append(env.step(np.array([0.5, 0, 0, grip], np.float32))[0])
    assert [tuple(a.shape) for a in given] == [(1, 1, 4)] * 4
    assert [float(a[0, 0, 3]) for a in given] == [1.0, 1.0, -1.0, -1.0]
    assert np.array_equal(observed[0], observed[1]) and np.array_equal(observed[2], observed[3])
    env.step(np.array([1e300, -1e300, 0.5, 1.0]))  # finite: clipped as the tabletop clips it, not inf
    assert given[-1].dtype == torch.float32 and given[-1][0, 0].tolist() == [1.0, -1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="actions: expected finite numbers"):
        env.step(np.array([np.nan, 0, 0, 1], np.float32))
    with pytest.raises(ValueError, match=r"expected an action of shape \(4,\), got \(1, 4\) \(step_batch takes"):
        env.step(np.zeros((1, 4), np.float32))


def test_close_lets_go_of_the_rollouts(model):
    env = WorldModelEnv(model=model)
    env.reset(seed=1, options={"frame": np.zeros((SIZE, SIZE, 3), np.uint8)})
    env.close()  # its latents and generators went with it (GPU memory on a GPU)
    assert env._history is None and env._generators == []
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(4, np.float32))


def test_batched_steps_agree_with_single_steps(model):
    seeds = [3, 7]
    actions = np.random.default_rng(1).uniform(-1, 1, (4, len(seeds), 4)).astype(np.float32)
    batched = WorldModelEnv(model=model)
    frames = [batched.reset_batch(seeds)]
    frames += [batched.step_batch(a)[0] for a in actions]
    history = batched._history.clone()

    for i, seed in enumerate(seeds):
        single = WorldModelEnv(model=model)
        obs, _ = single.reset(seed=seed)  # the default start: the embedded tabletop reset from this seed
        assert np.array_equal(obs, frames[0][i])
        for step, action in enumerate(actions):
            obs = single.step(action[i])[0]
            assert np.abs(obs.astype(int) - frames[step + 1][i].astype(int)).max() <= 1  # float rounding
        torch.testing.assert_close(single._history[0], history[i], atol=1e-4, rtol=1e-4)
    assert not np.array_equal(frames[-1][0], frames[-1][1])  # two different rollouts, not one repeated
    with pytest.raises(ValueError, match=r"step\(\) steps one rollout, and reset_batch started 2; call step_batch"):
        batched.step(actions[0][0])  # was "expected actions of shape (2, 4), got (1, 4)"
    with pytest.raises(ValueError, match="texts: expected a list of strings, one per seed, got 'ab'"):
        batched.reset_batch(seeds, texts="ab")  # was split into ['a', 'b']
    with pytest.raises(ValueError, match="texts: this world model is conditioned on actions alone"):
        batched.reset_batch(seeds, texts=["pick up the red cube", "x"])  # as a reset's text (helper-195)
    assert np.array_equal(batched.reset_batch(np.array(seeds)), frames[0])  # a numpy array: ambiguous truth value
    with pytest.raises(ValueError, match=rf"expected uint8 frames \(B=2, \[T,\] {SIZE}, {SIZE}, 3\), got float32 "
                                         rf"\(2, {SIZE}, {SIZE}, 3\)"):  # was one rollout's "(1, ...)"
        batched.reset_batch(seeds, frames=np.zeros((2, SIZE, SIZE, 3), np.float32))
    for bad in ([1.7], [None], [-1]):  # 1.7 was seed 1, None a TypeError
        with pytest.raises(ValueError, match=r"seeds\[0\]: expected an int >= 0, got"):
            batched.reset_batch(bad)
    # a seed reset(seed=) takes (gymnasium's: any int >= 0) was refused above 2**32 - 1
    assert np.array_equal(batched.reset_batch([2**40])[0], single.reset(seed=2**40)[0])


def test_reset_from_a_dataset_episode(model, tmp_path):
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    data = collect(CollectConfig(env=TabletopConfig(image_size=SIZE, max_episode_steps=12), task=task, episodes=2,
                                 out=str(tmp_path / "ds")))
    from vplan.constants import OBS_IMAGE_FRONT
    from vplan.data import EpisodeDataset

    first, second = (EpisodeDataset(data).episode(i)[OBS_IMAGE_FRONT][0] for i in (0, 1))
    assert not np.array_equal(first, second)  # two scenes: the episode asked for is the one shown
    obs, _ = WorldModelEnv(model=model).reset(seed=0, options={"dataset": str(data), "episode": 1})
    assert np.array_equal(obs, second)
    # an index from numpy, as reset_batch takes numpy seeds (it was "expected an int >= 0, got np.int64(0)")
    obs, _ = WorldModelEnv(model=model).reset(seed=0, options={"dataset": str(data), "episode": np.int64(0)})
    assert np.array_equal(obs, first)


def test_the_shipped_action_model_runs_as_the_imagined_tabletop():
    env = gym.make(WORLD_MODEL_ENV_ID, config=WorldModelEnvConfig(checkpoint="shipped:tabletop/worldmodel_action"))
    try:
        assert env.unwrapped.model.config.conditioning == "action"
        first, _ = env.reset(seed=0)
        frame, *_ = env.step(env.action_space.sample())
        assert env.observation_space.contains(first) and env.observation_space.contains(frame)
        assert frame.shape == (64, 64, 3) and not np.array_equal(frame, first)
    finally:
        env.close()


FORKED_WORKERS = """
import sys
import gymnasium as gym, numpy as np, torch
import vplan.envs
from vplan.envs import WorldModelEnvConfig

x = torch.randn(256, 256)
(x @ x).sum()  # the parent runs torch's OpenMP pool before forking, as a training or an evaluation would
config = WorldModelEnvConfig(checkpoint=sys.argv[1], max_episode_steps=3)
envs = gym.make_vec("vplan/WorldModel-v0", num_envs=2, vectorization_mode="async",
                    vector_kwargs={"context": "fork"}, config=config)
envs.reset(seed=[1, 2], options={"frame": np.zeros((16, 16, 3), np.uint8)})
envs.step(envs.action_space.sample())
envs.close()
print("stepped")
"""


def test_forked_vector_workers_imagine_after_the_parent_ran_torch(tmp_path):
    """gymnasium's AsyncVectorEnv forks on Linux: a worker's first convolution hung for good once the parent had
    run torch (OpenMP's pool does not survive a fork; helper-205). Each forked env now runs torch on one thread."""
    import os
    import signal
    import subprocess
    import sys

    WorldModel(tiny_config()).save_pretrained(tmp_path / "wm")
    process = subprocess.Popen([sys.executable, "-c", FORKED_WORKERS, str(tmp_path / "wm")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "MUJOCO_GL": "egl"},
                               start_new_session=True)  # its own group: a hang takes its workers down with it
    try:
        out, err = process.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0 and out.strip() == "stepped", err[-2000:]
