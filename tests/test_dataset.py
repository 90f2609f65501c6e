"""Episode datasets: LeRobot v3.0 layout, exact round trip, resume, crash safety, frame cache, torch view."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vplan.constants import (
    ACTION,
    EPISODE_INDEX,
    FRAME_INDEX,
    INDEX,
    OBS_ENV_STATE,
    OBS_IMAGE_FRONT,
    OBS_STATE,
    SUBGOAL,
    SUCCESS,
    TASK_INDEX,
    TIMESTAMP,
)
from vplan.data import DatasetError, EpisodeDataset, EpisodeWriter
from vplan.data import dataset as dataset_module
from vplan.data.dataset import EPISODE_META, chunk_subgoal
from vplan.data.lerobot_format import INFO_PATH, STAGING_DIR, STANDARD_EPISODE_COLUMNS, encode_video
from vplan.errors import DamagedDatasetError

FPS = 10
SIZE = 32
FEATURES = {
    OBS_IMAGE_FRONT: {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]},
    OBS_STATE: {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]},
    OBS_ENV_STATE: {"dtype": "float32", "shape": [9], "names": None},
    ACTION: {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "grip"]},
    SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
}
MIN_PSNR = 35.0  # the world model's VAE needs >= 30 dB; the mp4 round trip must stay well above it


def make_episode(seed: int, length: int = 4) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """A deterministic tabletop-like episode: gradient table, moving coloured squares, random low-dim data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frames = np.empty((length, SIZE, SIZE, 3), np.uint8)
    for t in range(length):
        frames[t] = np.stack([120 + 3 * y, 100 + 2 * x, 80 + x + y], axis=-1).astype(np.uint8)
        for colour, (cx, cy) in zip(
            ([220, 30, 30], [30, 200, 40]), ((6 + t + seed, 8), (20, 14 + t)), strict=True
        ):
            frames[t, cy : cy + 6, cx % (SIZE - 6) : cx % (SIZE - 6) + 6] = colour
    data = {
        OBS_IMAGE_FRONT: frames,
        OBS_STATE: rng.normal(size=(length, 4)).astype(np.float32),
        OBS_ENV_STATE: rng.normal(size=(length, 9)).astype(np.float32),
        ACTION: rng.normal(size=(length, 4)).astype(np.float32),
        SUCCESS: np.arange(length) == length - 1,
    }
    subgoals = ["move the red cube away"] * (length // 2) + [f"return cube {seed % 2}"] * (
        length - length // 2
    )
    extra = {"instruction": "move the cubes, then put them back", "seed": seed, "success": seed % 2 == 0}
    return data, subgoals, extra


def write(root: Path, seeds: list[int], **kwargs) -> None:
    with EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop", **kwargs) as writer:
        for seed in seeds:
            writer.add_episode(*make_episode(seed, length=3 + seed % 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def check_episodes(root: Path, seeds: list[int]) -> EpisodeDataset:
    """Every episode reads back exactly (frames above MIN_PSNR); global indices continue across episodes."""
    ds = EpisodeDataset(root)
    assert ds.num_episodes == len(seeds)
    first = 0
    for episode, seed in enumerate(seeds):
        data, subgoals, extra = make_episode(seed, length=3 + seed % 3)
        got = ds.episode(episode)
        length = len(subgoals)
        for key in (OBS_STATE, OBS_ENV_STATE, ACTION, SUCCESS):
            np.testing.assert_array_equal(got[key], data[key])
            assert got[key].dtype == data[key].dtype
        assert got[SUBGOAL] == subgoals
        assert psnr(got[OBS_IMAGE_FRONT], data[OBS_IMAGE_FRONT]) > MIN_PSNR
        np.testing.assert_array_equal(got[EPISODE_INDEX], np.full(length, episode))
        np.testing.assert_array_equal(got[FRAME_INDEX], np.arange(length))
        np.testing.assert_array_equal(got[INDEX], np.arange(first, first + length))
        np.testing.assert_array_equal(got[TIMESTAMP], (np.arange(length) / FPS).astype(np.float32))
        assert [ds.tasks[i] for i in got[TASK_INDEX]] == subgoals
        meta = got[EPISODE_META]
        assert meta["tasks"] == list(dict.fromkeys(subgoals))
        assert (meta["length"], meta["dataset_from_index"], meta["dataset_to_index"]) == (
            length,
            first,
            first + length,
        )
        assert {key: meta[key] for key in extra} == extra
        first += length
    assert ds.num_frames == first
    return ds


def test_round_trip_is_exact_and_frames_are_close(tmp_path: Path) -> None:
    write(tmp_path / "ds", [0, 1, 2])
    check_episodes(tmp_path / "ds", [0, 1, 2])


def test_info_json_has_v30_fields_and_paths_resolve(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1, 2], chunks_size=2)
    info = json.loads((root / INFO_PATH).read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_tasks"], info["chunks_size"], info["fps"]) == (3, 3, 2, FPS)
    assert info["robot_type"] == "tabletop" and info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert {"data_files_size_in_mb", "video_files_size_in_mb"} <= info.keys()
    video = info["features"][OBS_IMAGE_FRONT]["info"]
    assert (video["video.codec"], video["video.fps"], video["video.height"], video["has_audio"]) == (
        "h264",
        FPS,
        SIZE,
        False,
    )
    for key in (TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX, TASK_INDEX):
        assert info["features"][key]["shape"] == [1]

    ds = EpisodeDataset(root)
    for episode in range(3):
        meta = ds.episode_meta(episode)
        chunk, file = divmod(episode, 2)  # rolls over to chunk-001 after chunks_size files
        for kind in ("data", "meta/episodes", f"videos/{OBS_IMAGE_FRONT}"):
            assert (meta[f"{kind}/chunk_index"], meta[f"{kind}/file_index"]) == (chunk, file)
        assert (root / info["data_path"].format(chunk_index=chunk, file_index=file)).is_file()
        assert (
            root / info["video_path"].format(video_key=OBS_IMAGE_FRONT, chunk_index=chunk, file_index=file)
        ).is_file()
        assert (root / f"meta/episodes/chunk-{chunk:03d}/file-{file:03d}.parquet").is_file()
        assert meta[f"videos/{OBS_IMAGE_FRONT}/from_timestamp"] == 0.0
        assert meta[f"videos/{OBS_IMAGE_FRONT}/to_timestamp"] == pytest.approx(meta["length"] / FPS)
    # LeRobot's own datasets hold many episodes per video: an episode starting at frame k is at k / fps seconds,
    # which floats can put just below k (123 / 30 * 30 = 122.99...): the first frame is the nearest (helper-204)
    probe = EpisodeDataset(root)
    for fps, k in ((30, 123), (15, 245), (50, 29)):
        probe.info["fps"], probe._rows[0] = fps, {**probe._rows[0], f"videos/{OBS_IMAGE_FRONT}/from_timestamp": k / fps}
        assert probe._video_span(OBS_IMAGE_FRONT, 0)[1] == k

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert dict(zip(tasks["task"].to_pylist(), tasks[TASK_INDEX].to_pylist(), strict=True)) == {
        text: i for i, text in enumerate(ds.tasks)
    }
    assert pq.read_table(root / "data/chunk-000/file-000.parquet").schema.field(OBS_STATE).type.list_size == 4

    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats[INDEX]["count"] == [ds.num_frames]
    assert np.asarray(stats[OBS_IMAGE_FRONT]["mean"]).shape == (3, 1, 1)
    states = np.concatenate([ds.episode(i)[OBS_STATE] for i in range(3)])
    np.testing.assert_allclose(stats[OBS_STATE]["mean"], states.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats[OBS_STATE]["std"], states.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats[OBS_STATE]["min"], states.min(axis=0))


def test_resume_appends_and_indices_continue(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])
    write(root, [2])
    ds = check_episodes(root, [0, 1, 2])
    assert ds.tasks == ["move the red cube away", "return cube 0", "return cube 1"]
    assert ds.stats[OBS_STATE]["count"][0] == ds.num_frames
    # the file itself, not the reader's fallback (which recomputes stale stats): the resumed writer merged them
    written = json.loads((root / "meta" / "stats.json").read_text())
    assert written[OBS_STATE]["count"] == [ds.num_frames] and written[INDEX]["count"] == [ds.num_frames]
    all_states = np.concatenate([ds.episode(e)[OBS_STATE] for e in range(3)])
    np.testing.assert_allclose(written[OBS_STATE]["mean"], all_states.mean(axis=0), rtol=1e-5)
    # quantiles as lerobot merges them: the episodes' envelope, the least up to q50 and the greatest above
    per_episode = [ds.episode(e)[OBS_STATE].astype(np.float64) for e in range(3)]
    for name, q, bound in (("q01", 0.01, np.min), ("q50", 0.5, np.min), ("q99", 0.99, np.max)):
        expected = bound([np.quantile(x, q, axis=0) for x in per_episode], axis=0)
        np.testing.assert_allclose(written[OBS_STATE][name], expected, rtol=1e-6, err_msg=name)


def test_a_dataset_another_tool_appended_to_is_not_continued(tmp_path: Path) -> None:
    """lerobot appends episodes without vplan's episode columns: the next vplan episode failed with a raw
    ValueError (the columns were taken from the last episode), and collect's seed check was skipped."""
    root = tmp_path / "ds"
    write(root, [0, 1])
    last = root / "meta/episodes/chunk-000/file-001.parquet"  # episode 1's metadata, as lerobot would write it
    table = pq.read_table(last)
    extras = [name for name in table.column_names if name not in STANDARD_EPISODE_COLUMNS and "/" not in name]
    assert extras
    pq.write_table(table.drop_columns(extras), last)
    with pytest.raises(DatasetError, match=r"episode 1 has other episode columns than episode 0 .*another tool"):
        write(root, [2])


def test_a_writer_that_waited_for_the_lock_resumes_what_another_created(tmp_path, monkeypatch) -> None:
    from vplan.data import lerobot_format

    root, acquire = tmp_path / "ds", lerobot_format._acquire_lock

    def another_writer_first(path):  # a second `vplan collect` creates the dataset just before this one locks
        monkeypatch.setattr(lerobot_format, "_acquire_lock", acquire)
        write(root, [0, 1])
        return acquire(path)

    monkeypatch.setattr(lerobot_format, "_acquire_lock", another_writer_first)
    write(root, [2])
    check_episodes(root, [0, 1, 2])  # not a new dataset over the other's episodes


def test_incompatible_resume_refuses_with_one_line(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0])
    other = {**FEATURES, OBS_STATE: {"dtype": "float32", "shape": [5], "names": None}}
    cases = [
        (dict(fps=FPS + 1, features=FEATURES, robot_type="tabletop"), "fps"),
        (dict(fps=FPS, features=other, robot_type="tabletop"), "observation.state.shape"),
        (dict(fps=FPS, features=FEATURES, robot_type="blockworld"), "robot_type"),
        (dict(fps=FPS, features=FEATURES, robot_type="tabletop", resume=False), "resume is off"),
    ]
    (root / ".lock").unlink()  # as a dataset from elsewhere (LeRobot's) comes: a refusal leaves none in it
    for kwargs, phrase in cases:
        with pytest.raises(DatasetError, match=phrase) as error:
            EpisodeWriter.create_or_resume(root, **kwargs)
        assert "\n" not in str(error.value) and str(root) in str(error.value)
    assert not (root / ".lock").exists()
    with (
        EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop"),
        pytest.raises(DatasetError, match="being written by another process"),
    ):
        EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a dataset")
    with pytest.raises(DatasetError, match="not empty"):
        EpisodeWriter.create_or_resume(tmp_path / "notes", FPS, FEATURES)
    assert [path.name for path in (tmp_path / "notes").iterdir()] == ["todo.txt"]  # refused untouched
    check_episodes(root, [0])
    # one stopped before its first episode holds nothing to keep: begun again as asked (it was refused)
    with EpisodeWriter.create_or_resume(tmp_path / "empty", FPS, FEATURES, "tabletop"):
        pass
    for kwargs in cases:
        with EpisodeWriter.create_or_resume(tmp_path / "empty", **kwargs[0]) as writer:
            assert writer.num_episodes == 0 and writer.fps == kwargs[0]["fps"]
    write(tmp_path / "empty", [0])
    check_episodes(tmp_path / "empty", [0])


def test_bad_episodes_are_rejected_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data, subgoals, extra = make_episode(0, length=3)
    with EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop") as writer:
        writer.add_episode(data, subgoals, extra)
        with pytest.raises(ValueError, match="frame count"):
            writer.add_episode(data, subgoals[:-1], extra)
        with pytest.raises(ValueError, match=OBS_STATE):
            writer.add_episode({**data, OBS_STATE: data[OBS_STATE][:, :3]}, subgoals, extra)
        with pytest.raises(ValueError, match="uint8"):
            writer.add_episode(
                {**data, OBS_IMAGE_FRONT: data[OBS_IMAGE_FRONT].astype(np.float32)}, subgoals, extra
            )
        with pytest.raises(ValueError, match=f"expected {SUCCESS} castable to bool, got float64"):  # never 0.7 -> 0
            writer.add_episode({**data, SUCCESS: np.full(len(subgoals), 0.7)}, subgoals, extra)
        with pytest.raises(ValueError, match="extra"):
            writer.add_episode(data, subgoals, {**extra, "seed": "zero"})
        for column in ("length", "dataset_from_index", "dataset_to_index", "videos/x/chunk_index"):
            with pytest.raises(ValueError, match="clash with lerobot's episode columns"):
                writer.add_episode(data, subgoals, {**extra, column: 5})
        assert writer.last_extra == extra
    check_episodes(root, [0])
    with pytest.raises(ValueError, match="feature 'observation.state/x': expected a name without '/'"):
        EpisodeWriter.create_or_resume(tmp_path / "slash", FPS, {**FEATURES, "observation.state/x": {
            "dtype": "float32", "shape": [1]}}, "tabletop")  # LeRobot splits stats keys on "/"
    (root / "meta" / "tasks.parquet").unlink()  # the subgoal texts lost: refused, never read as other texts
    with pytest.raises(DatasetError, match=r"tasks.parquet is missing, though meta/info.json counts \d+ tasks"):
        EpisodeDataset(root)
    with pytest.raises(DatasetError, match="tasks.parquet is missing"):
        EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop")
    # the env settings the actions were recorded at: kept in info.json, and a resume at others refused
    units = {"max_delta": 0.03, "control_hz": 10}
    with EpisodeWriter.create_or_resume(tmp_path / "units", FPS, FEATURES, "tabletop", action_units=units) as writer:
        writer.add_episode(data, subgoals, extra)
    assert EpisodeDataset(tmp_path / "units").action_units == units
    with pytest.raises(DatasetError, match="its actions were recorded with .*'max_delta': 0.03.*, asked .*0.05"):
        EpisodeWriter.create_or_resume(tmp_path / "units", FPS, FEATURES, "tabletop",
                                       action_units={**units, "max_delta": 0.05})
    # an episode without extra fixes it for every episode too (one schema for every metadata file)
    with EpisodeWriter.create_or_resume(tmp_path / "plain", FPS, FEATURES, "tabletop") as writer:
        writer.add_episode(data, subgoals)
        with pytest.raises(ValueError, match=r"expected extra with the keys and types of earlier episodes \{\}"):
            writer.add_episode(data, subgoals, {"seed": 1})
    assert EpisodeDataset(tmp_path / "plain").action_units is None  # recorded without them


def test_uncommitted_leftovers_are_ignored_then_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])
    # What a writer killed before its commit leaves: files of episode 2, a bigger tasks table, staging scraps.
    for kind, suffix in (
        ("data", "parquet"),
        ("meta/episodes", "parquet"),
        (f"videos/{OBS_IMAGE_FRONT}", "mp4"),
    ):
        shutil.copy(
            root / f"{kind}/chunk-000/file-001.{suffix}", root / f"{kind}/chunk-000/file-002.{suffix}"
        )
    (root / STAGING_DIR).mkdir(exist_ok=True)
    (root / STAGING_DIR / "data.parquet").write_bytes(b"half a parq")
    check_episodes(root, [0, 1])
    leftovers = [root / f"{kind}/chunk-000/file-002.{suffix}" for kind, suffix in
                 (("data", "parquet"), ("meta/episodes", "parquet"), (f"videos/{OBS_IMAGE_FRONT}", "mp4"))]
    with EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop"):  # resuming alone clears them
        assert not any(path.exists() for path in leftovers)
    write(root, [2])
    assert not (root / STAGING_DIR).exists()
    check_episodes(root, [0, 1, 2])


def test_a_commit_stopped_midway_leaves_no_files_behind_it(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while an episode's files are moved in, before info.json: closing the writer removes them (LeRobot's
    reader globs the folders, so it would read them); stopped after info.json, the episode stays."""
    root = tmp_path / "ds"
    write(root, [0])
    commit = EpisodeWriter._commit_files
    episode_files = [root / f"{kind}/chunk-000/file-001.{suffix}" for kind, suffix in
                     (("data", "parquet"), ("meta/episodes", "parquet"), (f"videos/{OBS_IMAGE_FRONT}", "mp4"))]

    def stopped_before_info(self, files):  # the body moved in, info.json as it was
        commit(self, {**files, "meta/info.json": (root / "meta/info.json").read_bytes()})
        assert all(path.exists() for path in episode_files)
        raise KeyboardInterrupt

    def stopped_after_commit(self, files):
        commit(self, files)
        raise KeyboardInterrupt

    def meta_counts() -> tuple[int, int, int, int]:  # stats.json's frames, tasks.parquet's rows; info's
        info = json.loads((root / "meta/info.json").read_text())
        stats = json.loads((root / "meta/stats.json").read_text())
        tasks = pq.read_table(root / "meta/tasks.parquet").num_rows
        return stats["index"]["count"][0], tasks, info["total_frames"], info["total_tasks"]

    for stop, kept in ((stopped_before_info, [0]), (stopped_after_commit, [0, 1])):
        monkeypatch.setattr(EpisodeWriter, "_commit_files", stop)
        with pytest.raises(KeyboardInterrupt):
            write(root, [1])
        check_episodes(root, kept)
        assert all(path.exists() for path in episode_files) == (kept == [0, 1])
        # LeRobot reads both as they are: they counted the episode that never committed
        frames, tasks, total_frames, total_tasks = meta_counts()
        assert (frames, tasks) == (total_frames, total_tasks)
        monkeypatch.setattr(EpisodeWriter, "_commit_files", commit)
    # a stats.json cut short (a copy): made anew when the dataset is next opened, and the lock is given back
    (root / "meta/stats.json").write_text('{"index": ')
    with EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop"):
        pass
    assert meta_counts()[0] == meta_counts()[2]
    writer = EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop")
    monkeypatch.setattr(EpisodeWriter, "_repair_meta", lambda self: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    monkeypatch.undo()
    EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop").close()  # the lock was given back all the same

    # Ctrl-C just after the commit, while the writer notes it: the committed episode is never taken for leftovers
    committed, file_kinds = [], EpisodeWriter._file_kinds

    def noted(self, files):
        commit(self, files)
        committed.append(True)

    def interrupted(self):
        if committed:
            committed.clear()
            raise KeyboardInterrupt
        return file_kinds(self)

    monkeypatch.setattr(EpisodeWriter, "_commit_files", noted)
    monkeypatch.setattr(EpisodeWriter, "_file_kinds", interrupted)
    writer = EpisodeWriter.create_or_resume(root, FPS, FEATURES, "tabletop")
    with pytest.raises(KeyboardInterrupt):
        writer.add_episode(*make_episode(2, length=5))
    writer.close()
    monkeypatch.undo()
    check_episodes(root, [0, 1, 2])
    assert (writer.num_episodes, writer.num_frames) == (3, sum(3 + seed % 3 for seed in range(3)))  # what collect says


KILLING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_dataset import FEATURES, FPS, make_episode
    from vplan.data import EpisodeWriter

    real_replace = os.replace

    def replace(source, target):
        relative = os.path.relpath(target, {root!r})
        data_2 = os.path.join({root!r}, "data/chunk-000/file-002.parquet")
        committing_2 = relative == "meta/info.json" and os.path.exists(data_2)
        if relative.startswith({marker!r}) and ("file-002" in relative or committing_2):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)

    os.replace = replace
    writer = EpisodeWriter.create_or_resume({root!r}, FPS, FEATURES, "tabletop")
    for seed in range(3):
        writer.add_episode(*make_episode(seed, length=3 + seed % 3))
    """
)


def test_writer_killed_mid_episode_keeps_finished_episodes(tmp_path: Path) -> None:
    """SIGKILL while episode 2's files are moved into place: at its video, data, metadata, or commit."""
    markers = ["videos/", "data/", "meta/episodes/", "meta/info.json"]
    roots = [tmp_path / f"ds{i}" for i in range(len(markers))]
    writers = [  # in parallel: each pays the interpreter's start-up
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                KILLING_WRITER.format(tests=str(Path(__file__).parent), root=str(root), marker=marker),
            ],
            stderr=subprocess.PIPE,
        )
        for root, marker in zip(roots, markers, strict=True)
    ]
    for writer, root in zip(writers, roots, strict=True):
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, stderr.decode()
        check_episodes(root, [0, 1])
        write(root, [2, 3])
        check_episodes(root, [0, 1, 2, 3])


def test_decoded_frames_are_cached_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])
    decoded: list[Path] = []
    real_decode = dataset_module.decode_video

    def counting_decode(path: Path, **bounds) -> np.ndarray:
        decoded.append(path)
        return real_decode(path, **bounds)

    monkeypatch.setattr(dataset_module, "decode_video", counting_decode)
    first = EpisodeDataset(root).episode(0)[OBS_IMAGE_FRONT]
    assert len(decoded) == 1
    again = EpisodeDataset(root)  # a new process would see the same: the cache is on disk
    np.testing.assert_array_equal(again.episode(0)[OBS_IMAGE_FRONT], first)
    for index in range(len(again)):
        again[index]
    assert len(decoded) == 2  # episode 1's video, once

    video = root / f"videos/{OBS_IMAGE_FRONT}/chunk-000/file-000.mp4"
    changed = make_episode(5, length=len(first))[0][OBS_IMAGE_FRONT]
    encode_video(video, changed, FPS)
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    fresh = again.episode(0)[OBS_IMAGE_FRONT]  # same open dataset: the in-memory copy is stale too
    assert len(decoded) == 3 and psnr(fresh, changed) > MIN_PSNR
    assert len(list(video.parent.glob("*"))) == 2
    assert len(list((root / ".cache").rglob("file-000.mp4.*.npy"))) == 1  # the stale entry is gone


def test_cached_and_uncached_frames_are_equal_and_read_only(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])
    cached, uncached = EpisodeDataset(root), EpisodeDataset(root, cache=False)
    for episode in range(2):
        frames = [ds.episode(episode)[OBS_IMAGE_FRONT] for ds in (cached, uncached)]
        np.testing.assert_array_equal(*frames)
        for array in frames:  # cache=False handed out its own copy: an edit reached every later read
            with pytest.raises(ValueError, match="read-only"):
                array[0, 0, 0, 0] = 0


def test_the_reader_keeps_a_bounded_number_of_videos_open(tmp_path: Path, monkeypatch) -> None:
    """Each decoded video is a memory map, which holds its file open: a dataset of more videos than the process
    may open failed, and the failure deleted good cache files."""
    root = tmp_path / "ds"
    write(root, [0, 1, 2])
    monkeypatch.setattr(dataset_module, "MAX_OPEN_VIDEOS", 1)
    ds = EpisodeDataset(root)
    for episode in range(3):
        ds.episode(episode)
    assert len(ds._videos) == 1

    def no_descriptor_left(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    cache_files = sorted((root / ".cache").rglob("*.npy"))
    monkeypatch.setattr(dataset_module.np, "load", no_descriptor_left)
    with pytest.raises(OSError, match="Too many open files"):
        dataset_module.read_cache_file(cache_files[0], mmap=True)
    assert cache_files[0].is_file()  # a good file, kept


def test_a_data_folder_that_is_no_dataset_is_told_where_one_is(tmp_path: Path) -> None:
    """data=<run> (the README's data=<run>/episodes less its last part) and a typo were told to collect into a
    folder that collect then refused (helper-192)."""
    from vplan.data.lerobot_format import require_dataset
    from vplan.errors import UsageError

    run = tmp_path / "run"
    (run / "episodes" / "meta").mkdir(parents=True)
    (run / "episodes" / INFO_PATH).write_text("{}")
    (run / "metrics.json").write_text("{}")
    make = "`vplan collect out=...`"
    with pytest.raises(UsageError, match=rf"^data={run}: a `vplan run` folder; the episodes it recorded are the "
                                         rf"dataset in {run}/episodes: pass data={run}/episodes$"):
        require_dataset(run, make)
    with pytest.raises(UsageError, match=rf"does not exist \(did you mean data={run}/episodes\?\); make one with"):
        require_dataset(run / "episode", make)
    with pytest.raises(UsageError, match=rf"; {tmp_path} holds other files: pass the folder that `vplan collect`"):
        require_dataset(tmp_path, make)
    with pytest.raises(UsageError, match=r"meta/info.json does not exist; make one with `vplan collect out=...`$"):
        require_dataset(tmp_path / "new", make)  # nothing near, nothing there: make one


def test_reader_refuses_what_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path} is not a LeRobot dataset"):
        EpisodeDataset(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / INFO_PATH).write_text(
        json.dumps(
            {
                "codebase_version": "v2.1",
                "fps": 10,
                "features": {},
                "total_episodes": 0,
                "total_frames": 0,
                "data_path": "",
            }
        )
    )
    with pytest.raises(DatasetError, match=r"has codebase_version 'v2\.1'; expected 'v3\.0' \(convert .* "
                                           r"lerobot.datasets.v30.convert_dataset_v21_to_v30\)"):
        EpisodeDataset(tmp_path)
    # a v1.6 dataset lacks fields v3.0 has: said as its version, not as missing fields
    (tmp_path / INFO_PATH).write_text(json.dumps({"codebase_version": "v1.6", "fps": 10, "features": {}}))
    with pytest.raises(DatasetError, match=r"has codebase_version 'v1\.6'"):
        EpisodeDataset(tmp_path)
    (tmp_path / INFO_PATH).write_text("null")  # JSON, but no object: a TypeError before
    with pytest.raises(DatasetError, match="holds a JSON NoneType, not a LeRobot dataset's info object"):
        EpisodeDataset(tmp_path)


def test_a_cut_info_json_is_a_damaged_dataset(tmp_path: Path) -> None:
    """The writer replaces info.json whole: one cut short is an interrupted copy, not another kind of folder."""
    root = tmp_path / "ds"
    write(root, [0])
    info = root / INFO_PATH
    info.write_text(info.read_text()[:50])
    with pytest.raises(DamagedDatasetError, match=rf"^{re.escape(str(info))} is not valid JSON .*dataset is damaged"):
        EpisodeDataset(root)


@pytest.mark.parametrize("damage", ["truncated video", "missing video", "missing data file", "truncated episodes file"])
def test_damaged_files_are_dataset_errors_naming_the_file(tmp_path: Path, damage: str) -> None:
    """They were imageio's OSError (with ffmpeg's banner), a FileNotFoundError or pyarrow's ArrowInvalid: a
    traceback from the CLI."""
    root = tmp_path / "ds"
    write(root, [0, 1])
    pattern = {"truncated video": "videos/*/*/*.mp4", "missing video": "videos/*/*/*.mp4",
               "missing data file": "data/*/*.parquet", "truncated episodes file": "meta/episodes/*/*.parquet"}[damage]
    path = next(root.glob(pattern))
    if damage.startswith("missing"):
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedDatasetError, match=rf"^{re.escape(str(path))} (cannot be (read|decoded) |is missing)"
                                                  ".*the dataset is damaged"):
        EpisodeDataset(root).episode(0)


@pytest.mark.parametrize("change, said", [
    ({"fps": "10"}, r"fps '10'; expected a number > 0"),
    ({"fps": 0}, r"fps 0; expected a number > 0"),
    ({"features": {ACTION: "4"}}, r"feature 'action' has shape '4'; expected a list of ints > 0"),
    ({"features": {ACTION: [4.0]}}, r"feature 'action' has shape \[4.0\]; expected a list of ints > 0"),
])
def test_an_info_json_with_a_bad_fps_or_shape_is_refused_in_one_line(tmp_path: Path, change, said) -> None:
    """`fps: "10"` gave a TypeError once a video frame was read, and a shape numpy_column cannot reshape by a
    traceback too."""
    root = tmp_path / "ds"
    write(root, [0])
    info = json.loads((root / INFO_PATH).read_text())
    for key, shape in change.pop("features", {}).items():
        info["features"][key]["shape"] = shape
    (root / INFO_PATH).write_text(json.dumps({**info, **change}))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(root / INFO_PATH))}: {said}$"):
        EpisodeDataset(root)


def test_an_info_json_shape_the_data_do_not_have_is_named_with_the_data_file(tmp_path: Path) -> None:
    """info.json saying 7-d actions over 4-d ones gave "ValueError: cannot reshape array of size 12 into shape
    (3,7)" as a traceback."""
    root = tmp_path / "ds"
    write(root, [0])
    info = json.loads((root / INFO_PATH).read_text())
    info["features"][ACTION]["shape"] = [7]
    (root / INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DamagedDatasetError, match=r"data/.*\.parquet: feature 'action' does not hold values of "
                                                  r"shape \[7\] as meta/info.json says \(cannot reshape .*\); "
                                                  r"the dataset is damaged"):
        EpisodeDataset(root).episode(0)


def test_reader_refuses_features_it_cannot_read_and_episodes_whose_spans_disagree(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])
    info = json.loads((root / INFO_PATH).read_text())
    wrist = {"dtype": "image", "shape": [8, 8, 3]}  # LeRobot's images kept as files, not videos
    features = {**info["features"], "observation.images.wrist": wrist}
    (root / INFO_PATH).write_text(json.dumps({**info, "features": features}))
    with pytest.raises(DatasetError, match="feature 'observation.images.wrist' has dtype 'image'; vplan reads.*"
                                           "encoded as videos first"):
        EpisodeDataset(root)
    # lerobot 0.6's language columns: refused without the hint about images
    features = {**info["features"], "language_persistent": {"dtype": "language", "shape": [1]}}
    (root / INFO_PATH).write_text(json.dumps({**info, "features": features}))
    with pytest.raises(DatasetError, match=r"'language'; vplan reads numeric, bool and video features$"):
        EpisodeDataset(root)
    depth = {"dtype": "video", "shape": [8, 8, 1], "info": {"video.is_depth_map": True}}  # lerobot's gray12le
    gray = {"dtype": "video", "shape": [8, 8, 1]}
    for wrist, said in ((depth, "is a depth map"), (gray, r"is of shape \[8, 8, 1\]")):
        (root / INFO_PATH).write_text(json.dumps({**info, "features": {**info["features"], "depth": wrist}}))
        with pytest.raises(DatasetError, match=f"video feature 'depth' {said}; vplan reads RGB video features"):
            EpisodeDataset(root)
    (root / INFO_PATH).write_text(json.dumps({**info, "video_path": None}))
    with pytest.raises(DatasetError, match="has video features .* but no video_path"):
        EpisodeDataset(root)
    (root / INFO_PATH).write_text(json.dumps(info))
    episodes = sorted((root / "meta" / "episodes").glob("*/*.parquet"))[0]  # episode 0's
    table = pq.read_table(episodes)
    to_index = table.column("dataset_to_index").to_pylist()
    pq.write_table(table.set_column(table.column_names.index("dataset_to_index"), "dataset_to_index",
                                    pa.array([to_index[0] - 1, *to_index[1:]], pa.int64())), episodes)
    with pytest.raises(DatasetError, match=f"episode 0 spans frames 0..{to_index[0] - 1} with length {to_index[0]}"):
        EpisodeDataset(root)


def test_a_video_feature_declared_channels_first_reads_as_any_other(tmp_path: Path) -> None:
    """Some LeRobot recorders (gym_manipulator's images) declare a camera (3, height, width); its MP4 is ordinary
    RGB all the same, and it was refused."""
    root = tmp_path / "ds"
    wide = {**FEATURES, OBS_IMAGE_FRONT: {**FEATURES[OBS_IMAGE_FRONT], "shape": [SIZE, 2 * SIZE, 3]}}
    data, subgoals, extra = make_episode(0)
    data = {**data, OBS_IMAGE_FRONT: np.concatenate([data[OBS_IMAGE_FRONT], data[OBS_IMAGE_FRONT][:, ::-1]], axis=2)}
    with EpisodeWriter.create_or_resume(root, FPS, wide, "tabletop") as writer:
        writer.add_episode(data, subgoals, extra)
    expected = EpisodeDataset(root).episode(0)[OBS_IMAGE_FRONT]
    info = json.loads((root / INFO_PATH).read_text())
    for names in (["channels", "height", "width"], None):  # by its names, or by its shape where it has none
        info["features"][OBS_IMAGE_FRONT].update(shape=[3, SIZE, 2 * SIZE], names=names)
        (root / INFO_PATH).write_text(json.dumps(info))
        dataset = EpisodeDataset(root)
        assert dataset.features[OBS_IMAGE_FRONT]["shape"] == [SIZE, 2 * SIZE, 3]
        np.testing.assert_array_equal(dataset.episode(0)[OBS_IMAGE_FRONT], expected)
    declared = (root / INFO_PATH).read_text()  # a writer keeps the recorder's declaration: appending is refused
    with pytest.raises(DatasetError, match=r"features differ \(observation.images.front.names is None there"):
        EpisodeWriter.create_or_resume(root, FPS, wide, "tabletop")
    assert (root / INFO_PATH).read_text() == declared


def test_torch_view_over_frames_and_clips(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0, 1])  # lengths 3 and 4
    ds = EpisodeDataset(root)
    assert len(ds) == 7
    item = ds[4]
    assert item[OBS_IMAGE_FRONT].shape == (3, SIZE, SIZE) and item[OBS_IMAGE_FRONT].dtype == torch.float32
    assert item[OBS_IMAGE_FRONT].min() >= 0.0 and item[OBS_IMAGE_FRONT].max() <= 1.0
    assert (int(item[EPISODE_INDEX]), int(item[FRAME_INDEX])) == (1, 1)
    assert item[SUBGOAL] == make_episode(1, length=4)[1][1]
    torch.testing.assert_close(item[ACTION], torch.from_numpy(make_episode(1, length=4)[0][ACTION][1]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=7)))
    assert batch[OBS_STATE].shape == (7, 4) and len(batch[SUBGOAL]) == 7
    assert ds.clips(3, stride=1) == [(0, 0), (1, 0), (1, 1)]
    assert ds.clips(4, stride=2) == [(1, 0)]
    for outside in (7, -8):
        with pytest.raises(IndexError, match=r"out of range \[-7, 7\)"):
            ds[outside]
    assert int(ds[-1][FRAME_INDEX]) == 3 and int(ds[-7][EPISODE_INDEX]) == 0  # from the end, as a list (helper-194)
    # numpy's ints are ints; a float is refused by name (it was numpy's IndexError, or a wrong slice)
    assert ds.clips(np.int64(4), np.int64(2)) == [(1, 0)] and int(ds[np.int64(4)][FRAME_INDEX]) == 1
    assert len(ds.episode(np.int64(1))[SUBGOAL]) == 4
    assert int(torch.utils.data.Subset(ds, torch.arange(7))[4][FRAME_INDEX]) == 1  # a 0-d tensor index (helper-191)
    for call, said in [(lambda: ds[1.0], "frame index: expected an int, got 1.0"),
                       (lambda: ds.episode(1.0), "episode: expected an int, got 1.0"),
                       (lambda: ds.clips(3, 2.5), "stride: expected an int, got 2.5")]:
        with pytest.raises(TypeError, match=said):
            call()


def test_a_chunk_is_imagined_under_the_subgoal_of_the_action_leading_into_it() -> None:
    from vplan.loop.finetune import walk_chunks

    subgoals = ["pick"] * 3 + ["place"] * 5  # row t: the subgoal its action serves; "place" starts at frame 3
    assert [chunk_subgoal(subgoals, start) for start in (1, 3, 4, 8)] == ["pick", "pick", "place", "place"]
    with pytest.raises(ValueError, match="start: expected a chunk's first frame in 1..8, got 0"):
        chunk_subgoal(subgoals, 0)
    # finetune walks an episode as the agent does: chunks after the first frame, each under that subgoal; the
    # chunk starting on "place"'s first frame was imagined while "pick" was followed
    walked = walk_chunks(["pick"] * 4 + ["place"] * 5, 2, 3)
    assert [(c.start, c.text) for c in walked] == [(1, "pick"), (4, "pick")]


@pytest.mark.parametrize(("key", "value", "said"), [
    ("data_path", "../victim/file-{chunk_index:03d}-{file_index:03d}.parquet", "names a file outside the dataset"),
    ("data_path", "/tmp/victim.parquet", "names a file outside the dataset"),
    ("video_path", "videos/{video_key}/chunk-{chunk_index:0999999999d}/f.mp4", "has the field 'chunk_index'"),
    ("video_path", "videos/{video_key.__class__}/f.mp4", "has the field 'video_key.__class__'"),
    ("chunks_size", 0, "chunks_size 0; expected a positive int"),
    ("total_frames", 10**12, "counts 1000000000000 frames, its episodes"),  # np.arange of it: 8 TB
    ("total_frames", "3", "total_frames '3'; expected an int >= 0"),
    ("features", [], "features is not an object of feature objects"),
])
def test_info_json_naming_files_outside_the_dataset_is_refused(tmp_path: Path, key, value, said) -> None:
    """A dataset from elsewhere: its templates were filled in as given, so reading cached decoded videos next to
    any file, and appending (`vplan collect` on it) replaced any file the user can write."""
    root = tmp_path / "ds"
    write(root, [0])
    victim = tmp_path / "victim.parquet"
    victim.write_text("precious")
    info = json.loads((root / INFO_PATH).read_text())
    info[key] = value
    (root / INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=re.escape(said)):
        EpisodeDataset(root)
    with pytest.raises(DatasetError, match=re.escape(said)):
        write(root, [1])
    assert victim.read_text() == "precious"


def test_a_video_key_or_an_episode_row_naming_files_outside_the_dataset_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root, [0])
    info = json.loads((root / INFO_PATH).read_text())
    info["features"]["../../x"] = info["features"].pop(OBS_IMAGE_FRONT)
    (root / INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"video feature '../../x' names a folder"):
        EpisodeDataset(root)
    # a template without a format spec takes an episode row's value as it is
    info["features"][OBS_IMAGE_FRONT] = info["features"].pop("../../x")
    info["data_path"] = "data/chunk-{chunk_index}/file-{file_index}.parquet"
    (root / INFO_PATH).write_text(json.dumps(info))
    rows = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(rows)
    column = table.schema.get_field_index("data/chunk_index")
    pq.write_table(table.set_column(column, "data/chunk_index", pa.array(["../../.."])), rows)
    with pytest.raises(DatasetError, match=r"names the file 'data/chunk-../../../file-0.parquet', outside the dataset"):
        EpisodeDataset(root).episode(0)


def test_an_episode_whose_video_ffmpeg_did_not_finish_is_not_added(tmp_path: Path, monkeypatch) -> None:
    """imageio-ffmpeg ignores ffmpeg's exit status: a killed ffmpeg's 48-byte file was committed, and the whole
    dataset was refused as damaged at training."""
    from vplan.data import lerobot_format
    from vplan.errors import RunError

    root = tmp_path / "ds"
    write(root, [0])
    real = lerobot_format.imageio_ffmpeg.write_frames

    class KilledAtTheEnd:  # ffmpeg took every frame, then died (the OOM killer): what it left is cut short
        def __init__(self, path, *args, **kwargs) -> None:
            self.path, self.writer = path, real(path, *args, **kwargs)

        def send(self, frame) -> None:
            self.writer.send(frame)

        def close(self) -> None:
            self.writer.close()
            with open(self.path, "r+b") as file:
                file.truncate(48)

    monkeypatch.setattr(lerobot_format.imageio_ffmpeg, "write_frames", KilledAtTheEnd)
    with pytest.raises(RunError, match=r"ffmpeg wrote 0 of 3 frames; the episode is not added"):
        write(root, [0, 1])
    monkeypatch.undo()
    check_episodes(root, [0])


def test_a_video_is_decoded_only_as_far_as_its_episodes_use_and_at_its_features_size(tmp_path: Path) -> None:
    """A few kilobytes of video can claim gigabytes of frames (a dataset from elsewhere): decoding stops at the
    last frame its episodes use, and frames of another size than info.json's are refused before any is kept."""
    root = tmp_path / "ds"
    write(root, [0])  # 3 frames
    video = root / f"videos/{OBS_IMAGE_FRONT}/chunk-000/file-000.mp4"
    frames = make_episode(0, length=3)[0][OBS_IMAGE_FRONT]
    encode_video(video, np.concatenate([frames] * 100), FPS)  # 300 frames, 3 used
    dataset = EpisodeDataset(root, cache=False)
    assert psnr(dataset.episode(0)[OBS_IMAGE_FRONT], frames) > MIN_PSNR
    assert len(dataset._video(video, OBS_IMAGE_FRONT)) == 3
    encode_video(video, np.zeros((3, 2 * frames.shape[1], frames.shape[2], 3), np.uint8), FPS)
    height, width = frames.shape[1:3]
    with pytest.raises(DatasetError, match=rf"holds {2 * height}x{width} frames, and info.json's feature says "
                                           rf"{height}x{width}"):
        EpisodeDataset(root).episode(0)
