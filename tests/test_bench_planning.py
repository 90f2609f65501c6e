"""`vplan bench planning` on tiny random checkpoints: the five rows on the same seeds, results.json, the
Markdown table and the bar plot, continuing an interrupted bench, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
from tiny_agent import save_tiny_checkpoints, tiny_world_model

from vplan.cli import main
from vplan.errors import VplanWarning
from vplan.eval.bench_planning import ROWS, generation_psnr, summarize

STEPS = 16  # two chunks per episode, then the time limit: the second is where the memories differ


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    tiny_world_model(seed=1).save_pretrained(root / "finetuned")  # other weights: the finetuned rows' own model
    return (*save_tiny_checkpoints(root), root / "finetuned")


def bench_args(checkpoints, out, *extra: str) -> list[str]:
    worldmodel, idm, finetuned = checkpoints
    return ["bench", "planning", f"worldmodel={worldmodel}", f"finetuned={finetuned}", f"idm={idm}", f"out={out}",
            f"env.max_episode_steps={STEPS}", "agent.replan_drift=null", "memory.rank=2",
            "memory.gradient_checkpointing=false", "threads=1", *extra]


def test_five_rows_table_plot_and_continuing(checkpoints, tmp_path, capsys):
    out = tmp_path / "bench"
    main(bench_args(checkpoints, out, "episodes=1"))
    assert re.search(r"success [01]/1, Dist \d\.\d{3}, last episode", capsys.readouterr().err)  # each bar at its end
    first = json.loads((out / "results.json").read_text())
    assert [len(first["rows"][row.name]) for row in ROWS] == [1] * 5
    assert "torch threads" not in (out / "table.md").read_text()  # one thread count: nothing to say

    import vplan.run

    run_episode, calls = vplan.run.run_episode, []

    def stopped_at_the_second(*args, **kwargs):  # the first row's second episode ends, then Ctrl-C
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_episode(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vplan.run, "run_episode", stopped_at_the_second)
        with pytest.raises(SystemExit):
            main(bench_args(checkpoints, out, "episodes=2"))
    stopped = json.loads((out / "results.json").read_text())  # one row holds 2 episodes: no summary of 1 is left
    assert sorted(len(rows) for rows in stopped["rows"].values()) == [1, 1, 1, 1, 2]
    assert "summary" not in stopped and not (out / "table.md").exists() and not (out / "dist.png").exists()
    # continues with another thread count (threads is no setting it compares): only the second seed runs
    main([*[a for a in bench_args(checkpoints, out, "episodes=2") if a != "threads=1"], "threads=2"])
    assert "continuing" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    # each part (run of the command) that finished episodes records its threads and machine, each episode its part
    assert [(p["threads"], p["machine"]["torch_threads"]) for p in results["parts"]] == [(1, 1), (1, 1), (2, 2)]
    assert all(p["machine"]["cpu_count"] >= 1 for p in results["parts"])
    for row in ROWS:
        episodes = results["rows"][row.name]
        second = (1, 1) if row == ROWS[0] else (2, 2)  # (threads, part): the first row's ran before the Ctrl-C
        assert [(e["threads"], e["part"]) for e in episodes] == [(1, 0), second]
        assert [e["seed"] for e in episodes] == [10000, 10001]
        assert episodes[0] == first["rows"][row.name][0]  # the first run's episode was kept, not rerun
        assert all(e["steps"] == STEPS and np.isfinite(e["psnr"]) for e in episodes)
        assert results["summary"][row.name] == summarize(episodes)
    table = (out / "table.md").read_text()
    assert all(f"| {row.name} |" in table for row in ROWS) and "Dist (m, mean ± std)" in table
    assert "The episodes ran with torch threads 1, 2 (a resumed bench changed threads=)" in table
    from vplan.eval.bench_planning import threads_note

    # a bench begun before episodes recorded their threads: not said to have changed them; counts as numbers
    assert "earlier ones recorded none" in threads_note({"a": [{"seed": 1}, {"seed": 2, "threads": 2}]})
    assert "torch threads 2, 10 (a resumed" in threads_note({"a": [{"threads": 10}, {"threads": 2}]})
    assert (out / "dist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(json.loads((out / "checkpoints.json").read_text())) == {"worldmodel", "finetuned", "idm"}
    # each row runs its own model and memory: on the same seeds and noise, their imagined frames all differ
    psnrs = [results["rows"][row.name][0]["psnr"] for row in ROWS]
    assert len(set(psnrs)) == len(ROWS), psnrs

    with pytest.raises(SystemExit) as exit_info:  # other settings in the same out
        main(bench_args(checkpoints, out, "episodes=2", "seed=20000"))
    assert exit_info.value.code == 2
    assert "other settings: seed=10000 when it began, 20000 now;" in capsys.readouterr().err

    del results["settings"]["memory"]["replay_first"]  # as written before that setting existed
    (out / "results.json").write_text(json.dumps(results))
    main(bench_args(checkpoints, out, "episodes=2"))  # at its default: continues
    assert "continuing" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["settings"]["memory"]["replay_first"] is False
    (out / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as exit_info:
        main(bench_args(checkpoints, out, "episodes=2", "memory.replay_first=true"))
    assert exit_info.value.code == 2
    assert "other settings: memory.replay_first=false when it began, true now;" in capsys.readouterr().err


def test_interrupted_before_any_episode_says_that_nothing_was_written(checkpoints, tmp_path, capsys, monkeypatch):
    """Stopped while the first agent loaded, it said its finished episodes (none) were kept in a results.json that
    did not exist."""
    from vplan.eval.config import AgentBenchConfig

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AgentBenchConfig, "load_agent", interrupted)
    with pytest.raises(SystemExit, match="^130$"):  # (bench executor's test reads the whole line)
        main(bench_args(checkpoints, tmp_path / "bench", "episodes=1"))
    assert "interrupted before any episode finished" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_without_the_finetuned_model_the_slow_rows_run_then_a_one_line_error(checkpoints, tmp_path, capsys):
    out = tmp_path / "b"
    args = bench_args(checkpoints, out, "episodes=1")
    args = [a for a in args if not a.startswith("finetuned=")] + [f"finetuned={tmp_path / 'none'}"]
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match="no world model there; make one with `vplan finetune"), \
            pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]  # after the progress bars: one line naming what to do
    assert exit_info.value.code == 2 and error.startswith("vplan bench planning: error: finetuned=")
    assert "vplan finetune" in error and "rerun" in error
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {row.name: len(rows[row.name]) for row in ROWS} == {
        row.name: int(row.worldmodel == "slow") for row in ROWS}  # the slow model's rows are done and kept
    shown = [line.split(" | ")[0].lstrip("| ") for line in captured.out.splitlines() if line.startswith("| ")]
    assert shown[1:] == ["---", *(row.name for row in ROWS if row.worldmodel == "slow")]  # and shown (helper-190)


def test_a_missing_slow_model_is_named_before_anything_runs(checkpoints, tmp_path, capsys):
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exit_info:
        main([a for a in bench_args(checkpoints, out) if not a.startswith("worldmodel=")] + [f"worldmodel={tmp_path}"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.startswith(f"vplan bench planning: error: worldmodel={tmp_path}: ")
    assert "vplan train component=worldmodel" in error and not out.exists()


def test_a_temp_lora_setting_the_unet_refuses_is_named_before_anything_runs(checkpoints, tmp_path, capsys):
    """The Temp-LoRA rows run last: a typo in their layers was found after the other rows' episodes."""
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exit_info:
        main([*bench_args(checkpoints, out), "memory.target_modules=[bogus]"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and not out.exists()
    assert error.startswith("vplan bench planning: error: memory.target_modules: expected names of modules in the UNet")


@pytest.mark.parametrize(("finetuned", "said"), [("shipped:tabletop/finetuned", "no shipped checkpoint"),
                                                  ("run_dir", "a training run's directory; pass finetuned="),
                                                  ("unreadable", "config.json: expected JSON, got a file that does"),
                                                  ("other_env", "finetuned on blockworld episodes, and this bench "
                                                                "runs tabletop"),
                                                  ("action_model", "a world model conditioned on 'action', and bench "
                                                                   "planning conditions it on the subgoal text alone")])
def test_a_finetuned_model_named_wrongly_is_refused_before_anything_runs(checkpoints, tmp_path, capsys, finetuned,
                                                                          said):
    """Only a path that does not exist yet may come later; a shipped name or an existing folder is checked first
    (a typo ran the three slow rows, ~25 min, then blamed worldmodel=)."""
    if finetuned == "run_dir":  # the finetune run's folder, not its final/
        (tmp_path / "run_dir" / "final").mkdir(parents=True)
        (tmp_path / "run_dir" / "final" / "config.json").write_text("{}")
        finetuned = str(tmp_path / "run_dir")
    if finetuned == "unreadable":  # a config.json that does not parse: found after the slow model's rows
        (tmp_path / "unreadable").mkdir()
        (tmp_path / "unreadable" / "config.json").write_text("not json")
        finetuned = str(tmp_path / "unreadable")
    if finetuned == "other_env":  # the default checkpoints/finetune/final, made from another env's episodes
        shutil.copytree(checkpoints[0], tmp_path / "other_env")
        payload = json.loads((tmp_path / "other_env" / "config.json").read_text())
        (tmp_path / "other_env" / "config.json").write_text(json.dumps({**payload, "trained_on_env": "blockworld"}))
        finetuned = str(tmp_path / "other_env")
    if finetuned == "action_model":  # refused by the agent after the slow model's rows, naming worldmodel=
        from vplan.worldmodel.model import WorldModel

        WorldModel(replace(tiny_world_model().config, conditioning="action")).save_pretrained(tmp_path / "action_model")
        finetuned = str(tmp_path / "action_model")
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exit_info:
        main([a for a in bench_args(checkpoints, out) if not a.startswith("finetuned=")] + [f"finetuned={finetuned}"])
    error = capsys.readouterr().err.strip()
    named = f"finetuned={finetuned}: " if "unreadable" not in finetuned else f"{finetuned}/config.json: "
    assert exit_info.value.code == 2 and error.startswith(f"vplan bench planning: error: {named}")
    assert said in error and not out.exists()


def test_a_finetuned_model_with_the_slow_models_weights_is_said_before_anything_runs(checkpoints, tmp_path):
    """Its rows can only repeat the slow model's (helper-203 ran the table so); said before the Temp-LoRA layer check
    that stops this bench."""
    worldmodel = checkpoints[0]
    shutil.copytree(worldmodel, tmp_path / "copy")  # the same weights under another name
    for finetuned in (worldmodel, tmp_path / "copy"):
        said = f"finetuned={finetuned} holds the same weights as worldmodel={worldmodel}, so ours w/o Temp-LoRA"
        with pytest.warns(VplanWarning, match=re.escape(said)), pytest.raises(SystemExit):
            main([a for a in bench_args(checkpoints, tmp_path / "b") if not a.startswith("finetuned=")]
                 + [f"finetuned={finetuned}", "memory.target_modules=[bogus]"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        main([*bench_args(checkpoints, tmp_path / "b"), "memory.target_modules=[bogus]"])
    assert not [w for w in caught if "same weights" in str(w.message)]


def test_an_env_the_agent_cannot_drive_is_refused_without_making_out(checkpoints, tmp_path, capsys):
    """`out` was made before the first row's agent was checked against the env: a refused bench left it empty."""
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exit_info:
        main([*bench_args(checkpoints, out), "agent.camera=nowhere"])
    assert exit_info.value.code == 2 and "agent.camera='nowhere'" in capsys.readouterr().err
    assert not out.exists()


def test_a_memory_preset_other_than_temp_lora_is_refused(checkpoints, tmp_path, capsys):
    """Each row sets its own memory kind, so memory=none would be ignored: refused, naming what memory is for."""
    with pytest.raises(SystemExit) as exit_info:
        main([*bench_args(checkpoints, tmp_path / "c"), "memory=none"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "memory: the temp_lora rows' settings" in error


def test_generation_psnr_pools_the_executed_steps():
    frame = np.zeros((4, 4, 3), np.uint8)
    assert generation_psnr([frame, frame, frame], [frame, frame, frame]) == 100  # identical: MSE floored at 1e-10
    off = np.full((4, 4, 3), 255, np.uint8)
    # the first frame (the real one on both sides) does not count; one of two steps fully wrong: MSE 255²/2
    assert generation_psnr([off, frame, frame], [frame, frame, off]) == pytest.approx(10 * np.log10(2))


def test_a_rows_summary_averages_its_episodes():
    episodes = [
        {"dist": 0.02, "success": True, "psnr": 20.0, "wall_s": 3.0, "steps": 100, "progress": 1.0},
        {"dist": 0.06, "success": False, "psnr": 16.0, "wall_s": 5.0, "steps": 200, "progress": 0.5},
        {"dist": None, "success": False, "psnr": None, "wall_s": 4.0, "steps": 150},  # no Dist, PSNR or progress
    ]
    summary = summarize(episodes)
    assert summary == pytest.approx({"episodes": 3, "dist_mean": 0.04, "dist_std": 0.02, "success_rate": 1 / 3,
                                     "psnr": 18.0, "wall_s": 4.0, "steps": 150.0, "progress": 0.75})
    assert summarize([])["dist_mean"] is None and summarize([])["success_rate"] is None


@pytest.mark.parametrize("text, said", [
    ("[", "is damaged (JSONDecodeError"),
    ("[1]", "is damaged (it holds a JSON list, not an object)"),
    ('{"rows": 5}', "is damaged (its rows are not an object of episode lists)"),
    ('{"command": "bench planning", "rows": {"ours": 5}}', "is damaged (its rows are not an object of episode"),
    ('{"command": "bench planning", "rows": {"ours": []}, "settings": 5}', "is damaged (its settings are not an"),
    ('{"command": "bench planning", "rows": {"ours": []}}', "holds vplan bench planning rows ['ours'], not its rows"),
])
def test_a_damaged_results_file_is_named_in_one_line(checkpoints, tmp_path, capsys, text, said):
    """A hand-edited or cut results.json gave a traceback (JSONDecodeError, AttributeError, TypeError), and other
    row names said it held "the results of vplan bench planning, not of vplan bench planning"."""
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.json").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(bench_args(checkpoints, out, "episodes=1"))
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(error) == 1 and said in error[0], error
    assert "out=DIR" in error[0] and (out / "results.json").read_text() == text  # kept as it was
