"""Durable writes (vplan/utils/files.py): whole or old, never half, and synced before the rename that publishes."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from vplan.errors import RunError
from vplan.loop.checkpoint import list_checkpoints, save_checkpoint
from vplan.utils.files import (
    folder_written_aside, fsync_tree, read_json_record, recover_folder, write_json, write_mp4, write_text_atomic,
)


@pytest.fixture
def synced(monkeypatch):
    """The paths os.fsync is called on, in order."""
    paths, fsync = [], os.fsync

    def recording(descriptor):
        paths.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    return paths


def test_a_write_replaces_the_file_whole_and_a_failed_one_keeps_the_old(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"episodes": [1]})
    write_json(path, {"episodes": [1, 2]})
    assert path.read_text() == '{\n  "episodes": [\n    1,\n    2\n  ]\n}\n'

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(path, "half")
    assert '"episodes"' in path.read_text() and os.listdir(tmp_path) == ["metrics.json"]  # no scratch file left


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.ENOSYS])
def test_a_filesystem_that_cannot_sync_a_folder_still_takes_writes(tmp_path, monkeypatch, code):
    """Some FUSE and network mounts refuse to sync a folder: every write failed there. A file's sync still counts."""
    fsync = os.fsync

    def no_folder_sync(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(code, os.strerror(code))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    monkeypatch.setattr(os, "fsync", lambda descriptor: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    with pytest.raises(OSError):  # a file's contents that cannot be made durable: the write fails
        write_json(tmp_path / "b.json", {"x": 2})


def test_a_write_syncs_its_scratch_file_then_the_folder(tmp_path, synced):  # the rename between: below
    write_text_atomic(tmp_path / "a.txt", "x")
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)


def test_a_tree_syncs_every_file_then_its_folders(tmp_path, synced):
    (tmp_path / "sub").mkdir()
    for name in ("a", "sub/b"):
        (tmp_path / name).write_text(name)
    fsync_tree(tmp_path)
    assert sorted(synced) == sorted(str(tmp_path / name) for name in ("", "a", "sub", "sub/b"))
    assert synced.index(str(tmp_path / "sub" / "b")) < synced.index(str(tmp_path / "sub"))  # a file before its folder
    assert synced[-1] == str(tmp_path)


def test_a_training_checkpoint_is_synced_before_it_is_renamed_into_place(tmp_path, synced):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    final = save_checkpoint(tmp_path, 3, model, optimizer, {})
    staged = str(tmp_path / ".tmp-checkpoint-0000003")
    assert {f"{staged}/{name}" for name in os.listdir(final)} <= set(synced)  # every file, under its staged name
    assert synced.index(staged) > max(synced.index(f"{staged}/{name}") for name in os.listdir(final))
    assert synced[-1] == str(tmp_path) and list_checkpoints(tmp_path) == [final]


def test_a_video_stopped_while_written_leaves_the_old_one(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    path = tmp_path / "real_vs_none.mp4"
    frames = [np.full((16, 16, 3), shade, np.uint8) for shade in range(0, 250, 50)]
    write_mp4(path, frames, fps=4)

    def stopped():  # ffmpeg has written part of the file when Ctrl-C comes
        yield from frames[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_mp4(path, stopped(), fps=4)
    assert len(imageio.mimread(path)) == 5 and os.listdir(tmp_path) == [path.name]


def test_scratch_files_a_killed_writer_left_are_cleared_by_the_next_write(tmp_path):
    import subprocess

    killed = subprocess.Popen(["true"])
    killed.wait()  # a process id no process has now
    writing = os.getppid()  # one that runs: its scratch file may be half-way, and stays
    # the names writers use (pid and a random part), and the pid alone of earlier versions
    for leftover in (f".real_vs_none.mp4.{killed.pid}-0a1b2c3d.tmp.mp4", f".metrics.json.{killed.pid}.tmp",
                     f".metrics.json.{killed.pid}-deadbeef.tmp", f".metrics.json.{writing}-deadbeef.tmp"):
        (tmp_path / leftover).write_bytes(b"half")
    write_mp4(tmp_path / "real_vs_none.mp4", [np.zeros((16, 16, 3), np.uint8)] * 2, fps=4)
    write_json(tmp_path / "metrics.json", {})
    assert sorted(os.listdir(tmp_path)) == [f".metrics.json.{writing}-deadbeef.tmp", "metrics.json",
                                            "real_vs_none.mp4"]


def test_a_cache_file_that_cannot_be_written_leaves_no_scratch(tmp_path, monkeypatch):
    from vplan.data.dataset import write_cache_file

    def full_disk(handle, array):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    assert not write_cache_file(tmp_path / "frames.npy", np.zeros(3), "frames*.npy")
    assert os.listdir(tmp_path) == []


def test_a_folder_replaces_the_old_whole_and_a_failed_one_keeps_it(tmp_path, synced):
    final = tmp_path / "final"
    with folder_written_aside(final) as folder:
        (folder / "weights").write_text("old")
    (tmp_path / ".final.old").mkdir()  # left by a kill between the two renames of an earlier save
    with folder_written_aside(final) as folder:
        (folder / "weights").write_text("new")
        (folder / "config.json").write_text("{}")
    assert sorted(os.listdir(final)) == ["config.json", "weights"] and (final / "weights").read_text() == "new"
    assert os.listdir(tmp_path) == ["final"]  # nothing aside
    assert synced.index(str(tmp_path / ".final.tmp" / "weights")) < synced.index(str(tmp_path / ".final.tmp"))
    assert synced[-1] == str(tmp_path)  # the rename synced after the folder

    with pytest.raises(KeyboardInterrupt):
        with folder_written_aside(final) as folder:
            (folder / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (final / "weights").read_text() == "new" and os.listdir(tmp_path) == ["final"]


def test_a_swap_cut_between_its_renames_is_finished_before_the_next_save(tmp_path):
    """A kill after the old folder went aside and before the new one came in leaves no `final`: the next save
    first puts the (complete) new one in place, so even if that save fails there is a `final`."""
    final = tmp_path / "final"
    for name, text in ((".final.old", "previous"), (".final.tmp", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text(text)
    with pytest.raises(KeyboardInterrupt):
        with folder_written_aside(final) as folder:
            (folder / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (final / "weights").read_text() == "new" and os.listdir(tmp_path) == ["final"]


def test_ctrl_c_between_the_renames_keeps_the_new_folder_aside(tmp_path, monkeypatch):
    """Only a kill kept it: Ctrl-C there deleted the complete new folder, and `final` was gone until the next save."""
    final = tmp_path / "final"
    with folder_written_aside(final) as folder:
        (folder / "weights").write_text("old")
    replace = os.replace

    def interrupted_after_the_first(source, target):
        replace(source, target)
        if str(target).endswith(".final.old"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        with folder_written_aside(final) as folder:
            (folder / "weights").write_text("new")
    monkeypatch.undo()
    recover_folder(final)
    assert (final / "weights").read_text() == "new" and os.listdir(tmp_path) == ["final"]


def test_renames_are_synced_after_they_happen(tmp_path, synced, monkeypatch):
    replace = os.replace

    def recorded(source, target):
        replace(source, target)
        synced.append(f"renamed to {target}")

    monkeypatch.setattr(os, "replace", recorded)
    write_text_atomic(tmp_path / "a.txt", "x")
    with folder_written_aside(tmp_path / "final") as folder:
        (folder / "w").write_text("w")
    for name in ("a.txt", "final"):
        renamed = synced.index(f"renamed to {tmp_path / name}")
        assert str(tmp_path) in synced[renamed + 1:], name  # the folder synced after the rename, not before


def test_a_video_in_a_relative_folder_with_a_colon_is_written_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ffmpeg read "run:2/..." as the protocol "run"
    (tmp_path / "run:2").mkdir()
    write_mp4(Path("run:2/episode.mp4"), [np.zeros((16, 16, 3), np.uint8)] * 3, fps=4)
    assert os.listdir(tmp_path / "run:2") == ["episode.mp4"]


def test_a_video_ffmpeg_cannot_write_is_an_error_and_the_old_one_stays(tmp_path):
    path = tmp_path / "episode.mp4"
    write_mp4(path, [np.zeros((16, 16, 3), np.uint8)] * 3, fps=4)
    with pytest.raises(RunError, match=r"ffmpeg wrote 0 of 3 frames \(frames of 63x65x3\)"):
        write_mp4(path, [np.zeros((63, 65, 3), np.uint8)] * 3, fps=4)  # yuv420p needs even sizes
    import imageio.v2 as imageio

    assert len(imageio.mimread(path)) == 3 and os.listdir(tmp_path) == ["episode.mp4"]


@pytest.mark.parametrize("free", [0, 2**30])
def test_a_video_ffmpeg_stops_writing_is_one_line_naming_it(tmp_path, monkeypatch, free):
    """ffmpeg cut off by a full disk: a broken pipe with no errno, or ffmpeg's whole banner from reading the cut
    file back, each a traceback naming a scratch file."""
    import shutil

    import imageio.v2 as imageio

    class BrokenPipe:
        def __init__(self, target, **kwargs):
            self.target = Path(target)

        def close(self):
            pass

        def append_data(self, frame):
            self.target.write_bytes(b"cut")
            raise OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg -y ...\n\nFFMPEG STDERR OUTPUT:\n"
                          "av_interleaved_write_frame(): No space left on device")

    monkeypatch.setattr(imageio, "get_writer", BrokenPipe)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))
    said = "the disk is full: free some space" if free == 0 else "av_interleaved_write_frame(): No space left on device"
    with pytest.raises(RunError, match=rf"^{re.escape(str(tmp_path / 'a.mp4'))}: ffmpeg could not write the video "
                                       rf"\({re.escape(said)}\); the old video, if any, is kept$"):
        write_mp4(tmp_path / "a.mp4", [np.zeros((16, 16, 3), np.uint8)] * 3, fps=4)
    assert os.listdir(tmp_path) == []


def test_two_writers_of_one_path_never_share_a_scratch_file(tmp_path):
    """Processes of one pid number (containers on one disk) must not write into one scratch file."""
    from vplan.utils.files import file_written_aside

    with file_written_aside(tmp_path / "a.json") as first, file_written_aside(tmp_path / "a.json") as second:
        assert first != second and first.name.startswith(f".a.json.{os.getpid()}-")
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "a.json").read_text() == "1"  # the outer block ends last


def test_a_failed_write_names_the_file_not_its_scratch_name(tmp_path):
    """An out= that could not be written said ".checkpoints.json.15131-9792b572.tmp: Operation not permitted"."""
    from vplan.utils.files import write_json

    (tmp_path / "checkpoints.json").mkdir()  # os.replace onto a folder fails, as a read-only one would
    with pytest.raises(OSError) as raised:
        write_json(tmp_path / "checkpoints.json", {})
    assert (raised.value.filename, raised.value.filename2) == (str(tmp_path / "checkpoints.json"), None)
    assert os.listdir(tmp_path) == ["checkpoints.json"]


def test_an_empty_video_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="expected at least one frame, got none"):
        write_mp4(tmp_path / "empty.mp4", [], fps=4)
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_pruned_partway_is_no_longer_counted_and_the_next_save_clears_it(tmp_path, monkeypatch):
    """rmtree deletes in the directory's order: a kill could leave trainer_state.json beside half the weights,
    listed as a complete checkpoint (and the one to resume from after a newer one was found damaged)."""
    import shutil

    from vplan.loop import checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, {}, keep=1)
    remove = shutil.rmtree

    def killed(path, *args, **kwargs):
        if not path.exists():  # the new checkpoint's own name, cleared before the rename
            return remove(path, *args, **kwargs)
        (path / checkpoint.MODEL_FILE).unlink(missing_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, optimizer, {}, keep=1)  # pruning step 1 is cut short
    monkeypatch.setattr(checkpoint.shutil, "rmtree", remove)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0000002"]
    assert (tmp_path / "checkpoint-0000001").is_dir()  # what the kill left: no checkpoint, its space held ...
    (tmp_path / "checkpoint-0000001.bak").mkdir()  # (a user's copy: not the trainer's to remove)
    save_checkpoint(tmp_path, 3, model, optimizer, {}, keep=1)  # ... until the next save removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001.bak", "checkpoint-0000003"]


def test_plots_leave_the_users_backend_and_figures_alone(tmp_path):
    """Each plot switched the process to Agg (a notebook's plt.show() then showed nothing) and was a pyplot
    figure, left open where drawing it failed."""
    import matplotlib
    import matplotlib.pyplot as plt

    from vplan.utils.plots import bar_plot, line_plot

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figure = plt.figure()
        line_plot(tmp_path / "line.png", {"a": ([0, 1], [1.0, 2.0])}, "step", "loss", "title")
        bar_plot(tmp_path / "bar.png", {"a": (1.0, 0.1)}, "y", "title")
        with pytest.raises(ValueError):
            line_plot(tmp_path / "bad.png", {"a": ([0, 1, 2], [1.0])}, "step", "loss", "title")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [figure.number]
        assert (tmp_path / "line.png").read_bytes().startswith(b"\x89PNG") and not (tmp_path / "bad.png").exists()
        plt.close(figure)
    finally:
        matplotlib.use(backend)


def test_a_training_checkpoint_passed_as_a_model_says_how_to_finish_it(tmp_path):
    """An unfinished run (no final/ yet) or one of its checkpoint-N folders was told "no checkpoint; train one"."""
    from vplan.errors import UsageError
    from vplan.shipped import check_checkpoints_exist

    model = torch.nn.Linear(2, 2)
    step = save_checkpoint(tmp_path, 300, model, torch.optim.AdamW(model.parameters()), {})
    for given in (tmp_path, step):
        with pytest.raises(UsageError, match=rf"^worldmodel={given}: a training checkpoint, for resuming, not "
                                             rf"loading; .* then pass worldmodel={tmp_path}/final$"):
            check_checkpoints_exist({"worldmodel": str(given)})


def test_a_training_checkpoint_of_a_finished_run_says_to_pass_its_final(tmp_path):
    """A checkpoint-N folder of a run that has its final/ was told to run the same command again to finish it."""
    from vplan.errors import UsageError
    from vplan.shipped import check_checkpoints_exist

    model = torch.nn.Linear(2, 2)
    step = save_checkpoint(tmp_path, 300, model, torch.optim.AdamW(model.parameters()), {})
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match=rf"^worldmodel={step}: a training checkpoint, for resuming, not loading; its "
                                         rf"run has finished: pass worldmodel={tmp_path}/final$"):
        check_checkpoints_exist({"worldmodel": str(step)})


def test_an_optimizer_file_without_metadata_is_an_error_the_trainer_names(tmp_path):
    """A safetensors file not written by save_optimizer has no metadata: a TypeError, which the trainer's
    one-line handler (RuntimeError, ValueError, KeyError) did not catch."""
    from safetensors.torch import save_file

    from vplan.loop.checkpoint import load_optimizer

    save_file({"0.exp_avg": torch.zeros(2)}, tmp_path / "optimizer.safetensors")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="holds no optimizer settings"):
        load_optimizer(torch.optim.AdamW(model.parameters()), tmp_path / "optimizer.safetensors")


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe", "UnicodeDecodeError"), (b'{"episodes": [', "JSONDecodeError"), (b"[1]", "a JSON list, not an object"),
    (b'{"episodes": []}', "no wall_s_total"),
])
def test_a_damaged_record_names_the_file_and_what_to_do(tmp_path, content, says):
    """A disk fault or a hand edit: a traceback (or a KeyError further on) before."""
    record = tmp_path / "metrics.json"
    record.write_bytes(content)
    with pytest.raises(RunError, match=f"metrics.json is damaged .*{says}.*; choose another out=DIR"):
        read_json_record(record, "choose another out=DIR", keys=("episodes", "wall_s_total"))
    write_json(record, {"episodes": [], "wall_s_total": 1.5})
    assert read_json_record(record, "", keys=("episodes",)) == {"episodes": [], "wall_s_total": 1.5}


def test_a_log_axis_only_for_values_spanning_a_decade(tmp_path, monkeypatch):
    """A diffusion loss from 0.30 to 0.25 on a log axis showed two labelled ticks at best."""
    import vplan.utils.plots as plots

    scales = []
    monkeypatch.setattr(plots, "_save", lambda figure, axis, path, title: scales.append(axis.get_yscale()))
    plots.line_plot(tmp_path / "a.png", {"loss": ([1, 2], [0.30, 0.25])}, "step", "loss", "t", log_y=True)
    plots.line_plot(tmp_path / "b.png", {"loss": ([1, 2], [3.0, 0.25])}, "step", "loss", "t", log_y=True)
    nan = float("nan")  # a diverged point is not drawn, so it does not decide the axis (min() of a nan list is nan)
    plots.line_plot(tmp_path / "c.png", {"loss": ([1, 2, 3], [nan, 3.0, 0.25])}, "step", "loss", "t", log_y=True)
    assert scales == ["linear", "log", "log"]


def test_a_bar_plot_of_distances_starts_at_0_and_keeps_a_row_without_a_value(tmp_path, monkeypatch):
    """dist.png's error bars (mean ± std) went below 0 m, and a row whose episodes had no finite Dist was left
    out without a word."""
    import vplan.utils.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, axis, path, title: drawn.append(axis))
    plots.bar_plot(tmp_path / "dist.png", {"a": (0.02, 0.05), "b": (None, None), "c": (0.04, 0.01)}, "Dist", "t")
    axis = drawn[0]
    assert axis.get_ylim()[0] == 0
    assert [t.get_text() for t in axis.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in axis.texts] == ["no value"]


def test_every_label_and_legend_stays_inside_its_figure_and_lines_differ(tmp_path, monkeypatch):
    """bench planning's y label ran off both ends of dist.png; a checkpoint's long path pushed open_loop.png's
    legend off the figure and over the axis; rewards.png's legend covered lines; coinciding lines hid each other."""
    import vplan.utils.plots as plots

    drawn, save = [], plots._save

    def kept(figure, axis, path, title):
        save(figure, axis, path, title)
        drawn.append((figure, axis))

    monkeypatch.setattr(plots, "_save", kept)
    plots.bar_plot(tmp_path / "dist.png", {f"row {i} (a long name)": (0.1, 0.05) for i in range(5)},
                   "Dist (m), lower is better", "return_cubes on tabletop: mean ± std over 20 held-out seeds")
    long = "/home/someone/projects/vplan-experiments/checkpoints/worldmodel_text_3400steps/final"
    plots.line_plot(tmp_path / "open_loop.png", {f"checkpoint {long}": ([0, 1, 2], [20.0, 19.0, 18.0]),
                                                 "copy the last real frame": ([0, 1, 2], [19.0, 18.0, 17.0])},
                    "chunk", "PSNR (dB)", "open loop")
    plots.line_plot(tmp_path / "rewards.png", {name: ([0, 1, 2], [0.0, 0.0, 0.0]) for name in
                                               ("reward", "success rate", "outcome", "executability", "consistency")},
                    "iteration", "mean over the explored episodes", "rewards")
    for figure, axis in drawn:
        renderer, bounds = figure.canvas.get_renderer(), figure.bbox
        texts = [axis.title, axis.xaxis.label, axis.yaxis.label] + ([axis.get_legend()] if axis.get_legend() else [])
        for text in texts:
            box = text.get_window_extent(renderer)
            assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1, text
        if axis.get_legend() is not None and len(axis.lines) > 3:  # beside the axes, over no line
            assert axis.get_legend().get_window_extent(renderer).x0 > axis.get_window_extent(renderer).x1
        if axis.get_legend() is not None:  # the line plots: each line its own style
            assert len({(line.get_linestyle(), line.get_marker()) for line in axis.lines}) == len(axis.lines)
    assert "…" in drawn[1][1].get_legend().get_texts()[0].get_text()


def test_written_weights_get_the_permissions_the_umask_gives_a_new_file(tmp_path):
    """safetensors writes 0600 whatever the umask: a checkpoint in a folder a group shares was its owner's alone,
    beside JSON files the group could read."""
    from safetensors.torch import save_file

    from vplan.utils.files import file_written_aside, folder_written_aside

    before = os.umask(0o027)
    try:
        with folder_written_aside(tmp_path / "model") as folder:
            save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
        with file_written_aside(tmp_path / "state.safetensors") as scratch:
            save_file({"w": torch.zeros(2)}, scratch)
        model = torch.nn.Linear(2, 2)
        checkpoint = save_checkpoint(tmp_path / "run", 1, model, torch.optim.AdamW(model.parameters()), {})
        written = [tmp_path / "model" / "model.safetensors", tmp_path / "state.safetensors",
                   *checkpoint.glob("*.safetensors")]
        assert len(written) == 4 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o640}
    finally:
        os.umask(before)


def test_the_env_renders_the_frames_of_the_world_model_it_runs(capsys, tmp_path):
    """A 16-px model beside the 64-px default was refused, naming env.image_size=16 to pass at every command."""
    from dataclasses import replace

    from vplan.envs import BlockworldConfig, MineRLConfig, TabletopConfig
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.shipped import with_checkpoint_frames
    from vplan.tasks import TaskConfig

    cfg = EvalWorldModelConfig(env=TabletopConfig(image_size=16), task=TaskConfig.preset("return_cubes"))
    sized = with_checkpoint_frames(cfg, "shipped:tabletop/worldmodel", "checkpoint")
    assert sized.env == TabletopConfig(image_size=64) and cfg.env.image_size == 16  # a new config
    assert capsys.readouterr().out == "env.image_size=64, the frames checkpoint=shipped:tabletop/worldmodel draws " \
                                      "(not 16)\n"
    assert with_checkpoint_frames(sized, "shipped:tabletop/worldmodel", "checkpoint") is sized  # as it is: silent
    assert capsys.readouterr().out == ""
    for unchanged in (replace(cfg, env=MineRLConfig()), cfg):  # no image_size; a checkpoint not there (said later)
        assert with_checkpoint_frames(unchanged, "/nowhere", "checkpoint") is unchanged
    blockworld = replace(cfg, env=BlockworldConfig(image_size=32), task=TaskConfig.preset("retrace"))
    assert with_checkpoint_frames(blockworld, "shipped:nothing/worldmodel", "checkpoint") is blockworld
    damaged = tmp_path / "damaged"  # a size no env renders: left to the checkpoint's loader to name (a traceback)
    damaged.mkdir()
    (damaged / "config.json").write_text(json.dumps({"config": {"vae": {"image_size": 2048}}}))
    assert with_checkpoint_frames(cfg, str(damaged), "checkpoint") is cfg and capsys.readouterr().out == ""
