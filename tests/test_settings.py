"""Continuing a run never mixes two configs or two models: the recorded settings are compared with the current
ones (every difference named; a setting the code gained since the run, at its default, is none), and the
checkpoints' files with those the run used. A checkpoint about to run in another env than the one it was trained on
is named in a warning."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import pytest

from vplan.errors import UsageError
from vplan.shipped import (
    PINNED_FILE,
    OtherEnvWarning,
    checkpoint_fingerprint,
    pin_checkpoints,
    trained_on_env,
    warn_if_trained_elsewhere,
)
from vplan.utils.settings import changed_settings, changes_said, plain


@dataclass
class Inner:
    rank: int = 4
    modules: tuple[str, ...] = ("to_q", "to_k")
    added: bool = False  # a field the code gained after the run was recorded


@dataclass
class Outer:
    seed: int = 0
    episodes: int = 1
    inner: Inner = field(default_factory=Inner)
    added_inner: Inner = field(default_factory=lambda: Inner(rank=8))


def test_same_settings_and_ignored_names_are_no_difference():
    cfg = Outer(episodes=5)
    assert changed_settings(plain(Outer()), plain(cfg), cfg, ignore=("episodes",)) == []
    assert changed_settings(plain(Outer()), plain(cfg), cfg) == ["episodes"]


def test_a_refused_resume_says_each_value_recorded_and_given():
    """It named the settings alone ("other settings of seed"): which seed to pass again was in config.yaml."""
    cfg = Outer(seed=5, inner=Inner(added=True, modules=("to_q",) * 30))
    saved = plain(Outer())
    del saved["inner"]["added"]  # recorded before the code had it: its default then
    saved["gone"] = 1  # a setting the code has lost since
    changed = changed_settings(saved, plain(cfg), cfg)
    assert changed == ["gone", "inner.added", "inner.modules", "seed"]
    assert changes_said(changed, saved, plain(cfg), cfg) == [
        "gone=1 when it began, not a setting now", "inner.added=false when it began, true now",
        "inner.modules=['to_q', 'to_k'] when it began, "
        "['to_q', 'to_q', 'to_q', 'to_q', 'to_q', 'to_q', 'to_q', ... now",  # cut at 60 characters
        "seed=0 when it began, 5 now"]


def test_one_path_spelled_two_ways_is_no_difference():
    """A shell's completion adds a trailing slash: the resume of the same command with it was refused."""
    saved = {"data": "/tmp/smoke", "vae": "checkpoints/vae/final", "instruction": "go"}
    same = {"data": "/tmp/smoke/", "vae": "./checkpoints//vae/final", "instruction": "go"}
    assert changed_settings(saved, same) == []
    assert changed_settings(saved, {"data": "/tmp/other", "vae": "checkpoints/vae", "instruction": "go/"}) == [
        "data", "instruction", "vae"]
    assert changed_settings(saved, {**same, "data": "/tmp/x/../smoke"}) == ["data"]  # x may be a symbolic link
    assert changed_settings({"data": "../data/smoke"}, {"data": "../data/smoke/"}) == []  # run from a subfolder


def test_a_url_secret_recorded_before_it_was_redacted_is_no_difference():
    saved = {"base_url": "https://h.example/v1?api-key=sk-old"}  # written in full by an older vplan
    assert changed_settings(saved, {"base_url": "https://h.example/v1?api-key=<redacted>"}) == []
    assert changed_settings(saved, {"base_url": "https://other.example/v1?api-key=<redacted>"}) == ["base_url"]


def test_a_key_is_not_a_setting_a_resume_compares():
    """Records written before vplan redacted secrets hold the key; a key given by the environment is null in the
    record; a rotated one is another key: each still resumes."""
    saved = {"planner": {"llm": {"api_key": "sk-old", "model": "m"}}}
    current = {"planner": {"llm": {"api_key": "<redacted>", "model": "m"}}}
    assert changed_settings(saved, current) == []
    assert changed_settings(saved, {"planner": {"llm": {"api_key": "<redacted>", "model": "n"}}}) == ["planner.llm.model"]
    from_env = {"planner": {"llm": {"api_key": None, "model": "m"}}}
    assert changed_settings(current, from_env) == changed_settings(from_env, current) == []
    assert changed_settings({"planner": {"llm": {"model": "m"}}}, current) == []  # a record without the field


def test_every_difference_is_named_by_its_dotted_path():
    cfg = Outer(seed=3, inner=Inner(rank=2, modules=("to_v",)))
    assert changed_settings(plain(Outer()), plain(cfg), cfg) == ["inner.modules", "inner.rank", "seed"]


def test_a_setting_added_since_counts_only_away_from_its_default():
    saved = plain(Outer())
    del saved["inner"]["added"], saved["added_inner"]  # recorded before these fields existed
    assert changed_settings(saved, plain(Outer()), Outer()) == []
    cfg = Outer(inner=Inner(added=True), added_inner=Inner(rank=16))
    assert changed_settings(saved, plain(cfg), cfg) == ["added_inner", "inner.added"]


def test_a_setting_the_code_no_longer_has_is_a_difference():
    saved = {**plain(Outer()), "removed": 1}
    assert changed_settings(saved, plain(Outer()), Outer()) == ["removed"]


def test_another_commands_settings_are_never_written_over(tmp_path):
    """`vplan train out=<a collect dataset>` replaced its config.yaml: the dataset's own resume was then refused
    for good ('ran with other settings of component, data, ...')."""
    from vplan.eval.progress import start_or_continue
    from vplan.utils.settings import write_config

    (tmp_path / "config.yaml").write_text("env: {name: tabletop}\ntask: {name: return_cubes}\nseed: 0\n")
    with pytest.raises(UsageError, match=r"holds another command's settings \(config.yaml, with env, task\); "
                                         r"choose another out=DIR"):
        write_config(tmp_path, Outer())
    assert "env:" in (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text("seed: 3\nepisodes: 1\n")  # its own, older: written over
    write_config(tmp_path, Outer())
    assert "inner:" in (tmp_path / "config.yaml").read_text()
    model = tmp_path / "final"  # `vplan train out=<a trained model>` filled it with checkpoints and a final/
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(UsageError, match=r"final holds a model checkpoint \(config.json\).*choose another out=DIR"):
        write_config(model, Outer())
    from vplan.eval.bench_record import make_out_dir

    with pytest.raises(UsageError, match="final holds a model checkpoint"):  # a bench's results.json
        make_out_dir(str(model), "bench env")
    with pytest.raises(UsageError, match="final holds a model checkpoint"):  # an evaluation's progress.json
        start_or_continue(Outer(), model, (), {}, lambda progress: "", [])
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    # inside a model (an evaluation put in an rl run's final/ went when the run was taken further, helper-209)
    (model / "config.json").write_text('{"kind": "vplan-worldmodel"}')
    with pytest.raises(UsageError, match=r"eval/deeper is inside .*final, a vplan model or training checkpoint: the "
                                         r"run that wrote it replaces it whole"):
        make_out_dir(str(model / "eval" / "deeper"), "bench env")
    make_out_dir(str(model / ".." / "beside"), "bench env")  # `..` taken as written: inside final/ (helper-211)
    (model / "config.json").write_text('{"architectures": ["BertModel"]}')  # another tool's model: not vplan's
    (model / "model.safetensors").write_bytes(b"")
    make_out_dir(str(model / "eval"), "bench env")
    # where a run keeps its model or training state: its final/ when missing (a resume replaced the command's files)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    for name in ("final", "checkpoint", "checkpoint-0000004", "inner"):
        with pytest.raises(UsageError, match=rf"run/{name}: .*run holds a command's run \(config.yaml\), and "
                                             rf"{name}/ is where a training, finetune or rl run keeps its model or "
                                             r"training state, .*choose another out=DIR \(beside it, e.g. "
                                             r".*run/eval\)"):
            write_config(run / name, Outer())
    (run / "eval").mkdir()
    write_config(run / "eval", Outer())  # beside them: a folder of its own

    @dataclass
    class Evaluation:
        resume: bool = False
        overwrite: bool = False
        episodes: int = 1

    with pytest.raises(UsageError, match=r"holds another command's settings \(config.yaml\)"):  # a run's: its
        start_or_continue(Evaluation(), tmp_path, (), {}, lambda progress: "", [])  # metrics.json would go
    (tmp_path / "config.yaml").unlink()
    (tmp_path / "progress.json").write_text(json.dumps({"settings": {"chunks": 32, "modes": ["none"]}}))
    with pytest.raises(UsageError, match=r"holds another command's evaluation \(progress.json, with settings "
                                         r"chunks, modes\)"):
        start_or_continue(Evaluation(), tmp_path, (), {}, lambda progress: "", [])
    assert (tmp_path / "progress.json").is_file()


def test_each_kind_of_command_refuses_the_records_of_the_others(tmp_path):
    """An eval's or a bench's folder held no config.yaml, so run, collect, train and finetune wrote into it (and
    `vplan run overwrite=true` replaced an evaluation's metrics.json); an evaluation and a bench wrote beside each
    other's records (helper-197)."""
    from vplan.eval.bench_record import make_out_dir
    from vplan.eval.progress import start_or_continue
    from vplan.utils.settings import refuse_other_records, write_config

    @dataclass
    class Evaluation:
        resume: bool = False
        overwrite: bool = True
        episodes: int = 1

    writers = {"config.yaml": lambda out: write_config(out, Outer()),
               "progress.json": lambda out: start_or_continue(Evaluation(), out, (), {}, lambda progress: "", []),
               "results.json": lambda out: make_out_dir(str(out), "bench env"),
               "inner/settings.json": lambda out: refuse_other_records(out, "inner/settings.json")}  # finetune's
    records = {"config.yaml": "seed: 0\n", "progress.json": json.dumps({"settings": {"episodes": 1}}),
               "results.json": json.dumps({"command": "bench memory"}), "inner/settings.json": "{}"}
    kinds = {"config.yaml": "another command's settings", "progress.json": "another command's evaluation",
             "results.json": "vplan bench memory's results", "inner/settings.json": "a `vplan finetune` run"}
    for held, record in records.items():
        out = tmp_path / held.replace("/", "_")
        (out / held).parent.mkdir(parents=True)
        (out / held).write_text(record)
        (out / "metrics.json").write_text("{}")
        for own, write in writers.items():
            if own == held:
                continue
            with pytest.raises(UsageError, match=fr"holds {kinds[held]} \({held}\); choose another out=DIR"):
                write(out)
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted([held, "metrics.json"])
    (tmp_path / "results.json" / "results.json").write_text(json.dumps({"command": "bench env"}))
    refuse_other_records(tmp_path / "results.json", "results.json", "bench env")  # its own bench's
    with pytest.raises(UsageError, match=r"results.json holds the results of vplan bench env, not of vplan bench "
                                         r"memory; choose another out=DIR"):
        refuse_other_records(tmp_path / "results.json", "results.json", "bench memory")


def test_a_resumed_run_stops_when_a_checkpoints_files_changed(tmp_path):
    checkpoint, out = tmp_path / "model", tmp_path / "run"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"first")
    pin_checkpoints(out, {"worldmodel": str(checkpoint)}, resuming=False)
    pinned = json.loads((out / PINNED_FILE).read_text())
    assert pinned["worldmodel"]["checkpoint"] == str(checkpoint)
    pin_checkpoints(out, {"worldmodel": str(checkpoint), "idm": "shipped:tabletop/idm"}, resuming=True)
    assert json.loads((out / PINNED_FILE).read_text())["worldmodel"] == pinned["worldmodel"]  # one more, kept

    (checkpoint / "weights.safetensors").write_bytes(b"retrained")
    with pytest.raises(UsageError, match=r"worldmodel=.*files changed since .*choose another out=DIR"):
        pin_checkpoints(out, {"worldmodel": str(checkpoint)}, resuming=True)
    pin_checkpoints(out, {"worldmodel": str(checkpoint)}, resuming=False)  # a fresh run in the same out: no check
    assert json.loads((out / PINNED_FILE).read_text())["worldmodel"] != pinned["worldmodel"]


def test_an_evaluations_checkpoint_is_refused_by_its_setting_and_pinned_as_before(tmp_path):
    """The evaluations' `checkpoint=` was refused as "worldmodel=..." (helper-207); their folders pinned it as
    "worldmodel" and still resume."""
    checkpoint, out = tmp_path / "model", tmp_path / "eval"
    checkpoint.mkdir()
    (checkpoint / "weights.safetensors").write_bytes(b"first")
    (out / "ignored").mkdir(parents=True)
    (out / PINNED_FILE).write_text(json.dumps(
        {"worldmodel": {"checkpoint": str(checkpoint), "fingerprint": checkpoint_fingerprint(checkpoint)}}))
    assert pin_checkpoints(out, {"checkpoint": str(checkpoint)}, resuming=True) == {
        "checkpoint": checkpoint_fingerprint(checkpoint)}
    assert set(json.loads((out / PINNED_FILE).read_text())) == {"worldmodel"}
    (checkpoint / "weights.safetensors").write_bytes(b"retrained")
    with pytest.raises(UsageError, match=r"^checkpoint=.*files changed since"):
        pin_checkpoints(out, {"checkpoint": str(checkpoint)}, resuming=True)


@pytest.mark.parametrize(("text", "what"), [
    ("seed: [1\n", r"ParserError"), ("- 1\n- 2\n", "it holds a list"), ("", "it holds no settings"),
    ("{}\n", "it holds no settings"),
])
def test_a_damaged_config_record_is_named(tmp_path, text, what):
    """yaml's ParserError, a TypeError or an AttributeError came out of a resume; an empty record matched any
    settings at their defaults, so a resume went on under them."""
    from vplan.errors import RunError
    from vplan.utils.settings import check_same_config, write_config

    (tmp_path / "config.yaml").write_text(text)
    pattern = rf"config.yaml is damaged \(.*{what}.*\); restore it, or choose another out=DIR"
    with pytest.raises(RunError, match=pattern):
        check_same_config(Outer(), tmp_path / "config.yaml", ())
    with pytest.raises(RunError, match=pattern):
        write_config(tmp_path, Outer())


@pytest.mark.parametrize("text", ['{"worldmodel": ', "[1]", '{"worldmodel": "x"}', '{"idm": {}}'])
def test_a_damaged_checkpoints_record_is_named(tmp_path, text):
    from vplan.errors import RunError

    (tmp_path / PINNED_FILE).write_text(text)
    with pytest.raises(RunError, match=rf"{PINNED_FILE} is damaged .*restore it, or choose another out=DIR"):
        pin_checkpoints(tmp_path, {"idm": "shipped:tabletop/idm"}, resuming=True)


def test_a_run_begun_before_checkpoints_were_recorded_continues_with_a_warning(tmp_path, capsys):
    from vplan.errors import VplanWarning

    with pytest.warns(VplanWarning, match="does not record which checkpoint files"):
        pin_checkpoints(tmp_path, {"idm": "shipped:tabletop/idm"}, resuming=True)
    assert set(json.loads((tmp_path / PINNED_FILE).read_text())) == {"idm"}


def test_a_checkpoint_from_another_env_is_named_in_a_warning(tmp_path):
    assert [trained_on_env(f"shipped:{env}/{c}") for env in ("tabletop", "blockworld") for c in ("worldmodel", "idm")] \
        == ["tabletop", "tabletop", "blockworld", "blockworld"]
    with pytest.warns(OtherEnvWarning) as caught:
        warn_if_trained_elsewhere({"worldmodel": "shipped:tabletop/worldmodel", "idm": "shipped:blockworld/idm"},
                                  "blockworld")
    assert [str(w.message) for w in caught] == [
        "worldmodel=shipped:tabletop/worldmodel was trained on tabletop episodes, and this env is blockworld; pass "
        "worldmodel= a checkpoint trained on blockworld"]
    # The note is not part of the fingerprint: runs pinned to a checkpoint before it gained one still resume.
    checkpoint = tmp_path / "noted"
    checkpoint.mkdir()
    payload = {"kind": "vplan-idm", "format_version": 1, "config": {"image_size": 64}}
    (checkpoint / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
    before = checkpoint_fingerprint(checkpoint)
    (checkpoint / "config.json").write_text(json.dumps({**payload, "trained_on_env": "tabletop"}, indent=2) + "\n")
    assert checkpoint_fingerprint(checkpoint) == before
    (checkpoint / "config.json").write_text(json.dumps({**payload, "config": {"image_size": 32}}, indent=2) + "\n")
    assert checkpoint_fingerprint(checkpoint) != before
    unrecorded = tmp_path / "before"  # a checkpoint written before vplan recorded its env, or not one at all
    unrecorded.mkdir()
    (unrecorded / "config.json").write_text(json.dumps({"kind": "vplan-idm", "format_version": 1, "config": {}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_trained_elsewhere({"idm": str(unrecorded), "compare": str(tmp_path / "missing"), "other": None},
                                  "tabletop")


def test_an_unreadable_dataset_record_only_costs_the_exploration_warning(tmp_path):
    """Read for a warning, a damaged dataset config.yaml stopped vplan train, advising another out=."""
    from vplan.data.collect import warn_if_exploring
    from vplan.errors import VplanWarning

    (tmp_path / "config.yaml").write_text("")
    with pytest.warns(VplanWarning, match=r"whether .* holds exploratory segments is unknown: .*config.yaml is "
                                          r"damaged .*; restore it from a copy of the dataset"):
        warn_if_exploring(tmp_path)


def test_a_missing_record_is_called_missing(tmp_path):
    from vplan.errors import RunError
    from vplan.utils.settings import check_same_config

    with pytest.raises(RunError, match=r"config.yaml is missing; restore it, or choose another out=DIR"):
        check_same_config(Outer(), tmp_path / "config.yaml", ())
