"""The `vplan` console script: command lookup, config composition, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vplan.cli import COMMANDS, build_config, compose_config, main
from vplan.configs import preset_names
from vplan.data.collect import CollectConfig
from vplan.envs.tabletop_v0 import TabletopConfig


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vplan.cli", *args], capture_output=True, text=True, timeout=120
    )


def command(name: str):
    return next(c for c in COMMANDS if c.name == name)


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c.name in out


def test_no_command_is_a_usage_error_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(c.name in err for c in COMMANDS)
    assert err.splitlines()[-1] == "vplan: error: expected a command, one of those above"


def test_python_m_vplan_is_the_vplan_command():
    result = subprocess.run([sys.executable, "-m", "vplan", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("vplan ")
    result = subprocess.run([sys.executable, "-m", "vplan", "colect"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown command 'colect'" in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["collect", "--help"]])
def test_help_to_a_full_device_is_one_line_not_a_traceback(args):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "vplan", *args], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "vplan: error: cannot write to the standard output: No space left on device\n"


def test_command_help_shows_config_and_choices(capsys):
    main(["collect", "--help"])
    out = capsys.readouterr().out
    assert "episodes: 10" in out
    assert "image_size: 64" in out
    assert "env: tabletop" in out
    lines = out.splitlines()  # each documented setting's meaning, as a comment above it, nested ones indented
    assert lines[lines.index("episodes: 10") - 1].startswith("# ")
    assert lines[lines.index("  image_size: 64") - 1] == "  # Height and width of the camera images (pixels)."


def test_command_help_lists_no_choices_a_command_refuses(capsys):
    """`bench planning --help` offered memory=anchor and none, which it refuses (its rows set the memory)."""
    main(["bench", "planning", "--help"])
    out = capsys.readouterr().out
    assert "memory: temp_lora  (the only one this command takes; set memory.* keys)" in out
    assert "env: tabletop  (choices: blockworld, " in out  # its blockworld rows are real
    main(["finetune", "--help"])
    assert "memory: temp_lora  (the only one this command takes" in capsys.readouterr().out
    main(["bench", "executor", "--help"])  # the tabletop's return_cubes only
    out = capsys.readouterr().out
    assert "env: tabletop  (the only one this command takes; set env.* keys)" in out
    assert "task: return_cubes  (the only one this command takes; set task.* keys)" in out


def test_help_before_a_command_is_its_help(capsys):
    main(["help", "eval", "worldmodel"])  # the main help, ignoring the command, before
    assert "rollout_chunks: 8" in capsys.readouterr().out


def test_command_help_follows_the_config_groups_chosen(capsys):
    main(["train", "component=idm", "--help"])
    out = capsys.readouterr().out
    assert "component: idm" in out and "history_frames: 1" in out and "boundary_fraction" not in out
    assert "\nout: checkpoints/idm\n" in out  # the value these overrides give, not ${component.name}
    main(["train", "out=${nowhere}", "--help"])  # one that cannot resolve: as typed
    assert "\nout: ${nowhere}\n" in capsys.readouterr().out


def test_compose_builds_typed_configs():
    cfg, choices = compose_config(command("collect"), ["episodes=3", "env.image_size=32", "out=/tmp/x"])
    config = build_config(cfg)
    assert isinstance(config, CollectConfig)
    assert isinstance(config.env, TabletopConfig)
    assert (config.episodes, config.env.image_size, config.out) == (3, 32, "/tmp/x")
    assert config.env.task == config.task.name == "return_cubes"
    assert choices == {"env": "tabletop", "task": "return_cubes"}


def test_every_threads_setting_is_bounded():
    """torch took threads=2**31 as a traceback from set_num_threads, after vplan run had made its run folder."""
    commands = [c for c in COMMANDS if "threads=" in " ".join(f"{k}=" for k in compose_config(c, [])[0])]
    assert {c.name for c in commands} >= {"run", "rl", "bench worldmodel", "bench memory", "bench planning",
                                          "bench executor", "eval consistency"}
    from vplan.errors import UsageError

    for c in commands:
        with pytest.raises(UsageError, match=r"threads: expected at most 1024 \(this machine has \d+ cores\), got "
                                             r"2147483648"):
            build_config(compose_config(c, ["threads=2147483648"])[0])
        build_config(compose_config(c, ["threads=1024"])[0])


def test_every_command_config_takes_numpys_numbers():
    """A sweep from Python over np.arange: np.int64(3) was refused by the eval, bench, train, finetune and rl
    configs' int checks (the agent's and the env's took it)."""
    from dataclasses import fields, replace
    from pathlib import Path

    import numpy as np

    for c in COMMANDS:
        config = build_config(compose_config(c, [])[0])
        ints = {f.name: np.int64(getattr(config, f.name)) for f in fields(config) if f.type == "int"}
        floats = {f.name: np.float32(getattr(config, f.name)) for f in fields(config) if f.type == "float"}
        swept = replace(config, **ints, **floats)
        assert {type(getattr(swept, name)) for name in ints} <= {int}, c.name
        assert {type(getattr(swept, name)) for name in floats} <= {float}, c.name
        assert ints or floats, c.name
        # a pathlib.Path for a path, 0 or 1 for a bool: taken before 2654fa0, refused by it (helper-195)
        paths = {name: Path(value) for name in ("out", "data") if isinstance(value := getattr(config, name, None), str)}
        bools = {f.name: int(getattr(config, f.name)) for f in fields(config) if f.type == "bool"}
        given = replace(config, **paths, **bools)
        assert all(getattr(given, name) == str(path) for name, path in paths.items()), c.name
        assert all(getattr(given, name) is bool(value) for name, value in bools.items()), c.name


def test_the_last_env_given_picks_the_default_task():
    """Hydra takes the last env=; the default task came from the first ('use env=tabletop', looping)."""
    cfg, _ = compose_config(command("collect"), ["env=tabletop", "env=blockworld"])
    assert build_config(cfg).task.name == "retrace"


def test_a_component_name_of_ones_own_names_the_out_folder():
    cfg, _ = compose_config(command("train"), ["component.name=wm_big"])  # another component's name is refused
    assert build_config(cfg).out == "checkpoints/wm_big"


def test_default_out_follows_the_task():
    cfg, _ = compose_config(command("collect"), [])
    assert build_config(cfg).out == "data/return_cubes"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["colect"], "unknown command 'colect'; did you mean 'collect'? valid commands: "
                     + ", ".join(c.name for c in COMMANDS)),
        (["episodes=3"], "expected a command before 'episodes=3', e.g. vplan run episodes=3; valid commands: "),
        (["bench", "nothing"], "unknown command 'bench nothing'"),
        (["bench", "--help"], "'bench' needs one more word, one of: env, executor, memory, planning, worldmodel"),
        (["collect", "episodez=3"], "unknown key 'episodez' (did you mean episodes?); valid keys:"),
        (["finetune", "steps=3"], "unknown key 'steps' (did you mean optim.steps?); valid keys:"),  # a group's
        (["finetune", "lr=1"], "unknown key 'lr' (did you mean memory.lr or optim.lr?)"),  # (no hint, before)
        (["train", "component.steps=3"], "unknown key 'component.steps' (did you mean component.optim.steps?)"),
        (["train", "component.idm.image_size=16"],  # the README's IDM command without component=idm
         "unknown key 'component.idm.image_size': a setting of component=idm (chosen: worldmodel); valid keys of "
         "component: "),
        (["train", "component=idm", "component.model.context_frames=2"],  # the chosen one, not the default
         "unknown key 'component.model.context_frames': a setting of component=worldmodel (chosen: idm); "),
        (["train", "component.vae.block_out_channels=[8,16]"],  # the world model's component.vae is a path
         "unknown key 'component.vae.block_out_channels': a setting of component=vae (chosen: worldmodel)"),
        (["rl", "plan_offsets=[0,null]"], "bad value for 'plan_offsets[1]': expected an int, got null"),  # was: "a
        # group of settings"
        (["collect", "env.imagesize=3"], "unknown key 'env.imagesize'"),
        (["collect", "env=moon"], "unknown env 'moon'; valid choices: " + ", ".join(preset_names("env"))),
        (["collect", "task=fly"], "unknown task 'fly'; valid choices: " + ", ".join(preset_names("task"))
         + "; a task of your own runs from Python (README: 'Your own env, task or data')"),
        (["collect", "episodes=abc"], "bad value for 'episodes'"),
        (["collect", "episodes=3", 'out="x'], "cannot read 'out=\"x' (LexerNoViableAltException"),  # which one
        (["collect", "seed=${nope}"], "seed: Interpolation key 'nope' not found"),
        (["collect", "episodes=0"], "episodes: expected a positive number, got 0"),
        (["collect", "env.image_size=3"], "env.image_size: expected"),
        (["rl", "memory.lr=nan"], "memory.lr: expected a positive finite number, got nan"),  # rl has its own lr
        (["run", "agent=3"], "agent is a group of settings, not one; give agent.KEY=VALUE"),  # Hydra's wording
        (["train", "component=worldmodel", "component.model=tiny"],  # the preset's spelling, which it lacked
         "give component.model.KEY=VALUE (`vplan train --help` lists them); or a preset: "
         "model@component.model=" + "|".join(preset_names("model"))),
        (["bench", "worldmodel", "samplers=[ddim:0]"], "samplers: ddim:0: expected at least 1 sampling step"),
        (["rl", "rewards.outcome=0", "rewards.executability=0", "rewards.consistency=0"],  # not rewards.rewards
         "error: rewards: every weight is 0"),
        (["collect", "stray"], "unexpected argument 'stray'"),
        (["run", "idm=shipped:tabletop/worldmodel"], "idm=shipped:tabletop/worldmodel: a world model's checkpoint, "
                                                     "not an IDM's; pass idm=shipped:<env>/idm or DIR"),
        (["train", "component.name=idm"], "component.name=idm names another component, and only the default out= "
                                          "folder; choose the component with component=idm"),
        (["collect", "--fast"], "unknown option '--fast'"),
        (["collect", "--help", "--fast"], "unknown option '--fast'"),  # with --help it was a lexer message
        (["--help", "bogus"], "unknown command 'bogus'"),  # exit 0 with the main help, before
        (["train", "component=worldmodel", "component.model.context_frames=0"],
         "component.model: expected context_frames to be a positive int, got 0"),  # a message naming no key
        (["collect", "episodes.x=1"], "episodes is one setting, not a group of them; give episodes=VALUE"),
        (["train", "component=idm", "model@component.model=tiny"],
         "model@component.model applies only with component=worldmodel, not with component=idm"),
        (["collect", "seed=-1"], "seed: expected an int from 0 to 4294967295, got -1"),
        (["run", f"seed={2**64}"], f"seed: expected an int from 0 to 4294967295, got {2**64}"),
        (["run", "agent.seed=-1"], "agent.seed: expected an int from 0 to 4294967295, got -1"),
        (["run", "agent.replan_drift=5"], "replan_drift: expected a difference in [0, 1] or null, got 5.0"),
        (["run", "out="], "out: expected a directory, got ''"),
        (["collect", "noise_std=nan"], "noise_std: expected a finite number >= 0, got nan"),
        (["rl", "lr=inf"], "lr: expected a finite number > 0, got inf"),
        (["run", "memory=none,anchor"], "'memory=none,anchor' gives several values (a Hydra sweep)"),
        (["collect", "task.instruction=pick it up, then put it back"], "quote a text with a comma in it "
                                                                       "('task.instruction=\"a, b\"')"),
        (["eval", "consistency", "modes=none"], "bad value for 'modes': expected a list, in brackets: modes=[...]"),
        (["bench", "worldmodel", "samplers=[]"], "samplers: expected at least one entry like 'dpmsolver++:5', got []"),
        (["collect", "env=blockworld", "task=return_cubes"], "runs on env 'tabletop', not 'blockworld'; use env=tabletop"),
        (["collect", "task.name=bogus"], "task.name=bogus: task.name names the task preset's name and cannot be set; "
                                         "choose the task with task=NAME"),  # was env.task's list of one name
        (["collect", "task.env=blockworld"], "task.env=blockworld: task.env names the task preset's env"),  # was
        # 'use env=blockworld', which switches the task to retrace
        (["run", "record=2"], "bad value for 'record': expected true or false, got 2"),  # OmegaConf: true
        (["run", "memory.gradient_checkpointing=0.5"], "bad value for 'memory.gradient_checkpointing': expected true"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_commands_that_do_not_share_their_work_refuse_a_launchers_processes(monkeypatch, capsys, tmp_path):
    """Under accelerate launch or torchrun every process would run the whole command into one out=."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for args in (["run", "episodes=1"], ["eval", "consistency"], ["collect", f"out={tmp_path}"], ["finetune"]):
        with pytest.raises(SystemExit) as stopped:
            main(args)
        name = " ".join(args[: 2 if args[0] == "eval" else 1])
        assert stopped.value.code == 2 and (f"only `vplan train` shares its work between processes; run `vplan {name}` "
                                            "without a launcher") in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [
    ["run", "worldmodel=shipped:tabletop/worldmodel_action", "episodes=1"],
    ["eval", "consistency", "checkpoint=shipped:tabletop/worldmodel_action"],
    ["bench", "memory", "checkpoint=shipped:tabletop/worldmodel_action"],
    ["bench", "worldmodel", "checkpoint=shipped:tabletop/worldmodel_action"],
])
def test_an_action_conditioned_world_model_where_text_drives_is_one_line(args, tmp_path):
    result = run_cli(*args, f"out={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "conditioned on 'action'" in result.stderr and "text-conditioned" in result.stderr


def test_an_out_that_cannot_be_a_directory_is_one_line_and_exit_code_1(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in (blocker, blocker / "below"):  # the file is named either way (below: "a_file/below: Not a directory")
        result = run_cli("collect", "episodes=1", f"out={out}")
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == f"vplan collect: error: {blocker}: exists and is not a directory"
    monkeypatch.setattr("vplan.cli.Command.load", lambda command: pytest.fail(f"{command.name} loaded"))
    for args in (["run", "episodes=1"], ["rl"], ["eval", "worldmodel"]):
        for out in (blocker, blocker / "below"):  # answered before the command's module and its models load (~10 s)
            with pytest.raises(SystemExit) as stop:
                main([*args, f"out={out}"])
            assert stop.value.code == 1
            assert capsys.readouterr().err.endswith(f": error: {blocker}: exists and is not a directory\n")
    result = run_cli("train", f"data={blocker}")  # it said to make one with `vplan collect out=<the file>`
    assert result.returncode == 2 and result.stderr.strip().endswith(f"data={blocker}: a file, not a dataset folder; "
                                                                     "pass the folder `vplan collect` wrote")


def test_a_second_command_in_an_out_another_is_writing_is_refused_at_once(tmp_path, capsys):
    """Two trainings in one out= deleted each other's checkpoint saves; two runs mixed their videos and metrics."""
    from vplan.utils.locks import holding_folder

    out = tmp_path / "runs" / "a"
    with holding_folder(out):  # another command's, as a process holds it
        with pytest.raises(SystemExit) as exit_code:
            main(["collect", "episodes=1", "env.image_size=16", f"out={out}"])
        assert exit_code.value.code == 2 and not list(out.iterdir())
        assert capsys.readouterr().err.strip() == (
            f"vplan collect: error: {out} is in use by another vplan command that is still running; wait for it to "
            "end, or choose another out=DIR")
    assert not (tmp_path / "runs").exists()  # made for the lock, left empty: removed with its parent
    with holding_folder(out):
        (out / "kept").write_text("")
    with holding_folder(out):  # released: the next command takes it
        pass
    assert (out / "kept").is_file()


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),  # a write or fsync on a full disk: no filename to name
    "missing extra",
])
def test_a_full_disk_and_a_missing_extra_are_one_line(monkeypatch, capsys, tmp_path, error):
    import vplan.data.collect
    from vplan.utils.import_utils import require_package

    def fails(config):
        if error == "missing extra":  # what planner=llm says without the openai package
            monkeypatch.setattr("vplan.utils.import_utils.is_package_available", lambda module: False)
            require_package("openai", "llm", hint="or use planner=offline")
        raise error

    monkeypatch.setattr(vplan.data.collect, "collect", fails)
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "episodes=1", f"out={tmp_path / 'ds'}"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if error == "missing extra":
        assert exit_info.value.code == 2 and "pip install 'vplan[llm]'. or use planner=offline" in err
    else:
        assert exit_info.value.code == 1 and err.startswith("vplan collect: error: No space left on device; free")


def test_an_empty_checkpoint_path_is_refused_not_read_as_the_shipped_one(capsys):
    for empty in ("worldmodel=", "idm="):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", empty])
        assert exit_info.value.code == 2 and f"{empty[:-1]}: expected a directory, got ''" in capsys.readouterr().err


def test_errors_never_quote_a_secret(capsys):
    for bad in ('planner.llm.api_key=sk-a"b', "planner.llm.api_key=[sk-secret]", "planner.llm.api_key=sk-a,b"):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "planner.llm.api_key" in err and "sk-" not in err, err


def test_an_error_starts_its_own_line_after_a_progress_bar(capsys):
    from tqdm import tqdm

    from vplan.cli import _fail

    rollouts = iter(tqdm(range(3), desc="rollouts"))
    next(rollouts)  # drawn, not finished (the iterator kept: dropping it would close the bar)
    with pytest.raises(SystemExit):
        _fail("vplan x", "it broke")
    assert capsys.readouterr().err.splitlines()[-1] == "vplan x: error: it broke"


@pytest.mark.parametrize("where", ["settings", "command"])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize(("stop", "code", "said"), [("KeyboardInterrupt", 130, "interrupted"),
                                                    ("Terminated", 143, "terminated (SIGTERM)")])
def test_a_stop_exits_as_the_signal_says(monkeypatch, capsys, tmp_path, stop, code, said, wrapped, where):
    """Ctrl-C exits 130; a SIGTERM (a job scheduler's stop) stops a command as Ctrl-C does, and exits 143; so does
    one an extension's import turned into another error (mujoco's `ImportError: initialization failed`), while
    the settings are read or the command runs."""
    import vplan.cli
    from vplan.utils.interrupts import Terminated

    def stopped(*args):
        signal = {"KeyboardInterrupt": KeyboardInterrupt, "Terminated": Terminated}[stop]()
        if not wrapped:
            raise signal
        try:
            raise signal
        except KeyboardInterrupt as error:
            raise ImportError("initialization failed") from error

    if where == "settings":
        monkeypatch.setattr(vplan.cli, "compose_config", stopped)
    else:
        monkeypatch.setattr(vplan.cli.Command, "load", lambda self: stopped)
    with pytest.raises(SystemExit) as exit_info:
        vplan.cli.main(["collect", f"out={tmp_path / 'data'}"])
    assert exit_info.value.code == code and capsys.readouterr().err == f"vplan collect: {said}\n"


def test_another_error_while_the_settings_are_read_is_raised_as_it_is(monkeypatch):
    import vplan.cli

    def broken(*args):
        raise ImportError("a missing library")

    monkeypatch.setattr(vplan.cli, "compose_config", broken)
    with pytest.raises(ImportError, match="a missing library"):
        vplan.cli.main(["collect"])


def test_a_home_folder_the_shell_left_as_tilde_is_written_out(monkeypatch, capsys, tmp_path):
    """dash and zsh pass `out=~/x` as it is: Hydra cannot read it unquoted, and quoted it named a folder `~`."""
    from vplan.cli import _home_expanded, main

    monkeypatch.setenv("HOME", str(tmp_path))
    for given in ("out=~/my data", "out='~/my data'", 'out="~/my data"'):
        main(["collect", given, "--help"])
        assert f"\nout: {tmp_path}/my data\n" in capsys.readouterr().out
    main(["collect", 'out="~/my,data"', "--help"])  # quoted, a comma is part of the path
    assert f"\nout: {tmp_path}/my,data\n" in capsys.readouterr().out
    # every path setting (the one list vplan compares paths by), e.g. the LLM planner's text encoder
    encoder = "planner.llm.text_encoder_path"
    assert _home_expanded(f"{encoder}=~/minilm") == f"{encoder}='{tmp_path}/minilm'"
    for kept in ("task.instruction=~", "planner.llm.api_key=~/x", "out=a~b", "~out", "out=~no_such_user_here/x",
                 "data=~/d,~/e"):  # not a path setting; no home; a sweep (refused as such)
        assert _home_expanded(kept) == kept


def test_a_bench_refuses_its_out_before_it_times_anything(tmp_path, monkeypatch):
    import vplan.envs
    from vplan.eval.bench_env import BenchEnvConfig, bench_env

    def timing(*args):
        raise AssertionError("the bench started before it checked out=")

    monkeypatch.setattr(vplan.envs, "make_env", timing)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(FileExistsError):
        bench_env(BenchEnvConfig(out=str(blocker)))
    with pytest.raises(NotADirectoryError):  # under a file: refused too
        bench_env(BenchEnvConfig(out=str(blocker / "results")))
    # stopped before its results (here by the check above, as by Ctrl-C), it leaves no empty folders behind
    with pytest.raises(AssertionError, match="the bench started"):
        bench_env(BenchEnvConfig(out=str(tmp_path / "new" / "bench")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_vplans_warnings_are_one_line_and_others_as_python_prints_them():
    from vplan.cli import _format_warning
    from vplan.shipped import OtherEnvWarning

    assert _format_warning("idm=X was trained on blockworld", OtherEnvWarning, "/x.py", 3) == \
        "warning: idm=X was trained on blockworld\n"
    assert _format_warning("old", DeprecationWarning, "/x.py", 3, "") == "/x.py:3: DeprecationWarning: old\n"


@pytest.mark.parametrize(("given", "effective"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_user_chose(given, effective, monkeypatch):
    """The policy is read once, when torch loads, so the CLI module must set it without importing torch."""
    from vplan.utils.openmp import wait_policy

    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    probe = "import os, sys, vplan.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [effective, "False"]
    monkeypatch.setenv("OMP_WAIT_POLICY", effective)
    assert wait_policy() == f"OpenMP waiting {effective.lower()}"


def test_every_setting_of_every_command_says_what_it_means():
    """`--help` prints each setting's `help` metadata; a setting without one would show bare."""
    from omegaconf import DictConfig

    from vplan.cli import _field_help

    def paths(cfg, prefix=()):
        for key in cfg.keys():
            node = cfg._get_node(key)
            yield prefix + (str(key),)
            if isinstance(node, DictConfig) and not node._is_none():
                yield from paths(node, prefix + (str(key),))

    variants = {"train": ([], ["component=vae"], ["component=idm"]),
                "run": ([], ["env=blockworld"], ["env=rlbench"], ["env=minerl"], ["planner=llm"])}
    for c in COMMANDS:
        for overrides in variants.get(c.name, ([],)):
            cfg, _ = compose_config(c, overrides)
            helps = _field_help(cfg)
            assert [".".join(p) for p in paths(cfg) if p not in helps] == [], (c.name, overrides)


def test_a_warning_during_a_progress_bar_gets_a_line_of_its_own():
    """Printed as is, `warning: ...` continued the bar's line (`run:  0%| | 0/1 [...]warning: ...`)."""
    import io
    import re

    from tqdm import tqdm

    from vplan import cli
    from vplan.errors import VplanWarning

    stream = io.StringIO()
    bar = tqdm(total=3, file=stream, desc="run")
    stream.write(cli._format_warning(VplanWarning("the LLM planner fell back"), VplanWarning, "x.py", 1))
    bar.close()
    assert re.search(r"run: .*[\r\n]warning: the LLM planner fell back\n", stream.getvalue(), re.DOTALL)
    assert not re.search(r"\]warning:", stream.getvalue())


def test_help_and_a_settings_error_load_neither_torch_nor_diffusers():
    """Every command's --help, a mistyped setting or bad value, and a data= naming no dataset took over 5 s on the
    2-core machine: reading the settings imported torch, diffusers and peft (the config dataclasses lived beside the
    models)."""
    probe = textwrap.dedent("""
        import contextlib, io, sys
        import vplan.memory, vplan.planner
        from vplan.cli import COMMANDS, build_config, compose_config, main
        assert set(vplan.memory.__all__) <= set(dir(vplan.memory)), "lazy names missing from dir()"
        assert set(vplan.planner.__all__) <= set(dir(vplan.planner)), "lazy names missing from dir()"
        for command in COMMANDS:
            train = [["component=vae"], ["component=worldmodel"], ["component=idm"]]
            choices = train if command.name == "train" else [[]]
            for chosen in choices:
                build_config(compose_config(command, chosen)[0])  # every __post_init__ check, with the defaults
                for args in (["--help"], ["not_a_setting=1"], ["threads=-1"], ["seed=-1"]):
                    try:
                        main([*command.words, *chosen, *args])
                    except SystemExit as stop:
                        assert stop.code in (0, None) if args == ["--help"] else stop.code == 2, (command.name, args)
        main(["help", "run"])
        for command in (["train", "component=idm"], ["finetune"]):  # data= naming no dataset (5.4 s before)
            try:
                main([*command, "data=/no/such/folder"])
            except SystemExit as stop:
                assert stop.code == 2
        print(sorted(name for name in ("torch", "diffusers", "peft", "transformers") if name in sys.modules))
        for args in (["run", "worldmodel=/no/such/folder"], ["run", "idm=/no/such/folder"],
                     ["run", "worldmodel=shipped:tabletop/idm"], ["eval", "consistency", "checkpoint=/no/such/folder"],
                     ["eval", "worldmodel", "compare=/no/such/folder"], ["bench", "planning", "worldmodel=/no/such"],
                     ["bench", "worldmodel", "checkpoint=/no/such"], ["rl", "idm=shipped:tabletop/worldmodel"],
                     # checkpoints the env cannot drive (5.8 s before): a camera it lacks, another action space
                     ["run", "agent.camera=wrist"], ["rl", "agent.state_key=gripper"],
                     ["bench", "planning", "idm=shipped:blockworld/idm"],
                     ["eval", "worldmodel", "idm=shipped:blockworld/idm"],
                     # an action model of other actions than the env's (9.8 s before)
                     ["eval", "worldmodel", "env=blockworld", "compare=shipped:tabletop/worldmodel_action"],
                     # an endpoint with no key (12.6 s before)
                     ["run", "planner=llm"], ["rl", "rewards.vlm=1", "vlm_reward.enabled=true"]):
            try:  # a mistyped checkpoint, or one of another kind: refused before the models' libraries load
                main(args)
            except SystemExit as stop:
                assert stop.code == 2, args
        for command in COMMANDS:  # an action-conditioned model where the command has only text (6-13 s before)
            for setting in command.text_only if command.name != "finetune" else ():  # (finetune's data= comes first)
                said = io.StringIO()
                try:
                    with contextlib.redirect_stderr(said):
                        main([*command.words, f"{setting}=shipped:tabletop/worldmodel_action"])
                except SystemExit as stop:
                    assert stop.code == 2 and "conditioned on 'action'" in said.getvalue(), (command.name, said)
        print(sorted(name for name in ("torch", "diffusers", "peft", "transformers") if name in sys.modules))
    """)
    keyless = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=keyless)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "[]"], result.stdout


def test_the_early_env_contract_passes_what_the_commands_run_and_leaves_damaged_settings_to_them(tmp_path):
    """The CLI's early check of the env's contract (helper-191 ran these by hand): setups the commands run pass it;
    a checkpoint whose recorded settings no env renders, or that lacks one, is left to the command's loader (the
    first was a traceback, the second a refusal built on a default's guess)."""
    import json
    import shutil

    from vplan.cli import COMMANDS, _check_env_fits, build_config, compose_config
    from vplan.errors import UsageError
    from vplan.shipped import resolve_checkpoint

    def config(*args: str):
        command = next(c for c in COMMANDS if args[: len(c.words)] == c.words)
        return build_config(compose_config(command, list(args[len(command.words):]))[0])

    blockworld = ("env=blockworld", "task=retrace")
    for args in [("run", "env.wrist_camera=true", "agent.camera=wrist"), ("run", "env.image_size=32"),
                 ("run", *blockworld, "env.image_size=32"), ("run", "agent.stall_steps=8", "agent.state_key=foo"),
                 ("rl", *blockworld), ("bench", "planning", *blockworld), ("bench", "executor"),
                 ("eval", "worldmodel", *blockworld, "idm=shipped:blockworld/idm")]:
        _check_env_fits(config(*args))
    def copied(name: str, component: str, edit):
        folder = tmp_path / name
        shutil.copytree(resolve_checkpoint(f"shipped:blockworld/{component}"), folder)
        payload = json.loads((folder / "config.json").read_text())
        edit(payload["config"])
        (folder / "config.json").write_text(json.dumps(payload))
        return folder

    huge = copied("huge", "worldmodel", lambda settings: (settings["vae"].update(image_size=2048),
                                                         settings["unet"].update(sample_size=512)))
    huge_idm = copied("huge_idm", "idm", lambda settings: settings.update(image_size=2048))
    _check_env_fits(config("run", *blockworld, f"worldmodel={huge}", f"idm={huge_idm}"))  # no env renders 2048
    no_chunk_frames = copied("no_chunk_frames", "worldmodel", lambda settings: settings.pop("chunk_frames"))
    _check_env_fits(config("run", *blockworld, "env.chunk_steps=10", f"worldmodel={no_chunk_frames}"))
    with pytest.raises(UsageError, match="env.chunk_steps=10: the world model imagines 8-frame chunks"):
        _check_env_fits(config("run", *blockworld, "env.chunk_steps=10"))  # what the damaged ones were refused with
    with pytest.raises(UsageError, match=r"^compare=shipped:tabletop/worldmodel_action: an action model of "
                                         r"action_dim 4, and the env's actions have 1 value; pass one trained on"):
        _check_env_fits(config("eval", "worldmodel", *blockworld, "compare=shipped:tabletop/worldmodel_action"))
    _check_env_fits(config("eval", "worldmodel", "checkpoint=shipped:tabletop/worldmodel_action"))  # its own env's


def test_each_preset_names_the_module_that_defines_its_settings():
    """The presets' "Fields and defaults: vplan.x.Class" pointed at modules that only imported the class."""
    import importlib
    import re
    from pathlib import Path

    import vplan.configs

    named = []
    for preset in sorted(Path(vplan.configs.__file__).parent.rglob("*.yaml")):
        for module, name in re.findall(r"\b(vplan(?:\.[a-z_0-9]+)+)\.([A-Z]\w*Config)\b", preset.read_text()):
            defined_in = getattr(importlib.import_module(module), name).__module__
            named.append(name)
            assert defined_in == module, f"{preset.name}: {module}.{name} is defined in {defined_in}"
    assert len(named) >= 20


def test_an_out_that_cannot_be_written_is_refused_before_the_models_load(tmp_path, monkeypatch, capsys):
    """A read-only out= (or filesystem) was met at the first write: after ~9 s of loading for vplan finetune. Root
    writes anywhere, so the folder's permission is played by os.access."""
    import vplan.cli as cli

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False if str(path) == str(read_only) else
                        real_access(path, mode))
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "episodes=1", f"out={read_only / 'data'}"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == f"vplan collect: error: {read_only}: Permission denied"
    assert list(read_only.iterdir()) == []


def test_a_folder_that_cannot_be_read_is_one_line_not_a_traceback(tmp_path):
    """The CLI's early check of `data=` and the checkpoints met a PermissionError outside the handler that names
    the path (it was one line when the command itself met it)."""
    import shlex
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    prefix = []
    if os.geteuid() == 0:  # root reads any folder: drop the capabilities that let it
        if shutil.which("capsh") is None:
            pytest.skip("running as root without capsh to drop the permission override")
        prefix = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c"]
    try:
        for args in (["train", "component=idm", f"data={locked}"], ["run", f"worldmodel={locked}"]):
            command = [sys.executable, "-m", "vplan", *args]
            if prefix:
                command = [*prefix, shlex.join(command)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.strip().endswith(": Permission denied"), result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
    finally:
        locked.chmod(0o700)
