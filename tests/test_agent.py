"""VideoPlanningAgent on tiny random checkpoints: the reset/act loop in the tabletop env, its action space and
inspection, bad input, replanning on drift and on a stall, when the memory learns (imagined vs observed),
Temp-LoRA's update overlapping execution, extra chunks on a false check, seeding, and the README's loop."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny_agent import CHUNK, IMAGE, LATENT, save_tiny_checkpoints, tiny_idm, tiny_world_model

import vplan.envs  # noqa: F401  (registers vplan/Tabletop-v0)
from vplan.agent import VideoPlanningAgent
from vplan.config import STAGES, AgentConfig
from vplan.constants import DONE
from vplan.data.collect import EpisodeRecorder
from vplan.memory import MemoryConfig, NoMemory
from vplan.planner import Check, Plan, PlannerConfig, Subgoal
from vplan.planner.offline import OfflinePlanner, Planner
from vplan.policies.config import IDMConfig
from vplan.policies.idm import IDMPolicy
from vplan.tasks import TaskConfig

README = Path(__file__).resolve().parents[1] / "README.md"
TEXTS = ("pick up the red cube", "place the red cube on the left spot")
NO_REPLAN = {"replan_drift": None, "stall_steps": 0}


class FixedPlanner(Planner):
    """Always the same plan (the agent takes any Planner)."""

    def __init__(self, subgoals: list[Subgoal], chunk_frames: int = CHUNK) -> None:
        super().__init__(PlannerConfig(chunk_frames=chunk_frames), TaskConfig.preset("return_cubes"))
        self.subgoals = subgoals
        self.calls = 0

    def plan(self, instruction, info, first_frame=None) -> Plan:
        self.calls += 1
        return Plan(tuple(self.subgoals), source="offline", instruction=instruction)


class RecordingMemory(NoMemory):
    """No memory, recording what it is asked to learn from."""

    def __init__(self, config, world_model) -> None:
        super().__init__(config, world_model)
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update_async(self, previous, new) -> None:
        self.updates.append((previous.clone(), new.clone()))
        super().update_async(previous, new)


@pytest.fixture(scope="module")
def world_model():
    return tiny_world_model()


@pytest.fixture(scope="module")
def idm():
    return tiny_idm()


@pytest.fixture(scope="module")
def env():
    env = gym.make("vplan/Tabletop-v0")
    yield env
    env.close()


def make_agent(world_model, idm, subgoals=None, memory=None, **config) -> VideoPlanningAgent:
    subgoals = subgoals or [Subgoal(text, 1) for text in TEXTS]
    memory = memory or MemoryConfig(kind="none")
    return VideoPlanningAgent(world_model, idm, FixedPlanner(subgoals), memory, AgentConfig(**config))


def fake_obs(frame: np.ndarray, position=(0.0, 0.0, 0.1)) -> dict[str, np.ndarray]:
    return {"front": frame, "agent_pos": np.array([*position, 0.08], np.float32)}


def test_loop_in_the_env_follows_the_plan(world_model, idm, env):
    agent = make_agent(world_model, idm, **NO_REPLAN)
    obs, info = env.reset(seed=10000)
    plan = agent.reset("move the cubes", obs, info, seed=3)
    assert plan is agent.plan and plan.texts == list(TEXTS)
    assert agent.subgoal.text == TEXTS[0] and agent.chunk is None
    actions, subgoals = [], []
    while not agent.done:
        action = agent.act(obs, info)
        if agent.done:
            break
        assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.shape == (4,)
        assert agent.action_space.contains(action) and env.action_space.contains(action)
        assert agent.imagined.shape == (CHUNK, IMAGE, IMAGE, 3) and agent.imagined.dtype == np.uint8
        assert agent.chunk.latents.shape == (1, CHUNK, 4, LATENT, LATENT)
        assert np.array_equal(agent.expected_frame, agent.imagined[agent.chunk.executed - 1])
        subgoals.append(agent.subgoal.text)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        assert not (terminated or truncated)
    assert len(actions) == 2 * CHUNK  # two subgoals of one chunk each
    assert subgoals == [TEXTS[0]] * CHUNK + [TEXTS[1]] * CHUNK
    assert agent.subgoal is None and agent.expected_frame is None
    assert np.array_equal(agent.act(obs, info), np.zeros(4, np.float32))  # idle once the plan is done
    assert len(agent.chunk.observed) == CHUNK and len(agent.chunk.drift) == CHUNK
    agent.wait()
    stats = agent.stats()
    assert 0 <= stats.pop("drift_mean") <= stats.pop("drift_max") <= 1
    assert max(agent.chunk.drift) <= agent.stats()["drift_max"]
    assert stats == {"steps": 2 * CHUNK, "chunks": 2, "replans": {"drift": 0, "stall": 0},
                     "extra_chunks": 0, "subgoals_done": 2, "subgoals": 2, "done": True}
    assert set(agent.timings) == set(STAGES)
    for stage in ("generation", "encoding", "inverse_dynamics", "execution"):
        assert agent.timings[stage] > 0, stage
    assert [e["event"] for e in agent.events] == [f"subgoal: {t}" for t in TEXTS]
    agent.close()


def test_a_moves_idm_makes_the_agent_act_with_discrete_moves_in_the_blockworld(world_model):
    torch.manual_seed(0)
    moves_idm = IDMPolicy(IDMConfig(**{**IDMConfig.tiny(image_size=IMAGE).to_dict(), "num_moves": 5})).eval()
    agent = make_agent(world_model, moves_idm, replan_drift=None)  # stall_steps stays 4: off for moves
    assert agent.action_space == gym.spaces.Discrete(5)
    env = gym.make("vplan/Blockworld-v0")
    obs, info = env.reset(seed=10000)
    agent.reset("walk", obs, info, seed=0)
    steps = 0
    while not agent.done:
        action = agent.act(obs, info)
        if agent.done:
            break
        assert isinstance(action, np.integer) and agent.action_space.contains(action)
        assert env.action_space.contains(action)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
    assert steps == 2 * CHUNK and agent.stats()["replans"] == {"drift": 0, "stall": 0}
    assert agent.act(obs, info) == 0  # no idle move: move 0 once the plan is done
    agent.close()
    env.close()


def test_reset_starts_over_and_seeds_the_imagination(world_model, idm):
    """The second seed-5 episode imagines what the first did, its second chunk too (made after an update, so the
    update's noise and Adam are begun again): the first's Temp-LoRA update is forgotten."""
    memory = MemoryConfig(kind="temp_lora", rank=2, gradient_checkpointing=False)
    agent = make_agent(world_model, idm, memory=memory, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    episodes = []
    for seed in (5, 5, 6):
        agent.reset("move the cubes", fake_obs(frame), {}, seed=seed)
        assert agent.chunk is None and agent.steps == 0 and not agent.done
        assert agent.memory.updates == 0 and not agent.memory.active
        assert all(v == 0 for k, v in agent.timings.items() if k not in ("planning", "encoding"))
        chunks = []
        for step in range(CHUNK + 1):
            agent.act(fake_obs(np.full((IMAGE, IMAGE, 3), 90 + 5 * step, np.uint8)))
            if step in (0, CHUNK):
                chunks.append(agent.imagined.copy())
        assert agent.memory.updates == 1  # the first chunk was learned before the second (what reset must forget)
        episodes.append(chunks)
    assert all(np.array_equal(a, b) for a, b in zip(episodes[0], episodes[1]))
    assert not np.array_equal(episodes[0][0], episodes[2][0])
    agent.close()


def test_a_chunk_records_the_context_it_was_generated_from(world_model, idm):
    agent = make_agent(world_model, idm, memory=MemoryConfig(kind="anchor"), **NO_REPLAN)
    agent.reset("move the cubes", fake_obs(np.full((IMAGE, IMAGE, 3), 90, np.uint8)), {}, seed=0)
    chunks = []
    for step in range(CHUNK + 1):
        agent.act(fake_obs(np.full((IMAGE, IMAGE, 3), 100 + 10 * step, np.uint8)))
        chunks += [agent.chunk] if not chunks or agent.chunk is not chunks[-1] else []
    first, second = chunks
    assert first.context.shape[1] == 1 and second.context.shape[1] == world_model.config.context_frames
    assert torch.equal(second.context[:, :1], first.context)  # the anchor: the episode's first frame, not a recent one
    agent.close()


def test_reset_follows_a_given_plan_without_asking_the_planner(world_model, idm):
    agent = make_agent(world_model, idm, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    given = Plan((Subgoal(TEXTS[1], 2),), source="llm", instruction="move the cubes")
    assert agent.reset("move the cubes", fake_obs(frame), {}, plan=given) is given
    assert agent.planner.calls == 0 and agent.plan is given
    agent.act(fake_obs(frame))
    assert agent.chunk.text == TEXTS[1]
    with pytest.raises(ValueError, match="plan: expected a Plan .* got dict"):
        agent.reset("move the cubes", fake_obs(frame), {}, plan=given.to_dict())
    for seed in (1.5, -1, True):  # not silently truncated or wrapped
        with pytest.raises(ValueError, match="seed: expected None or an int"):
            agent.reset("move the cubes", fake_obs(frame), {}, seed=seed)
    assert agent.plan is given  # the refused resets changed nothing
    agent.close()


def test_a_plan_the_caller_wrote_with_a_text_of_no_skill_is_warned_of(world_model, idm, env):
    """A typo in a written plan was imagined under a text no episode was labelled with, unsaid (helper-202)."""
    import warnings

    from vplan.errors import VplanWarning

    agent = make_agent(world_model, idm, **NO_REPLAN)
    obs, info = env.reset(seed=10000)
    typo = Plan((Subgoal(TEXTS[0], 1), Subgoal("pick up the red cub", 1)), source="offline")
    with pytest.warns(VplanWarning, match=r"^plan: 'pick up the red cub' is not one of task 'return_cubes''s skills"):
        agent.reset("move the cubes", obs, info, plan=typo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplanWarning)
        agent.reset("move the cubes", obs, info, plan=Plan((Subgoal(TEXTS[1], 1),), source="offline"))
        agent.reset("move the cubes", obs, {}, plan=typo)  # no scene facts to read the skills off: silent
        from vplan.agent import _warn_of_unknown_texts
        from vplan.planner import TaskSkills

        no_skills = FixedPlanner(list(typo.subgoals))
        no_skills.task_skills = TaskSkills()  # a task of one's own without skills()
        _warn_of_unknown_texts(typo, no_skills, info)  # silent: it stopped reset with NotImplementedError (helper-206)
    agent.close()


def test_act_before_reset_and_bad_input_are_clear_errors(world_model, idm):
    agent = make_agent(world_model, idm)
    frame = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"act\(\) before reset\(\)"):
        agent.act(fake_obs(frame))
    with pytest.raises(ValueError, match="expected the camera key 'front'.*got keys \\['agent_pos', 'wrist'\\]"):
        agent.reset("go", {"wrist": frame, "agent_pos": np.zeros(4)}, {})
    with pytest.raises(ValueError, match=r"expected a uint8 frame of shape \(64, 64, 3\).*got uint8 \(32, 32, 3\); "
                                         r"make the env with image_size=64"):
        agent.reset("go", fake_obs(np.zeros((32, 32, 3), np.uint8)), {})
    for wrong in (frame.astype(np.float32), frame.transpose(2, 0, 1)):  # the right size: no image_size hint
        with pytest.raises(ValueError, match=r"got \w+ \(\d+, \d+, \d+\); an RGB image as height x width x 3 "
                                             r"values from 0 to 255$"):
            agent.reset("go", fake_obs(wrong), {})
    with pytest.raises(ValueError, match=r"got uint8 \(1, 64, 64, 3\); one env's frame, not a batch or a stack of "
                                         r"them \(a vector env: one agent per sub-env, each given obs\[key\]\[i\]\)$"):
        agent.reset("go", fake_obs(frame[None]), {})  # gymnasium's vector envs, FrameStackObservation
    with pytest.raises(ValueError, match="state key 'agent_pos' for stall detection.*stall_steps=0"):
        agent.reset("go", {"front": frame}, {})
    with pytest.raises(ValueError, match="instruction: expected a non-empty string"):
        agent.reset("  ", fake_obs(frame), {})
    with pytest.raises(ValueError, match="expected the env's observation dict"):
        agent.reset("go", frame, {})
    agent.reset("go", fake_obs(frame), {})
    with pytest.raises(ValueError, match="got shape|expected a uint8 frame"):
        agent.act(fake_obs(np.zeros((IMAGE, IMAGE), np.uint8)))
    with pytest.raises(ValueError, match="info: expected the env's info dict or None, got list"):
        agent.act(fake_obs(frame), [1, 2])  # a subgoal's check reads it by key: a TypeError
    # without stall detection, agent_pos is not needed
    quiet = make_agent(world_model, idm, stall_steps=0)
    quiet.reset("go", {"front": frame}, {})
    assert quiet.act({"front": frame}).shape == (4,)


def test_components_and_config_are_checked(world_model, idm):
    with pytest.raises(ValueError, match="IDM that reads the world model's 64x64 frames"):
        VideoPlanningAgent(world_model, IDMPolicy(IDMConfig.tiny(image_size=32)), FixedPlanner([Subgoal("x")]))
    with pytest.raises(ValueError, match="chunk_frames=8, got 4"):
        VideoPlanningAgent(world_model, idm, FixedPlanner([Subgoal("x")], chunk_frames=4), MemoryConfig())
    # a kind's name for the memory, a dict for the config: found at reset (and at close) by an AttributeError
    with pytest.raises(TypeError, match=r"memory: expected an EpisodicMemory or a MemoryConfig \(e.g. MemoryConfig"
                                        r"\(kind='none'\)\), got str 'none'"):
        VideoPlanningAgent(world_model, idm, FixedPlanner([Subgoal("x")]), "none")
    with pytest.raises(TypeError, match="config: expected an AgentConfig, got dict"):
        VideoPlanningAgent(world_model, idm, FixedPlanner([Subgoal("x")]), config={"stall_steps": 0})
    with pytest.raises(ValueError, match="replan_drift: expected"):
        AgentConfig(replan_drift=-0.1)
    with pytest.raises(ValueError, match="replan_drift: expected a number or None, got '0.1'"):  # a TypeError
        AgentConfig(replan_drift="0.1")
    assert AgentConfig(replan_drift=np.float32(0.1), stall_distance=0).stall_distance == 0  # numpy, ints: numbers
    swept = AgentConfig(replan_drift=np.float32(0.1), stall_steps=np.int64(3), seed=np.int64(5))  # were refused
    assert [type(v) for v in (swept.replan_drift, swept.stall_steps, swept.seed)] == [float, int, int]
    from vplan.planner import PlannerConfig, make_planner

    assert make_planner(PlannerConfig(), "return_cubes").task_config.name == "return_cubes"  # as from_pretrained
    with pytest.raises(ValueError, match="stall_steps: expected an int >= 0, got -1"):
        AgentConfig(stall_steps=-1)
    with pytest.raises(ValueError, match="stall_command"):
        AgentConfig(stall_command=2.0)
    from dataclasses import replace

    from vplan.errors import UsageError
    from vplan.worldmodel.model import WorldModel

    action_model = WorldModel(replace(world_model.config, conditioning="action"))
    with pytest.raises(ValueError, match="conditioned on 'action'") as error:  # the README's "wrong input"
        VideoPlanningAgent(action_model, idm, FixedPlanner([Subgoal("x")]))
    assert isinstance(error.value, UsageError)  # and one line in the CLI


def test_drift_past_the_threshold_replans_from_the_real_frames(world_model, idm):
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 2)], replan_drift=0.2, stall_steps=0,
                       max_replans_per_chunk=1)
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    first = agent.chunk
    away = 255 - agent.expected_frame  # the opposite of what was imagined: drift far above 0.2
    agent.act(fake_obs(away))
    assert first.cut == "drift" and first.drift[0] > 0.2 and len(first.observed) == 1
    second = agent.chunk
    assert second is not first and second.index == 1 and second.replanned_from == "drift" and second.replans == 1
    assert second.executed == 1 and agent.replans == {"drift": 1, "stall": 0}
    assert agent.events[-1]["event"] == "replan (drift)"
    with torch.no_grad():  # imagined from the real frames: the first one and the one that drifted away
        real = world_model.encode(torch.from_numpy(np.stack([frame, away]))[None])
    assert torch.allclose(second.context, real[:, -world_model.config.context_frames :], atol=1e-5)
    # one replan per chunk: the replacement runs to its end however far it drifts
    for _ in range(CHUNK - 1):
        agent.act(fake_obs(255 - agent.expected_frame))
    assert agent.chunk is second and second.executed == CHUNK and second.cut is None
    # frames as imagined: no drift, no replan; the replaced chunk took the cut one's slot, so one more follows
    agent.act(fake_obs(255 - agent.expected_frame))
    third = agent.chunk
    assert third.index == 2 and third.replanned_from is None
    for _ in range(CHUNK):
        agent.act(fake_obs(agent.expected_frame))
    assert third.drift == [0.0] * CHUNK and third.cut is None
    assert agent.done and agent.stats()["chunks"] == 3
    stats, steps = agent.stats(), agent.steps
    for _ in range(3):  # a loop that calls act after done gets the idle action again, and nothing moves on
        assert np.array_equal(agent.act(fake_obs(frame)), agent.idle_action)
    assert agent.done and agent.steps == steps and agent.stats() == stats


@pytest.mark.parametrize(("threshold", "cut"), [(0.04, "drift"), (0.06, None)])
def test_drift_is_the_mean_absolute_difference_in_units_of_255(world_model, idm, threshold, cut):
    """The README's drift and `replan_drift`'s scale: a quarter of the values 51 away from the imagined frame
    is a drift of 0.25 * 51 / 255 = 0.05."""
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], replan_drift=threshold, stall_steps=0)
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    first, expected = agent.chunk, agent.expected_frame.astype(np.int16)
    observed = expected.copy()
    quarter = observed[: IMAGE // 4]
    quarter += np.where(quarter <= 204, 51, -51).astype(np.int16)
    agent.act(fake_obs(observed.astype(np.uint8)))
    assert first.drift == [pytest.approx(0.05, abs=1e-6)] and first.cut == cut
    agent.close()


def test_a_chunk_is_replaced_up_to_max_replans_per_chunk_times_and_drift_at_the_threshold_is_no_replan(
        world_model, idm):
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], replan_drift=0.2, stall_steps=0,
                       max_replans_per_chunk=2)
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    chunks = [agent.chunk]
    for _ in range(3):  # each frame the opposite of the imagined one
        agent.act(fake_obs(255 - agent.expected_frame))
        if agent.chunk is not chunks[-1]:
            chunks.append(agent.chunk)
    assert [c.replans for c in chunks] == [0, 1, 2] and [c.cut for c in chunks] == ["drift", "drift", None]
    assert agent.replans == {"drift": 2, "stall": 0} and chunks[-1].executed == 2

    exact = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], replan_drift=0.0, stall_steps=0)
    exact.reset("go", fake_obs(frame), {})
    exact.act(fake_obs(frame))
    for _ in range(CHUNK):  # frames exactly as imagined: drift 0, not past a threshold of 0
        exact.act(fake_obs(exact.expected_frame))
    assert exact.replans == {"drift": 0, "stall": 0} and exact.done


def test_a_stalled_gripper_replans_and_a_moving_one_does_not(world_model, idm):
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    stall = dict(replan_drift=None, stall_steps=2, stall_distance=0.004, stall_command=0.0)
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], **stall)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    first = agent.chunk
    agent.act(fake_obs(agent.expected_frame))  # one step: too few to judge
    assert first.cut is None
    agent.act(fake_obs(agent.expected_frame))  # two steps without moving
    assert first.cut == "stall" and agent.chunk.replanned_from == "stall" and agent.replans["stall"] == 1

    moving = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], **stall)
    moving.reset("go", fake_obs(frame), {})
    for step in range(CHUNK + 1):
        moving.act(fake_obs(frame if step == 0 else moving.expected_frame, position=(0.01 * step, 0.0, 0.1)))
    assert moving.replans == {"drift": 0, "stall": 0} and moving.done

    # the actions asked for no motion (stall_command above anything the IDM gives): holding still is no stall
    still = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], **{**stall, "stall_command": 1.0})
    still.reset("go", fake_obs(frame), {})
    still.act(fake_obs(frame))
    assert np.abs(still.chunk.actions[:, :3]).max() < 1.0  # the tiny IDM's actions stay inside the bounds
    for _ in range(CHUNK):
        still.act(fake_obs(still.expected_frame))
    assert still.replans["stall"] == 0 and still.done

    # 1.5 mm a step in x and in y: 4.2 mm over two steps, past stall_distance (each axis alone is 3 mm)
    diagonal = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], **stall)
    diagonal.reset("go", fake_obs(frame), {})
    for step in range(CHUNK + 1):
        position = (0.0015 * step, 0.0015 * step, 0.1)
        diagonal.act(fake_obs(frame if step == 0 else diagonal.expected_frame, position=position))
    assert diagonal.replans["stall"] == 0 and diagonal.done

    # it moved early in the chunk, then stopped: judged over the last stall_steps, not since the chunk began
    stopped = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], **stall)
    stopped.reset("go", fake_obs(frame), {})
    for step in range(5):
        position = (0.01 * min(step, 2), 0.0, 0.1)
        stopped.act(fake_obs(frame if step == 0 else stopped.expected_frame, position=position))
    assert stopped.replans["stall"] == 1
    assert [e["step"] for e in stopped.events if e["event"] == "replan (stall)"] == [4]


def test_a_stall_is_judged_on_the_motion_the_last_stall_steps_actions_asked_for(world_model, idm):
    """Only stall_command 0 and 1 were tested: which actions are read, and how, was not pinned."""
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)

    def cut_after(asked: np.ndarray, stall_command: float) -> int | None:
        """The steps a gripper that never moves executes before a stall cuts the chunk whose actions ask `asked`."""
        agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], replan_drift=None, stall_steps=2,
                           stall_distance=0.004, stall_command=stall_command)
        agent.reset("go", fake_obs(frame), {})
        agent.act(fake_obs(frame))
        first = agent.chunk
        first.actions[:, :3] = asked
        while first.cut is None and first.executed < CHUNK:
            agent.act(fake_obs(agent.expected_frame))
        agent.close()
        return first.executed if first.cut else None

    per_axis = np.zeros((CHUNK, 3))
    per_axis[0, 2] = per_axis[1, 0] = 0.6  # each step's largest axis counts
    assert cut_after(per_axis, 0.5) == 2 and cut_after(per_axis, 0.7) is None
    diagonal = np.zeros((CHUNK, 3))
    diagonal[:2, :2] = 0.4  # the largest axis, not the length (0.57) nor the sum (0.8)
    assert cut_after(diagonal, 0.5) is None and cut_after(diagonal, 0.35) == 2
    late = np.zeros((CHUNK, 3))
    late[2:4, 0] = -1.0  # over the last two steps: 0.5 after 3 steps, 1 after 4
    assert cut_after(late, 0.5) == 3 and cut_after(late, 0.7) == 4


def test_a_frame_that_drifts_at_the_end_of_its_chunk_cuts_nothing(world_model, idm):
    """The next chunk starts from the real frames anyway: a cut there would spend a replan and a chunk."""
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1), Subgoal(TEXTS[1], 1)], replan_drift=0.1,
                       stall_steps=0)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    first = agent.chunk
    for _ in range(CHUNK - 1):
        agent.act(fake_obs(agent.expected_frame))
    agent.act(fake_obs(255 - agent.expected_frame))  # the last frame, far off
    assert first.drift[-1] > 0.1 and first.cut is None and agent.replans["drift"] == 0
    assert agent.chunk.index == 1 and agent.chunk.replanned_from is None and agent.chunk.text == TEXTS[1]
    agent.close()


@pytest.mark.parametrize("actions_from", ["imagined", "observed"])
def test_actions_are_read_off_the_imagined_frames_or_the_real_ones(world_model, idm, actions_from):
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], actions_from=actions_from, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    first = agent.act(fake_obs(frame))
    planned = agent.chunk.actions.copy()
    assert np.array_equal(first, planned[0])  # the first action starts from the real frame either way
    assert np.allclose(planned, idm.actions_for_chunk(np.concatenate([frame[None], agent.imagined])).numpy())
    real = np.full((IMAGE, IMAGE, 3), 30, np.uint8)  # far from what was imagined
    second = agent.act(fake_obs(real))
    towards = idm.predict(real[None], agent.imagined[1][None])[0].numpy()
    if actions_from == "imagined":
        assert np.array_equal(second, planned[1])
    else:
        assert np.allclose(second, towards) and not np.allclose(second, planned[1])
        assert np.array_equal(agent.chunk.actions[1], second)  # the chunk records the action taken
    assert np.array_equal(agent.chunk.imagined_actions, planned)  # and keeps those read off the imagined frames


def test_an_idm_with_history_reads_the_real_frames_before_each_chunk(world_model):
    """Every other test's IDM reads one frame of history: which real frames precede a chunk was untested."""
    torch.manual_seed(0)
    idm = IDMPolicy(replace(IDMConfig.tiny(image_size=IMAGE), history_frames=2)).eval()
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    observed = [np.full((IMAGE, IMAGE, 3), 20 * i, np.uint8) for i in range(1, CHUNK + 1)]

    def read_off(real: list[np.ndarray], imagined: np.ndarray) -> np.ndarray:
        """Action i from frames i - 2, i - 1 (real ones first, the first repeated before it) to imagined frame i."""
        frames = [real[0]] * (2 - len(real)) + real + list(imagined)
        return idm.predict(np.stack([frames[i : i + 2] for i in range(CHUNK)]), imagined).numpy()

    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 2)], **NO_REPLAN)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    assert np.allclose(agent.chunk.actions, read_off([frame], agent.imagined), atol=1e-6)
    for image in observed:
        agent.act(fake_obs(image))
    assert agent.chunk.index == 1  # imagined after the last two real frames
    assert np.allclose(agent.chunk.actions, read_off(observed[-2:], agent.imagined), atol=1e-6)
    agent.close()

    closed = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], actions_from="observed", **NO_REPLAN)
    closed.reset("go", fake_obs(frame), {})
    closed.act(fake_obs(frame))
    action = closed.act(fake_obs(observed[0]))  # from the two real frames so far to imagined frame 1
    window = np.stack([frame, observed[0]])[None]
    assert np.allclose(action, idm.predict(window, closed.imagined[1][None])[0].numpy(), atol=1e-6)
    closed.close()

    # two real frames for an IDM reading three: the first repeated before them, as `windows` pads in training
    idm3 = IDMPolicy(replace(IDMConfig.tiny(image_size=IMAGE), history_frames=3)).eval()
    closed = make_agent(world_model, idm3, [Subgoal(TEXTS[0], 1)], actions_from="observed", **NO_REPLAN)
    closed.reset("go", fake_obs(frame), {})
    closed.act(fake_obs(frame))
    action = closed.act(fake_obs(observed[0]))
    window = np.stack([frame, frame, observed[0]])[None]
    assert np.allclose(action, idm3.predict(window, closed.imagined[1][None])[0].numpy(), atol=1e-6)
    closed.close()


@pytest.mark.parametrize("update_on", ["imagined", "observed"])
def test_the_memory_learns_from_the_imagined_chunk_at_once_or_the_observed_one_after(world_model, idm, update_on):
    memory = RecordingMemory(MemoryConfig(kind="none", update_on=update_on), world_model)
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 3)], memory=memory, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    first_latent = world_model.encode(torch.from_numpy(frame)[None, None])
    agent.act(fake_obs(frame))
    chunk = agent.chunk
    if update_on == "imagined":  # handed over before the chunk's first action is executed
        assert len(memory.updates) == 1
        previous, new = memory.updates[0]
        assert torch.equal(new, chunk.latents) and torch.equal(previous, first_latent)
    else:
        assert memory.updates == []
    observed = [np.full((IMAGE, IMAGE, 3), 100 + i, np.uint8) for i in range(1, CHUNK + 1)]
    for image in observed[:-1]:
        agent.act(fake_obs(image))
    assert len(memory.updates) == (1 if update_on == "imagined" else 0)
    agent.act(fake_obs(observed[-1]))  # chunk 0 is over: chunk 1 is imagined
    assert agent.chunk.index == 1
    previous, new = memory.updates[-1]
    assert len(memory.updates) == (2 if update_on == "imagined" else 1)
    encoded = world_model.encode(torch.from_numpy(np.stack(observed))[None])
    if update_on == "imagined":
        assert torch.equal(new, agent.chunk.latents)
        assert torch.allclose(previous, encoded)  # the real frames the new chunk continues
    else:
        assert torch.allclose(new, encoded) and torch.equal(previous, first_latent)

    # chunk 1's frames: the update after them continues from the whole of chunk 0, not its last frame
    second = [np.full((IMAGE, IMAGE, 3), 50 + i, np.uint8) for i in range(1, CHUNK + 1)]
    for image in second:
        agent.act(fake_obs(image))
    assert agent.chunk.index == 2
    previous, new = memory.updates[-1]
    encoded_second = world_model.encode(torch.from_numpy(np.stack(second))[None])
    if update_on == "imagined":
        assert len(memory.updates) == 3 and torch.equal(new, agent.chunk.latents)
        assert torch.allclose(previous, encoded_second)
    else:
        assert len(memory.updates) == 2 and torch.allclose(new, encoded_second) and torch.allclose(previous, encoded)

    # the plan's last chunk: nothing follows it, so nothing is learned from what it showed
    for image in observed:
        agent.act(fake_obs(image))
    assert agent.done and len(memory.updates) == (3 if update_on == "imagined" else 2)
    agent.close()


class FailingOnceMemory(NoMemory):
    """No memory whose first update fails on the worker (as an out-of-memory error would)."""

    def _update(self, previous, new):
        if not getattr(self, "failed", False):
            self.failed = True
            raise RuntimeError("update failed")
        return super()._update(previous, new)


@pytest.mark.parametrize("update_on", ["imagined", "observed"])
def test_act_retried_after_a_memory_error_closes_the_chunk_once(world_model, idm, update_on):
    memory = FailingOnceMemory(MemoryConfig(kind="none", update_on=update_on), world_model)
    subgoals = [Subgoal(text, 1) for text in ("a", "b", "c")]
    agent = make_agent(world_model, idm, subgoals, memory=memory, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    for _ in range(CHUNK):
        agent.act(fake_obs(frame))
    frames_before = agent._history.shape[1]
    with pytest.raises(RuntimeError, match="update failed"):
        agent.act(fake_obs(frame))  # the chunk is over; the next generation waits for the failed update
    agent.act(fake_obs(frame))  # the caller goes on
    assert agent._history.shape[1] == frames_before + CHUNK  # the chunk's frames joined the context once
    assert agent.chunk.text == "b"  # no subgoal skipped
    agent.close()


def test_a_failed_last_update_is_raised_in_its_own_episode(world_model, idm):
    """The act that finds the plan used up waits for the last update: its error is this episode's, not the
    next reset's (which would leave the agent in the old episode)."""
    memory = FailingOnceMemory(MemoryConfig(kind="none"), world_model)
    agent = make_agent(world_model, idm, [Subgoal("a", 1)], memory=memory, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    for _ in range(CHUNK):
        agent.act(fake_obs(frame))
    with pytest.raises(RuntimeError, match="update failed"):
        agent.act(fake_obs(frame))
    assert agent.done
    plan = agent.reset("again", fake_obs(frame), {})
    assert plan.instruction == "again" and not agent.done and agent.steps == 0
    agent.close()


def test_replans_stop_at_max_replans_per_episode(world_model, idm):
    """Only the per-chunk cap was tested: the episode's cap could go and the tests stayed green."""
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 3)], replan_drift=0.2, stall_steps=0,
                       max_replans_per_chunk=1, max_replans=1)
    frame = np.full((IMAGE, IMAGE, 3), 128, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    agent.act(fake_obs(255 - agent.expected_frame))  # drift: the episode's one replan
    second = agent.chunk
    assert second.replanned_from == "drift" and agent.replans["drift"] == 1
    for _ in range(CHUNK):  # the replacement runs to its end, drifting; then the next chunk is imagined
        agent.act(fake_obs(255 - agent.expected_frame))
    third = agent.chunk
    assert third is not second and third.replans == 0
    agent.act(fake_obs(255 - agent.expected_frame))  # drifts far, and its own cap would allow a replan
    assert agent.chunk is third and third.cut is None and agent.replans["drift"] == 1


def test_a_reset_whose_planner_fails_takes_no_episode_seed(world_model, idm):
    """Episode k samples with seed + k: a reset tried again after the planner failed is still episode 0."""
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    firsts = []
    for fail_first in (False, True):
        agent = make_agent(world_model, idm, **NO_REPLAN, seed=7)
        if fail_first:
            planned = agent.planner.plan

            def unreachable(*args, **kwargs):
                agent.planner.plan = planned  # the next try reaches it
                raise ConnectionError("planner unreachable")

            agent.planner.plan = unreachable
            with pytest.raises(ConnectionError):
                agent.reset("move the cubes", fake_obs(frame), {})
        agent.reset("move the cubes", fake_obs(frame), {})
        agent.act(fake_obs(frame))
        firsts.append(agent.imagined.copy())
        agent.close()
    assert np.array_equal(firsts[0], firsts[1])


def test_episode_k_samples_with_seed_plus_k(world_model, idm):
    """Only episode 0 of fresh agents was compared: a count never advanced (every episode seed + 0), or advanced
    first (episode 0 at seed + 1), kept the tests green."""
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)

    def first_chunk(agent, seed=None):
        agent.reset("move the cubes", fake_obs(frame), {}, seed=seed)
        agent.act(fake_obs(frame))
        return agent.imagined.copy()

    agent = make_agent(world_model, idm, **NO_REPLAN, seed=7)
    episodes = [first_chunk(agent), first_chunk(agent)]
    reference = make_agent(world_model, idm, **NO_REPLAN, seed=0)
    assert np.array_equal(episodes[0], first_chunk(reference, seed=7))
    assert np.array_equal(episodes[1], first_chunk(reference, seed=8))
    assert not np.array_equal(episodes[0], episodes[1])
    agent.close()
    reference.close()


def test_a_closed_agent_says_so(world_model, idm):
    agent = make_agent(world_model, idm, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    agent.close()
    for call in (lambda: agent.act(fake_obs(frame)), lambda: agent.reset("go", fake_obs(frame), {})):
        with pytest.raises(RuntimeError, match="the agent is closed"):
            call()


def test_stall_steps_a_chunk_cannot_hold_warn_that_stall_detection_is_off(world_model, idm):
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match=rf"stall_steps={CHUNK} is not below the world model's chunk_frames={CHUNK}"):
        agent = make_agent(world_model, idm, stall_steps=CHUNK)
    assert "agent.state_key" not in agent.obs_keys  # off indeed: no state key asked of the env
    frame = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    agent.reset("go", {"front": frame}, {})
    agent.act({"front": frame})
    agent.close()


def test_temp_lora_learns_while_the_chunk_executes(world_model, idm):
    memory = MemoryConfig(kind="temp_lora", rank=2, gradient_checkpointing=False)
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 1)], memory=memory, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    agent.reset("go", fake_obs(frame), {})
    agent.act(fake_obs(frame))
    assert agent.memory._future is not None  # submitted to the worker before the first action returned
    original_wait = agent.memory.wait

    def slow_wait():  # what the agent waits for the memory is timed as such (nothing noticed a lost sum)
        time.sleep(0.05)
        return original_wait()

    agent.memory.wait = slow_wait
    agent.wait()
    assert agent.memory.last_update["frames"] == 1 + CHUNK
    assert agent.timings["memory_update"] == pytest.approx(agent.memory.last_update["seconds"])
    assert agent.timings["memory_wait"] >= 0.05
    agent.close()
    assert not getattr(world_model.unet, "_hf_peft_config_loaded", False)  # close() removed the adapter


def test_a_false_check_gets_extra_chunks_when_info_is_given(world_model, idm):
    subgoals = [Subgoal(TEXTS[0], 1, Check("holding", {"cube": "red"}))]
    frame = np.full((IMAGE, IMAGE, 3), 100, np.uint8)
    info = {"cube_names": ["red", "green", "blue"], "grasped": -1}  # not holding the red cube

    def chunks(agent, info):
        agent.reset("go", fake_obs(frame), info or {"cube_names": ["red", "green", "blue"], "grasped": -1})
        while not agent.done:
            agent.act(fake_obs(frame if agent.expected_frame is None else agent.expected_frame), info)
        return agent.stats()["chunks"]

    agent = make_agent(world_model, idm, subgoals, max_extra_chunks=2, **NO_REPLAN)
    assert chunks(agent, info) == 3 and agent.stats()["extra_chunks"] == 2
    assert "extra chunk: holding(cube=red) is false" in [e["event"] for e in agent.events]
    assert chunks(agent, None) == 1  # no info: the planned chunks only
    assert chunks(agent, {**info, "grasped": 0}) == 1  # the check holds
    assert chunks(make_agent(world_model, idm, subgoals, max_extra_chunks=0, **NO_REPLAN), info) == 1

    # the env ended the episode with the chunk: its false check grants no extra chunk, nor counts the subgoal done
    agent = make_agent(world_model, idm, subgoals, max_extra_chunks=2, **NO_REPLAN)
    agent.reset("go", fake_obs(frame), info)
    for _ in range(CHUNK):
        agent.act(fake_obs(frame if agent.expected_frame is None else agent.expected_frame), info)
    agent.wait(fake_obs(agent.expected_frame), info)
    assert (agent.stats()["extra_chunks"], agent.stats()["subgoals_done"]) == (0, 0)
    assert not any(e["event"].startswith("extra chunk") for e in agent.events)
    agent.wait(fake_obs(frame), {**info, "grasped": 0})  # nothing left to judge: a second call changes nothing
    assert agent.stats()["subgoals_done"] == 0

    # an info the checks cannot read: refused at reset (it was found a chunk later, at the subgoal's end), ...
    agent = make_agent(world_model, idm, subgoals + [Subgoal(TEXTS[1], 1)], max_extra_chunks=1, **NO_REPLAN)
    with pytest.raises(ValueError, match=r"info: expected the key 'grasped' for the check holding\(cube=red\), got "
                                         r"keys \['success'\] \(agent.max_extra_chunks=1 reads the plan's checks; "
                                         r"pass an info that holds it, or max_extra_chunks=0\)"):
        agent.reset("go", fake_obs(frame), {"success": False})
    assert agent.plan is None  # no episode begun
    # ... and at act: one clear error, and act called again closes the chunk once
    agent.reset("go", fake_obs(frame), info)
    for _ in range(CHUNK):
        agent.act(fake_obs(frame))
    frames_before = agent._history.shape[1]
    with pytest.raises(ValueError, match=r"info: expected the key 'grasped' for the check holding\(cube=red\), "
                                         r"got keys \['success'\]"):
        agent.act(fake_obs(frame), {"success": False})
    agent.act(fake_obs(frame), info)
    assert agent._history.shape[1] == frames_before + CHUNK and agent.stats()["extra_chunks"] == 1
    agent.close()


def readme_agent_snippet() -> str:
    """The first ```python block of the README's agent section."""
    section = README.read_text().split("\n## The agent API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_agent_loop_runs(tmp_path, monkeypatch, capsys):
    worldmodel, idm_dir = save_tiny_checkpoints(tmp_path)
    code = readme_agent_snippet()
    for name, path in (("shipped:tabletop/worldmodel", worldmodel), ("shipped:tabletop/idm", idm_dir)):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(str(path)))
    planned = OfflinePlanner.plan

    def first_subgoal(self, instruction, info, first_frame=None):  # one chunk keeps the test short
        plan = planned(self, instruction, info, first_frame)
        return Plan((Subgoal(plan.subgoals[0].text, 1),), source=plan.source, instruction=plan.instruction)

    monkeypatch.setattr(OfflinePlanner, "plan", first_subgoal)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    agent = namespace["agent"]
    stats = agent.stats()
    assert agent.done and stats["chunks"] == 1 + sum(stats["replans"].values())  # a random model drifts
    assert CHUNK <= stats["steps"] <= CHUNK * stats["chunks"]  # the last chunk runs whole
    assert namespace["env"].unwrapped._steps == stats["steps"]  # the env got the agent's actions, no idle one
    assert "success" in capsys.readouterr().out


def test_from_pretrained_gives_the_planner_the_world_models_chunk_length(tmp_path):
    from vplan.planner.config import PlannerConfig

    model = tiny_world_model()
    model.config = replace(model.config, chunk_frames=4)
    model.save_pretrained(tmp_path / "worldmodel")
    tiny_idm().save_pretrained(tmp_path / "idm")
    agent = VideoPlanningAgent.from_pretrained(tmp_path / "worldmodel", tmp_path / "idm",  # Paths: a traceback
                                               planner=PlannerConfig(kind="offline"), memory=MemoryConfig(kind="none"),
                                               config=AgentConfig(stall_steps=3))  # below the 4-frame chunk
    assert agent.planner.config.chunk_frames == 4  # not the planner config's default 8, which the agent refuses
    agent.close()
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match="planner.chunk_frames=6 is ignored: a chunk is the world model's, 4 frames"):
        VideoPlanningAgent.from_pretrained(str(tmp_path / "worldmodel"), str(tmp_path / "idm"),
                                           planner=PlannerConfig(chunk_frames=6), memory=MemoryConfig(kind="none"),
                                           config=AgentConfig(stall_steps=3)).close()


def test_from_pretrained_names_a_checkpoint_that_cannot_drive_the_agent(tmp_path):
    from vplan.errors import UsageError
    from vplan.shipped import OtherEnvWarning

    tiny_world_model().save_pretrained(tmp_path / "worldmodel")
    IDMPolicy(IDMConfig.tiny(image_size=IMAGE // 2)).save_pretrained(tmp_path / "idm")
    with pytest.raises(UsageError, match=f"^idm={re.escape(str(tmp_path / 'idm'))} reads 32x32 frames, the world "
                                         "model draws 64x64; pass an IDM trained"):
        VideoPlanningAgent.from_pretrained(str(tmp_path / "worldmodel"), str(tmp_path / "idm"))
    with pytest.raises(ValueError, match=r"^task: expected a preset in .*, got 'sweep' \(a task of your own: pass "
                                         r"TaskConfig\(name=\.\.\., env=\.\.\., instruction=\.\.\.\)\)$"):
        VideoPlanningAgent.from_pretrained(str(tmp_path / "worldmodel"), str(tmp_path / "idm"), task="sweep")
    with pytest.warns(OtherEnvWarning) as warned:  # the env it will act in, not the task's
        VideoPlanningAgent.from_pretrained(memory=MemoryConfig(kind="none"), env="blockworld").close()
    assert [str(w.message).split(";")[0] for w in warned] == [
        f"{name}=shipped:tabletop/{name} was trained on tabletop episodes, and this env is blockworld"
        for name in ("worldmodel", "idm")
    ]


def test_from_pretrained_warns_of_an_idm_trained_on_another_vaes_decodes(tmp_path):
    """Nothing tied an IDM to the VAE it trained through: one paired with a world model of another VAE read a
    decoder's frames it never saw, unsaid."""
    import warnings

    from vplan.errors import VplanWarning
    from vplan.worldmodel.latent_cache import vae_fingerprint

    model = tiny_world_model()
    model.save_pretrained(tmp_path / "worldmodel")
    ours = vae_fingerprint(model.vae)
    for name, reads in (("same", ours), ("other", "0123456789abcdef"), ("unrecorded", None)):
        tiny_idm().save_pretrained(tmp_path / name, reads_vae=reads)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplanWarning)
        for name in ("same", "unrecorded"):  # unrecorded: real frames only, or trained before it was recorded
            VideoPlanningAgent.from_pretrained(str(tmp_path / "worldmodel"), str(tmp_path / name),
                                               memory=MemoryConfig(kind="none")).close()
    with pytest.warns(VplanWarning, match=rf"idm=.*other learned to read the decodes of another VAE \(fingerprint "
                                          rf"0123456789abcdef\) than the world model's \({ours}\)"):
        VideoPlanningAgent.from_pretrained(str(tmp_path / "worldmodel"), str(tmp_path / "other"),
                                           memory=MemoryConfig(kind="none")).close()


def test_the_shipped_checkpoints_drive_the_agent(env):
    agent = VideoPlanningAgent.from_pretrained(memory=MemoryConfig(kind="none"), config=AgentConfig(**NO_REPLAN))
    obs, info = env.reset(seed=10000)
    plan = agent.reset(TaskConfig.preset("return_cubes").instruction, obs, info)
    assert plan.source == "offline" and len(plan.subgoals) == 12  # three cubes: pick, place, pick, return each
    for _ in range(CHUNK + 1):
        action = agent.act(obs, info)
        assert agent.action_space.contains(action) and env.action_space.contains(action)
        obs, *_, info = env.step(action)
    assert agent.stats()["chunks"] == 2 and agent.imagined.shape == (CHUNK, 64, 64, 3)
    agent.close()


def test_the_shipped_blockworld_checkpoints_drive_the_agent():
    # no checkpoints named: the task's env's shipped ones
    agent = VideoPlanningAgent.from_pretrained(task="retrace", memory=MemoryConfig(kind="none"),
                                               config=AgentConfig(**NO_REPLAN))
    env = gym.make("vplan/Blockworld-v0")
    obs, info = env.reset(seed=10000)
    plan = agent.reset(TaskConfig.preset("retrace").instruction, obs, info)
    assert len(plan.subgoals) == 7 and agent.action_space == gym.spaces.Discrete(5)  # six instructions, the way back
    for _ in range(CHUNK + 1):
        action = agent.act(obs, info)
        assert env.action_space.contains(action)
        obs, *_, info = env.step(action)
    assert agent.stats()["chunks"] == 2
    agent.close()
    env.close()


def test_the_agent_keeps_copies_of_the_frames_an_env_renders_into_one_buffer(world_model, idm):
    agent = make_agent(world_model, idm, [Subgoal(TEXTS[0], 2)], **NO_REPLAN)  # no stall detection: no agent_pos
    buffer = np.full((IMAGE, IMAGE, 3), 10, np.uint8)
    agent.reset("go", {"front": buffer}, {})
    for value in range(20, 20 + 3 * 10, 10):
        agent.act({"front": buffer})
        buffer[:] = value  # the env draws the next frame over the last
    assert [int(frame[0, 0, 0]) for frame in agent.chunk.observed] == [20, 30]


class OneBuffer(gym.Wrapper):
    """The tabletop, its camera image drawn into one buffer every step (as some renderers do)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.buffer = np.zeros((IMAGE, IMAGE, 3), np.uint8)

    def _drawn(self, obs):
        self.buffer[:] = obs["front"]
        return {**obs, "front": self.buffer}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._drawn(obs), info

    def step(self, action):
        obs, *rest = self.env.step(action)
        return (self._drawn(obs), *rest)


def test_the_video_and_the_recorded_episode_keep_each_frame_of_an_env_that_draws_into_one_buffer(world_model, idm):
    from vplan.data.collect import EpisodeRecorder
    from vplan.run import run_episode

    agent = make_agent(world_model, idm, **NO_REPLAN)
    env, recorder = OneBuffer(gym.make("vplan/Tabletop-v0", max_episode_steps=CHUNK)), EpisodeRecorder()
    try:
        played = run_episode(env, agent, "move the cubes", 10000, "front", recorder=recorder)
    finally:
        agent.close()
        env.close()
    real = gym.make("vplan/Tabletop-v0", max_episode_steps=CHUNK)  # the same episode, fresh arrays
    expected = [real.reset(seed=10000)[0]["front"]]
    expected += [real.step(action)[0]["front"] for action in recorder.frames()["action"]]
    real.close()
    assert all(np.array_equal(a, b) for a, b in zip(played["executed"], expected, strict=True))
    assert np.array_equal(recorder.frames()["observation.images.front"], np.stack(expected[:-1]))


class SucceedsAtStep(gym.Wrapper):
    """The tabletop, said to succeed (every cube returned) at step `at`: the tiny models never succeed, so the
    run's success, progress and return-phase figures were only ever compared with 0; `success=False` ends it
    there without success, as RLBench's `terminate` can."""

    def __init__(self, env: gym.Env, at: int, dist: float | None = None, success: bool = True) -> None:
        super().__init__(env)
        self.at, self.steps, self.dist, self.success = at, 0, dist, success

    def reset(self, **kwargs):
        self.steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            cubes = len(info["displaced"])
            info = {**info, "success": self.success, "phase": "return", "displaced": np.ones(cubes, bool),
                    "returned": np.arange(cubes) < cubes - 1}  # all but the last back: progress below 1
            if self.dist is not None:
                info["dist"] = self.dist
            terminated = True
        return obs, reward, terminated, truncated, info


def played_and_summarized(world_model, idm, env, others=lambda result: []):
    """run_episode of a fresh agent in `env` (closed after), and summarize over its result and `others(result)`."""
    from vplan.config import RunConfig
    from vplan.envs import TabletopConfig
    from vplan.run import run_episode, summarize
    from vplan.tasks import TaskConfig

    agent = make_agent(world_model, idm, **NO_REPLAN)
    try:
        result = run_episode(env, agent, "move the cubes", 10000, "front")["result"]
    finally:
        agent.close()
        env.close()
    results = [result, *others(result)]
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    cfg = RunConfig(env=TabletopConfig(), task=task, episodes=len(results), memory=MemoryConfig(kind="none"))
    return result, summarize(cfg, results, "vplan/Tabletop-v0", 0.0)


def test_run_episode_and_summarize_count_success_progress_and_the_return_phase(world_model, idm, capsys, tmp_path):
    from vplan.run import _print_summary

    env = SucceedsAtStep(gym.make("vplan/Tabletop-v0"), at=3, dist=0.1)

    def lost(won):  # an episode 0.2 m further off, 2 s longer in every stage, at another threads= (a resume's)
        return [{**won, "success": False, "phase": "displace", "progress": 0.25, "dist": 0.3, "threads": 2,
                 "wall_s": won["wall_s"] + 2, "stages_s": {s: t + 2 for s, t in won["stages_s"].items()}}]

    won, metrics = played_and_summarized(world_model, idm, env, others=lost)
    assert won["success"] and won["phase"] == "return" and won["ended_by"] == "success" and won["steps"] == 3
    assert won["progress"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics["success_rate"] == 0.5 and metrics["return_phase_rate"] == 0.5
    assert metrics["progress_mean"] == pytest.approx((0.5 + 0.5 * 2 / 3 + 0.25) / 2)
    assert metrics["dist_mean"] == pytest.approx(0.2) and metrics["dist_std"] == pytest.approx(0.1)  # the README's ±
    assert metrics["wall_s_per_episode"] == pytest.approx(won["wall_s"] + 1)
    assert metrics["wall_s_per_episode_max"] == pytest.approx(won["wall_s"] + 2)
    assert metrics["stages_s_per_episode"] == pytest.approx({s: t + 1 for s, t in won["stages_s"].items()})
    metrics["episodes"][0]["threads"] = 1
    _print_summary(metrics, tmp_path)
    printed = capsys.readouterr().out
    assert re.search(r"\n  threads +1 episode\(s\) at 1, 1 episode\(s\) at 2\n", printed)
    assert "memory wait" not in printed and "generation" in printed  # memory=none: no rows of zeros
    _print_summary({**metrics, "memory": "temp_lora"}, tmp_path)
    assert "memory wait" in capsys.readouterr().out


class SlowLastStep(gym.Wrapper):
    """Its step `at` takes `seconds` longer."""

    def __init__(self, env: gym.Env, at: int, seconds: float) -> None:
        super().__init__(env)
        self.at, self.seconds, self.steps = at, seconds, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at:
            time.sleep(self.seconds)
        return self.env.step(action)


def test_an_episode_the_env_ends_counts_its_last_frame_step_and_subgoal(world_model, idm):
    """The env's time limit at the end of the plan's last chunk: that chunk's subgoal was not counted done, its
    last frame was not scored for drift, and its last step's time was no stage's."""
    from vplan.run import run_episode

    agent = make_agent(world_model, idm, **NO_REPLAN)
    env = SlowLastStep(gym.make("vplan/Tabletop-v0", max_episode_steps=2 * CHUNK), at=2 * CHUNK, seconds=0.3)
    try:
        result = run_episode(env, agent, "move the cubes", 10000, "front")["result"]
    finally:
        agent.close()
        env.close()
    assert result["ended_by"] == "time limit" and result["steps"] == 2 * CHUNK
    assert result["subgoals_done"] == 2
    assert len(agent.chunk.drift) == CHUNK and len(agent._drifts) == 2 * CHUNK
    assert agent.timings["execution"] >= 0.3


def test_the_episode_video_pairs_each_imagined_frame_with_the_frame_its_action_led_to(world_model, idm):
    """Only the video's shape was tested: a side swapped, or the imagined frames a step off, passed."""
    from vplan.run import run_episode

    agent = make_agent(world_model, idm, replan_drift=None, stall_steps=2, stall_distance=1.0, stall_command=0.0)
    env = gym.make("vplan/Tabletop-v0", max_episode_steps=3 * CHUNK)
    recorder = EpisodeRecorder()
    try:
        played = run_episode(env, agent, "move the cubes", 10000, "front", recorder=recorder)
    finally:
        agent.close()
        env.close()
    chunks = played["chunks"]
    assert played["result"]["replans"]["stall"] > 0  # every chunk "stalls" after 2 steps: some were cut short
    assert played["result"]["ended_by"] == "plan done" and played["result"]["steps"] < 3 * CHUNK
    # recorded (`record=true`), the episode the plan ended closes with a done row, as collect's do (it had none)
    done = recorder.frames()[DONE]
    assert len(done) == played["result"]["steps"] and done[-1] and not done[:-1].any()
    imagined = [frame for c in chunks for frame in c.frames[: c.executed]]
    observed = [frame for c in chunks for frame in c.observed]
    assert len(played["imagined"]) == len(played["executed"]) == 1 + len(imagined)
    assert all(np.array_equal(a, b) for a, b in zip(played["imagined"][1:], imagined, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(played["executed"][1:], observed, strict=True))
    assert np.array_equal(played["imagined"][0], played["executed"][0])  # the real first frame on both sides


def test_an_episode_the_env_ends_without_success_is_not_called_a_success(world_model, idm):
    result, _ = played_and_summarized(world_model, idm, SucceedsAtStep(gym.make("vplan/Tabletop-v0"), 3, success=False))
    assert not result["success"] and result["ended_by"] == "terminated" and result["steps"] == 3


def test_a_dist_the_env_has_not_got_yet_is_none_not_infinity(world_model, idm):
    """The blockworld's dist is inf before its return phase: an episode cut short wrote Infinity into
    metrics.json (not JSON) and the run's mean Dist became inf."""
    env = SucceedsAtStep(gym.make("vplan/Tabletop-v0"), at=2, dist=float("inf"))
    result, metrics = played_and_summarized(world_model, idm, env)
    assert result["dist"] is None and metrics["dist_mean"] is None


def test_check_env_refuses_actions_of_other_bounds(world_model, idm):
    """A user's env whose actions are bounded otherwise (say, metres per step) would get steps in the IDM's
    [-1, 1] units, silently clipped or far too large; shape alone was compared."""
    from types import SimpleNamespace

    from gymnasium import spaces

    from vplan.errors import SettingMismatchError

    agent = make_agent(world_model, idm)
    cameras = spaces.Dict({"front": spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8),
                           "agent_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    agent.check_env(SimpleNamespace(action_space=spaces.Box(-1.0, 1.0, (4,), np.float32), observation_space=cameras))
    # gymnasium's ClipAction declares no bounds: the env's own say what an action means (a ClipAction over the
    # tabletop was refused, its advice RescaleAction, which cannot rescale infinite bounds; helper-205), so one over
    # an env of other units is refused still (helper-206)
    import gymnasium as gym

    class Bounded(gym.Env):
        observation_space = cameras

        def __init__(self, bound: float) -> None:
            self.action_space = spaces.Box(-bound, bound, (4,), np.float32)

    agent.check_env(gym.wrappers.ClipAction(Bounded(1.0)))
    with pytest.raises(SettingMismatchError, match=r"bounded by low=\[-0.03"):
        agent.check_env(gym.wrappers.ClipAction(Bounded(0.03)))
    for space, said in ((spaces.Box(-0.03, 0.03, (4,), np.float32), r"bounded by low=\[-0.03.*RescaleAction"),
                        (spaces.Box(-np.inf, 1.0, (4,), np.float32), r"bounded by low=\[-inf"),
                        (spaces.Box(-np.inf, np.inf, (4,), np.float32), r"bounded by low=\[-inf"),  # an env's own
                        (spaces.Box(-1.0, 1.0, (7,), np.float32), r"predicts actions of shape \(4,\), the env takes "
                                                                  r"actions of shape \(7,\)"),
                        (spaces.Discrete(5), "the env takes one of 5 moves")):
        with pytest.raises(SettingMismatchError, match=said):
            agent.check_env(SimpleNamespace(action_space=space, observation_space=cameras))
    # the blockworld's instructions last chunk_steps: one world-model chunk each (6 ran quietly as 8-frame chunks)
    box = spaces.Box(-1.0, 1.0, (4,), np.float32)
    with pytest.raises(SettingMismatchError, match=rf"env.chunk_steps={CHUNK + 1}: the world model imagines "
                                                   rf"{CHUNK}-frame chunks.*set env.chunk_steps={CHUNK}$"):
        agent.check_env(SimpleNamespace(action_space=box, observation_space=cameras,
                                        config=SimpleNamespace(chunk_steps=CHUNK + 1)))
    agent.check_env(SimpleNamespace(action_space=box, observation_space=cameras,
                                    config=SimpleNamespace(chunk_steps=CHUNK)))
    agent.close()


def test_check_env_refuses_other_kinds_of_action_space_and_moves_not_numbered_from_0(world_model, idm):
    """A MultiDiscrete passed the shape test against a continuous IDM (then "bounded by low=[nan]"), and moves
    numbered from -2 passed though `act` returns 0 to 4."""
    from types import SimpleNamespace

    from gymnasium import spaces

    from vplan.errors import SettingMismatchError

    cameras = spaces.Dict({"front": spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8),
                           "agent_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    agent = make_agent(world_model, idm)
    with pytest.raises(SettingMismatchError, match=r"predicts actions of shape \(4,\), the env takes MultiDiscrete "
                                                   r"actions of shape \(4,\); pass"):
        agent.check_env(SimpleNamespace(action_space=spaces.MultiDiscrete([3, 3, 3, 2]), observation_space=cameras))
    agent.close()
    torch.manual_seed(0)
    moves_idm = IDMPolicy(IDMConfig(**{**IDMConfig.tiny(image_size=IMAGE).to_dict(), "num_moves": 5})).eval()
    moves = make_agent(world_model, moves_idm)
    moves.check_env(SimpleNamespace(action_space=spaces.Discrete(5), observation_space=cameras))
    for space, said in ((spaces.Discrete(5, start=-2), "predicts one of 5 moves, the env takes one of 5 moves "
                                                       "numbered from -2; pass"),
                        (spaces.Box(-1.0, 1.0, (5,), np.float32), r"the env takes actions of shape \(5,\)")):
        with pytest.raises(SettingMismatchError, match=said):
            moves.check_env(SimpleNamespace(action_space=space, observation_space=cameras))
    moves.close()


def test_check_env_refuses_observations_reset_would_refuse(world_model, idm):
    """An env whose camera frames are of another size or layout, whose state holds fewer than xyz, or whose
    observations are not a dict (an image Box, a Tuple: a TypeError sorting its spaces) passed, and reset failed."""
    from types import SimpleNamespace

    from gymnasium import spaces

    from vplan.errors import SettingMismatchError

    box = spaces.Box(-1.0, 1.0, (4,), np.float32)
    image = spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8)
    position = spaces.Box(-np.inf, np.inf, (4,), np.float32)

    def env(front=image, agent_pos=position):
        observations = spaces.Dict({"front": front, "agent_pos": agent_pos})
        return SimpleNamespace(action_space=box, observation_space=observations)

    agent = make_agent(world_model, idm)
    agent.check_env(env())
    small = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    expected = r"observation_space\['front'\] \(agent.camera\): expected a uint8 frame of shape \(64, 64, 3\)"
    with pytest.raises(SettingMismatchError, match=expected + r".*make the env with image_size=64$") as said:
        agent.check_env(env(front=small))
    with pytest.raises(ValueError) as at_reset:
        agent.reset("go", fake_obs(small.sample()), {})
    assert str(said.value).split(": ", 1)[1] == str(at_reset.value).split(": ", 1)[1]  # reset's words
    for front, got in ((spaces.Box(0, 255, (3, IMAGE, IMAGE), np.uint8), r"uint8 \(3, 64, 64\)"),
                       (spaces.Box(0.0, 1.0, (IMAGE, IMAGE, 3), np.float32), r"float32 \(64, 64, 3\)")):
        with pytest.raises(SettingMismatchError, match=rf"got {got}; an RGB image as height x width x 3 values"):
            agent.check_env(env(front=front))
    few = spaces.Box(-1.0, 1.0, (2,), np.float32)
    with pytest.raises(SettingMismatchError, match=r"observation_space\['agent_pos'\] \(agent.state_key\): expected "
                                                   r"the gripper's xyz first.*got shape \(2,\);.*stall_steps=0"):
        agent.check_env(env(agent_pos=few))
    for space, kind in ((image, "Box"), (spaces.Tuple((image, image)), "Tuple")):
        with pytest.raises(SettingMismatchError, match=rf"the env's observations are a {kind}, the agent reads a "
                                                       r"dict: the camera's frame under 'front' \(agent.camera\)"):
            agent.check_env(SimpleNamespace(action_space=box, observation_space=space))
    agent.close()
    quiet = make_agent(world_model, idm, stall_steps=0)  # the state is not read
    quiet.check_env(env(agent_pos=few))
    quiet.close()


def test_check_env_gives_a_vector_env_the_advice_reset_gives(world_model, idm):
    """A vector env's batched actions (2, 4) were called another action shape, with advice to retrain."""
    from vplan.errors import SettingMismatchError

    agent = make_agent(world_model, idm)
    envs = gym.make_vec("vplan/Tabletop-v0", num_envs=2, vectorization_mode="sync")
    with pytest.raises(SettingMismatchError, match=r"got a vector env of 2 sub-envs.*one agent per sub-env, each "
                                                   r"given obs\[key\]\[i\]"):
        agent.check_env(envs)
    envs.close()
    agent.close()


def test_act_after_a_failed_reset_says_the_reset_failed(world_model, idm):
    """A reset whose planner fails has cleared the episode: act said "act() before reset()"."""
    agent = make_agent(world_model, idm, **NO_REPLAN)
    frame = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    planned = agent.planner.plan

    def failing(*args, **kwargs):
        raise ValueError("expected the env's info to hold ['cube_names']")

    for before in ("no episode", "an episode under way"):
        if before == "an episode under way":
            agent.planner.plan = planned
            agent.reset("move the cubes", fake_obs(frame), {})
            agent.act(fake_obs(frame))
        agent.planner.plan = failing
        with pytest.raises(ValueError, match="info to hold"):
            agent.reset("move the cubes", fake_obs(frame), {})
        with pytest.raises(RuntimeError, match=r"act\(\) with no episode under way: the last reset\(\) failed"):
            agent.act(fake_obs(frame))
    agent.planner.plan = planned
    agent.reset("move the cubes", fake_obs(frame), {})
    assert agent.act(fake_obs(frame)).shape == (4,)
    # refused on its arguments, before the episode under way was cleared: act carried on with it (helper-194)
    for bad in ({"instruction": ""}, {"obs": {"elsewhere": frame}}):
        with pytest.raises(ValueError):
            agent.reset(**{"instruction": "move the cubes", "obs": fake_obs(frame), "info": {}, **bad})
        with pytest.raises(RuntimeError, match=r"act\(\) with no episode under way: the last reset\(\) failed"):
            agent.act(fake_obs(frame))
    agent.close()


def test_the_context_manager_closes_and_keeps_the_body_error(world_model, idm, monkeypatch):
    from vplan.errors import VplanWarning

    agent = make_agent(world_model, idm)

    def failed_update() -> None:
        raise RuntimeError("background update failed")

    monkeypatch.setattr(agent.memory, "close", failed_update)
    with pytest.warns(VplanWarning, match="agent: closing it failed too .RuntimeError: background update failed"):
        with pytest.raises(KeyError, match="the body's"):
            with agent:
                raise KeyError("the body's")
    with pytest.raises(RuntimeError, match="background update failed"), agent:  # no error of its own: close's
        pass
    monkeypatch.undo()
    agent.close()
    with pytest.raises(RuntimeError, match="the agent is closed"):
        agent.reset("go", fake_obs(np.zeros((IMAGE, IMAGE, 3), np.uint8)), {})
