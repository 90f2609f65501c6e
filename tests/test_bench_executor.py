"""`vplan bench executor` on tiny random checkpoints: the expert-video stand-in hands the agent the expert's own
next chunk without touching the env, the three rows run on the same seeds and continue, and other envs are
refused in one line."""

from __future__ import annotations

import json
import re

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from tiny_agent import CHUNK, save_tiny_checkpoints, tiny_world_model

from vplan.cli import main
from vplan.envs import TabletopConfig, make_env
from vplan.eval.bench_executor import ROWS, ExpertVideoMemory
from vplan.policies.return_cubes_expert import ReturnCubesExpert
from vplan.utils.panels import GAP_PX, PANEL_PX, STRIP_PX


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def test_expert_video_is_the_experts_next_chunk_from_the_current_state():
    env = make_env(TabletopConfig())
    model = tiny_world_model()
    memory = ExpertVideoMemory(model, env)
    _, info = env.reset(seed=10000)
    expert = ReturnCubesExpert()
    expert.reset(info)
    for _ in range(3):  # somewhere into the episode
        obs, _, _, _, info = env.step(expert.select_action({}, info))
    qpos = env.unwrapped.data.qpos.copy()
    memory.reset()
    history = model.encode(torch.from_numpy(obs["front"])[None, None])
    latents = memory.generate(history, ["ignored"])
    assert np.array_equal(env.unwrapped.data.qpos, qpos)  # the look-ahead ran in the shadow copy

    frames = []  # what the expert does from here, in the env itself
    for _ in range(CHUNK):
        obs, _, _, _, info = env.step(expert.select_action({}, info))
        frames.append(obs["front"])
    assert torch.equal(latents, model.encode(torch.from_numpy(np.stack(frames))[None]))
    memory.close()
    env.close()


def bench_args(checkpoints, out, *extra: str) -> list[str]:
    worldmodel, idm = checkpoints
    return ["bench", "executor", f"worldmodel={worldmodel}", f"idm={idm}", f"out={out}", "env.max_episode_steps=12",
            "agent.replan_drift=null", "threads=1", *extra]


def test_three_rows_on_the_same_seeds_a_table_and_continuing(checkpoints, tmp_path, capsys):
    out = tmp_path / "bench"
    main(bench_args(checkpoints, out, "episodes=1"))
    assert re.search(r"success [01]/1, Dist \d\.\d{3}, last episode", capsys.readouterr().err)  # each bar at its end
    first = json.loads((out / "results.json").read_text())
    assert "torch threads" not in (out / "table.md").read_text()  # one thread count: nothing to say
    # continues with another thread count (threads is no setting it compares): only the second seed runs
    import warnings

    from vplan.errors import VplanWarning

    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")
        main([*[a for a in bench_args(checkpoints, out, "episodes=2") if a != "threads=1"], "threads=2"])
    printed = capsys.readouterr().out
    # the checkpoints were recorded and are the same: no "does not record which checkpoint files" warning
    assert "continuing" in printed and not [w for w in given if issubclass(w.category, VplanWarning)], given
    assert set(json.loads((out / "checkpoints.json").read_text())) == {"worldmodel", "idm"}
    results = json.loads((out / "results.json").read_text())
    for row in ROWS:
        episodes = results["rows"][row]
        assert [e["seed"] for e in episodes] == [10000, 10001]
        assert episodes[0] == first["rows"][row][0]
        assert [(e["threads"], e["part"]) for e in episodes] == [(1, 0), (2, 1)]
        assert all(e["steps"] == 12 and not e["success"] for e in episodes)  # the time limit, before any success
        assert (episodes[0]["psnr"] is None) == (row == "expert")
        assert all(0 <= e["progress"] <= 1 for e in episodes)
    # the agent imagines through the memory: the expert video row's chunks are the expert's, not the model's
    assert results["rows"]["expert video"][0]["psnr"] != results["rows"]["world model"][0]["psnr"]
    for row in ("expert_video", "world_model"):  # the first episode of each video row, imagined | executed
        video = np.stack(imageio.mimread(out / f"{row}_seed10000.mp4"))
        assert video.shape == (1 + 12, STRIP_PX + PANEL_PX + STRIP_PX, 2 * PANEL_PX + GAP_PX, 3)
    # each part (run of the command) records its threads and the machine it ran on
    assert [(p["threads"], p["machine"]["torch_threads"]) for p in results["parts"]] == [(1, 1), (2, 2)]
    table = (out / "table.md").read_text()
    assert all(f"| {row} |" in table for row in ROWS) and "memory=none" in table and "task progress" in table
    assert "The episodes ran with torch threads 1, 2 (a resumed bench changed threads=)" in table


def test_an_interrupted_bench_says_what_it_kept(checkpoints, tmp_path, capsys, monkeypatch):
    import vplan.run

    def interrupted(*args, **kwargs):  # Ctrl-C in the first video row's first episode
        raise KeyboardInterrupt

    monkeypatch.setattr(vplan.run, "run_episode", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(bench_args(checkpoints, tmp_path / "bench", "episodes=1"))
    assert exit_info.value.code == 130
    rows = ", ".join(f"{row} {int(row == 'expert')}" for row in ROWS)
    assert f"interrupted: the finished episodes ({rows}) are kept in" in capsys.readouterr().err


@pytest.mark.parametrize("while_", ["the agent loads", "the expert's first episode runs"])
def test_interrupted_before_any_episode_says_that_nothing_was_written(checkpoints, tmp_path, capsys, monkeypatch,
                                                                      while_):
    """It said its finished episodes (none) were kept in a results.json that did not exist."""
    import vplan.eval.bench_executor as bench_executor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if while_ == "the agent loads":
        monkeypatch.setattr(bench_executor.BenchExecutorConfig, "load_agent", interrupted)
    else:
        monkeypatch.setattr(bench_executor, "expert_episode", interrupted)
    out = tmp_path / "bench"
    with pytest.raises(SystemExit) as exit_info:
        main(bench_args(checkpoints, out, "episodes=1"))
    error = capsys.readouterr().err
    assert exit_info.value.code == 130 and not (out / "results.json").exists()
    assert "interrupted before any episode finished: no results were written; the same command starts again" in error
    assert "kept in" not in error


def test_a_missing_checkpoint_is_refused_before_any_row_runs(checkpoints, tmp_path, capsys):
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exit_info:
        main([a for a in bench_args(checkpoints, out) if not a.startswith("worldmodel=")] + [f"worldmodel={tmp_path}"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.startswith(f"vplan bench executor: error: worldmodel={tmp_path}: ")
    assert not out.exists()  # no expert-only bench left behind to block the corrected rerun


def test_other_envs_are_refused_in_one_line(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([a for a in bench_args(checkpoints, tmp_path / "b", "env=blockworld") if "max_episode" not in a])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.startswith("vplan bench executor: error:") and "env=tabletop" in error
    assert "got env=blockworld task=retrace" in error
    with pytest.raises(SystemExit) as exit_info:  # before a checkpoint's refusal ("train one"), which it was after
        main([a for a in bench_args(checkpoints, tmp_path / "b", "env=blockworld", "worldmodel=/no/such")
              if "max_episode" not in a])
    assert "got env=blockworld task=retrace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # the expert video is the front camera's
        main(bench_args(checkpoints, tmp_path / "c", "env.wrist_camera=true", "agent.camera=wrist"))
    assert exit_info.value.code == 2 and "agent.camera='wrist'" in capsys.readouterr().err
