"""The blockworld's revisit scenario: round 1 is the retrace expert's take and later rounds replay it, so later
frames are paired with round-1 frames at the same place and look like them; and `vplan eval consistency
env=blockworld` runs end to end on a tiny world model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vplan.cli import main
from vplan.envs import BlockworldConfig, TabletopConfig
from vplan.envs.blockworld import RETURN_INSTRUCTION, BlockworldEnv
from vplan.eval.revisit import revisit_scenario_for
from vplan.eval.revisit_blockworld import SAME_PLACE, _same_place_pairs, blockworld_revisit_scenario

SIZE = 16
SEED = 10000
CONFIG = BlockworldConfig(image_size=SIZE, path_chunks=3, chunk_steps=6)  # 3 instructions: at least one turn
MIN_FRAMES = 100  # round 1 is ~60 frames: two rounds


@pytest.fixture(scope="module")
def scenario():
    return blockworld_revisit_scenario(SEED, min_frames=MIN_FRAMES, env_config=CONFIG)


def test_the_take_is_long_enough_and_labelled_with_the_envs_instructions(scenario):
    env = BlockworldEnv(CONFIG)
    _, info = env.reset(seed=SEED)
    env.close()
    assert len(scenario) >= MIN_FRAMES and scenario.rounds >= 2 and scenario.fps == CONFIG.control_hz
    assert scenario.frames.shape[1:] == (SIZE, SIZE, 3) and scenario.frames.dtype == np.uint8
    assert len(scenario.subgoals) == len(scenario.states) == len(scenario.agent_pos) == len(scenario)
    # Round 1: the outbound instructions chunk by chunk, then the return's text (turning back included).
    outbound = [text for text in info["instructions"] for _ in range(CONFIG.chunk_steps)]
    first_round = (len(scenario) - 1) // scenario.rounds
    assert scenario.subgoals[: len(outbound)] == outbound
    assert set(scenario.subgoals[len(outbound):first_round]) == {RETURN_INSTRUCTION}
    assert "turn left" in outbound or "turn right" in outbound
    # Later rounds: round 1's labels step for step; the agent is back at its start pose after every round.
    for k in range(1, scenario.rounds):
        assert scenario.subgoals[k * first_round:(k + 1) * first_round] == scenario.subgoals[:first_round]
        np.testing.assert_array_equal(scenario.agent_pos[k * first_round], scenario.agent_pos[0])


def test_revisits_pair_later_frames_with_round_one_at_the_same_place(scenario):
    first_round = (len(scenario) - 1) // scenario.rounds
    pairs = np.array(scenario.pairs)
    assert len(pairs) and (pairs[:, 0] < first_round).all() and (pairs[:, 1] >= first_round).all()
    first, revisit = scenario.agent_pos[pairs[:, 0]], scenario.agent_pos[pairs[:, 1]]
    np.testing.assert_array_equal(first[:, 3], revisit[:, 3])
    assert (np.linalg.norm(first[:, :2] - revisit[:, :2], axis=1) <= SAME_PLACE).all()
    for a, b in scenario.pairs:
        assert scenario.states[a] == scenario.states[b] == f"place {a}"
    # A revisit looks like its first visit; random unpaired frames do not.
    frames = scenario.frames.astype(float)
    paired = np.abs(frames[pairs[:, 0]] - frames[pairs[:, 1]]).mean()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, first_round, 200), rng.integers(first_round, len(frames), 200)
    unpaired = {(int(i), int(j)) for i, j in zip(a, b)} - set(scenario.pairs)
    unpaired_diff = np.mean([np.abs(frames[i] - frames[j]).mean() for i, j in unpaired])
    assert paired < 0.1 * unpaired_diff and unpaired_diff > 5


def test_the_nearest_round_one_frame_with_the_same_heading_is_the_first_visit():
    agent_pos = np.array([
        [10.0, 10.0, 3.0, 0.0],
        [10.2, 10.0, 3.0, 0.0],
        [10.0, 10.0, 3.0, 15.0],
        [10.15, 10.0, 3.0, 0.0],  # nearest: frame 1
        [10.0, 10.0, 3.0, 30.0],  # no heading of 30 in round 1
        [9.7, 10.0, 3.0, 0.0],  # 0.3 blocks from frame 0: too far
        [10.0, 10.1, 4.0, 15.0],  # a block higher: the horizontal position counts
    ])  # fmt: skip
    assert _same_place_pairs(agent_pos, first_round=3) == [(1, 3), (2, 6)]


def test_same_seed_same_take_and_the_registry_names_it(scenario):
    again = blockworld_revisit_scenario(SEED, min_frames=MIN_FRAMES, env_config=CONFIG)
    assert again.frames.tobytes() == scenario.frames.tobytes()
    assert (again.subgoals, again.pairs, again.rounds) == (scenario.subgoals, scenario.pairs, scenario.rounds)
    assert revisit_scenario_for("blockworld") is blockworld_revisit_scenario


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_frames": 0}, "min_frames: expected a positive int, got 0"),
        ({"seed": -1}, "seed: expected an int from 0 to .*, got -1"),
        ({"env_config": TabletopConfig()}, "env_config: expected a BlockworldConfig, got TabletopConfig"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blockworld_revisit_scenario(**{"seed": 0, **kwargs})


# --- `vplan eval consistency env=blockworld` end to end ----------------------------------------------------

CONTEXT, CHUNK, CHUNKS = 4, 6, 7
# One "walk forward" of 6 steps in the smallest world: round 1 is 36 frames (6 out, 12 turning around, 6 back,
# 12 turning back), so 7 chunks of 6 (one per instruction: eval consistency refuses a chunk spanning two) after
# 4 context frames (46 frames) hold 10 revisits.
SHORT_PATH = [f"env.image_size={SIZE}", "env.path_chunks=1", "env.chunk_steps=6", "env.world_size=24"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """test_eval_consistency's untrained tiny world model, with longer chunks."""
    from test_eval_consistency import save_tiny_world_model

    return save_tiny_world_model(tmp_path_factory.mktemp("wm") / "tiny", CONTEXT, CHUNK)


def test_cli_eval_consistency_runs_on_blockworld(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    main(["eval", "consistency", "env=blockworld", f"checkpoint={tiny_checkpoint}", f"out={out}", *SHORT_PATH,
          f"chunks={CHUNKS}", "episodes=1", "threads=1", "temp_lora.rank=4"])
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["env"], metrics["frames"]) == ("blockworld", CONTEXT + CHUNKS * CHUNK)
    assert list(metrics["modes"]) == ["none", "anchor", "temp_lora"]
    for mode, row in metrics["modes"].items():
        assert row["scuts"] == np.mean([e["scuts"] for e in row["episodes"]])
        assert np.isfinite(row["src"]) and np.isfinite(row["psnr_drift_db_per_chunk"])
        assert (out / f"real_vs_{mode}_seed10000.mp4").exists()
    # The real take revisits exactly: its revisits are its first visits.
    assert metrics["real"]["episodes"][0]["pairs"] == 10 and metrics["real"]["src"] > 99
    assert "blockworld revisit scenario" in printed
