"""MineRL adapter and the shared discrete moves, against the fake gym 0.19 / MineRL 0.4.4 of
tests/fakes/minerl_site, converted by the real shimmy (GymV21CompatibilityV0).

The fake mirrors the real packages' signatures (minerllabs/minerl v0.4.4, openai/gym 0.19.0); these tests
check vplan's side of the contract, not Minecraft.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from fakes import fake_site
from gymnasium.utils.env_checker import check_env

from vplan.cli import main
from vplan.envs import ENV_IDS, MineRLConfig, make_env
from vplan.envs.adapters import SimulatorNotInstalledError, resize_rgb
from vplan.envs.discrete_moves import MOVE_NAMES, NUM_MOVES, TURN_DEGREES, YAW_DELTA, Move, move_space, to_move
from vplan.envs.minerl_adapter import KEYS, MineRLEnv


@pytest.fixture
def fake_minerl(monkeypatch, tmp_path):
    """The fake MineRL importable and Java findable, for one test."""
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with fake_site("minerl_site"):
        yield


@pytest.fixture
def env(fake_minerl):
    env = MineRLEnv(MineRLConfig())
    yield env
    env.close()


def minerl_env(env: MineRLEnv):
    """The fake MineRL env under shimmy and old gym's TimeLimit."""
    return env._env.gym_env.unwrapped


def cli_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- the shared moves


def test_discrete_moves_are_the_shared_contract():
    assert [m.value for m in Move] == list(range(NUM_MOVES)) == [0, 1, 2, 3, 4]
    assert MOVE_NAMES == ("forward", "back", "turn_left", "turn_right", "jump")
    assert move_space().n == NUM_MOVES
    assert YAW_DELTA[Move.TURN_RIGHT] == TURN_DEGREES == -YAW_DELTA[Move.TURN_LEFT]
    assert to_move(np.int64(3)) is Move.TURN_RIGHT and to_move(np.array(4)) is Move.JUMP
    assert to_move("Forward") is Move.FORWARD and to_move(Move.BACK) is Move.BACK
    for bad in (5, -1, 1.0, "fly", np.array([1])):
        with pytest.raises(ValueError, match="move: expected"):
            to_move(bad)


# ---------------------------------------------------------------- without the simulator


def test_missing_minerl_through_the_cli_is_one_line_with_the_install_steps(capsys):
    line = cli_error(capsys, "bench", "env", "env=minerl")
    assert line.startswith("vplan bench env: error: env=minerl needs MineRL with old gym and shimmy")
    assert "not installed: minerl, gym" in line
    for needle in ("own venv", "JDK 8", "openjdk-8-jdk", "gym==0.19.0", "minerl==0.4.4", "env=blockworld"):
        assert needle in line
    assert "minerl" in cli_error(capsys, "bench", "env", "env=minerl", "task=navigate")


def test_collect_on_minerl_is_refused_for_want_of_an_expert_before_the_install_steps(capsys):
    assert cli_error(capsys, "collect", "env=minerl") == ("vplan collect: error: task: vplan collect rolls out a "
                                                          "scripted expert, and 'navigate' has none; expected one "
                                                          "of ['retrace', 'return_cubes']")


def test_missing_java_through_the_cli(capsys, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "")
    with fake_site("minerl_site"):
        line = cli_error(capsys, "bench", "env", "env=minerl", "task=navigate")
    assert "env=minerl needs Java 8 (no java on PATH and no JAVA_HOME)" in line


def test_a_task_of_another_env_is_refused(capsys, fake_minerl):
    line = cli_error(capsys, "collect", "env=minerl", "task=return_cubes")
    assert "task 'return_cubes' runs on env 'tabletop', not 'minerl'; use env=tabletop" in line


def test_new_gym_is_refused(fake_minerl, monkeypatch):
    import gym

    monkeypatch.setattr(gym, "__version__", "0.26.2")
    with pytest.raises(SimulatorNotInstalledError, match=r"gym 0.26.2 is installed, but MineRL 0.4.4 needs gym<0.20"):
        MineRLEnv(MineRLConfig())


def test_commands_run_navigate_on_minerl_without_task():
    from vplan.cli import COMMANDS, build_config, compose_config

    bench = next(c for c in COMMANDS if c.name == "bench env")
    assert build_config(compose_config(bench, ["env=minerl"])[0]).task.name == "navigate"


def test_make_env_without_minerl_raises():
    assert ENV_IDS["minerl"] == "vplan/MineRL-v0"
    with pytest.raises(SimulatorNotInstalledError, match="env=minerl needs MineRL"):
        make_env(MineRLConfig())


@pytest.mark.parametrize(
    ("field", "value"),
    [("env_id", "MineRLTreechop-v0"), ("image_size", 4), ("ticks_per_move", 3), ("max_episode_steps", 0),
     ("image_size", "64")],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field}: expected"):
        MineRLConfig(**{field: value})


# ---------------------------------------------------------------- against the fake


def test_check_env_through_make_env(fake_minerl):
    env = make_env(MineRLConfig(image_size=32, max_episode_steps=20))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert env.spec.max_episode_steps == 20
    finally:
        env.close()
    assert [str(w.message) for w in caught] == []


def test_observation_mapping(fake_minerl):
    env = MineRLEnv(MineRLConfig(image_size=32))
    try:
        obs, info = env.reset(seed=0)
        raw = minerl_env(env)._observation()  # the state the adapter just saw, observed again
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["front"], resize_rgb(raw["pov"], 32))
        assert obs["agent_pos"][0] == pytest.approx(float(raw["compass"]["angle"]))
        assert info["compass_angle"] == pytest.approx(float(raw["compass"]["angle"]))
        assert (info["success"], info["ticks"], info["move"]) == (False, 0, None)
        np.testing.assert_array_equal(env.render(), obs["front"])
    finally:
        env.close()


def test_every_move_becomes_minerl_action_dicts(env, monkeypatch):
    env.reset(seed=1)
    sent = []
    step = env._env.step
    monkeypatch.setattr(env._env, "step", lambda action: sent.append(action) or step(action))
    ticks = env.config.ticks_per_move
    expected_keys = set(KEYS) | {"camera", "place"}
    for move in Move:
        sent.clear()
        _, _, _, _, info = env.step(int(move))
        assert len(sent) == ticks and info["move"] == move.name.lower()
        for tick, action in enumerate(sent):
            assert set(action) == expected_keys and action["place"] == "none"
            pressed = {key for key in KEYS if action[key]}
            yaw = float(action["camera"][1])
            assert action["camera"][0] == 0.0  # the view stays level
            if move is Move.FORWARD:
                assert pressed == {"forward"} and yaw == 0.0
            elif move is Move.BACK:
                assert pressed == {"back"} and yaw == 0.0
            elif move is Move.JUMP:
                assert pressed == {"forward", "jump"} and yaw == 0.0
            else:
                assert pressed == set()
                assert yaw == (YAW_DELTA[move] if tick == 0 else 0.0)


def test_moves_act_in_the_world(env):
    env.reset(seed=2)
    world = minerl_env(env)
    yaw, position = world.yaw, world.position.copy()
    obs, *_ = env.step(int(Move.TURN_RIGHT))
    assert (world.yaw - yaw) % 360 == pytest.approx(TURN_DEGREES)
    angle = obs["agent_pos"][0]
    obs, *_ = env.step(int(Move.TURN_LEFT))
    assert obs["agent_pos"][0] == pytest.approx(angle + TURN_DEGREES, abs=1e-4)  # the goal swings back
    env.step(int(Move.FORWARD))
    walked = np.linalg.norm(world.position - position)
    assert walked == pytest.approx(0.2158 * env.config.ticks_per_move)  # about a block per move
    env.step(int(Move.BACK))
    np.testing.assert_allclose(world.position, position, atol=1e-9)


def test_reaching_the_goal_is_minerl_success(env):
    minerl_env(env).compass_spread = 0.0  # the compass points at the goal itself: steering by it reaches it
    obs, info = env.reset(seed=3)
    for _ in range(env.config.max_episode_steps):
        angle = obs["agent_pos"][0]
        move = Move.FORWARD if abs(angle) <= TURN_DEGREES / 2 else (Move.TURN_RIGHT if angle > 0 else Move.TURN_LEFT)
        obs, reward, terminated, truncated, info = env.step(int(move))
        if terminated or truncated:
            break
    assert terminated and not truncated and reward == 100.0
    assert info["success"] and info["episode_return"] == 100.0


def test_a_dense_goal_touched_under_minerls_success_score_still_terminates(fake_minerl):
    """The Dense shaping counts blocks towards the compass target, up to 8 blocks from the goal: a goal touched
    can total under the 160 MineRL's Dense success asks, and the touch was reported as a timeout."""
    env = MineRLEnv(MineRLConfig(env_id="MineRLNavigateDense-v0"))
    try:
        _, info = env.reset(seed=3)
        world = minerl_env(env)
        world.compass_target = world.goal * (1 - 8.0 / np.linalg.norm(world.goal))  # 8 blocks short of the goal
        world.yaw = float(np.degrees(np.arctan2(-world.goal[0], world.goal[1])) % 360.0)  # facing the goal
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(int(Move.FORWARD))
        assert terminated and not truncated and info["episode_return"] < 160 and not info["success"]
    finally:
        env.close()


def test_minerl_time_limit_truncates(fake_minerl, monkeypatch):
    env = MineRLEnv(MineRLConfig(ticks_per_move=20))
    try:
        env.reset(seed=4)
        env._env.gym_env._max_episode_steps = 30  # MineRL's own TimeLimit (6000 ticks), shortened
        _, _, terminated, truncated, info = env.step(int(Move.TURN_LEFT))
        assert (terminated, truncated, info["ticks"]) == (False, False, 20)
        _, _, terminated, truncated, info = env.step(int(Move.TURN_LEFT))
        assert (terminated, truncated, info["ticks"]) == (False, True, 30)
        env.reset(seed=4)
        env._spec.max_episode_steps = 30  # the server quits at the same tick: Minecraft says done, TimeLimit not
        env.step(int(Move.TURN_LEFT))
        _, _, terminated, truncated, info = env.step(int(Move.TURN_LEFT))
        assert (terminated, truncated, info["ticks"], info["success"]) == (False, True, 30, False)
        # the server quits on Minecraft's clock, which need not match the spec's tick count: still a timeout
        env.reset(seed=4)
        server_task = env._env.gym_env.unwrapped.task
        server_task.max_episode_steps = 25
        monkeypatch.setattr(env, "_spec", SimpleNamespace(
            max_episode_steps=6000, determine_success_from_rewards=server_task.determine_success_from_rewards))
        env.step(int(Move.TURN_LEFT))
        _, _, terminated, truncated, info = env.step(int(Move.TURN_LEFT))
        assert (terminated, truncated, info["ticks"]) == (False, True, 25)
    finally:
        env.close()


def test_the_configs_time_limit_and_the_reset_contract_hold_without_make_env(fake_minerl):
    """gymnasium.make with a config obeys its max_episode_steps (no TimeLimit is registered); options and a step
    before reset are refused, as by the embedded envs."""
    env = gym.make("vplan/MineRL-v0", config=MineRLConfig(max_episode_steps=3))
    try:
        with pytest.raises(RuntimeError, match="call reset"):
            env.unwrapped.step(int(Move.TURN_LEFT))
        env.reset(seed=0)
        with pytest.raises(ValueError, match="options"):
            env.reset(seed=0, options={"bogus": 1})
        env.reset(seed=0)
        ends = [env.step(int(Move.TURN_LEFT))[2:4] for _ in range(3)]
        assert ends == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_a_lost_minecraft_connection_is_an_error_not_an_episode_end(env):
    env.reset(seed=4)
    env._env.gym_env.unwrapped.connection_lost = True
    with pytest.raises(RuntimeError, match=r"lost its Minecraft instance \(Connection timed out!\)"):
        env.step(int(Move.FORWARD))


def test_seeded_resets_repeat_and_every_reset_seeds_minerl(env):
    obs_a, _ = env.reset(seed=7)
    obs_b, _ = env.reset(seed=7)
    obs_c, _ = env.reset(seed=8)
    np.testing.assert_array_equal(obs_a["front"], obs_b["front"])
    assert obs_a["agent_pos"][0] != obs_c["agent_pos"][0]
    world = minerl_env(env)
    goal = world.goal.copy()
    env.reset()  # unseeded: still a seed for MineRL (drawn from np_random), so a different world ...
    assert world._seed is None and not np.array_equal(world.goal, goal)
    unseeded = []
    for _ in range(2):  # ... and one that np_random decides (not the fake's os.urandom fallback), so it repeats
        env.reset(seed=7)
        env.reset()
        unseeded.append(world.goal.copy())
    np.testing.assert_array_equal(unseeded[0], unseeded[1])


def test_bench_env_through_the_cli_with_the_fake(fake_minerl, tmp_path, capsys):
    """MineRL renders inside its step and navigate has no scripted expert: the full step alone is timed."""
    main(["bench", "env", "env=minerl", "steps=5", "episodes=1", f"out={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["steps_without_render_per_s"] is None and results["expert_success_rate"] is None
    assert results["steps_and_renders_per_s"] > 0
    assert "navigate has no scripted expert" in capsys.readouterr().out
