"""RL finetuning (issue 8): group advantages, the objectives (RWR with equal rewards is the plain loss; DPO
prefers the chosen sample), the rewards, the merged model, and `vplan rl` end to end on tiny checkpoints with
a kill-and-resume that matches an uninterrupted run."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_agent import save_tiny_checkpoints
from test_action_conditioning import tiny_config

from vplan.cli import main
from vplan.rl.advantages import group_advantages
from vplan.rl.config import RewardConfig
from vplan.rl.objectives import (
    add_rl_adapter,
    delta_penalty,
    dpo_loss,
    lora_parameters,
    merged_copy,
    reference,
    rwr_loss,
    rwr_weights,
)
from vplan.rl.rewards import ConsistencyReward, ExecutabilityReward, IDMReproductionReward, OutcomeReward, RewardSet
from vplan.rl.rollout import EpisodeRollout, ImaginedChunk
from vplan.shipped import OtherEnvWarning
from vplan.tasks import task_progress
from vplan.worldmodel.model import WorldModel


def test_group_advantages_on_a_hand_made_table():
    rewards = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])  # plan means 2, 0, 2
    plans, continuations = group_advantages(rewards)
    std = np.std([2.0, 0.0, 2.0])
    np.testing.assert_allclose(plans, [(2 - 4 / 3) / std, (0 - 4 / 3) / std, (2 - 4 / 3) / std])
    np.testing.assert_allclose(continuations, [[-1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # equal rewards: no signal
    with pytest.raises(ValueError, match="reward table"):
        group_advantages(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):  # from Python (vplan rl's scores refuse one first)
        group_advantages(np.array([[1.0, np.nan]]))


def tiny_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 4, 8, 8, generator=generator), torch.randn(3, 3, 4, 8, 8, generator=generator)


def test_rwr_with_equal_rewards_is_the_plain_loss():
    torch.manual_seed(0)
    model = WorldModel(tiny_config("text"))
    context, target = tiny_batch()
    texts = ["a", "b", "c"]
    plain, _ = model(context, target, texts, generator=torch.Generator().manual_seed(5))
    per_sample, _ = model(context, target, texts, generator=torch.Generator().manual_seed(5), reduction="none")
    assert per_sample.shape == (3,)
    assert torch.allclose(rwr_loss(per_sample, rwr_weights(torch.zeros(3), beta=1.0)), plain)
    assert torch.allclose(rwr_loss(per_sample, rwr_weights(torch.full((3,), 0.7), beta=0.3)), plain)
    weights = rwr_weights(torch.tensor([1.0, 0.0, -1.0]), beta=1.0)
    assert weights.mean() == pytest.approx(1.0) and weights[0] > weights[1] > weights[2]
    # exp(A / β), normalised: a lower temperature sharpens the weights (at β = 1, A / β and A · β agree)
    sharper = rwr_weights(torch.tensor([1.0, 0.0, -1.0]), beta=0.5)
    assert torch.allclose(sharper, torch.softmax(torch.tensor([2.0, 0.0, -2.0]), dim=0) * 3)
    # Taken over all the iteration's samples, a batch of one still weighs its sample by its advantage.
    assert rwr_loss(per_sample[:1], weights[:1]) > per_sample[0] > rwr_loss(per_sample[:1], weights[2:])


def test_the_preference_loss_prefers_the_chosen_sample_on_a_toy_pair():
    torch.manual_seed(0)
    model = WorldModel(tiny_config("text"))
    add_rl_adapter(model.unet, rank=4)
    params = list(lora_parameters(model.unet).values())
    context, target = tiny_batch()
    chosen, rejected = (context[:1], target[:1]), (context[1:2], target[1:2])

    def losses(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, _ = model(*chosen, ["a"], generator=torch.Generator().manual_seed(seed), reduction="none")
        l, _ = model(*rejected, ["a"], generator=torch.Generator().manual_seed(seed), reduction="none")
        return w, l

    def margin(seeds: range) -> float:  # (chosen - reference) - (rejected - reference), mean over fixed draws
        with torch.no_grad():
            total = 0.0
            for seed in seeds:
                w, l = losses(seed)
                with reference(model.unet):
                    w_ref, l_ref = losses(seed)
                total += float((w - w_ref) - (l - l_ref))
        return total / len(seeds)

    assert margin(range(4)) == 0.0  # LoRA B = 0: the model is the reference
    # -log σ(-β · margin) on hand-made losses: margin (0.3 - 0.1) - (0.2 - 0.2) = 0.2
    toy = [torch.tensor([x]) for x in (0.3, 0.2, 0.1, 0.2)]
    assert float(dpo_loss(*toy, beta=2.0)) == pytest.approx(-math.log(1 / (1 + math.exp(0.4))))
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for step in range(15):
        w, l = losses(step)
        with torch.no_grad(), reference(model.unet):
            w_ref, l_ref = losses(step)
        optimizer.zero_grad()
        dpo_loss(w, l, w_ref, l_ref, beta=50.0).backward(inputs=params)
        optimizer.step()
    assert margin(range(100, 108)) < 0  # the chosen's loss fell relative to the rejected's, on unseen draws
    assert delta_penalty(model.unet) > 0


def test_merged_copy_generates_as_the_adapted_model_and_saves(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(tiny_config("text"))
    add_rl_adapter(model.unet, rank=4)
    with torch.no_grad():
        for parameter in lora_parameters(model.unet).values():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    context, target = tiny_batch()
    adapted, _ = model(context, target, ["a"] * 3, generator=torch.Generator().manual_seed(1), reduction="none")
    merged = merged_copy(model)
    same, _ = merged(context, target, ["a"] * 3, generator=torch.Generator().manual_seed(1), reduction="none")
    assert torch.allclose(adapted, same, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")  # no adapter left: a plain checkpoint
    assert lora_parameters(model.unet)  # the original keeps its adapter


def rollout_with(chunks: list[ImaginedChunk], info: dict) -> EpisodeRollout:
    return EpisodeRollout(task_seed=0, plan_index=0, continuation=0, plan={}, final_info=info, stats={},
                          chunks=chunks)


def chunk(frames: np.ndarray, drift: list[float] | None = None, executed: int | None = None) -> ImaginedChunk:
    """A chunk followed for `executed` steps (all by default; its own frames stand in for the real ones)."""
    return ImaginedChunk(text="a", context=torch.zeros(1, 2, 4, 8, 8), latents=torch.zeros(1, 3, 4, 8, 8),
                         frames=frames, actions=np.zeros((len(frames), 4), np.float32), drift=drift or [],
                         observed=list(frames[:executed]))


def test_rewards_read_the_rollout():
    cubes = {"displaced": np.array([True, False]), "returned": np.array([True, True])}
    assert task_progress({**cubes, "phase": "displace"}) == 0.25
    assert task_progress({**cubes, "phase": "return"}) == 1.0
    assert task_progress({"passed": np.array([True, False, True, False]), "phase": "return"}) == 0.5
    # the start alone is where an agent that never moved stands: no progress
    assert task_progress({"passed": np.array([True, False, False, False]), "phase": "return"}) == 0.0
    # a one-chunk path's only waypoint is the start: a success scored 0
    assert task_progress({"passed": np.array([True]), "phase": "return", "success": True}) == 1.0
    assert task_progress({}) == 0.0
    outcome = OutcomeReward(progress_weight=0.5)
    assert outcome.score(rollout_with([], {**cubes, "phase": "return", "success": True})) == 1.5

    still = np.full((3, 16, 16, 3), 100, np.uint8)
    assert ExecutabilityReward().score(rollout_with([chunk(still, [0.1, 0.3])], {})) == pytest.approx(0.8)
    assert ExecutabilityReward().score(rollout_with([], {})) is None
    dark, bright = np.zeros((6, 64, 64, 3), np.uint8), np.full((6, 64, 64, 3), 255, np.uint8)
    assert ConsistencyReward().score(rollout_with([chunk(dark), chunk(dark)], {})) == 0.0
    assert ConsistencyReward().score(rollout_with([chunk(dark), chunk(bright)], {})) < 0  # a cut between chunks
    # a chunk cut by a replan after 3 steps: its unexecuted tail is not part of the video the episode followed
    replanned = rollout_with([chunk(np.concatenate([dark[:3], bright[:3]]), executed=3), chunk(dark)], {})
    assert len(replanned.imagined_video) == 3 + 6 and ConsistencyReward().score(replanned) == 0.0

    rewards = RewardSet([(outcome, 2.0), (ExecutabilityReward(), 1.0)])
    scored = rollout_with([], {**cubes, "phase": "displace", "success": False})
    assert rewards.score(scored) == pytest.approx(2 * 0.125) and scored.rewards == {"outcome": 0.125}
    # In a group, a rollout a term gave no score gets its plan's mean of it (the continuations it is compared
    # with), or the group's where none of its plan's has one; not 0.
    unscored = rollout_with([], {**cubes, "phase": "displace", "success": False})
    plans = [[rollout_with([chunk(still, [0.1, 0.3])], {}), scored],
             [rollout_with([chunk(still, [0.5, 0.5])], {}), rollout_with([chunk(still, [0.9, 0.9])], {})],
             [unscored]]
    for rollout in (r for continuations in plans for r in continuations):
        rewards.score(rollout)
    rewards.complete_group(plans)
    assert [[r.reward for r in continuations] for continuations in plans] == [
        pytest.approx([0.8, 2 * 0.125 + 0.8]), pytest.approx([0.5, 0.1]), pytest.approx([2 * 0.125 + 1.4 / 3])]
    assert "executability" not in scored.rewards
    with pytest.raises(ValueError, match="action_worldmodel"):
        RewardConfig(idm_reproduction=1.0)


def test_idm_reproduction_scores_chunks_the_actions_explain():
    torch.manual_seed(0)
    action_model = WorldModel(tiny_config("action")).eval()
    reward = IDMReproductionReward(action_model)
    context = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    reproduced = action_model.decode(action_model.generate(
        context, ["a"], actions=torch.from_numpy(actions)[None], generator=torch.Generator().manual_seed(0)))[0]
    own = ImaginedChunk(text="a", context=context, latents=torch.zeros(1, 3, 4, 8, 8), frames=reproduced.numpy(),
                        actions=actions)
    other = ImaginedChunk(text="a", context=context, latents=torch.zeros(1, 3, 4, 8, 8),
                          frames=255 - reproduced.numpy(), actions=actions)
    assert reward.score(rollout_with([own], {})) == pytest.approx(1.0)
    assert reward.score(rollout_with([other], {})) < 0.9
    with pytest.raises(ValueError, match="action-conditioned"):
        IDMReproductionReward(WorldModel(tiny_config("text")))


def test_the_reward_terms_on_cases_where_their_formulas_differ_from_near_ones():
    """Each was tested where a nearby formula gives the same figure (a progress weight of 0.5, "< 0", weight 1, an
    exact reproduction): mutations of them survived (helper-208)."""
    from vplan.rl.rewards import make_rewards

    solved = {"displaced": np.array([True, True]), "returned": np.array([True, True]), "phase": "return",
              "success": True}
    assert OutcomeReward(progress_weight=0.2).score(rollout_with([], solved)) == pytest.approx(1.2)  # not 1 - 0.2
    dark, bright = np.zeros((6, 64, 64, 3), np.uint8), np.full((6, 64, 64, 3), 255, np.uint8)
    assert ConsistencyReward().score(rollout_with([chunk(dark), chunk(bright)], {})) == -0.5  # cuts per chunk
    rewards = RewardSet([(ExecutabilityReward(), 2.0)])  # a term missing is filled with its weighted plan mean
    plan = [rollout_with([chunk(np.full((3, 16, 16, 3), 100, np.uint8), [0.1, 0.1])], {}), rollout_with([], {})]
    for rollout in plan:
        rewards.score(rollout)
    rewards.complete_group([plan])
    assert [r.reward for r in plan] == [pytest.approx(1.8), pytest.approx(1.8)]
    weighted = make_rewards(RewardConfig(outcome=0.0, executability=1.0, consistency=0.0)).rewards
    assert [r.name for r, _ in weighted] == ["executability"]  # weight 0: not scored (nor logged, nor plotted)


def test_idm_reproduction_is_one_minus_the_mean_pixel_error_from_the_last_context_frames():
    """Tested on an exact reproduction and an inverted one only (the max error, or the first context frames,
    survived as mutations, helper-208)."""
    torch.manual_seed(0)
    model = WorldModel(tiny_config("action", context_frames=1)).eval()
    context = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # longer than it reads
    actions = np.zeros((3, 4), np.float32)
    frames = model.decode(model.generate(context[:, -1:], ["a"], actions=torch.from_numpy(actions)[None],
                                         generator=torch.Generator().manual_seed(0)))[0].numpy().copy()

    def scored(frames: np.ndarray) -> float:
        return IDMReproductionReward(model).score(rollout_with([ImaginedChunk(
            text="a", context=context, latents=torch.zeros(1, 3, 4, 8, 8), frames=frames, actions=actions)], {}))

    assert scored(frames) == pytest.approx(1.0)
    frames[0, 0, 0, 0] = 255 - frames[0, 0, 0, 0]  # one value far off: the mean hardly moves
    assert 0.999 < scored(frames) < 1.0


def test_an_action_model_that_fits_the_agent_is_accepted():
    """Only refusals were tested (`reads <= frames` survived as a mutation, helper-208)."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    world_model, action_model = WorldModel(tiny_config("text")), WorldModel(tiny_config("action"))
    action_model.vae.load_state_dict(world_model.vae.state_dict())
    idm = SimpleNamespace(config=SimpleNamespace(num_moves=0, action_dim=action_model.config.action_dim))
    IDMReproductionReward(action_model).check_fits(world_model, idm)  # same VAE, actions and chunk length


def test_explore_plays_each_iterations_own_seeds_and_completes_each_group(monkeypatch):
    """The end-to-end tests explore one seed per iteration and always get every term: seeds without the
    `seeds_per_iteration` factor, and no group completed, survived as mutations (helper-208)."""
    from types import SimpleNamespace

    from vplan.rl import loop
    from vplan.rl.loop import RLRun

    played, completed = [], []

    class Agent:
        plan = SimpleNamespace(to_dict=lambda: {"subgoals": []})
        stats = close = staticmethod(lambda: {})

    def run_episode(env, agent, instruction, seed, camera, agent_seed=None, plan=None):
        played.append((seed, agent_seed))
        return {"info": {}, "chunks": []}

    monkeypatch.setattr(loop, "run_episode", run_episode)
    run = RLRun.__new__(RLRun)
    run.cfg = SimpleNamespace(seeds_per_iteration=2, seed=0, plan_offsets=[0, 1], continuations=2,
                              task=SimpleNamespace(instruction="x"), agent=SimpleNamespace(camera="front"))
    run.env, run.iteration = None, 1
    run.policy_model = lambda: None
    run.make_agent = lambda policy, offset: Agent()
    run.rewards = SimpleNamespace(score=lambda rollout: 0.0, complete_group=completed.append)
    groups = run.explore(SimpleNamespace(set_postfix=lambda **k: None, update=lambda n: None))
    assert sorted({seed for seed, _ in played}) == [2, 3]  # iteration 0 played 0 and 1
    assert completed == groups and len(groups) == 2


def test_an_action_model_that_cannot_read_the_agents_actions_or_latents_is_refused_up_front(checkpoints,
                                                                                             tmp_path, capsys,
                                                                                             monkeypatch):
    """It was found after a whole explored episode, as a traceback (or, another VAE, not at all); refused before
    the command makes its env (a simulator would be left running): the only env made is the one the CLI's settings
    check makes (an embedded env's, no frame drawn) and closes."""
    import vplan.envs

    made, closed, make_env = [], [], vplan.envs.make_env

    def tracked(config):
        env = make_env(config)
        made.append(env)
        close = env.close
        env.close = lambda: (closed.append(env), close())
        return env

    monkeypatch.setattr(vplan.envs, "make_env", tracked)
    base = WorldModel.from_pretrained(checkpoints[0])
    frames = base.config.chunk_frames
    for name, action_dim, vae_seed, shorter, message in [
        ("dim3", 3, None, 0, "the IDM's actions have 4 values, and the action model takes 3"),
        ("vae", 4, 1, 0, "its VAE is not the world model's"),
        ("frames", 4, None, 1, f"it draws chunks of up to {frames - 1} frames, and the world model's are {frames}"),
    ]:
        model = WorldModel(replace(base.config, conditioning="action", action_dim=action_dim,
                                   chunk_frames=frames - shorter))
        model.vae.load_state_dict(base.vae.state_dict())
        if vae_seed is not None:
            torch.manual_seed(vae_seed)
            model.vae.load_state_dict(type(model.vae)(**model.vae.config).state_dict())
        model.save_pretrained(tmp_path / name, action_units={"max_delta": 0.05})  # the env's is 0.03: warned of
        with pytest.warns(OtherEnvWarning, match=(
                f"rewards.action_worldmodel={tmp_path / name} learned actions recorded at env.max_delta=0.05")), \
                pytest.raises(SystemExit) as exit_info:
            main(rl_args(checkpoints, tmp_path / f"out-{name}", "rewards.idm_reproduction=1",
                         f"rewards.action_worldmodel={tmp_path / name}"))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and message in err[-1], err
    assert len(made) == 3 and closed == made  # one per try, the settings check's


def test_the_action_model_of_the_reward_is_checked_as_the_agents_checkpoints_are(checkpoints, tmp_path, capsys):
    """A missing one was found as the reward was built (its message naming no setting), and one trained on another
    env was not warned of. A refused run gives back the caller's torch threads too."""
    torch.set_num_threads(3)
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, tmp_path / "out", "rewards.idm_reproduction=1",
                     f"rewards.action_worldmodel={tmp_path / 'none'}"))
    assert exit_info.value.code == 2 and torch.get_num_threads() == 3  # threads=1 while it ran
    assert capsys.readouterr().err.strip() == (f"vplan rl: error: rewards.action_worldmodel={tmp_path / 'none'}: no "
                                               f"checkpoint at {tmp_path / 'none'}; train one with `vplan train "
                                               "component=worldmodel` and pass rewards.action_worldmodel=DIR")
    base = WorldModel.from_pretrained(checkpoints[0])
    WorldModel(replace(base.config, conditioning="action", action_dim=3)).save_pretrained(
        tmp_path / "elsewhere", trained_on_env="blockworld")
    with pytest.warns(OtherEnvWarning, match=f"rewards.action_worldmodel={tmp_path / 'elsewhere'} was trained on "
                                             "blockworld episodes"), pytest.raises(SystemExit):
        main(rl_args(checkpoints, tmp_path / "out", "rewards.idm_reproduction=1",
                     f"rewards.action_worldmodel={tmp_path / 'elsewhere'}"))  # then refused: 3 action values


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("rl_checkpoints"))


def rl_args(checkpoints, out, *extra: str) -> list[str]:
    worldmodel, idm = checkpoints
    return ["rl", f"worldmodel={worldmodel}", f"idm={idm}", f"out={out}", "env.max_episode_steps=8",
            "agent.replan_drift=null", "threads=1", "seeds_per_iteration=1", "plan_offsets=[0,1]",
            "continuations=2", "steps_per_iteration=2", "batch_size=2", "lr=1e-2", *extra]


@pytest.mark.parametrize("objective", ["rwr", "dpo"])
def test_vplan_rl_writes_the_finetuned_model_planner_and_before_after(checkpoints, tmp_path, capsys, objective,
                                                                       monkeypatch):
    from safetensors.torch import load_file

    from vplan.rl import objectives

    made, used = [], []  # RWR: the iteration's sample weights, and those each step's loss was weighted by
    weights_of, loss_of = objectives.rwr_weights, objectives.rwr_loss
    monkeypatch.setattr(objectives, "rwr_weights", lambda *a: made.append(weights_of(*a)) or made[-1])
    monkeypatch.setattr(objectives, "rwr_loss", lambda losses, w: used.append(w) or loss_of(losses, w))
    from vplan.rl import loop

    given, followed = [], []  # the plans each episode was handed (exploration's too: None), and followed
    play = loop.run_episode

    def spied(env, agent, *rest, plan=None, **options):
        given.append(plan)
        episode = play(env, agent, *rest, plan=plan, **options)
        followed.append(agent.plan)
        return episode

    monkeypatch.setattr(loop, "run_episode", spied)
    modes, score = [], loop.RLRun.loss  # scored in eval mode: train mode's dropout draws outside the seeds
    monkeypatch.setattr(loop.RLRun, "loss", lambda self, *a: modes.append(self.model.unet.training) or score(self, *a))
    out = tmp_path / "rl"
    main(rl_args(checkpoints, out, "iterations=1", "eval_episodes=1", f"objective={objective}"))
    assert modes and not any(modes)
    # before, after_executor: the executor alone is judged on the plan the base model followed (an LLM planner
    # asked again may answer otherwise); with the offset unchanged (a tie below), "after" makes the same plans
    # again on the same model, seeds and noise: the same episodes, not played a third time (helper-209)
    assert given[-2] is None and given[-1] is followed[-2] and len(given) == 4 + 2  # 4 explored
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.count("its episodes are those of the executor-only column (not played again)") == 1
    assert f"rl finetune {objective}: 100%" in captured.err  # its steps under a bar (the exploration's stood still)
    if objective == "rwr":  # each step's samples weighted by their advantages' weights
        assert len(made) == 1 and len(used) == 2
        rng = np.random.default_rng(0)  # the draws of iteration 0 (seed=0): each step's chunks, and their weights
        for weights in used:
            assert torch.equal(weights, made[0][torch.from_numpy(rng.choice(len(made[0]), 2, replace=False))])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]) >= {"success_rate", "dist_mean", "dist_unit", "return_phase_rate", "episodes"}
    assert metrics["objective"] == objective and metrics["before"]["dist_unit"] == "m"
    assert metrics["before"]["episodes"][0]["seed"] == metrics["after"]["episodes"][0]["seed"] == 10000
    assert metrics["after_executor"]["chunk_offset"] == metrics["before"]["chunk_offset"] == 0
    assert metrics["after"] == metrics["after_executor"]
    assert (out / "final" / "config.json").is_file() and (out / "planner.yaml").is_file()
    logits = json.loads((out / "iterations.jsonl").read_text().splitlines()[-1])["logits"]
    assert metrics["tuned_chunk_offset"] == (0 if logits[0] >= logits[1] else 1)  # argmax; a tie keeps 0
    iterations = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert len(iterations) == 1 and len(iterations[0]["rewards"]) == 4  # 1 seed x 2 plans x 2 continuations
    # 8 steps are one chunk of the first subgoal, the same under both offsets: with the same noise per continuation
    # the two plans score alike, and no offset is preferred (distinct noise made one of them win by ~1e-4)
    by_plan = {(r["plan"], r["continuation"]): r["reward"] for r in iterations[0]["rewards"]}
    assert all(by_plan[0, k] == by_plan[1, k] for k in (0, 1)) and logits[0] == logits[1]
    assert all({"outcome", "executability"} <= set(r) for r in iterations[0]["rewards"])
    assert (out / "rewards.png").read_bytes().startswith(b"\x89PNG")  # reward and success per iteration, drawn
    lora = load_file(out / "lora.safetensors")
    assert iterations[0]["finetune"]["steps"] == 2 and iterations[0]["finetune"]["items"] > 0  # it trained
    assert any(name.endswith("lora_B.rl.weight") and t.abs().sum() > 0 for name, t in lora.items())
    assert "before" in printed and "success rate" in printed and "Dist (m, mean)" in printed
    assert "reached the return phase" in printed
    if objective == "rwr":  # rerun with no evaluation: the one of this same model was dropped (helper-209)
        main(rl_args(checkpoints, out, "iterations=1", "eval_episodes=0", f"objective={objective}"))
        printed = capsys.readouterr().out
        assert f"resuming {out}: iteration 0 done, writing final/\n" in printed
        assert "eval_episodes=0: the before/after evaluation in" in printed and "success rate" in printed
        kept = json.loads((out / "metrics.json").read_text())
        assert all(kept[name] == metrics[name] for name in ("before", "after_executor", "after"))


def test_vplan_rl_resumes_after_a_kill_as_if_uninterrupted(checkpoints, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from vplan.planner.offline import OfflinePlanner
    from vplan.rl import loop
    from vplan.rl.loop import RLRun

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    plans, plan = [], OfflinePlanner.plan

    def counted_plan(self, *args, **kwargs):
        plans.append(1)
        return plan(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(OfflinePlanner, "plan", counted_plan)
        main(rl_args(checkpoints, straight, "iterations=2", "eval_episodes=0"))
    assert len(plans) == 2 * 2  # iterations x plans: the 2 continuations of a plan follow the plan asked for once
    main(rl_args(checkpoints, resumed, "iterations=1", "eval_episodes=0"))  # as if killed after iteration 1
    assert (resumed / "final").is_dir() and (resumed / "metrics.json").is_file()  # that run's results ...
    with monkeypatch.context() as patch:  # ... gone once a longer run trains further, stopped before its end
        patch.setattr(RLRun, "explore", lambda self, bar: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(SystemExit):
            main(rl_args(checkpoints, resumed, "iterations=2", "eval_episodes=0"))
    assert not any((resumed / name).exists() for name in ("final", "metrics.json", "lora.safetensors", "planner.yaml"))
    with (resumed / "iterations.jsonl").open("a") as file:  # ... while appending iteration 2's log
        file.write(json.dumps({"iteration": 1, "partial": True}) + "\n" + '{"iteration": 1, "rewa')
    main(rl_args(checkpoints, f"{resumed}/", "iterations=2", "eval_episodes=0"))  # out= spelled otherwise
    assert "resuming" in capsys.readouterr().out
    assert sorted(f.name for f in (resumed / "checkpoint").iterdir()) == [  # no pickle
        "lora.safetensors", "optimizer.safetensors", "state.json"]
    a, b = load_file(straight / "lora.safetensors"), load_file(resumed / "lora.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(name.endswith("lora_B.rl.weight") and t.abs().sum() > 0 for name, t in a.items())  # it learned
    assert (straight / "planner.yaml").read_text() == (resumed / "planner.yaml").read_text()
    a, b = ([json.loads(line)["rewards"] for line in (out / "iterations.jsonl").read_text().splitlines()]
            for out in (straight, resumed))
    assert len(b) == 2 and a == b  # the same rollouts, scored the same
    # as if killed between the two renames that swap a new checkpoint in: only the old and the staged one exist
    shutil.copytree(resumed / "checkpoint", resumed / ".checkpoint.tmp")
    (resumed / "checkpoint").rename(resumed / ".checkpoint.old")
    with pytest.raises(SystemExit) as exit_info:  # the settings are still checked in that state
        main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0", "objective=dpo"))
    assert exit_info.value.code == 2
    assert "other settings: objective=rwr when it began, dpo now" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, resumed, "iterations=1", "eval_episodes=0"))
    assert exit_info.value.code == 2 and "has run 2 iterations already; pass iterations>=2" in capsys.readouterr().err
    # killed after the last iteration's checkpoint (here between its two renames), before its plot was drawn: the
    # rerun explores nothing, and its plot still shows every iteration
    shutil.copytree(resumed / "checkpoint", resumed / ".checkpoint.tmp")
    (resumed / "checkpoint").rename(resumed / ".checkpoint.old")
    (resumed / "rewards.png").write_bytes(b"the plot of iteration 0 alone")
    drawn, plot = [], loop.line_plot

    def spied_plot(path, series, *args):
        drawn.append(series["reward"][0])  # the iterations drawn
        plot(path, series, *args)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "line_plot", spied_plot)
        patch.setattr(RLRun, "explore", lambda self, bar: pytest.fail("explored again"))
        main(rl_args(checkpoints, resumed, "iterations=2", "eval_episodes=0"))
    assert drawn == [[0, 1]] and (resumed / "rewards.png").read_bytes().startswith(b"\x89PNG")
    calls = []

    def interrupted_finetune(self, groups):  # Ctrl-C in iteration 3's finetuning
        calls.append(1)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RLRun, "finetune", interrupted_finetune)
        with pytest.raises(SystemExit) as exit_info:
            main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0"))
    assert exit_info.value.code == 130 and calls == [1]
    assert "interrupted: iterations 0..1 kept in" in capsys.readouterr().err
    with monkeypatch.context() as patch:  # in a first iteration: it said "resumes after the last one finished"
        patch.setattr(RLRun, "finetune", interrupted_finetune)
        with pytest.raises(SystemExit):
            main(rl_args(checkpoints, tmp_path / "stopped_at_once", "iterations=1", "eval_episodes=0"))
    assert "interrupted: no iteration finished in " in (said := capsys.readouterr().err)
    assert "stopped_at_once; the same command starts again\n" in said
    assert "rl explore" not in said.split("interrupted: ")[1]  # the bar was drawn again below it (helper-209)

    def interrupted_save(self):  # Ctrl-C while iteration 3 is being saved: the checkpoint still holds 2
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RLRun, "save", interrupted_save)
        with pytest.raises(SystemExit):
            main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0"))
    assert "interrupted: iterations 0..1 kept in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # another objective cannot continue this run
        main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0", "objective=dpo"))
    assert exit_info.value.code == 2
    assert "other settings: objective=rwr when it began, dpo now" in capsys.readouterr().err
    # a run begun before every plan's continuation k drew the same noise: going on would mix the two schemes
    state_file = resumed / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k != "noise"}))
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0"))
    assert exit_info.value.code == 2 and "was begun before every plan's continuation k drew the same noise" in \
        capsys.readouterr().err
    state_file.write_text(json.dumps(state))
    # a checkpoint of a vplan that pickled the optimizer (optimizer.pt) is refused, never unpickled
    (resumed / "checkpoint" / "optimizer.safetensors").rename(resumed / "checkpoint" / "optimizer.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0"))
    assert exit_info.value.code == 2 and "no optimizer.safetensors (a checkpoint of an older vplan" in \
        capsys.readouterr().err
    # a damaged optimizer or adapter file: one line, not safetensors' traceback
    for damaged in ("optimizer.safetensors", "lora.safetensors"):
        (resumed / "checkpoint" / "optimizer.pt").rename(resumed / "checkpoint" / "optimizer.safetensors")
        intact = (resumed / "checkpoint" / damaged).read_bytes()
        (resumed / "checkpoint" / damaged).write_bytes(intact[: len(intact) // 2])
        with pytest.raises(SystemExit) as exit_info:
            main(rl_args(checkpoints, resumed, "iterations=3", "eval_episodes=0"))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
        assert "checkpoint cannot be read (SafetensorError: " in err and "delete that folder to start" in err
        (resumed / "checkpoint" / damaged).write_bytes(intact)
        (resumed / "checkpoint" / "optimizer.safetensors").rename(resumed / "checkpoint" / "optimizer.pt")


def test_exploring_the_held_out_seeds_warns(checkpoints, tmp_path):
    """Only an overlap with the run's own eval_seed was refused: with eval_seed moved up, exploration could play
    the 10000+ scenes vplan run and the benches hold out, unsaid."""
    from vplan.cli import COMMANDS, build_config, compose_config
    from vplan.errors import VplanWarning
    from vplan.rl.loop import RLRun

    command = next(c for c in COMMANDS if c.name == "rl")
    args = rl_args(checkpoints, tmp_path / "out", "seed=9999", "iterations=2", "eval_seed=20000")[1:]
    with pytest.warns(VplanWarning, match=r"seed=9999: exploration plays seeds 10000..10000, among the 10000\+"):
        RLRun(build_config(compose_config(command, args)[0])).env.close()
    # a planner chunk length the agents replace with the model's: said once, not done unsaid
    args = rl_args(checkpoints, tmp_path / "out", "planner.chunk_frames=6")[1:]
    with pytest.warns(VplanWarning, match="planner.chunk_frames=6 is ignored: a chunk is the world model's"):
        RLRun(build_config(compose_config(command, args)[0])).env.close()


def test_the_llm_planners_of_a_run_share_one_endpoint(checkpoints, tmp_path):
    """Each plan's agent made its own planner, whose endpoint's count of failed requests began at 0: a dead
    endpoint was never given up on, at ~90 s a plan (helper-195)."""
    from vplan.cli import COMMANDS, build_config, compose_config
    from vplan.rl.loop import RLRun

    command = next(c for c in COMMANDS if c.name == "rl")
    args = rl_args(checkpoints, tmp_path / "out", "planner=llm", "planner.llm.base_url=http://127.0.0.1:9/v1")[1:]
    run = RLRun(build_config(compose_config(command, args)[0]))
    agents = [run.make_agent(run.base, offset) for offset in (0, 1, 0)]
    assert len({id(agent.planner.endpoint) for agent in agents}) == 1
    for agent in agents:
        agent.close()
    run.env.close()


def test_bad_settings_are_one_line_errors(checkpoints, tmp_path, capsys):
    for extra, message in [("objective=ppo", "objective: expected one of"),
                           ("continuations=1", "continuations: expected at least 2"),
                           ("plan_offsets=[0,0]", "plan_offsets: expected distinct"),
                           ("rewards.vlm=1.0", "vlm_reward.enabled=true"),
                           ("vlm_reward.enabled=true", "expected a weight for its reward (rewards.vlm=W > 0)"),
                           ("rewards.action_worldmodel=x", "expected a weight for the reward it serves"),
                           ("planner.chunk_offset=5", "planner.chunk_offset: expected one of plan_offsets [0, 1]"),
                           ("penalty=nan", "penalty: expected a finite number >= 0, got nan"),
                           ("seed=9999", "eval_seed: the held-out seeds 10000..10004 overlap the explored ones, "
                                         "9999..10000"),  # 2 iterations x 1 seed: it would train on a test scene
                           (f"idm={checkpoints[0]}", f"idm={checkpoints[0]}: "),  # a world model as the IDM
                           (f"worldmodel={tmp_path}", f"worldmodel={tmp_path}: no checkpoint at")]:
        with pytest.raises(SystemExit) as exit_info:
            main([a for a in rl_args(checkpoints, tmp_path / "bad") if a.split("=")[0] != extra.split("=")[0]]
                 + [extra])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_a_non_finite_reward_is_a_one_line_error_naming_the_term(checkpoints, tmp_path, capsys, monkeypatch):
    """A NaN or infinite term (a diverged model) stopped the run only at the iteration's end, in a traceback from
    the advantages; now at the episode it scored, naming the term and the episode."""
    from vplan.errors import RunError

    diverged = EpisodeRollout(task_seed=3, plan_index=1, continuation=0, plan={}, final_info={}, stats={},
                              chunks=[chunk(np.zeros((3, 16, 16, 3), np.uint8), [float("nan")])])
    with pytest.raises(RunError, match=r"the executability reward is nan for task seed 3, plan 1, continuation 0; "
                                       r"check the model it reads .* rewards.executability=0"):
        RewardSet([(OutcomeReward(), 1.0), (ExecutabilityReward(), 0.5)]).score(diverged)
    monkeypatch.setattr(ExecutabilityReward, "score", lambda self, rollout: float("inf"))
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, tmp_path / "rl", "iterations=1", "eval_episodes=0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and "error: the executability reward is inf for task seed 0, plan 0, " \
        "continuation 0;" in err[-1], err


def test_all_reward_weights_zero_is_refused():
    with pytest.raises(ValueError, match="rewards: every weight is 0"):  # it trained on rewards of 0
        RewardConfig(outcome=0.0, executability=0.0, consistency=0.0)


def test_iteration_series_averages_each_reward_term_over_the_episodes_it_scored(tmp_path):
    from vplan.rl.loop import iteration_series

    def episode(**terms):
        return {"task_seed": 0, "plan": 0, "continuation": 0, "reward": 0.0, **terms}

    log = tmp_path / "iterations.jsonl"
    log.write_text(json.dumps({"iteration": 0, "reward_mean": 0.5, "success_rate": 0.0,
                               "rewards": [episode(outcome=0.2, vlm=1.0), episode(outcome=0.4)]}) + "\n" +
                   json.dumps({"iteration": 1, "reward_mean": 0.7, "success_rate": 0.5,
                               "rewards": [episode(outcome=0.6), episode(outcome=1.0)]}) + "\n")
    series = iteration_series(log)
    assert series["reward"] == ([0, 1], [0.5, 0.7]) and series["success rate"] == ([0, 1], [0.0, 0.5])
    assert series["outcome (unweighted)"] == ([0, 1], [pytest.approx(0.3), pytest.approx(0.8)])
    assert series["vlm (unweighted)"] == ([0], [1.0])  # no VLM score in iteration 1: no point there


def test_the_tuned_offset_keeps_the_configured_one_on_a_tie():
    from types import SimpleNamespace

    from vplan.rl.loop import RLRun

    run = RLRun.__new__(RLRun)  # only the planner's logits and config matter here
    run.cfg = SimpleNamespace(plan_offsets=(-1, 0, 1), planner=SimpleNamespace(chunk_offset=0))
    run.logits = np.zeros(3)  # nothing learned: the plan as configured
    assert run.tuned_offset == 0
    run.logits = np.array([0.5, -0.2, 0.5])  # a tie without it: the first of the tied
    assert run.tuned_offset == -1
    run.logits = np.array([0.1, -0.2, 0.4])
    assert run.tuned_offset == 1


def planned(seed: int, g: int, texts: list[str], rewards: list[float], chunks: int = 1) -> list[EpisodeRollout]:
    """Plan g of a task seed's group: its K continuations with the given rewards, two chunks each."""
    plan = {"subgoals": [{"text": t, "chunks": chunks, "check": None} for t in texts],
            "source": "fallback" if g == 2 else "llm"}
    return [EpisodeRollout(task_seed=seed, plan_index=g, continuation=k, plan=plan, final_info={}, stats={},
                           chunks=[chunk(np.zeros((2, 8, 8, 3), np.uint8)) for _ in range(2)], reward=r)
            for k, r in enumerate(rewards)]


def test_plan_preferences_pair_each_seeds_best_and_worst_plan_where_their_texts_differ():
    from types import SimpleNamespace

    from vplan.rl.loop import RLRun

    run = RLRun.__new__(RLRun)  # only the config, the logits and the prompt matter here
    run.cfg = SimpleNamespace(plan_offsets=[-1, 0, 1], planner_lr=0.5)
    run.logits, run.iteration = np.zeros(3), 4
    run.prompt = lambda rollout: f"plan for seed {rollout.task_seed}"
    texts = ["pick up the red cube", "place it"]
    varied = [planned(7, 0, texts, [0.2, 0.4]), planned(7, 1, texts[::-1], [0.9, 0.7]),
              planned(7, 2, texts[:1], [0.1, 0.3])]
    same_texts = [planned(8, g, texts, [g, g], chunks=g + 1) for g in range(3)]  # the offline planner's variants
    pairs = run.update_planner([varied, same_texts])
    assert pairs == [{
        "prompt": "plan for seed 7", "rewards": {"chosen": pytest.approx(0.8), "rejected": pytest.approx(0.2)},
        "chosen": json.dumps({"subgoals": [{"text": "place it"}, {"text": "pick up the red cube"}]}),
        "rejected": json.dumps({"subgoals": [{"text": "pick up the red cube"}]}),  # what the LLM answers
        "chunk_offsets": {"chosen": 0, "rejected": 1}, "task_seed": 7, "iteration": 4,
        "sources": {"chosen": "llm", "rejected": "fallback"},  # the worst came from the offline fallback
    }]
    assert np.argmax(run.logits) == 1  # both groups' best plan: offset 0 (plan 1)
    step = sum(group_advantages(np.array(table))[0] for table in ([[0.2, 0.4], [0.9, 0.7], [0.1, 0.3]],
                                                                   [[0, 0], [1, 1], [2, 2]]))
    np.testing.assert_allclose(run.logits, 0.5 * step)  # planner_lr times each group's plan advantages
    # the worst plan says what the best says: the pair takes the worst of those that say something else
    echo = [planned(9, 0, texts, [0.9, 0.9]), planned(9, 1, texts[:1], [0.5, 0.5]), planned(9, 2, texts, [0.1, 0.1])]
    (pair,) = run.update_planner([echo])
    assert pair["rewards"] == {"chosen": pytest.approx(0.9), "rejected": pytest.approx(0.5)}
    assert pair["chunk_offsets"] == {"chosen": -1, "rejected": 0}


def test_dpo_pairs_each_plans_best_continuation_with_its_worst_chunk_by_chunk():
    from vplan.rl.loop import RLRun

    group = [planned(0, 0, ["a"], [0.1, 0.6, 0.3]), planned(0, 1, ["a"], [0.5, 0.5])]  # equal rewards: no pair
    best, worst = group[0][1], group[0][0]
    pairs = RLRun.pairs(RLRun.__new__(RLRun), [group])
    assert len(pairs) == 2 and all(w is best.chunks[i] and l is worst.chunks[i] for i, (w, l) in enumerate(pairs))
    # a later chunk follows what its continuation executed: another context, so no Diffusion-DPO pair
    best.chunks[1] = replace(best.chunks[1], context=torch.ones(1, 2, 4, 8, 8))
    assert RLRun.pairs(RLRun.__new__(RLRun), [group]) == [(best.chunks[0], worst.chunks[0])]


def test_rwr_samples_weigh_a_plans_better_continuation_more():
    from vplan.rl.loop import RLRun

    group = [planned(0, 0, ["a"], [0.1, 0.6]), planned(0, 1, ["a"], [0.9, 0.9])]
    samples = RLRun.samples(RLRun.__new__(RLRun), [group])
    advantage = {id(c): a for c, a in samples}
    assert len(samples) == 8  # 2 plans x 2 continuations x 2 chunks
    assert all(advantage[id(c)] > 0 for c in group[0][1].chunks)
    assert all(advantage[id(c)] < 0 for c in group[0][0].chunks)
    assert all(advantage[id(c)] == 0 for k in range(2) for c in group[1][k].chunks)  # equal rewards: no preference


def test_vplan_rl_carries_the_vlm_budget_and_answers_over_a_kill(checkpoints, tmp_path, capsys, monkeypatch):
    from test_planner import FakeEndpoint, completion

    from vplan.rl.loop import VLM_JOURNAL_FILE, RLRun

    server = FakeEndpoint()
    server.reply = lambda body: (200, completion("yes"), 0.0)
    vlm = ["rewards.vlm=1.0", "vlm_reward.enabled=true", f"vlm_reward.base_url={server.base_url}",
           "vlm_reward.api_key=sk-test", "vlm_reward.model=fake-vlm"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    try:
        main(rl_args(checkpoints, straight, "iterations=2", "eval_episodes=0", *vlm))
        asked = len(server.requests)
        state = json.loads((straight / "checkpoint" / "state.json").read_text())
        assert asked > 0 and state["vlm"]["requests_made"] == asked
        said = capsys.readouterr().out  # the budget spent, which only state.json held
        spent = {"requests_made": asked, "max_requests": 200, "unanswered_chunks": 0, "unscored_episodes": 0}
        assert json.loads((straight / "metrics.json").read_text())["vlm"] == spent
        assert f"VLM reward: {asked}/200 requests spent; 0 chunk(s) and 0 episode(s) explored got no answer" in said
        assert "; VLM: " in said and "requests spent, 0 chunk(s) and 0 episode(s) unanswered\n" in said

        def killed(self, groups):  # Ctrl-C in the first iteration's finetuning, after its questions
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(RLRun, "finetune", killed)
            with pytest.raises(SystemExit):
                main(rl_args(checkpoints, resumed, "iterations=2", "eval_episodes=0", *vlm))
        assert (resumed / VLM_JOURNAL_FILE).is_file() and not (resumed / "checkpoint").exists()
        main(rl_args(checkpoints, resumed, "iterations=2", "eval_episodes=0", *vlm))
        # the questions answered before the kill were not asked again: the run paid what an unbroken one did
        assert len(server.requests) == 2 * asked
        state = json.loads((resumed / "checkpoint" / "state.json").read_text())
        assert state["vlm"]["requests_made"] == asked and not (resumed / VLM_JOURNAL_FILE).exists()
        a, b = ([json.loads(line)["rewards"] for line in (out / "iterations.jsonl").read_text().splitlines()]
                for out in (straight, resumed))
        assert a == b and all("vlm" in row for rows in a for row in rows)
        assert json.loads((resumed / "metrics.json").read_text())["vlm"] == spent  # counted over the resume
    finally:
        server.close()


def test_an_iteration_without_vlm_scores_says_its_mean_reward_lacks_the_term():
    """A spent budget halved the logged mean reward, which read as the policy getting worse (helper-193)."""
    from vplan.rl.loop import _vlm_line

    record = {"rewards": [{"reward": 0.5, "outcome": 0.5}],
              "vlm": {"requests_made": 30, "max_requests": 30, "unanswered_chunks": 0, "unscored_episodes": 2}}
    assert _vlm_line(record, 1.0) == ("; VLM: 30/30 requests spent, 0 chunk(s) and 2 episode(s) unanswered (no "
                                      "episode got a VLM score: this mean reward leaves that term out)")
    record["rewards"][0]["vlm"] = 1.0
    assert _vlm_line(record, 1.0).endswith("2 episode(s) unanswered")
    assert _vlm_line({"rewards": []}, 0.0) == ""  # the VLM reward off


def test_an_iteration_without_a_finetune_step_says_so(tmp_path, capsys):
    """"loss nan -> nan" read as a diverged loss (helper-196); an rl run's checkpoint/ taken as out= had its adapter
    replaced by a whole other run, which the first then resumed from."""
    from vplan.rl.loop import _learned

    assert _learned({"steps": 0}) == "no finetune step (nothing to learn from: every continuation scored alike)"
    assert _learned({"steps": 2, "loss_first": 0.6931, "loss_last": 0.5}) == "loss 0.6931 -> 0.5000"
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        main(["rl", f"out={tmp_path / 'checkpoint'}"])
    assert stop.value.code == 2 and "holds a training checkpoint (optimizer.safetensors)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["optimizer.safetensors"]


def test_the_summary_shows_a_missing_dist_as_a_dash(capsys, tmp_path):
    """The blockworld's Dist is none before its return phase: a finetuned agent that never reached it, beside a
    base one that did, raised a TypeError from the table once metrics.json was written."""
    from vplan.rl.loop import _print_summary

    def column(dist):
        return {"success_rate": 0.0, "dist_mean": dist, "dist_unit": "blocks", "chunks_per_episode": 3.0,
                "return_phase_rate": 0.5 if dist is not None else 0.0, "chunk_offset": 0, "episodes": [{"seed": 10000}]}

    metrics = {"iterations": 1, "objective": "rwr", "tuned_chunk_offset": 0,
               "before": column(1.5), "after_executor": column(None), "after": column(None)}
    _print_summary(metrics, tmp_path)
    dist = next(line for line in capsys.readouterr().out.splitlines() if "Dist" in line)
    assert dist.split()[-3:] == ["1.5000", "–", "–"]
    metrics["before"] = column(None)  # nowhere: no row
    _print_summary(metrics, tmp_path)
    assert "Dist" not in capsys.readouterr().out


def test_an_llm_planner_without_a_key_is_refused_before_out_is_written(checkpoints, tmp_path, capsys, monkeypatch):
    """It was refused at the first episode, after config.yaml and checkpoints.json were written."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "rl"
    with pytest.raises(SystemExit) as exit_info:
        main(rl_args(checkpoints, out, "planner=llm"))
    assert exit_info.value.code == 2 and "planner=llm needs an API key" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("objective", ["rwr", "dpo"])
def test_finetune_trains_only_the_lora_on_shared_draws_against_the_frozen_base(objective, monkeypatch):
    """Diffusion-DPO scores a pair and the reference on one draw of noise and timestep each, the reference being
    the model before finetuning (the adapter off, no gradient); RWR favours the better continuation. No test
    pinned what `RLRun.finetune` hands the loss: the rejected chunk's seed could change unseen."""
    import copy
    from types import SimpleNamespace

    from peft.tuners.lora import LoraLayer

    from vplan.rl.loop import RLRun

    torch.manual_seed(0)
    base = WorldModel(tiny_config("text", objective="flow", sampler="flow_euler")).eval()
    run = RLRun.__new__(RLRun)  # the model, its LoRA, the optimizer and the config are what finetune reads
    run.model = copy.deepcopy(base)
    add_rl_adapter(run.model.unet, 4)
    run.model.requires_grad_(False)
    run.params = lora_parameters(run.model.unet)
    for param in run.params.values():
        param.requires_grad_(True)
    run.optimizer = torch.optim.Adam(list(run.params.values()), lr=1e-2)
    run.iteration = 0
    run.cfg = SimpleNamespace(objective=objective, seed=0, rwr_beta=0.1, dpo_beta=100.0, steps_per_iteration=3,
                              batch_size=4, penalty=1e-3)

    def imagined(seed: int, offset: float) -> ImaginedChunk:  # chunks far apart: learning one helps the other little
        draw = torch.Generator().manual_seed(seed)
        return ImaginedChunk(text="a", context=torch.zeros(1, 2, 4, 8, 8),
                             latents=torch.randn(1, 3, 4, 8, 8, generator=draw) + offset,
                             frames=np.zeros((3, 16, 16, 3), np.uint8), actions=np.zeros((3, 4), np.float32))

    good, bad = imagined(1, 2.0), imagined(2, -2.0)
    group = [[EpisodeRollout(task_seed=0, plan_index=0, continuation=k, plan={}, final_info={}, stats={},
                             chunks=[c], reward=r) for k, (c, r) in enumerate([(good, 1.0), (bad, 0.0)])]]
    calls, score = [], RLRun.loss

    def spy(self, chunk, seed):
        layers = [layer for layer in self.model.unet.modules() if isinstance(layer, LoraLayer)]
        reference_off = any(layer.disable_adapters for layer in layers)
        calls.append(("good" if chunk is good else "bad", seed, reference_off, torch.is_grad_enabled()))
        return score(self, chunk, seed)

    monkeypatch.setattr(RLRun, "loss", spy)
    lora = {id(param) for param in run.params.values()}
    frozen = {name: p.detach().clone() for name, p in run.model.named_parameters() if id(p) not in lora}

    def mean_loss(c: ImaginedChunk) -> float:  # over 16 draws of noise and timestep
        with torch.no_grad():
            return float(torch.stack([score(run, c, seed) for seed in range(100, 116)]).mean())

    before = [mean_loss(c) for c in (good, bad)]
    calls.clear()
    assert run.finetune([group])["steps"] == 3
    assert all(torch.equal(p, frozen[name]) for name, p in run.model.named_parameters() if id(p) not in lora)
    assert len(frozen) > len(lora) > 0
    def base_loss(model) -> torch.Tensor:
        return model(good.context, good.latents, ["a"], generator=torch.Generator().manual_seed(7),
                     reduction="none")[0][0].detach()

    with torch.no_grad(), reference(run.model.unet):  # the reference is still the model it started from (to the
        torch.testing.assert_close(base_loss(run.model), base_loss(base), rtol=1e-5, atol=1e-6)  # last bit: kernels)
    assert abs(float(base_loss(run.model) - base_loss(base))) > 1e-4  # while the adapted model moved
    if objective == "dpo":  # per step: chosen, rejected, then both under the reference, all on the step's draws
        assert [(who, ref, grad) for who, _, ref, grad in calls] == [
            ("good", False, True), ("bad", False, True), ("good", True, False), ("bad", True, False)] * 3
        assert all(len({seed for _, seed, _, _ in calls[4 * s: 4 * s + 4]}) == 1 for s in range(3))
        assert len({seed for _, seed, _, _ in calls}) == 3  # new draws each step
    else:  # the better continuation's loss falls further than the worse one's
        after = [mean_loss(c) for c in (good, bad)]
        assert before[0] - after[0] > before[1] - after[1]


def test_each_finetune_step_draws_apart_from_every_other():
    """The seeds were step·1000 + i: at a batch above 1000, item 1000 of a step drew as item 0 of the next."""
    from vplan.rl.loop import loss_seed

    for batch in (4, 1000, 1500):
        seeds = [loss_seed(iteration, step, 3, batch) + i for iteration in range(2) for step in range(3)
                 for i in range(batch)]
        assert len(set(seeds)) == len(seeds)
    assert loss_seed(1, 2, 20, 8) == 22_000  # as before up to batch 1000: a resumed run draws as it did


@pytest.mark.parametrize(("kind", "logits", "played"), [
    ("offline", [0.0, 0.0, 0.0], ["eval before", "eval after (executor)"]),  # the same offset: the same episodes
    ("offline", [0.0, 0.0, 1.0], ["eval before", "eval after (executor)", "eval after"]),
    ("llm", [0.0, 0.0, 0.0], ["eval before", "eval after (executor)", "eval after"]),  # asked again: may differ
])
def test_the_after_column_is_played_only_where_it_can_differ(monkeypatch, capsys, kind, logits, played):
    """With the offset unchanged and the offline planner, "after" played the executor-only column's episodes
    again (helper-209: three runs, the same figures; a third of the evaluation's time)."""
    from types import SimpleNamespace

    from vplan.rl import loop

    run = loop.RLRun.__new__(loop.RLRun)
    run.cfg = SimpleNamespace(plan_offsets=(-1, 0, 1), planner=SimpleNamespace(chunk_offset=0, kind=kind))
    run.logits, run.base = np.array(logits), "base"
    calls = []

    def evaluate(run, model, offset, desc, plans=None):
        calls.append((model, offset, desc, plans))
        return {"desc": desc}, ["plan"]

    monkeypatch.setattr(loop, "evaluate", evaluate)
    columns = loop.before_and_after(run, "final")
    assert [desc for _, _, desc, _ in calls] == played
    assert calls[0][:2] == ("base", 0) and calls[1] == ("final", 0, "eval after (executor)", ["plan"])
    if len(played) == 3:
        assert calls[2][:2] == ("final", run.tuned_offset) and calls[2][3] is None
        assert columns["after"] == {"desc": "eval after"}
    else:
        assert columns["after"] is columns["after_executor"]
    assert ("not played again" in capsys.readouterr().out) == (len(played) == 2)


def test_an_evaluation_is_kept_only_whole_with_the_figures_the_summary_reads(tmp_path, capsys):
    """A metrics.json from before 2026-12-05 lacks dist_unit: kept, the summary then stopped on a KeyError after
    metrics.json was written (helper-211)."""
    from vplan.rl.loop import _evaluation_kept

    column = {"chunk_offset": 0, "success_rate": 0.5, "dist_mean": 0.1, "dist_unit": "m", "chunks_per_episode": 5.0,
              "return_phase_rate": 0.0, "episodes": [{"seed": 10000}]}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"before": column, "after_executor": column, "after": column}))
    assert _evaluation_kept(path) == {"before": column, "after_executor": column, "after": column}
    assert "is kept" in capsys.readouterr().out
    older = {key: value for key, value in column.items() if key not in ("dist_unit", "return_phase_rate")}
    for written in ({"before": older, "after_executor": older, "after": older}, {"before": column, "after": column},
                    ["not", "an", "object"]):
        path.write_text(json.dumps(written))
        assert _evaluation_kept(path) == {} and capsys.readouterr().out == ""
    path.write_text("{damaged")
    assert _evaluation_kept(path) == {}
