"""vplan/Blockworld-v0 and the retrace task: the gymnasium contract, seeding, collisions, meshing, the metrics,
the scripted expert, the offline plan, `vplan collect` and `vplan bench env` on it, and config errors."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from vplan.cli import main
from vplan.constants import ACTION, OBS_ENV_STATE, OBS_STATE, SUBGOAL
from vplan.data import EPISODE_META, EpisodeDataset
from vplan.data.collect import CollectConfig, collect, rollout_expert
from vplan.envs import ENV_IDS, BlockworldConfig, make_env
from vplan.envs.blockworld import INSTRUCTIONS, RETURN_INSTRUCTION, BlockworldEnv
from vplan.envs.blockworld import rendering
from vplan.envs.blockworld.meshing import build_meshes, exposed_faces, merge_rectangles
from vplan.envs.blockworld.motion import AGENT_HEIGHT, BLOCKED, AgentState, covered_cells, rise_ahead, step
from vplan.envs.blockworld.retrace import RetraceScore
from vplan.envs.blockworld.terrain import SOLID, Block, VoxelWorld, generate_world
from vplan.envs.blockworld.textures import FACE_MATERIALS, make_texture
from vplan.envs.discrete_moves import Move
from vplan.eval.bench_env import BenchEnvConfig, bench_env
from vplan.planner import Check, PlannerConfig, make_planner
from vplan.policies import RetraceExpert, make_expert
from vplan.tasks import TaskConfig

SIZE = 16  # small images keep the tests fast; worlds, moves and the task are the same at any size
TASK = TaskConfig(name="retrace", env="blockworld", instruction="follow the directions, then go back the same way")
INFO_KEYS = {
    "position", "heading", "rise_ahead", "blocked", "step", "phase", "chunk", "instruction", "instructions",
    "path", "waypoints", "waypoint_dists", "passed", "dist", "success", "environment_state",
}  # fmt: skip


@pytest.fixture(scope="module")
def env():
    env = BlockworldEnv(image_size=SIZE)
    yield env
    env.close()


def _rollout(env: BlockworldEnv, seed: int, steps: int) -> list[tuple[dict, dict]]:
    actions = np.random.default_rng(0).integers(0, 5, steps)
    out = [env.reset(seed=seed)]
    out += [(obs, info) for obs, _, _, _, info in map(env.step, actions)]
    return out


# --- the gymnasium contract -------------------------------------------------------------------------------


def test_check_env_passes():
    env = gym.make(ENV_IDS["blockworld"], image_size=SIZE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    env.close()
    assert [str(w.message) for w in caught] == []


def test_same_seed_gives_identical_obs_and_info(env):
    other = BlockworldEnv(image_size=SIZE)
    _rollout(env, seed=0, steps=5)  # a history must not leak into the next episode
    first, second = _rollout(env, seed=3, steps=40), _rollout(other, seed=3, steps=40)
    other.close()
    for (obs_a, info_a), (obs_b, info_b) in zip(first, second):
        assert obs_a["front"].tobytes() == obs_b["front"].tobytes()
        assert data_equivalence(obs_a, obs_b, exact=True)
        assert data_equivalence(info_a, info_b, exact=True)


def test_seeds_vary_worlds_and_paths(env):
    infos = [env.reset(seed=seed)[1] for seed in range(6)]
    assert len({info["path"].tobytes() for info in infos}) == 6
    assert len({tuple(info["instructions"]) for info in infos}) > 1
    env.reset(seed=0)
    blocks = env.world.blocks.copy()
    env.reset(seed=1)
    assert not np.array_equal(blocks, env.world.blocks)


def test_reset_obs_and_info(env):
    obs, info = env.reset(seed=0)
    cfg = env.config
    n = cfg.path_chunks
    assert set(obs) == {"front", "agent_pos"}
    assert obs["front"].shape == (SIZE, SIZE, 3) and obs["front"].dtype == np.uint8
    assert obs["front"].std() > 10  # a scene, not a blank frame
    np.testing.assert_allclose(obs["agent_pos"], [*info["position"], info["heading"]], atol=1e-5)
    assert env.observation_space.contains(obs)
    assert set(info) == INFO_KEYS
    assert info["phase"] == "outbound" and info["step"] == 0 and info["chunk"] == 0
    assert info["instruction"] == info["instructions"][0] == INSTRUCTIONS["forward"]
    assert len(info["instructions"]) == n and set(info["instructions"]) <= set(INSTRUCTIONS.values())
    assert info["path"].shape == (n * cfg.chunk_steps + 1, 2)
    assert info["waypoints"].shape == (n, 2)
    np.testing.assert_array_equal(info["waypoints"], info["path"][:-1 : cfg.chunk_steps])
    np.testing.assert_array_equal(info["path"][0], info["position"][:2])
    assert np.isinf(info["waypoint_dists"]).all() and info["dist"] == math.inf and not info["success"]
    assert info["environment_state"].shape == (2 * n,) and info["environment_state"].dtype == np.float32
    np.testing.assert_array_equal(env.render(), obs["front"])


@pytest.mark.parametrize("make", [
    lambda: gym.make(ENV_IDS["blockworld"], config=BlockworldConfig(image_size=SIZE, path_chunks=2,
                                                                    max_episode_steps=49)),
    lambda: gym.make(ENV_IDS["blockworld"], image_size=SIZE, max_episode_steps=49),  # gymnasium's TimeLimit
])
def test_the_env_truncates_at_max_steps_however_it_is_made(make):
    env = make()
    env.reset(seed=0)
    truncated = [env.step(int(Move.TURN_LEFT))[3] for _ in range(49)]
    env.close()
    assert truncated == [False] * 48 + [True]


def test_make_env_applies_the_config():
    env = make_env(BlockworldConfig(image_size=24, path_chunks=3, max_episode_steps=60))
    obs, info = env.reset(seed=0)
    env.close()
    assert obs["front"].shape == (24, 24, 3)
    assert len(info["instructions"]) == 3 and env.spec.max_episode_steps == 60


def test_moves_turn_and_walk(env):
    _, info = env.reset(seed=0)
    start, heading = info["position"], info["heading"]
    *_, info = env.step(int(Move.TURN_RIGHT))
    assert info["heading"] == (heading + 15) % 360 and np.array_equal(info["position"], start)
    *_, info = env.step(int(Move.TURN_LEFT))
    assert info["heading"] == heading
    obs, *_, info = env.step(int(Move.FORWARD))  # the path starts with a walk that is never blocked
    direction = np.array([math.cos(math.radians(heading)), -math.sin(math.radians(heading))])
    np.testing.assert_allclose(info["position"][:2], start[:2] + 0.5 * direction, atol=1e-9)
    with pytest.raises(ValueError, match="move"):
        env.step(5)


# --- the voxel world, its collisions and its meshes --------------------------------------------------------


def _flat_world() -> VoxelWorld:
    """12 x 12 blocks of ground 3 high, with a one-block step, a two-block wall, a pond and a tree."""
    blocks = np.zeros((12, 12, 10), np.uint8)
    blocks[:, :, :3] = Block.DIRT
    blocks[6, :, 3] = Block.STONE  # x = 6: a one-block step up
    blocks[:, 8, 3:5] = Block.STONE  # y = 8: a wall two blocks high
    blocks[2, 2, 2] = Block.WATER  # a pond, its surface level with the ground
    blocks[2, 5, 3:7] = Block.WOOD  # a trunk, and leaves two blocks above the ground around it
    blocks[1:4, 4:7, 5] = np.where(blocks[1:4, 4:7, 5] == Block.AIR, Block.LEAVES, blocks[1:4, 4:7, 5])
    ground = np.full((12, 12), 3)
    return VoxelWorld(blocks=blocks, ground=ground, water_level=3)


def test_walking_and_jumping_against_the_voxel_grid():
    world = _flat_world()
    east = AgentState(5.5, 3.5, 3.0, 0.0)  # facing +x, the step up at x = 6 is one move ahead
    assert rise_ahead(world, east) == 1
    walked, blocked = step(world, east, Move.FORWARD)
    assert blocked and walked.xy.tolist() == [5.5, 3.5]  # a walk cannot climb a block
    jumped, blocked = step(world, east, Move.JUMP)
    assert not blocked and jumped.z == 4.0 and jumped.airborne and jumped.x == 6.0
    down, blocked = step(world, AgentState(6.5, 3.5, 4.0, 0.0), Move.FORWARD)
    assert not blocked and down.z == 4.0  # still half on the step
    down, blocked = step(world, down, Move.FORWARD)
    assert not blocked and down.z == 3.0 and not down.airborne  # off the ledge, down onto the ground
    back, blocked = step(world, down, Move.BACK)
    assert blocked  # walking backwards cannot climb the block either

    north = AgentState(4.5, 7.0, 3.0, 270.0)  # heading 270 faces +y: the two-block wall at y = 8
    north, blocked = step(world, north, Move.FORWARD)
    assert not blocked and rise_ahead(world, north) == BLOCKED
    for move in (Move.FORWARD, Move.JUMP):
        assert step(world, north, move)[1]
    turned, blocked = step(world, north, Move.TURN_LEFT)
    assert not blocked and turned.heading == 255.0 and turned.xy.tolist() == north.xy.tolist()


def test_the_camera_lifted_after_a_jump_stays_below_a_block_overhead():
    """A jump under leaves two blocks above the landing drew its frame from inside them (the eye 2.12 blocks up)."""
    from vplan.envs.blockworld.blockworld_v0 import EYE_HEIGHT, HEAD_CLEARANCE, JUMP_LIFT, eye_height

    world = _flat_world()
    jumped, _ = step(world, AgentState(5.5, 3.5, 3.0, 0.0), Move.JUMP)  # onto the step at x = 6: feet at 4
    assert jumped.airborne and eye_height(world, jumped) == 4.0 + EYE_HEIGHT + JUMP_LIFT  # open sky: all of it
    world.blocks[5, 3, 6] = Block.LEAVES  # over the half of the box still above x < 6, the head's block up
    assert step(world, AgentState(5.5, 3.5, 3.0, 0.0), Move.JUMP)[0] == jumped  # the move itself is the same
    assert eye_height(world, jumped) == pytest.approx(6.0 - HEAD_CLEARANCE)
    assert eye_height(world, replace(jumped, airborne=False)) == 4.0 + EYE_HEIGHT  # a walk's eye is never lifted


def test_water_trunks_and_the_edge_block_walking_leaves_overhead_do_not():
    world = _flat_world()
    shore, blocked = step(world, AgentState(3.5, 2.5, 3.0, 180.0), Move.FORWARD)  # towards the pond at x = 2
    assert not blocked and shore.x == 3.0  # standing on the shore's edge, half over the water
    assert step(world, shore, Move.FORWARD)[1] and step(world, shore, Move.JUMP)[1]  # but not in it
    assert step(world, AgentState(3.5, 5.5, 3.0, 180.0), Move.FORWARD)[1]  # towards the trunk at (2, 5)
    under, blocked = step(world, AgentState(4.5, 4.5, 3.0, 180.0), Move.FORWARD)  # under the leaves
    assert not blocked and under.z == 3.0
    assert step(world, AgentState(0.5, 10.5, 3.0, 180.0), Move.FORWARD)[1]  # out of the world


def test_random_walk_never_enters_a_block(env):
    env.reset(seed=5)
    world, moves = env.world, np.random.default_rng(1).integers(0, 5, 300)
    for move in moves:
        *_, info = env.step(int(move))
        x, y, z = info["position"]
        feet, head = int(z), math.ceil(z + AGENT_HEIGHT)
        for i, j in covered_cells(x, y):
            assert not SOLID[world.blocks[i, j, feet:head]].any()
            assert not (world.blocks[i, j, feet:head] == Block.WATER).any()
        assert any(SOLID[world.blocks[i, j, feet - 1]] for i, j in covered_cells(x, y))  # stands on something


def test_world_generation_is_seeded_and_has_every_block():
    first = generate_world(np.random.default_rng(4), 40)
    again = generate_world(np.random.default_rng(4), 40)
    assert np.array_equal(first.blocks, again.blocks)
    present = set(np.unique(np.concatenate([generate_world(np.random.default_rng(s), 40).blocks.ravel()
                                            for s in range(4)])).tolist())
    assert present == {int(b) for b in Block}


def test_merged_quads_cover_exactly_the_visible_faces():
    world = generate_world(np.random.default_rng(2), 40)
    meshes = build_meshes(world)
    faces = exposed_faces(world)
    for index, name in enumerate(FACE_MATERIALS):
        visible = sum(int((f == index + 1).sum()) for f in faces)
        quads = meshes[name].vertices.reshape(-1, 4, 3)
        area = np.linalg.norm(np.cross(quads[:, 1] - quads[:, 0], quads[:, 3] - quads[:, 0]), axis=1).sum()
        assert area == pytest.approx(visible), name  # every visible face once, no overlaps
        normals = meshes[name].normals.reshape(-1, 4, 3)[:, 0]
        winding = np.cross(quads[:, 1] - quads[:, 0], quads[:, 2] - quads[:, 0])
        assert (np.einsum("ij,ij->i", winding, normals) > 0).all(), name  # counter-clockwise from outside
    assert sum(m.quads for m in meshes.values()) < sum(int((f > 0).sum()) for f in faces) / 2


def test_merge_rectangles_on_a_small_grid():
    grid = np.array([[[1, 1, 0, 2], [1, 1, 0, 2], [0, 1, 1, 2]]])
    rects = {tuple(r) for r in merge_rectangles(grid).tolist()}
    assert rects == {(0, 0, 2, 0, 2, 1), (0, 0, 3, 3, 4, 2), (0, 2, 3, 1, 3, 1)}


def test_textures_are_drawn_in_code_and_distinct():
    textures = {name: make_texture(name) for name in FACE_MATERIALS}
    assert all(t.shape == (16, 16, 3) and t.dtype == np.uint8 for t in textures.values())
    assert np.array_equal(make_texture("stone"), textures["stone"])
    means = np.array([t.reshape(-1, 3).mean(0) for t in textures.values()])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(len(means)) * 1e3
    assert gaps.min() > 8
    assert textures["grass_side"][0, :, 1].mean() > textures["grass_side"][-1, :, 1].mean() + 20  # grass on top
    with pytest.raises(ValueError, match="lava"):
        make_texture("lava")


def test_a_world_too_big_for_the_scene_rebuilds_it(monkeypatch):
    sizes = {seed: {n: m.quads for n, m in build_meshes(_world_of(seed)).items()} for seed in range(6)}
    seed_a = 0
    seed_b = next(s for s in range(1, 6) if any(sizes[s][n] > sizes[seed_a][n] for n in FACE_MATERIALS))
    from vplan.envs.blockworld import blockworld_v0

    monkeypatch.setattr(rendering, "MIN_ROOM", 1)
    # the env's own name for it: exactly the room of the first world, so the second does not fit
    monkeypatch.setattr(blockworld_v0, "room_for",
                        lambda meshes, model: {n: max(1, m.quads) for n, m in meshes.items()})
    env = BlockworldEnv(image_size=SIZE)
    env.reset(seed=seed_a)
    model = env.model
    obs, _ = env.reset(seed=seed_b)
    assert env.model is not model  # rebuilt with more room
    env.close()
    monkeypatch.undo()
    fresh = BlockworldEnv(image_size=SIZE)
    expected, _ = fresh.reset(seed=seed_b)
    fresh.close()
    assert np.array_equal(obs["front"], expected["front"])


def test_a_reset_that_fails_leaves_no_episode_to_step(monkeypatch):
    """It stepped the last episode's world on (reseeded, but with the old world, path and score)."""
    from vplan.envs.blockworld import blockworld_v0

    env = BlockworldEnv(image_size=SIZE)
    env.reset(seed=0)
    monkeypatch.setattr(blockworld_v0, "plan_path", lambda *args: None)
    with pytest.raises(RuntimeError, match="found no outbound path"):
        env.reset(seed=1)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    env.close()


def test_a_rebuild_only_grows_the_room():
    """Room sized to the new world alone shrank the other materials', so worlds that fitted rebuilt again."""
    first = build_meshes(_world_of(0))
    model = rendering.build_scene(rendering.room_for(first), BlockworldConfig.world_size, SIZE)
    had = {name: int(model.mesh_vertnum[model.mesh(name).id]) // 4 for name in FACE_MATERIALS}
    for seed in range(1, 6):
        meshes = build_meshes(_world_of(seed))
        room = rendering.room_for(meshes, model)
        assert all(room[name] >= max(had[name], meshes[name].quads) for name in FACE_MATERIALS), seed


def _world_of(seed: int) -> VoxelWorld:
    """The world `reset(seed=seed)` draws first (gymnasium seeds np_random as default_rng(seed) does)."""
    return generate_world(np.random.default_rng(seed), BlockworldConfig.world_size)


# --- the retrace task: metrics, expert, plan ----------------------------------------------------------------


def test_retrace_score():
    score = RetraceScore(np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]), 1.0, turning_point=np.array([4.0, 6.0]))
    assert np.isinf(score.closest).all() and not score.success
    for xy in ([4.0, 3.5], [4.0, 1.5], [3.0, 0.0]):
        score.update(np.array(xy))
    np.testing.assert_allclose(score.closest, [3.0, 1.0, 0.5])
    assert score.passed.tolist() == [False, True, True] and not score.success
    assert score.mean == pytest.approx(1.5)
    score.update(np.array([0.5, 0.5]))
    assert not score.success  # every waypoint passed, but the return never was at the turning point
    score.update(np.array([4.0, 5.0]))
    assert score.success and score.mean == pytest.approx((math.sqrt(0.5) + 1.0 + 0.5) / 3)


def _episode(env: BlockworldEnv, expert: RetraceExpert, seed: int):
    obs, info = env.reset(seed=seed)
    expert.reset(info, seed=seed)
    first, actions, subgoals = info, [], []
    for _ in range(env.config.max_episode_steps):
        action = expert.select_action(obs, info)
        actions.append(action)
        subgoals.append(expert.subgoal)
        obs, reward, terminated, _, info = env.step(action)
        if terminated:
            break
    return first, np.array(actions), subgoals, info, reward


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_retraces_the_path(env, seed):
    first, actions, subgoals, info, reward = _episode(env, RetraceExpert(), seed)
    n, chunk = env.config.path_chunks, env.config.chunk_steps
    assert info["success"] and reward == 1.0 and info["dist"] == 0.0
    assert len(actions) == 2 * n * chunk + 12  # the way out, a turn about, the way back
    for k, text in enumerate(first["instructions"]):  # each outbound chunk is labelled with its instruction
        assert subgoals[k * chunk : (k + 1) * chunk] == [text] * chunk
    assert subgoals[n * chunk :] == [RETURN_INSTRUCTION] * (len(actions) - n * chunk)


@pytest.mark.slow
def test_expert_success_over_100_seeds(env):
    results = [_episode(env, RetraceExpert(), seed)[3] for seed in range(100)]
    assert np.mean([info["success"] for info in results]) >= 0.95


def test_staying_put_on_the_return_fails_the_metric(env):
    obs, info = env.reset(seed=0)
    expert = RetraceExpert()
    expert.reset(info, seed=0)
    while info["phase"] == "outbound":
        obs, _, _, _, info = env.step(expert.select_action(obs, info))
    turning_point = info["position"][:2]
    for _ in range(20):  # turning on the spot at the turning point
        *_, terminated, _, info = env.step(int(Move.TURN_RIGHT))
    assert not terminated and not info["success"] and info["phase"] == "return"
    distances = np.linalg.norm(info["waypoints"] - turning_point, axis=1)
    np.testing.assert_allclose(info["waypoint_dists"], distances)
    assert info["passed"].tolist() == (distances <= 1.0).tolist() and not info["passed"][0]
    assert info["dist"] == pytest.approx(distances.mean()) and info["dist"] > 1.0


def test_standing_still_does_not_retrace_a_one_chunk_path():
    """With path_chunks=1 the only waypoint is the start: an agent turning in place passed it, and succeeded."""
    env = BlockworldEnv(image_size=SIZE, path_chunks=1, chunk_steps=6, world_size=24)
    try:
        for seed in range(3):
            env.reset(seed=seed)
            for _ in range(env.config.max_episode_steps):
                *_, terminated, truncated, info = env.step(int(Move.TURN_RIGHT))
                assert not terminated and not info["success"]
            assert truncated and info["passed"].all()  # the waypoint (the start) is passed; the turn is not
        assert not Check("retraced").holds(info)  # the plan's check agrees with the env: not retraced
    finally:
        env.close()


def test_success_and_the_reward_agree_on_a_return_that_stops_short_of_the_start(env):
    """Every waypoint passed within a block but not back home: success was True on an episode that ended
    truncated with no reward."""
    obs, info = env.reset(seed=0)
    expert = RetraceExpert()
    expert.reset(info, seed=0)
    rewards = []
    while not info["passed"].all():
        obs, reward, terminated, _, info = env.step(expert.select_action(obs, info))
        rewards.append(reward)
    assert np.linalg.norm(info["position"][:2] - info["path"][0]) > 0.25  # the start passed within a block
    truncated = False
    while not truncated:
        *_, reward, terminated, truncated, info = env.step(int(Move.TURN_RIGHT))
        rewards.append(reward)
    assert not terminated and not info["success"] and sum(rewards) == 0.0
    assert not Check("retraced").holds(info)


def test_expert_late_for_the_return_still_reaches_the_turning_point():
    """An expert behind schedule when the return begins took up the way back one block before the turning
    point (the nearest route point was the path's reversed copy), and missed it on paths ending with a turn."""
    env = BlockworldEnv(image_size=SIZE, success_radius=0.9)
    try:
        for seed in (2, 3, 6):  # their paths end with a turn
            obs, info = env.reset(seed=seed)
            expert = RetraceExpert()
            expert.reset(info, seed=seed)
            for move in (Move.TURN_LEFT, Move.TURN_RIGHT) * 2:  # four steps late
                obs, *_, info = env.step(int(move))
            terminated = truncated = False
            while not (terminated or truncated):
                obs, _, terminated, truncated, info = env.step(expert.select_action(obs, info))
            assert terminated and info["success"], seed
    finally:
        env.close()


def test_expert_explores_and_mostly_recovers(env):
    plain = _episode(env, RetraceExpert(), 4)[1]
    exploring = RetraceExpert(explore_fraction=0.2)
    results = [_episode(env, exploring, seed) for seed in (4, 5, 6)]
    assert not np.array_equal(results[0][1][: len(plain)], plain)
    assert sum(info["success"] for _, _, _, info, _ in results) >= 2
    with pytest.raises(ValueError, match="noise_std"):
        RetraceExpert(noise_std=0.1)
    with pytest.raises(ValueError, match="explore_fraction"):
        RetraceExpert(explore_fraction=1.0)


def test_offline_plan_matches_the_expert_chunks(env):
    first, _, subgoals, info, _ = _episode(env, RetraceExpert(), 7)
    plan = make_planner(PlannerConfig(), TASK).plan(TASK.instruction, first)
    chunk = env.config.chunk_steps
    labels = [subgoals[k] for k in range(0, len(subgoals), chunk)]  # the label of each chunk the expert took
    expected = [text for subgoal in plan.subgoals for text in [subgoal.text] * subgoal.chunks]
    assert labels == expected
    assert str(plan.subgoals[-1].check) == "retraced()" and plan.subgoals[-1].check.holds(info)


# --- collect, bench, CLI and config errors -----------------------------------------------------------------


def test_collect_writes_a_retrace_dataset(tmp_path):
    cfg = CollectConfig(env=BlockworldConfig(image_size=SIZE), task=TASK, episodes=2, out=str(tmp_path / "ds"))
    collect(cfg)
    dataset = EpisodeDataset(cfg.out)
    assert dataset.num_episodes == 2
    env, expert = make_env(cfg.env), make_expert("retrace")
    for episode in range(2):
        expected, subgoals, summary = rollout_expert(env, expert, seed=episode)
        got = dataset.episode(episode)
        assert got[ACTION].dtype == np.int64
        for key in (ACTION, OBS_STATE, OBS_ENV_STATE):
            np.testing.assert_array_equal(got[key], expected[key])
        assert list(got[SUBGOAL]) == subgoals
        assert got[EPISODE_META]["success"] and got[EPISODE_META]["dist"] == 0.0
        assert got["observation.images.front"].shape == (len(subgoals), SIZE, SIZE, 3)
    env.close()


def test_cli_collect_defaults_to_retrace_on_blockworld(tmp_path, capsys):
    main(["collect", "env=blockworld", "episodes=1", f"out={tmp_path / 'ds'}", f"env.image_size={SIZE}"])
    assert "expert success 1/1" in capsys.readouterr().out
    assert EpisodeDataset(tmp_path / "ds").episode_meta(0)["instruction"].startswith("follow the directions")


def test_bench_env_runs_on_blockworld(capsys):
    results = bench_env(BenchEnvConfig(env=BlockworldConfig(image_size=SIZE), task=TASK, steps=60, episodes=1))
    assert results["steps_without_render_per_s"] > results["steps_and_renders_per_s"] > 0
    assert results["expert_success_rate"] == 1.0
    assert "step with render (obs)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 4),
        ("world_size", 10),
        ("path_chunks", 0),
        ("chunk_steps", 5),
        ("success_radius", 0.0),
        ("max_episode_steps", 107),  # the default path's shortest solution is 108 steps
        ("path_chunks", 2.0),
        ("control_hz", 0),
        ("task", "return_cubes"),
        ("success_radius", "1"),
    ],
)
def test_bad_config_raises_naming_the_value(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected .*got {re.escape(repr(value))}$"):
        BlockworldConfig(**{field: value})


def test_reset_options_are_refused_and_the_near_plane_stays_put_in_large_worlds():
    env = BlockworldEnv(image_size=SIZE)
    with pytest.raises(ValueError, match=r"options: this env's reset takes none .*got \['path_chunks'\]"):
        env.reset(seed=0, options={"path_chunks": 2})
    env.close()
    # MuJoCo scales the near clipping plane by the scene's extent, the world's size: it is set so that it stays
    # 0.08 blocks from the eye, nearer than a wall the agent stands at, in a world of any size
    for world_size in (40, 200):
        model = rendering.build_scene({name: 1 for name in FACE_MATERIALS}, world_size, SIZE)
        assert model.vis.map.znear * model.stat.extent == pytest.approx(rendering.NEAR_PLANE)


def test_a_gl_backend_failing_at_its_first_render_context_gets_the_setup_message(monkeypatch):
    """Headless glfw makes its GL context and fails only at MuJoCo's first render context."""
    import mujoco

    def no_gl(*args):
        raise mujoco.FatalError("an OpenGL platform library has not been loaded into this process")

    monkeypatch.setattr(mujoco, "MjrContext", no_gl)
    env = BlockworldEnv(image_size=SIZE)
    with pytest.raises(RuntimeError, match="cannot create an offscreen MuJoCo renderer .*set MUJOCO_GL=egl"):
        env.reset(seed=0)


def test_unknown_override_raises():
    with pytest.raises(ValueError, match="world_sise"):
        BlockworldEnv(world_sise=32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["env.path_chunks=0"], "path_chunks: expected an int in [1, 32], got 0"),
        (["env.max_episode_steps=40"], "max_episode_steps: expected at least the retrace's shortest solution"),
        (["noise_std=0.1"], "noise_std: the retrace expert's moves are discrete"),
        (["task=return_cubes"], "task 'return_cubes' runs on env 'tabletop', not 'blockworld'; use env=tabletop"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "env=blockworld", f"out={tmp_path / 'ds'}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_path_that_cannot_fit_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("vplan.envs.blockworld.retrace.PATH_ATTEMPTS", 20)
    monkeypatch.setattr("vplan.envs.blockworld.blockworld_v0.WORLD_ATTEMPTS", 2)
    env = BlockworldEnv(image_size=SIZE, world_size=24, path_chunks=32, max_episode_steps=600)
    with pytest.raises(RuntimeError, match="use fewer path_chunks or a larger world_size"):
        env.reset(seed=0)
    env.close()


def test_a_path_that_cannot_fit_is_one_line_and_exit_2_from_the_cli(monkeypatch, tmp_path, capsys):
    """It was a 35-line traceback: the settings are the user's to change."""
    monkeypatch.setattr("vplan.envs.blockworld.retrace.PATH_ATTEMPTS", 20)
    monkeypatch.setattr("vplan.envs.blockworld.blockworld_v0.WORLD_ATTEMPTS", 2)
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "env=blockworld", "env.world_size=24", "env.path_chunks=32", "env.max_episode_steps=600",
              "episodes=1", f"env.image_size={SIZE}", f"out={tmp_path / 'ds'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use fewer path_chunks or a larger world_size" in err
