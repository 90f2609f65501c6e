"""RLBench adapter and its return_cubes task, against the fake PyRep/RLBench of tests/fakes/rlbench_site.

The fake mirrors the real packages' signatures and call order (stepjam/RLBench 02720bb, stepjam/PyRep
8f420be); these tests check vplan's side of the contract, not the real simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import fake_site
from gymnasium.utils.env_checker import check_env

from vplan.cli import main
from vplan.envs import ENV_IDS, RLBenchConfig, make_env
from vplan.envs.adapters import SimulatorNotInstalledError, resize_rgb
from vplan.envs.rlbench_adapter import RLBenchEnv
from vplan.envs.tabletop_v0 import CUBE_HALF_SIZE, WORKSPACE_HIGH

SIZE = 32
CONFIG = RLBenchConfig(image_size=SIZE, render_size=64)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vplan.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("COPPELIASIM_ROOT", "PYTHONPATH")}
    return {**environ, **extra}


@pytest.fixture
def fake_rlbench(monkeypatch, tmp_path):
    """The fake RLBench importable and COPPELIASIM_ROOT set, for one test."""
    monkeypatch.setenv("COPPELIASIM_ROOT", str(tmp_path))
    with fake_site("rlbench_site"):
        yield


@pytest.fixture
def env(fake_rlbench):
    env = RLBenchEnv(CONFIG)
    yield env
    env.close()


def task_of(env: RLBenchEnv):
    return env.unwrapped._task_env._task


def move_cube(task, index: int, xy_offset: tuple[float, float]) -> None:
    """Put cube `index` at its start plus `xy_offset` (m), on the table (the PyRep API, as a hand would)."""
    start = task.start_poses()[index, :3]
    task._cubes[index].set_position([start[0] + xy_offset[0], start[1] + xy_offset[1], CUBE_HALF_SIZE],
                                    relative_to=task.get_base())


# ---------------------------------------------------------------- without the simulator


def test_vplan_envs_registers_the_adapters_without_importing_their_simulators():
    code = (
        "import sys, gymnasium, vplan.envs; "
        "assert not {'rlbench', 'pyrep', 'minerl', 'gym', 'shimmy'} & set(sys.modules), sorted(sys.modules); "
        "assert all(i in gymnasium.registry for i in vplan.envs.ENV_IDS.values())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ENV_IDS["rlbench"] == "vplan/RLBench-v0"


def test_missing_rlbench_through_the_cli_is_one_line_with_the_install_steps():
    result = run_cli("collect", "env=rlbench", env=clean_environ())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("vplan collect: error: env=rlbench needs RLBench and PyRep on CoppeliaSim 4.1")
    for needle in ("not installed: rlbench, pyrep", "CoppeliaSim 4.1.0", "COPPELIASIM_ROOT",
                   "git+https://github.com/stepjam/PyRep.git", "git+https://github.com/stepjam/RLBench.git",
                   "env=tabletop"):
        assert needle in line


def cli_error(capsys, *args: str) -> str:
    """Run `vplan *args` in this process; it must exit with code 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_coppeliasim_root_through_the_cli(capsys, monkeypatch):
    monkeypatch.delenv("COPPELIASIM_ROOT", raising=False)
    with fake_site("rlbench_site"):  # RLBench and PyRep installed, CoppeliaSim not set up
        line = cli_error(capsys, "bench", "env", "env=rlbench")
    assert line.startswith("vplan bench env: error: env=rlbench: COPPELIASIM_ROOT is not set")
    monkeypatch.setenv("COPPELIASIM_ROOT", "/nonexistent/CoppeliaSim")
    with fake_site("rlbench_site"):
        line = cli_error(capsys, "bench", "env", "env=rlbench")
    assert line.startswith("vplan bench env: error: env=rlbench: COPPELIASIM_ROOT=/nonexistent/CoppeliaSim is not a")


def test_every_command_with_an_env_checks_the_simulator_first(capsys, monkeypatch):
    monkeypatch.delenv("COPPELIASIM_ROOT", raising=False)
    for command in (["collect"], ["bench", "env"], ["eval", "worldmodel"]):
        line = cli_error(capsys, *command, "env=rlbench")
        assert "env=rlbench needs RLBench and PyRep on CoppeliaSim 4.1" in line


def test_make_env_without_rlbench_raises_an_import_error_that_is_a_usage_error():
    from vplan.errors import UsageError

    with pytest.raises(SimulatorNotInstalledError, match="env=rlbench needs RLBench") as caught:
        make_env(CONFIG)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, UsageError)


def test_an_rlbench_that_does_not_import_is_reported_with_its_cause(fake_rlbench, monkeypatch):
    monkeypatch.setitem(sys.modules, "rlbench.environment", None)  # as if PyRep's cffi module failed to load
    with pytest.raises(SimulatorNotInstalledError, match=r"installed but does not import \(ModuleNotFoundError"):
        RLBenchEnv(CONFIG)


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_size", 4), ("render_size", 4), ("num_cubes", 0), ("max_delta", 0.5), ("arm_action_mode", "teleport"),
     ("success_tolerance", 0.0), ("displace_distance", 0.01), ("task", "stack")],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field}: expected"):
        RLBenchConfig(**{field: value})


# ---------------------------------------------------------------- against the fake


def test_check_env(env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # Expected: agent_pos is unbounded on purpose (Box(-inf, inf)), as the tabletop's; and the env is made without
    # gymnasium.make (no spec), since PyRep runs one simulator per process and check_env's render-mode test would
    # make a second. Anything else is a finding.
    expected = ("infinity", "not having a spec")
    assert [str(w.message) for w in caught if not any(e in str(w.message) for e in expected)] == []


def test_observation_mapping(env):
    obs, info = env.reset(seed=3)
    assert set(obs) == {"front", "agent_pos"} and env.observation_space.contains(obs)
    raw = env._task_env.get_observation()
    assert raw.front_rgb.shape == (64, 64, 3)  # rendered at render_size
    np.testing.assert_array_equal(obs["front"], resize_rgb(raw.front_rgb, SIZE))
    np.testing.assert_array_equal(env.render(), obs["front"])
    base = info["cube_poses"]  # task frame: the cubes rest on the table top, z = half their size
    np.testing.assert_allclose(base[:, 2], CUBE_HALF_SIZE, atol=1e-9)
    base_position = raw.misc["vplan_return_cubes"]["base_pose"][:3]
    np.testing.assert_allclose(obs["agent_pos"][:3], raw.gripper_pose[:3] - base_position, atol=1e-6)
    assert obs["agent_pos"][3] == pytest.approx(float(np.sum(raw.gripper_joint_positions)))
    assert info["spot_names"] == ["left", "middle", "right"]
    assert sorted(info["cube_names"]) == ["blue", "green", "red"]
    assert info["phase"] == "displace" and not info["success"] and info["grasped"] == -1
    np.testing.assert_array_equal(info["start_poses"], info["cube_poses"])
    assert info["descriptions"][0].startswith("move the cubes")
    np.testing.assert_allclose(info["environment_state"], base[:, :3].flatten(), atol=1e-6)


def test_spots_are_named_left_to_right_in_the_front_camera(env):
    _, info = env.reset(seed=5)
    raw = env._task_env.get_observation()
    forward = raw.misc["front_camera_extrinsics"][:3, 2]
    right = np.cross(forward, [0.0, 0.0, 1.0])
    assert np.all(np.diff(info["spot_positions"] @ right) > 0)


def test_wrist_camera_is_optional(fake_rlbench):
    env = RLBenchEnv(CONFIG, wrist_camera=True)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["wrist"].shape == (SIZE, SIZE, 3) and env.observation_space.contains(obs)
    finally:
        env.close()


def test_action_mapping(env, monkeypatch):
    obs, _ = env.reset(seed=1)
    sent = []
    step = env._task_env.step
    monkeypatch.setattr(env._task_env, "step", lambda action: sent.append(np.array(action)) or step(action))
    base_pose = env._base_pose.copy()
    start_quaternion = env._tip_quaternion.copy()

    # From above the tool workspace (the Panda starts 35 cm up), a full step down moves max_delta, no more.
    obs1, *_ = env.step(np.array([0.0, 0.0, -1.0, -1.0], np.float32))
    action = sent[-1]
    assert action.shape == (8,)  # EndEffectorPose (x, y, z, qx, qy, qz, qw) + Discrete gripper
    np.testing.assert_allclose(action[:3], base_pose[:3] + obs["agent_pos"][:3] + [0, 0, -CONFIG.max_delta])
    np.testing.assert_allclose(action[3:7], start_quaternion)
    assert action[7] == 1.0  # grip <= 0: open
    np.testing.assert_allclose(obs1["agent_pos"][2], obs["agent_pos"][2] - CONFIG.max_delta, atol=2e-3)

    for _ in range(8):  # down into the workspace: the target never leaves it
        obs2, *_ = env.step(np.array([0.5, 0.0, -1.0, 1.0], np.float32))
    assert sent[-1][7] == 0.0  # grip > 0: close
    assert obs2["agent_pos"][2] <= WORKSPACE_HIGH[2] + 1e-6
    assert obs2["agent_pos"][3] < obs["agent_pos"][3]  # the fingers closed
    np.testing.assert_allclose(sent[-1][3:7], start_quaternion)  # the orientation is held all along


@pytest.mark.parametrize("action", [[np.nan, 0, 0, 0], [0, 0, 0, np.inf], [0, 0, 0]])
def test_a_non_finite_or_misshapen_action_is_refused_before_the_simulator(env, monkeypatch, action):
    """NaN became "hold the arm and open" without a word (on CoppeliaSim: PyRep's IK target), where the
    tabletop refuses it."""
    env.reset(seed=1)
    monkeypatch.setattr(env._task_env, "step", lambda action: pytest.fail("the simulator was stepped"))
    with pytest.raises(ValueError, match=r"action: expected 4 finite numbers \(dx, dy, dz, grip\)"):
        env.step(np.array(action, np.float32))


def test_an_unreachable_target_holds_the_arm_but_applies_the_grip(env, monkeypatch):
    from pyrep.backend import sim

    obs, _ = env.reset(seed=2)
    monkeypatch.setattr(sim, "IK_MAX_JUMP", 1e-6)  # now IK only solves "stay where you are"
    obs1, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0, -1.0, 1.0], np.float32))
    assert info["invalid_action"]
    np.testing.assert_allclose(obs1["agent_pos"][:3], obs["agent_pos"][:3], atol=1e-9)
    assert obs1["agent_pos"][3] < obs["agent_pos"][3]  # closed anyway
    assert (reward, terminated, truncated) == (0.0, False, False)


def test_success_needs_displacement_first(env):
    """Cubes that never left their starts are 'returned', but the task is not a success."""
    env.reset(seed=4)
    for _ in range(3):
        obs, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
        assert info["returned"].all() and info["phase"] == "displace"
        assert (reward, terminated, info["success"]) == (0.0, False, False)
    task = task_of(env)
    assert task.success() == (False, False)


def test_displaced_then_returned_within_tolerance_is_success(env):
    env.reset(seed=6)
    task = task_of(env)
    offsets = [(0.08, 0.0), (0.0, -0.08), (-0.07, 0.03)]
    for i, offset in enumerate(offsets):
        move_cube(task, i, offset)
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert info["phase"] == "return" and info["displaced"].all()
    assert (reward, terminated) == (0.0, False)

    for i in range(2):  # two back, one still away: not yet
        move_cube(task, i, (0.01, -0.01))
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert info["returned"].tolist() == [True, True, False] and (reward, terminated) == (0.0, False)

    move_cube(task, 2, (0.0, 0.015))  # within the 2 cm tolerance
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    assert info["dist"] == pytest.approx(np.mean([np.hypot(0.01, 0.01)] * 2 + [0.015]), abs=1e-6)

    env.reset(seed=6)  # a new episode starts over: the displacement must happen again
    _, _, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert info["phase"] == "displace" and not terminated


def test_a_cube_beyond_the_tolerance_is_not_returned(env):
    env.reset(seed=7)
    task = task_of(env)
    for i in range(CONFIG.num_cubes):
        move_cube(task, i, (0.1, 0.0))
    env.step(np.zeros(4, np.float32))
    for i in range(CONFIG.num_cubes):
        move_cube(task, i, (0.0, 0.025 if i == 0 else 0.0))
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert info["returned"].tolist() == [False, True, True]
    assert (reward, terminated, info["success"]) == (0.0, False, False)


def test_a_held_cube_does_not_count_as_displaced(env):
    env.reset(seed=8)
    task = task_of(env)
    for i in range(CONFIG.num_cubes):
        move_cube(task, i, (0.1, 0.0))
    gripper = task.robot.gripper
    held = task._cubes[0]
    gripper._grasped_objects.append(held)  # as Gripper.grasp would record it
    gripper._old_parents.append(held.get_parent())
    assert task.success() == (False, False)
    assert task.state()["displaced"].tolist() == [False, True, True] and task.state()["phase"] == "displace"
    gripper.release()
    assert task.success() == (False, False) and task.state()["phase"] == "return"


def test_the_scene_is_built_in_code_and_survives_relaunching(fake_rlbench):
    """RLBench's Task.load wants a .ttm; ReturnCubes.load builds a model base, cubes and spots instead."""
    from pyrep.objects.object import Object
    from rlbench.backend.task import Task

    for cubes in (2, 1):  # a second env in the same process after close(): a fresh CoppeliaSim
        env = RLBenchEnv(CONFIG, num_cubes=cubes)
        try:
            _, info = env.reset(seed=0)
            task = task_of(env)
            assert Object.exists("return_cubes") and task.get_base().is_model()
            assert len(task.get_base().get_objects_in_tree(exclude_base=True)) == 2 * cubes
            assert info["cube_poses"].shape == (cubes, 7) and info["spot_names"] == (
                ["left", "right"] if cubes == 2 else ["middle"])
            plain = Task(task.pyrep, task.robot, name="not_a_ttm")
            with pytest.raises(FileNotFoundError, match="task .ttm"):
                plain.load()
        finally:
            env.close()


def test_a_task_that_fails_to_load_shuts_its_simulator_down_so_the_next_reset_launches_afresh(env, monkeypatch):
    """With CoppeliaSim left running, the next reset's launch failed ("already running") and close() raised."""
    from vplan.envs import rlbench_return_cubes

    load, calls = rlbench_return_cubes.ReturnCubes.load, []

    def fails_once(task):
        calls.append(task)
        if len(calls) == 1:
            raise RuntimeError("the scene could not be built")
        return load(task)

    monkeypatch.setattr(rlbench_return_cubes.ReturnCubes, "load", fails_once)
    with pytest.raises(RuntimeError, match="could not be built"):
        env.reset(seed=0)
    assert env._environment is None
    _, info = env.reset(seed=0)
    assert len(calls) == 2 and info["cube_poses"].shape == (CONFIG.num_cubes, 7)
    env.close()
    # the same when the launch itself fails after CoppeliaSim started (the robot or scene setup)
    import rlbench.environment

    scene, failed = rlbench.environment.Scene, []

    def scene_fails_once(*args, **kwargs):
        if not failed:
            failed.append(True)
            raise RuntimeError("the robot could not be set up")
        return scene(*args, **kwargs)

    monkeypatch.setattr(rlbench.environment, "Scene", scene_fails_once)
    with pytest.raises(RuntimeError, match="could not be set up"):
        env.reset(seed=0)
    assert env._environment is None and env.reset(seed=0)[1]["cube_poses"].shape == (CONFIG.num_cubes, 7)


def test_seeded_resets_repeat(env):
    obs_a, info_a = env.reset(seed=11)
    obs_b, info_b = env.reset(seed=11)
    obs_c, info_c = env.reset(seed=12)
    np.testing.assert_array_equal(obs_a["front"], obs_b["front"])
    np.testing.assert_array_equal(info_a["cube_poses"], info_b["cube_poses"])
    assert not np.array_equal(info_a["cube_poses"], info_c["cube_poses"])


def test_planning_action_mode(fake_rlbench):
    env = RLBenchEnv(CONFIG, arm_action_mode="planning")
    try:
        obs, _ = env.reset(seed=0)
        obs1, *_ = env.step(np.array([0.0, 1.0, -1.0, -1.0], np.float32))
        np.testing.assert_allclose(obs1["agent_pos"][:3] - obs["agent_pos"][:3],
                                   [0.0, CONFIG.max_delta, -CONFIG.max_delta], atol=1e-6)
    finally:
        env.close()


def test_the_tabletop_expert_solves_return_cubes_on_the_fake(env):
    """The info keys match the tabletop's closely enough for its scripted expert to drive RLBench's Panda."""
    from vplan.policies import ReturnCubesExpert

    obs, info = env.reset(seed=0)
    expert = ReturnCubesExpert(max_delta=CONFIG.max_delta)
    expert.reset(info, seed=0)
    for _ in range(CONFIG.max_episode_steps):
        obs, reward, terminated, truncated, info = env.step(expert.select_action(obs, info))
        if terminated:
            break
    assert info["success"] and reward == 1.0 and info["phase"] == "return"


def test_collect_through_the_cli_with_the_fake(fake_rlbench, tmp_path):
    out = tmp_path / "data"
    main(["collect", "env=rlbench", "episodes=1", f"out={out}", "env.image_size=16", "env.render_size=32"])
    info = json.loads(Path(out, "meta", "info.json").read_text())
    assert info["total_episodes"] == 1
    assert info["features"]["observation.images.front"]["shape"] == [16, 16, 3]
    assert info["robot_type"] == "vplan_rlbench"  # the env's own name, though it runs the tabletop's task


def test_bench_env_through_the_cli_with_the_fake(fake_rlbench, tmp_path, capsys):
    """The adapter renders inside its step (no `simulate`): only the full step is timed."""
    main(["bench", "env", "env=rlbench", "steps=5", "episodes=1", f"out={tmp_path}", "env.image_size=16",
          "env.render_size=32"])
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["steps_without_render_per_s"] is None and results["render_share_of_step"] is None
    assert results["steps_and_renders_per_s"] > 0 and results["expert_success_rate"] == 1.0
    printed = capsys.readouterr().out
    assert "rlbench at 16x16" in printed and "renders inside its step" in printed and "target" not in printed


def test_the_configs_time_limit_and_the_reset_contract_hold_without_make_env(fake_rlbench):
    import gymnasium as gym

    env = gym.make("vplan/RLBench-v0", config=replace(CONFIG, max_episode_steps=3))
    try:
        with pytest.raises(RuntimeError, match="call reset"):
            env.unwrapped.step(np.zeros(4, np.float32))
        env.reset(seed=0)
        with pytest.raises(ValueError, match="options"):
            env.reset(seed=0, options={"bogus": 1})
        env.reset(seed=0)
        ends = [env.step(np.zeros(4, np.float32))[2:4] for _ in range(3)]
        assert ends == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_applied_action_is_the_tips_move_and_the_grip(env):
    """As on the tabletop, so the IDM's default label (`action.applied`) exists in RLBench data."""
    _, info = env.reset(seed=0)
    assert np.array_equal(info["applied_action"], np.zeros(4, np.float32))
    before = info["gripper_pos"]
    _, _, _, _, info = env.step(np.array([0.5, -0.5, -1.0, 1.0], np.float32))
    moved = (info["gripper_pos"] - before) / CONFIG.max_delta
    assert info["applied_action"].dtype == np.float32
    np.testing.assert_allclose(info["applied_action"], np.append(moved, 1.0), atol=1e-5)
    assert np.abs(moved).max() > 0.1  # the tip did move
    _, _, _, _, info = env.step(np.array([0.0, 0.0, 0.0, -1.0], np.float32))
    assert info["applied_action"][3] == -1.0


def test_a_step_whose_arm_target_and_hold_both_fail_applies_no_grip(env, monkeypatch):
    """MoveArmThenGripper runs the arm first: when even holding still is refused, the grip is not sent either,
    and applied_action says so (0), not the command."""
    from pyrep.backend import sim

    obs, _ = env.reset(seed=2)
    monkeypatch.setattr(sim, "IK_MAX_JUMP", -1.0)  # IK solves nothing, not even staying put
    obs1, _, _, _, info = env.step(np.array([1.0, 0.0, 0.0, 1.0], np.float32))
    assert info["invalid_action"] and info["applied_action"][3] == 0.0
    assert obs1["agent_pos"][3] == pytest.approx(obs["agent_pos"][3])  # the fingers did not move
