"""`vplan run` on tiny random checkpoints: the run directory (config without secrets, metrics.json, an MP4 per
episode), the summary, memory=none, an interrupted run keeping its finished episodes, and one-line errors
(missing simulators, checkpoints, frame sizes, an existing run)."""

from __future__ import annotations

import json
import shutil
import re
import warnings

import imageio.v2 as imageio
import numpy as np
import pytest
from tiny_agent import IMAGE, save_tiny_checkpoints

from vplan.agent import VideoPlanningAgent
from vplan.cli import COMMANDS, build_config, compose_config, main
from vplan.config import STAGES, RunConfig
from vplan.constants import ACTION, ACTION_APPLIED, OBS_IMAGE_FRONT, OBS_STATE, SUBGOAL
from vplan.data import EpisodeDataset
from vplan.shipped import OtherEnvWarning
from vplan.utils.import_utils import is_package_available

SECRET = "sk-test-do-not-write-me"
STEPS = 8  # env steps per episode: one chunk, then the time limit


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def run_args(checkpoints, out, *extra: str) -> list[str]:
    worldmodel, idm = checkpoints
    return ["run", f"worldmodel={worldmodel}", f"idm={idm}", f"out={out}", f"env.max_episode_steps={STEPS}",
            "agent.replan_drift=null", "threads=1", *extra]


def test_defaults_compose():
    command = next(c for c in COMMANDS if c.name == "run")
    cfg, choices = compose_config(command, [])
    config = build_config(cfg)
    assert isinstance(config, RunConfig)
    assert choices == {"env": "tabletop", "task": "return_cubes", "planner": "offline", "memory": "temp_lora"}
    assert (config.worldmodel, config.idm) == (None, None)  # the shipped ones of the task's env
    assert (config.worldmodel_checkpoint, config.idm_checkpoint) == ("shipped:tabletop/worldmodel", "shipped:tabletop/idm")
    blockworld = build_config(compose_config(command, ["env=blockworld"])[0])
    assert blockworld.task.name == "retrace" and blockworld.idm_checkpoint == "shipped:blockworld/idm"
    assert config.seed == 10000 and config.memory.kind == "temp_lora" and config.planner.kind == "offline"
    cfg, choices = compose_config(command, ["memory=none", "agent.replan_drift=null", "agent.stall_steps=0"])
    config = build_config(cfg)
    assert config.memory.kind == "none" and config.agent.replan_drift is None and config.agent.stall_steps == 0


def test_a_run_config_built_in_python_without_a_task_is_refused_by_name():
    """`load_agent(RunConfig())` was "'str' object has no attribute 'env'" (the task left as omegaconf's MISSING)."""
    from vplan.config import RunConfig
    from vplan.errors import UsageError
    from vplan.run import load_agent, run
    from vplan.tasks import TaskConfig

    for call in (load_agent, run):
        with pytest.raises(ValueError, match=r"^task: expected a TaskConfig .*got '\?\?\?'; set task= and env="):
            call(RunConfig())
    with pytest.raises(UsageError, match=r"expected an env config, one of \['TabletopConfig', .*got '\?\?\?'$"):
        load_agent(RunConfig(task=TaskConfig.preset("return_cubes")))  # it said "got str"


def test_an_idm_trained_at_another_action_scale_is_warned_about(tmp_path):
    import warnings

    from vplan.policies.config import IDMConfig
    from vplan.policies.idm import IDMPolicy
    from vplan.run import load_agent
    from vplan.shipped import checkpoint_fingerprint

    from vplan.envs import make_env

    command = next(c for c in COMMANDS if c.name == "run")
    faster = build_config(compose_config(command, ["env.max_delta=0.05", "memory=none"])[0])
    agent = load_agent(faster)
    with pytest.warns(OtherEnvWarning, match=r"idm=shipped:tabletop/idm learned actions recorded at "
                                             r"env.max_delta=0.03, and this env has max_delta=0.05"):
        agent.check_env(make_env(faster.env))  # the shipped IDM records the settings its data was collected at
    with warnings.catch_warnings():
        warnings.simplefilter("error", OtherEnvWarning)
        agent.check_env(make_env(build_config(compose_config(command, ["memory=none"])[0]).env))
        agent.idm_checkpoint = None  # built from parts: nothing recorded to check against
        agent.check_env(make_env(faster.env))
    agent.close()
    # a note about the weights' data, not part of what they compute: the fingerprint runs pinned holds
    policy = IDMPolicy(IDMConfig.tiny(image_size=IMAGE))
    policy.save_pretrained(tmp_path / "plain")
    policy.save_pretrained(tmp_path / "noted", trained_on_env="tabletop", action_units={"max_delta": 0.03})
    assert checkpoint_fingerprint(tmp_path / "plain") == checkpoint_fingerprint(tmp_path / "noted")


def test_run_writes_config_metrics_and_videos(checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    main(run_args(checkpoints, out, "episodes=2", "memory.rank=2", "memory.gradient_checkpointing=false",
                  f"planner.llm.api_key={SECRET}"))
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoints.json", "config.yaml", "episode_000_seed10000.mp4", "episode_001_seed10001.mp4",
                     "metrics.json"]
    for path in out.iterdir():
        assert SECRET not in path.read_bytes().decode("latin-1"), path.name
    assert "api_key: <redacted>" in (out / "config.yaml").read_text()
    assert "kind: temp_lora" in (out / "config.yaml").read_text()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["episodes_done"] == 2 and metrics["seeds"] == [10000, 10001]
    assert (metrics["env"], metrics["task"], metrics["memory"]) == ("vplan/Tabletop-v0", "return_cubes", "temp_lora")
    episodes = metrics["episodes"]
    assert metrics["success_rate"] == sum(e["success"] for e in episodes) / 2
    assert metrics["dist_mean"] == pytest.approx(sum(e["dist"] for e in episodes) / 2)
    assert metrics["return_phase_rate"] == sum(e["phase"] == "return" for e in episodes) / 2
    assert metrics["progress_mean"] == pytest.approx(sum(e["progress"] for e in episodes) / 2)
    assert all(0 <= e["progress"] <= 1 for e in episodes)
    for episode in episodes:
        assert episode["steps"] == STEPS and episode["ended_by"] == "time limit" and episode["chunks"] == 1
        assert set(episode["stages_s"]) == set(STAGES) and episode["wall_s"] > 0 and episode["cpu_s"] > 0
        assert 0 <= episode["drift_mean"] <= episode["drift_max"] <= 1
        assert episode["stages_s"]["generation"] > 0 and episode["stages_s"]["memory_update"] > 0
        assert episode["plan"]["source"] == "offline" and episode["plan"]["subgoals"]
        assert 0 < episode["peak_rss_mb"] <= metrics["peak_rss_mb"]
    assert set(metrics["stages_s_per_episode"]) == set(STAGES)

    from vplan.utils.panels import GAP_PX, PANEL_PX, STRIP_PX

    video = np.stack(imageio.mimread(out / episodes[0]["video"]))  # executed | imagined, named, captioned
    assert video.shape == (STEPS + 1, STRIP_PX + PANEL_PX + STRIP_PX, 2 * PANEL_PX + GAP_PX, 3)  # 1 + a frame a step

    captured = capsys.readouterr()
    printed = captured.out
    assert "success rate" in printed and "Dist (m" in printed and "peak RSS" in printed and str(out) in printed
    assert "seed 10001, chunk 1: " in captured.err  # the progress bar names the chunk being imagined
    assert "reached the return phase" in printed and "CPU time per episode" in printed and "task progress" in printed
    assert re.search(r"episodes ended by +time limit 2\n", printed)  # only in metrics.json before


def test_every_llm_planner_fallback_is_shown_and_counted(checkpoints, tmp_path, capsys):
    """An endpoint that is down makes every episode fall back to the offline plan: each one warns (Python would
    show a repeated warning once), and the summary and metrics.json count the plans by where they came from."""
    from vplan.errors import PlannerFallbackWarning

    out = tmp_path / "llm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: a repeated warning from one line is shown once
        main(run_args(checkpoints, out, "episodes=2", "memory=none", "video=false", "planner=llm",
                      "planner.llm.base_url=http://127.0.0.1:9/v1", "planner.llm.max_retries=0",
                      "planner.llm.timeout_s=2"))
    assert [str(w.message) for w in caught if w.category is PlannerFallbackWarning] == [
        "LLM planner (gpt-4o-mini): the request to http://127.0.0.1:9/v1/ failed, without retries (max_retries=0) "
        "(APIConnectionError: Connection error.; ConnectionRefusedError: [Errno 111] Connection refused); check that "
        "an endpoint is running at http://127.0.0.1:9/v1/ (planner.llm.base_url); using the offline plan"] * 2  # the
    # URL: a mistyped one is seen
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["planner"] == "llm" and metrics["plan_sources"] == {"fallback": 2}
    assert re.search(r"plans +2 from the offline fallback", captured.out)


def test_memory_none_and_an_existing_run_dir(checkpoints, tmp_path, capsys):
    out = tmp_path / "none"
    # another frame size than the world model draws (refused before): the env renders the model's, said
    main(run_args(checkpoints, out, "episodes=1", "memory=none", "video=false", "env.image_size=32"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["memory"] == "none" and metrics["episodes_done"] == 1 and metrics["plan_sources"] == {"offline": 1}
    said = capsys.readouterr().out
    assert f"env.image_size=64, the frames worldmodel={checkpoints[0]} draws (not 32)" in said
    assert "image_size: 64" in (out / "config.yaml").read_text()
    assert "plans" not in said  # the offline planner's are all its own
    assert metrics["episodes"][0]["stages_s"]["memory_update"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints.json", "config.yaml", "metrics.json"]
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(checkpoints, out, "episodes=1", "memory=none"))
    assert exit_info.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    main(run_args(checkpoints, out, "episodes=1", "memory=none", "video=false", "overwrite=true", "seed=20000"))
    assert json.loads((out / "metrics.json").read_text())["seeds"] == [20000]


def test_resume_or_overwrite_never_takes_over_another_commands_folder(checkpoints, tmp_path, capsys):
    """A collect dataset (or a train run) in out=: resume=true once overwrote its config.yaml, so the dataset's
    own resume was refused for good; overwrite=true deleted its records."""
    out = tmp_path / "collected"
    out.mkdir()
    (out / "config.yaml").write_text("env: {name: tabletop}\nepisodes: 1\nnoise_std: 0.0\nresume: true\n")
    for flag in ("resume=true", "overwrite=true"):
        with pytest.raises(SystemExit) as exit_info:
            main(run_args(checkpoints, out, "episodes=1", "memory=none", "video=false", flag))
        assert exit_info.value.code == 2
        assert "holds another command's settings (config.yaml, with noise_std" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    assert "episodes: 1" in (out / "config.yaml").read_text()


def test_agent_seed_offsets_the_sampling_seed_of_every_episode(checkpoints, tmp_path, monkeypatch):
    seeds = []
    reset = VideoPlanningAgent.reset
    def recorded(self, *args, seed=None, **kwargs):
        seeds.append(seed)
        return reset(self, *args, seed=seed, **kwargs)

    monkeypatch.setattr(VideoPlanningAgent, "reset", recorded)
    for agent_seed in (0, 7):
        main(run_args(checkpoints, tmp_path / str(agent_seed), "episodes=2", "memory=none", "video=false",
                      f"agent.seed={agent_seed}"))
    assert seeds == [10000, 10001, 10007, 10008]  # agent.seed=0: the env's seed, as the figures were measured


def test_a_ctrl_c_while_a_finished_run_closes_is_held_off(checkpoints, tmp_path, monkeypatch, capsys):
    """As the last episode ended, a Ctrl-C cut the summary and the env's close short and exited 130, though every
    episode was done and metrics.json said complete."""
    import os
    import signal

    from vplan import run as run_module

    print_summary = run_module._print_summary

    def interrupted_summary(metrics, out):
        os.kill(os.getpid(), signal.SIGINT)
        print_summary(metrics, out)

    monkeypatch.setattr(run_module, "_print_summary", interrupted_summary)
    handler = signal.getsignal(signal.SIGINT)
    main(run_args(checkpoints, tmp_path / "run", "episodes=1", "memory=none", "video=false"))  # no SystemExit
    assert "success rate" in capsys.readouterr().out and signal.getsignal(signal.SIGINT) is handler


def test_the_command_line_ignores_ctrl_c_once_its_command_is_over():
    """A Ctrl-C during Python's shutdown (logging's and torch's exit hooks) printed their traceback; a SIGTERM
    there would have, too."""
    import subprocess
    import sys

    code = ("import signal, sys, threading; sys.argv = ['vplan', '--version']; from vplan.cli import main; "
            "thread = threading.Thread(target=main); thread.start(); thread.join(); "  # signals: main thread only
            "main(); print(*(signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    from vplan import __version__

    assert result.returncode == 0 and result.stdout.split() == ["vplan", __version__] * 2 + ["True"] * 2, result


def test_a_model_folder_as_out_is_refused_before_anything_is_written_there(checkpoints, tmp_path, capsys):
    """checkpoints.json (and, recording, episodes/) were written into it first, changing its fingerprint."""
    model = tmp_path / "model"
    shutil.copytree(checkpoints[1], model)
    before = sorted(p.name for p in model.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(checkpoints, model, "episodes=1", "memory=none", "record=true"))
    said = capsys.readouterr()
    assert exit_info.value.code == 2 and "holds a model checkpoint (config.json)" in said.err
    assert "loading" not in said.out  # said only once the run can start loading
    assert sorted(p.name for p in model.iterdir()) == before


def test_overwrite_replaces_the_whole_run_recorded_episodes_and_videos_too(checkpoints, tmp_path, capsys):
    out = tmp_path / "twice"
    main(run_args(checkpoints, out, "episodes=2", "memory=none", "record=true"))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit):  # refused: the earlier run stays as it was
        main(run_args(checkpoints, out, "episodes=1", "overwrite=true", "idm=shipped:blockworld/idm"))
    assert sorted(p.name for p in out.iterdir()) == before and "idm=DIR" in capsys.readouterr().err
    main(run_args(checkpoints, out, "episodes=1", "memory=none", "record=true", "video=false", "overwrite=true",
                  "seed=20000"))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints.json", "config.yaml", "episodes", "metrics.json"]
    # episodes the run did not record (it ran with record=false) are refused before the old run is removed
    other = tmp_path / "not_recorded"
    main(run_args(checkpoints, other, "episodes=1", "memory=none", "video=false"))
    shutil.copytree(out / "episodes", other / "episodes")
    before = sorted(p.name for p in other.iterdir())
    with pytest.raises(SystemExit):
        main(run_args(checkpoints, other, "episodes=1", "memory=none", "video=false", "record=true", "overwrite=true"))
    assert "holds episodes the run in" in capsys.readouterr().err and sorted(p.name for p in other.iterdir()) == before
    dataset = EpisodeDataset(out / "episodes")
    assert dataset.num_episodes == 1 and dataset.episode_meta(0)["seed"] == 20000


def test_a_run_begun_without_out_resumes_in_its_dated_folder(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a for a in run_args(checkpoints, "unused", "memory=none", "video=false") if not a.startswith("out=")]
    main([*args, "episodes=1"])
    (folder,) = (tmp_path / "runs").iterdir()
    from vplan import run as run_module
    from vplan.errors import UsageError
    from vplan.utils.locks import holding_folder

    run_in, held = run_module._run_in, []

    def checking_the_lock(cfg, out):  # what a second `resume=true out=<dated folder>` meanwhile would meet
        with pytest.raises(UsageError, match="in use by another vplan command"), holding_folder(out):
            pass
        held.append(out)
        return run_in(cfg, out)

    monkeypatch.setattr(run_module, "_run_in", checking_the_lock)
    main([*args, "episodes=2", "resume=true", f"out={folder}"])  # the CLI holds a given out=
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["complete"] and metrics["seeds"] == [10000, 10001]
    main([*args, "episodes=1"])  # the dated folder it makes, run holds itself
    assert len(held) == 2 and held[1].resolve().parent == folder.parent and held[1].resolve() != folder


def test_a_resume_at_other_threads_says_how_many_episodes_ran_at_each(checkpoints, tmp_path, capsys):
    """metrics.json kept only the last part's threads=, so wall and CPU times mixed thread counts unsaid; a run
    written before episodes recorded it counts at its recorded threads=."""
    out = tmp_path / "run"
    main([*run_args(checkpoints, out, "memory=none", "video=false"), "episodes=1"])
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["episodes"][0]["threads"]  # as a run from before
    (out / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    main([*run_args(checkpoints, out, "memory=none", "video=false"), "episodes=2", "resume=true", "threads=2"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert [episode["threads"] for episode in metrics["episodes"]] == [1, 2]
    assert re.search(r"\n  threads +1 episode\(s\) at 1, 1 episode\(s\) at 2\n", capsys.readouterr().out)


def test_a_refused_run_without_out_leaves_no_folder(checkpoints, tmp_path, monkeypatch):
    """Bad input exits before anything is written: the dated folder went, and runs/ stayed behind."""
    monkeypatch.chdir(tmp_path)
    args = [a for a in run_args(checkpoints, "unused", "memory=none") if not a.startswith(("out=", "idm="))]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"idm={tmp_path / 'missing'}"])
    assert exit_info.value.code == 2 and list(tmp_path.iterdir()) == []
    (tmp_path / "runs" / "earlier").mkdir(parents=True)  # a runs/ with other runs in it stays
    with pytest.raises(SystemExit):
        main([*args, f"idm={tmp_path / 'missing'}"])
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["earlier"]


def test_record_writes_the_executed_episodes_as_a_dataset(checkpoints, tmp_path, capsys):
    out = tmp_path / "recorded"
    main(run_args(checkpoints, out, "episodes=2", "memory=none", "video=false", "record=true"))
    assert f"recorded episodes (a dataset to train or finetune on): {out / 'episodes'}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = EpisodeDataset(out / "episodes")
    assert dataset.num_episodes == 2 and dataset.num_frames == 2 * STEPS
    for index, result in enumerate(metrics["episodes"]):
        episode = dataset.episode(index)
        assert episode[OBS_IMAGE_FRONT].shape == (STEPS, IMAGE, IMAGE, 3) and episode[ACTION].shape == (STEPS, 4)
        assert set(episode[SUBGOAL]) == {result["plan"]["subgoals"][0]["text"]}  # one chunk of the first subgoal
        meta = dataset.episode_meta(index)
        assert (meta["seed"], meta["success"], meta["steps"]) == (result["seed"], result["success"], STEPS)
    assert {OBS_IMAGE_FRONT, OBS_STATE, ACTION, ACTION_APPLIED} <= set(dataset.features)  # as `vplan collect`


def test_interrupt_keeps_the_finished_episodes(checkpoints, tmp_path, monkeypatch, capsys):
    act = VideoPlanningAgent.act
    calls = {"n": 0}

    def act_then_interrupt(self, obs, info=None):
        calls["n"] += 1
        if calls["n"] == 2 * STEPS + 4:  # in the third episode
            raise KeyboardInterrupt
        return act(self, obs, info)

    monkeypatch.setattr(VideoPlanningAgent, "act", act_then_interrupt)
    out = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(checkpoints, out, "episodes=3", "memory=none", "record=true"))
    assert exit_info.value.code == 130
    assert EpisodeDataset(out / "episodes").num_episodes == 2  # the recorded dataset keeps the finished episodes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["episodes_done"] == 2 and not metrics["complete"] and metrics["episodes_requested"] == 3
    assert [e["seed"] for e in metrics["episodes"]] == [10000, 10001]
    assert (out / metrics["episodes"][0]["video"]).is_file()
    captured = capsys.readouterr()
    assert "interrupted" in captured.err and "(interrupted)" in captured.out
    assert f"to run the other 1: the same command with resume=true out={out}" in captured.out

    monkeypatch.setattr(VideoPlanningAgent, "act", act)
    # as if killed after recording episode 2 but before metrics.json counted it: resuming must not record it twice
    del metrics["episodes"][1]
    (out / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit) as exit_info:  # another config cannot continue this run
        main(run_args(checkpoints, out, "episodes=3", "memory=none", "record=true", "resume=true", "seed=5"))
    assert exit_info.value.code == 2 and "other settings: seed=10000 when it began, 5 now" in capsys.readouterr().err
    main(run_args(checkpoints, out, "episodes=3", "memory=none", "record=true", "resume=true"))
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["complete"] and resumed["seeds"] == [10000, 10001, 10002]
    assert set(json.loads((out / "checkpoints.json").read_text())) == {"worldmodel", "idm"}
    assert resumed["episodes"][0] == metrics["episodes"][0]  # kept, not rerun
    # the run's wall time goes on from the interrupted part's
    assert resumed["wall_s_total"] >= metrics["wall_s_total"] + sum(e["wall_s"] for e in resumed["episodes"][1:])
    assert EpisodeDataset(out / "episodes").num_episodes == 3
    fresh = tmp_path / "uninterrupted"
    capsys.readouterr()
    main(run_args(checkpoints, fresh, "episodes=3", "memory=none", "video=false", "resume=true"))  # nothing to resume
    assert f"resume=true: {fresh} holds no run yet; starting one" in capsys.readouterr().out
    fresh_episodes = json.loads((fresh / "metrics.json").read_text())["episodes"]
    for key in ("dist", "drift_mean"):  # as if never interrupted (dist barely moves with the sampling seed)
        assert [e[key] for e in resumed["episodes"]] == [e[key] for e in fresh_episodes], key


@pytest.mark.parametrize(("env", "needs"), [("rlbench", "rlbench"), ("minerl", "minerl")])
def test_a_missing_simulator_is_one_line_and_exit_code_2(env, needs, capsys):
    if is_package_available(needs):
        pytest.skip(f"{needs} is installed here")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", f"env={env}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vplan run: error: env=")
    alternative = "env=tabletop" if env == "rlbench" else "env=blockworld"  # the embedded stand-in
    assert "pip install" in err and alternative in err


def test_checkpoint_and_frame_size_errors_are_one_line(checkpoints, tmp_path, capsys):
    worldmodel, idm = checkpoints
    cases = [
        ([f"worldmodel={worldmodel}", f"idm={tmp_path / 'nothing'}"], "idm=", "vplan train component=idm"),
        ([f"worldmodel={worldmodel}", "idm=shipped:tabletop/nothing"], "no shipped checkpoint 'tabletop/nothing'",
         "pass idm=DIR"),
        ([f"worldmodel={worldmodel}", f"idm={idm}", "env=blockworld"], "predicts actions of shape (4,), the env "
         "takes one of 5 moves", "pass worldmodel=DIR and idm=DIR trained on this env's episodes"),
        ([f"worldmodel={worldmodel}", f"idm={idm}", "agent.camera=wrist"], "agent.camera='wrist': the env's "
         "observations hold ['agent_pos', 'front']", "pass the key of one of its cameras"),
        ([f"worldmodel={worldmodel}", f"idm={idm}", "agent.state_key=pos"], "agent.state_key='pos'",
         "or agent.stall_steps=0 to turn stall detection off"),
    ]
    for args, first, second in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *args, f"out={tmp_path / 'run'}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and first in err and second in err, err
        assert not (tmp_path / "run").exists()  # refused before anything was written


def test_training_seeds_are_warned_of(tmp_path):
    """`vplan collect` plays seeds 0, 1, ...: a run there scores scenes the models may have trained on."""
    from vplan.errors import UsageError, VplanWarning
    from vplan.run import run

    def config(*overrides: str) -> RunConfig:
        command = next(c for c in COMMANDS if c.name == "run")
        return build_config(compose_config(command, [*overrides, f"out={tmp_path / 'run'}"])[0])

    # (the CLI refuses a missing checkpoint before the command runs; run() warns first, then refuses it)
    with pytest.warns(VplanWarning, match="seed=5: below 10000, so these episodes may be scenes the model trained"):
        with pytest.raises(UsageError):
            run(config("seed=5", f"worldmodel={tmp_path / 'nothing'}"))
    with pytest.warns(VplanWarning, match="right for episodes recorded to train on, but the run's figures are not"):
        with pytest.raises(UsageError):  # as the README advises for record=true: not told to pass other seeds
            run(config("seed=5", "record=true", f"worldmodel={tmp_path / 'nothing'}"))


@pytest.mark.parametrize("text, said", [
    ('{"episodes": [', "damaged (JSONDecodeError"),
    ('{"episodes": 5, "wall_s_total": 1.0}', "damaged (its episodes are not a list of objects)"),
    ('{"episodes": [5], "wall_s_total": 1.0}', "damaged (its episodes are not a list of objects)"),
    ('{"episodes": [], "wall_s_total": "x"}', "damaged (its wall_s_total 'x' is not a number)"),
])
def test_a_damaged_metrics_file_is_one_line_on_resume(tmp_path, capsys, text, said):
    """Its keys were checked, not their types: `episodes: 5` or `wall_s_total: "x"` gave a traceback."""
    from vplan.utils.settings import write_config

    command = next(c for c in COMMANDS if c.name == "run")
    write_config(tmp_path, build_config(compose_config(command, [f"out={tmp_path}"])[0]))
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", f"out={tmp_path}", "resume=true"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    assert "metrics.json is damaged" in err and said in err and "with overwrite=true" in err


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    from vplan.run import _run_dir

    monkeypatch.chdir(tmp_path)
    command = next(c for c in COMMANDS if c.name == "run")
    cfg = build_config(compose_config(command, ["memory=none"])[0])
    first, second = _run_dir(cfg), _run_dir(cfg)  # the same second, most likely; distinct either way
    assert first != second and first.is_dir() and second.is_dir()


def test_an_out_holding_another_commands_records_is_refused(checkpoints, tmp_path, capsys):
    trained = tmp_path / "train_out"  # what `vplan train` leaves: its settings and the VAE it pinned
    trained.mkdir()
    (trained / "config.yaml").write_text("data: data/return_cubes\n")
    (trained / "checkpoints.json").write_text("{}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(checkpoints, trained))
    err = capsys.readouterr().err
    # (refused before the models load since 2026-12-07; vplan run's own check says "holds the records of ...")
    assert exit_info.value.code == 2 and "holds another command's settings (config.yaml, with data)" in err
    assert (trained / "config.yaml").read_text() == "data: data/return_cubes\n"
    evaluated = tmp_path / "eval_out"  # `vplan eval worldmodel`'s: its metrics.json went with overwrite=true
    evaluated.mkdir()
    (evaluated / "progress.json").write_text('{"settings": {}}')
    (evaluated / "metrics.json").write_text('{"text_sensitivity": 0.65}')
    for args in ([], ["overwrite=true"], ["resume=true"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*run_args(checkpoints, evaluated), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "holds another command's evaluation (progress.json)" in err
    assert (evaluated / "metrics.json").read_text() == '{"text_sensitivity": 0.65}'
    from vplan.errors import UsageError
    from vplan.run import run

    with pytest.raises(UsageError, match=r"holds another command's evaluation \(progress.json\)"):  # from Python
        run(RunConfig(worldmodel=str(checkpoints[0]), idm=str(checkpoints[1]), out=str(evaluated), overwrite=True))
    assert sorted(p.name for p in evaluated.iterdir()) == ["metrics.json", "progress.json"]


def test_a_run_stopped_in_its_first_episode_resumes_only_with_the_checkpoints_it_began_with(tmp_path, monkeypatch,
                                                                                           capsys):
    worldmodel, idm = save_tiny_checkpoints(tmp_path / "checkpoints")
    calls = []

    def interrupted(self, obs, info=None):  # Ctrl-C in the first episode's first step
        calls.append(1)
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(VideoPlanningAgent, "act", interrupted)
        with pytest.raises(SystemExit):
            main(run_args((worldmodel, idm), out, "episodes=1", "memory=none", "video=false"))
    assert calls and json.loads((out / "metrics.json").read_text())["episodes_done"] == 0
    # said how to go on: the same command without resume=true is refused, the folder holding the run's settings
    assert f"to run its 1 episode(s): the same command with resume=true out={out}" in capsys.readouterr().out
    (worldmodel / "notes.txt").write_text("retrained")  # the checkpoint's files change before the resume
    with pytest.raises(SystemExit) as exit_info:
        main(run_args((worldmodel, idm), out, "episodes=1", "memory=none", "video=false", "resume=true"))
    assert exit_info.value.code == 2 and "its files changed since" in capsys.readouterr().err


def test_between_episodes_the_bar_shows_the_figures_so_far():
    """The benches left the last episode's chunk on a finished bar ("chunk 17: pick up the blue cube" after a
    success); `vplan run` and both agent benches now show the finished episodes' figures there."""
    from vplan.run import figures_so_far

    done = [{"success": True, "dist": 0.01, "wall_s": 3.25}, {"success": False, "dist": 0.03, "wall_s": 4.44}]
    assert figures_so_far(done) == "success 1/2, Dist 0.020, last episode 4.4 s"
    assert figures_so_far([{"success": False, "dist": None, "wall_s": 1.0}]) == "success 0/1, Dist –, last episode 1.0 s"


def test_the_bar_names_the_chunk_being_imagined_before_the_figures_so_far():
    """At 80 columns the figures came first and the live part was cut (`... Dist 0.0`, no chunk)."""
    from tqdm import tqdm

    from vplan.run import show_chunk

    bar = tqdm(total=3, ncols=80, disable=True)
    show_chunk(bar, 10001, "success 0/1, Dist 0.000, last episode 4.4 s")(3, "put the red cube back where it was")
    assert bar.postfix == "seed 10001, chunk 3: put the red cube back where it was | success 0/1, Dist 0.000, last " \
                          "episode 4.4 s"  # whole: cut at 24 characters, it lost what tells the subgoals apart
    show_chunk(bar, 10001)(2, "walk forward along the path and then turn left at the tree")  # a user's long one
    assert bar.postfix == "seed 10001, chunk 2: walk forward along the path and then…"
    show_chunk(bar, 10000)(1, "pick up the red cube")
    assert bar.postfix == "seed 10000, chunk 1: pick up the red cube"
    show_chunk(bar, 10002, "success 0/2")(0, "")  # run_episode's call while the agent plans (an LLM's request)
    assert bar.postfix == "seed 10002, planning | success 0/2"
