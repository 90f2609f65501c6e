"""The scripted return_cubes expert: it solves the task, labels steps with templated subgoals, explores."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from vplan.envs.tabletop_v0 import COLOURS, TabletopConfig, TabletopEnv, spot_names
from vplan.policies import SUBGOAL_TEMPLATES, ReturnCubesExpert, make_expert, subgoal_texts

SIZE = 16
MAX_STEPS = 400  # the registered max_episode_steps


@pytest.fixture(scope="module")
def env():
    env = TabletopEnv(image_size=SIZE)
    yield env
    env.close()


def _episode(env: TabletopEnv, expert: ReturnCubesExpert, seed: int, max_steps: int = MAX_STEPS):
    """Actions, subgoals and the last info of one episode."""
    obs, info = env.reset(seed=seed)
    expert.reset(info, seed=seed)
    actions, subgoals = [], []
    for _ in range(max_steps):
        action = expert.select_action(obs, info)
        actions.append(action)
        subgoals.append(expert.subgoal)
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break
    return np.array(actions), subgoals, info


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_solves_the_task(env, seed):
    actions, _, info = _episode(env, ReturnCubesExpert(), seed)
    assert info["success"] and info["dist"] < env.config.success_tolerance
    assert len(actions) < 300


def test_expert_solves_the_task_at_50_hz():
    """One step of 20 ms does not close the fingers on the cube: the expert opened them again, forever."""
    env = TabletopEnv(image_size=SIZE, control_hz=50)
    try:
        actions, _, info = _episode(env, ReturnCubesExpert(), seed=0, max_steps=MAX_STEPS)
    finally:
        env.close()
    assert info["success"], f"not solved in {len(actions)} steps"


@pytest.mark.slow
def test_expert_success_over_50_seeds(env):
    results = [_episode(env, ReturnCubesExpert(), seed) for seed in range(50)]
    success = np.mean([info["success"] for _, _, info in results])
    mean_length = np.mean([len(actions) for actions, _, _ in results])
    assert success >= 0.95, f"success {success:.2f}, mean episode length {mean_length:.0f}"
    assert mean_length <= 300


def _parse(text: str) -> tuple[str, dict[str, str]]:
    """(template kind, fields) of a subgoal text."""
    for kind, template in SUBGOAL_TEMPLATES.items():
        pattern = re.escape(template).replace(r"\{colour\}", r"(?P<colour>\w+)").replace(r"\{spot\}", r"(?P<spot>\w+)")
        match = re.fullmatch(pattern, text)
        if match:
            return kind, match.groupdict()
    raise AssertionError(f"{text!r} matches no template")


def test_subgoals_follow_the_templates_in_order(env):
    _, subgoals, info = _episode(env, ReturnCubesExpert(), seed=2)
    assert info["success"]
    colours, n = info["cube_names"], len(info["cube_names"])
    assert set(subgoals) <= set(subgoal_texts(colours))
    parsed = [_parse(text) for text, _ in itertools.groupby(subgoals)]
    assert [kind for kind, _ in parsed] == ["pick", "place"] * n + ["pick", "return"] * n
    for (_, pick), (_, then) in zip(parsed[::2], parsed[1::2]):
        assert pick["colour"] == then["colour"]  # each cube is picked, then put somewhere
    for half in (parsed[: 2 * n], parsed[2 * n :]):
        assert sorted(fields["colour"] for _, fields in half[::2]) == sorted(colours)
    assert sorted(fields["spot"] for _, fields in parsed[1 : 2 * n : 2]) == sorted(spot_names(n))


def test_each_subgoals_steps_do_what_its_text_says(env):
    """The world model learns the text from these labels: a "pick" segment takes its cube (not held as it
    starts, held as it ends); a "place" or "put back" one starts holding its cube and ends with it let go on its
    spot or back at its start."""
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        expert = ReturnCubesExpert()
        expert.reset(info, seed=seed)
        infos, labels = [info], []
        while not infos[-1]["success"] and len(labels) < MAX_STEPS:
            action = expert.select_action(obs, infos[-1])
            labels.append(expert.subgoal)
            obs, _, _, _, info = env.step(action)
            infos.append(info)
        start = 0
        for text, steps in itertools.groupby(labels):
            end = start + len(list(steps))
            kind, fields = _parse(text)
            cube = info["cube_names"].index(fields["colour"])
            first, last = infos[start], infos[end]  # before the segment's first step, after its last
            if kind == "pick":
                assert first["grasped"] != cube and last["grasped"] == cube, (seed, text)
            else:
                assert first["grasped"] == cube and last["grasped"] == -1, (seed, text)
                goal = (last["spot_positions"][last["spot_names"].index(fields["spot"])] if kind == "place"
                        else last["start_poses"][cube])
                assert np.linalg.norm(last["cube_poses"][cube, :2] - goal[:2]) < 0.02, (seed, text)
            start = end


def test_experts_refuse_to_act_before_reset():
    from vplan.policies import RetraceExpert

    for expert in (ReturnCubesExpert(), RetraceExpert()):
        with pytest.raises(RuntimeError, match=r"call reset\(info\) before select_action"):
            expert.select_action({}, {})


def test_subgoal_texts_are_few_and_templated():
    texts = subgoal_texts(list(COLOURS))
    assert len(texts) == len(set(texts)) == 3 * (1 + 3 + 1)
    assert "pick up the red cube" in texts
    assert "place the green cube on the middle spot" in texts
    assert "put the blue cube back where it started" in texts


def test_noise_and_exploration_change_actions_but_keep_them_valid(env):
    clean, _, _ = _episode(env, ReturnCubesExpert(), seed=0, max_steps=60)
    for expert in (ReturnCubesExpert(noise_std=0.1), ReturnCubesExpert(explore_fraction=0.3)):
        actions, subgoals, _ = _episode(env, expert, seed=0, max_steps=60)
        assert actions.dtype == np.float32 and actions.shape[1] == 4
        assert np.all(np.abs(actions) <= 1.0)
        assert not np.array_equal(actions, clean[: len(actions)])
        assert all(subgoals)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.8, 0.95])
def test_exploration_fills_the_share_of_steps_asked_for(fraction):
    """Segments may start on the step after one ends: the start rate for segments that could not gave 0.55 of
    the steps for 0.5, and every step above 0.85 (its probability passed 1)."""
    from vplan.policies.exploration import ExplorationSegments

    segments, rng = ExplorationSegments(fraction), np.random.default_rng(0)
    steps = 100_000
    share = sum(segments.explore(rng) for _ in range(steps)) / steps
    assert share == pytest.approx(fraction, abs=0.01)


def test_expert_recovers_from_noise_and_exploration(env):
    _, _, info = _episode(env, ReturnCubesExpert(noise_std=0.05, explore_fraction=0.15), seed=4)
    assert info["success"]


def test_expert_is_deterministic_for_a_seed(env):
    first, _, _ = _episode(env, ReturnCubesExpert(noise_std=0.1, explore_fraction=0.2), seed=5, max_steps=40)
    second, _, _ = _episode(env, ReturnCubesExpert(noise_std=0.1, explore_fraction=0.2), seed=5, max_steps=40)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "kwargs",
    [{"noise_std": -0.1}, {"explore_fraction": 1.0}, {"max_delta": 0.0}, {"noise_std": math.nan},
     {"max_delta": math.nan}],
)
def test_bad_expert_arguments_raise(kwargs):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=repr(value)):
        ReturnCubesExpert(**kwargs)


def test_make_expert():
    assert isinstance(make_expert("return_cubes", noise_std=0.1), ReturnCubesExpert)
    # fitted to the env: it steers in the env's units (collect and bench env passed none, and mis-steered)
    assert make_expert("return_cubes", TabletopConfig(max_delta=0.05)).max_delta == 0.05
    assert make_expert("return_cubes").max_delta == TabletopConfig().max_delta
    with pytest.raises(ValueError, match="'stack'"):
        make_expert("stack")
