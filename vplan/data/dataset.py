"""Read a LeRobot v3.0 episode dataset (as `EpisodeWriter` or lerobot writes it) for training and evaluation.

Only committed episodes are visible: everything is looked up from the episodes-metadata rows below
info.json's `total_episodes`, so files left by an interrupted writer are ignored.

Decoded video is cached so that training epochs never decode twice. Each mp4 is decoded once into
`<root>/.cache/<video path>.<size>-<mtime_ns>.npy` and memory-mapped from there (shared by processes and
DataLoader workers through the page cache); the key holds the video's size and mtime, so a rewritten video
is decoded again and its stale entry deleted. Where the cache folder cannot be written, or with
`cache=False`, decoded frames are kept in this process's memory only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.constants import (
    EPISODE_INDEX, HELD_OUT_SEEDS, INDEX, OBS_IMAGE_FRONT, SUBGOAL, TASK_INDEX,
)
from vplan.data.lerobot_format import (
    ACTION_UNITS_KEY,
    CACHE_DIR,
    DAMAGED,
    STATS_PATH,
    DatasetError,
    aggregate_stats,
    channels_last,
    data_file,
    decode_video,
    load_episode_rows,
    load_info,
    load_tasks,
    numpy_column,
    read_table,
    recorded_env,
    require_dataset,
    stats_from_row,
    video_file,
    video_keys,
)
from vplan.errors import DamagedDatasetError, UsageError, VplanWarning, first_line
from vplan.utils.files import file_written_aside
from vplan.utils.settings import as_index

EPISODE_META = "meta"  # key of the episode-metadata row in `EpisodeDataset.episode(i)`
MAX_OPEN_VIDEOS = 64  # decoded videos a dataset keeps (each memory map holds a file open; the soft limit is ~1024)


def chunk_subgoal(subgoals: Sequence[str], start: int) -> str:
    """The subgoal text a chunk whose first frame is `start` is imagined under: that of the action leading into
    that frame (row start - 1; a row's subgoal is the one its action serves). So it is with the agent, which
    imagines a subgoal's chunk from the frame its first action is taken from; the chunk's first frame, by
    contrast, may be the last move of the subgoal before."""
    if not 1 <= start <= len(subgoals):
        raise ValueError(f"start: expected a chunk's first frame in 1..{len(subgoals)}, got {start}")
    return subgoals[start - 1]


def _column(path: Path, table: Any, key: str, feature: dict[str, Any]) -> np.ndarray:
    """`numpy_column` of `key` in the data file `path`; a DamagedDatasetError naming both where its values do not
    fit the shape meta/info.json gives (a hand-edited info.json, or a file from another dataset)."""
    try:
        return numpy_column(table.column(key), feature)
    except ValueError as error:  # numpy: cannot reshape array of size 528 into shape (132,7)
        raise DamagedDatasetError(f"{path}: feature {key!r} does not hold values of shape {feature['shape']} as "
                                  f"meta/info.json says ({first_line(error)}); {DAMAGED}") from None


class EpisodeDataset(torch.utils.data.Dataset):
    """Episodes of a LeRobot v3.0 dataset; as a torch Dataset, one sample per frame.

    `episode(i)` gives whole episodes as numpy arrays; `dataset[k]` gives frame `k` (global index) as tensors,
    video as float32 (3, H, W) in [0, 1] like lerobot; `clips(length, stride)` lists the windows that stay
    inside one episode.
    """

    def __init__(self, root: str | Path, *, cache: bool = True) -> None:
        """Open `root`; raises `DatasetError` naming the path if it is not a LeRobot v3.0 dataset."""
        self.root = Path(root)
        self.info = channels_last(load_info(self.root))  # a camera declared (3, H, W) reads as any other
        self._rows = load_episode_rows(self.root, self.info)
        self._tasks = load_tasks(self.root, self.info.get("total_tasks", 0))
        self._starts = np.array([row["dataset_from_index"] for row in self._rows], dtype=np.int64)
        self._cache = cache
        self._data: dict[str, np.ndarray] | None = None
        # the last MAX_OPEN_VIDEOS decoded videos: a memory map holds a file descriptor open
        self._videos: OrderedDict[Path, tuple[tuple[int, int], np.ndarray]] = OrderedDict()
        self._used: dict[str, dict[Path, int]] = {}  # per video feature: the frames of each file its episodes use

    # -- description

    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def env(self) -> str | None:
        """The vplan env the episodes were recorded in (`recorded_env`); None for a dataset recorded elsewhere."""
        return recorded_env(self.info)

    @property
    def action_units(self) -> dict[str, float] | None:
        """The env settings its actions were recorded under (`vplan.envs.action_units`: an action of 1 moves
        `max_delta` metres, ...); None for a dataset that does not record them."""
        return self.info.get(ACTION_UNITS_KEY)

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return video_keys(self.features)

    @property
    def cache_dir(self) -> Path | None:
        """Where caches of this dataset live (`<root>/.cache`), or None when opened with `cache=False`."""
        return self.root / CACHE_DIR if self._cache else None

    @property
    def num_episodes(self) -> int:
        return self.info["total_episodes"]

    @property
    def num_frames(self) -> int:
        return self.info["total_frames"]

    @property
    def tasks(self) -> list[str]:
        """Task (subgoal) texts, indexed by task_index."""
        return list(self._tasks)

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """meta/stats.json, or the committed episodes' stats merged where that file is missing or stale."""
        path = self.root / STATS_PATH
        if path.is_file():
            stats = {
                key: {name: np.asarray(value) for name, value in ft.items()}
                for key, ft in json.loads(path.read_text()).items()
            }
            if INDEX not in stats or int(stats[INDEX]["count"][0]) == self.num_frames:
                return stats
        return aggregate_stats(stats_from_row(row) for row in self._rows)

    def episode_meta(self, episode: int) -> dict[str, Any]:
        """The episode's metadata row (tasks, length, file positions, extra columns), without its stats."""
        row = self._rows[self._check_episode(episode)]
        return {key: value for key, value in row.items() if not key.startswith("stats/")}

    # -- episodes

    def episode(self, episode: int) -> dict[str, Any]:
        """Every feature of one episode as numpy arrays (video uint8 (T, H, W, 3); shape-[1] features (T,)),
        the per-frame subgoal texts under `SUBGOAL`, and the metadata row under `EPISODE_META`."""
        episode = self._check_episode(episode)
        row = self._rows[episode]
        start, stop = row["dataset_from_index"], row["dataset_to_index"]
        data = self._load_data()
        result: dict[str, Any] = {key: values[start:stop] for key, values in data.items()}
        for key in self.video_keys:
            result[key] = self._episode_frames(key, episode)
        result[SUBGOAL] = [self._tasks[i] for i in data[TASK_INDEX][start:stop]]
        result[EPISODE_META] = self.episode_meta(episode)
        return result

    def clips(self, length: int, stride: int = 1) -> list[tuple[int, int]]:
        """(episode, first frame) of each window of `length` frames within one episode, `stride` apart."""
        length, stride = as_index(length, "length"), as_index(stride, "stride")
        if length < 1 or stride < 1:
            raise ValueError(f"expected length >= 1 and stride >= 1, got length={length}, stride={stride}")
        return [
            (row[EPISODE_INDEX], start)
            for row in self._rows
            for start in range(0, row["length"] - length + 1, stride)
        ]

    # -- torch Dataset over frames

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        index = as_index(index, "frame index")
        if -self.num_frames <= index < 0:  # from the end, as a list counts
            index += self.num_frames
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame index {index} out of range [-{self.num_frames}, {self.num_frames})")
        episode = int(np.searchsorted(self._starts, index, side="right")) - 1
        item: dict[str, torch.Tensor | str] = {
            key: torch.tensor(values[index]) for key, values in self._load_data().items()
        }
        for key in self.video_keys:
            frame = self._episode_frames(key, episode)[index - self._starts[episode]]
            item[key] = torch.from_numpy(np.array(frame)).permute(2, 0, 1).float().div_(255.0)
        item[SUBGOAL] = self._tasks[int(item[TASK_INDEX])]
        return item

    def __getstate__(self) -> dict[str, Any]:
        """Send DataLoader workers the description only; they reload data and mmap the frame cache lazily."""
        return {**self.__dict__, "_data": None, "_videos": OrderedDict()}

    # -- loading

    def _check_episode(self, episode: int) -> int:
        episode = as_index(episode, "episode")
        if not 0 <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range [0, {self.num_episodes})")
        return episode

    def _load_data(self) -> dict[str, np.ndarray]:
        """Every committed frame's non-video features, row k holding global index k (read once)."""
        if self._data is not None:
            return self._data
        columns = {key: ft for key, ft in self.features.items() if ft["dtype"] != "video"}
        paths = dict.fromkeys(data_file(self.root, self.info, row) for row in self._rows)
        parts = {path: read_table(path, columns=list(columns)) for path in paths}
        data = {
            key: np.concatenate(
                [_column(path, part, key, ft) for path, part in parts.items()]
                or [np.empty((0,) if list(ft["shape"]) == [1] else (0, *ft["shape"]), ft["dtype"])]
            )
            for key, ft in columns.items()
        }
        order = np.argsort(data[INDEX], kind="stable")
        order = order[data[INDEX][order] < self.num_frames]
        if len(order) != self.num_frames or not np.array_equal(data[INDEX][order], np.arange(self.num_frames)):
            raise DatasetError(
                f"{self.root / 'data'} does not hold frames 0..{self.num_frames - 1} exactly once"
            )
        self._data = {key: values[order] for key, values in data.items()}
        for values in self._data.values():
            values.flags.writeable = False  # episode() hands out views of these
        return self._data

    def _video_span(self, key: str, episode: int) -> tuple[Path, int, int]:
        """The video file holding episode `episode`'s `key` frames, the episode's first frame in it, its length."""
        row = self._rows[episode]
        path = video_file(self.root, self.info, key, row)
        return path, round(row[f"videos/{key}/from_timestamp"] * self.fps), int(row["length"])

    def frames_version(self, key: str, episode: int) -> str:
        """A token that changes whenever episode `episode`'s `key` frames may have: the video file's size and
        mtime and the episode's span in it (what caches of values computed from those frames are keyed by)."""
        path, start, length = self._video_span(key, self._check_episode(episode))
        status = _video_status(path)
        return f"{path.relative_to(self.root).as_posix()}:{status.st_size}-{status.st_mtime_ns}:{start}-{length}"

    def _episode_frames(self, key: str, episode: int) -> np.ndarray:
        path, start, length = self._video_span(key, episode)
        frames = self._video(path, key)[start : start + length]
        if len(frames) != length:
            raise DatasetError(
                f"{path} has {len(frames)} frames for episode {episode}, expected {length}"
            )
        return frames

    def _video(self, path: Path, key: str) -> np.ndarray:
        """Decoded frames of one video file of feature `key` (up to the last its episodes use), from memory, then
        the disk cache, then the decoder."""
        status = _video_status(path)
        version = (status.st_size, status.st_mtime_ns)
        if path in self._videos and self._videos[path][0] == version:
            self._videos.move_to_end(path)
            return self._videos[path][1]
        decode = partial(decode_video, size=tuple(self.features[key]["shape"][:2]),
                         max_frames=self._frames_used(key)[path])
        frames = self._cached_decode(path, version, decode) if self._cache else decode(path)
        frames.flags.writeable = False  # as every other column: an edit would reach later reads
        self._videos[path] = (version, frames)
        while len(self._videos) > MAX_OPEN_VIDEOS:
            self._videos.popitem(last=False)
        return frames

    def _frames_used(self, key: str) -> dict[Path, int]:
        """For each video file of feature `key`, the frames its episodes use (up to the last one's end)."""
        if key not in self._used:
            used: dict[Path, int] = {}
            for episode in range(self.num_episodes):
                path, start, length = self._video_span(key, episode)
                used[path] = max(used.get(path, 0), start + length)
            self._used[key] = used
        return self._used[key]

    def _cached_decode(self, path: Path, version: tuple[int, int], decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        relative = path.relative_to(self.root)
        cache_file = (
            self.root / CACHE_DIR / relative.parent / f"{relative.name}.{version[0]}-{version[1]}.npy"
        )
        cached = read_cache_file(cache_file, mmap=True)
        if cached is not None:
            return cached
        frames = decode(path)
        if not write_cache_file(cache_file, frames, f"{relative.name}.*.npy"):
            return frames  # read-only dataset: keep the decoded frames in memory only
        return np.load(cache_file, mmap_mode="r")


def read_cache_file(path: Path, mmap: bool = False) -> np.ndarray | None:
    """A cached array, or None where there is none or it does not read (cut short by a crash of the machine): then
    it is deleted, so it is made again rather than failing every later read."""
    if not path.is_file():
        return None
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except OSError as error:  # the process, not the file: no descriptor left, no permission
        if error.errno in (errno.EMFILE, errno.ENFILE):
            raise
        return None
    except (ValueError, EOFError):  # cut short or garbled
        with contextlib.suppress(OSError):  # a read-only dataset keeps it; the caller decodes in memory
            path.unlink(missing_ok=True)
        return None


def write_cache_file(path: Path, array: np.ndarray, stale_pattern: str) -> bool:
    """Write `array` to `path` (aside, synced, then renamed), first deleting the other entries `stale_pattern`
    names in its folder; False where the folder cannot be written (a read-only dataset)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(stale_pattern):
            if stale != path:  # another process may have just written this version
                stale.unlink(missing_ok=True)
        with file_written_aside(path) as scratch, open(scratch, "wb") as handle:  # a name would gain ".npy"
            np.save(handle, array)
    except OSError:
        return False
    return True


def _video_status(path: Path) -> os.stat_result:
    """`path.stat()`; a video the metadata names but the folder lacks is a damaged dataset."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise DamagedDatasetError(f"{path} is missing; {DAMAGED}") from None


def open_for_training(data: str, learns: str, how_to_make: str) -> EpisodeDataset:
    """The dataset at `data` for a command that learns from its camera frames: a UsageError where there is none
    (saying `how_to_make` one) or it lacks the camera (`learns`: who learns from it); a damaged one raises its
    DamagedDatasetError, as it would wherever in the dataset it was found (exit code 1)."""
    require_dataset(data, how_to_make)
    try:
        dataset = EpisodeDataset(data)
    except DamagedDatasetError:
        raise
    except DatasetError as error:  # one that is there: the error says what is wrong with it
        raise UsageError(str(error)) from None
    if OBS_IMAGE_FRONT not in dataset.features:
        raise UsageError(f"{data}: expected the camera feature {OBS_IMAGE_FRONT!r} {learns} (as `vplan collect` "
                         f"records it), found {dataset.video_keys or 'no camera'}; record your env's camera under the "
                         "key 'front' (training on another camera is not built yet)")
    return dataset


def warn_if_held_out_seeds(data: str | Path, dataset: EpisodeDataset, episodes: list[int], use: str) -> None:
    """A VplanWarning where some of `episodes` (to `use` for, e.g. "train on") were recorded on the seeds the
    evaluations play (`vplan run record=true` records them): a default evaluation would score on learned scenes."""
    seeds = [int(seed) for e in episodes if (seed := dataset.episode_meta(e).get("seed")) is not None]
    held_out = [seed for seed in seeds if seed >= HELD_OUT_SEEDS]
    if held_out:
        warnings.warn(f"{data}: {len(held_out)} of the episodes to {use} were recorded on seeds "
                      f"{min(held_out)}..{max(held_out)}, which vplan run, the evals and the benches use by default "
                      f"(seeds {HELD_OUT_SEEDS}+, held out of training); evaluate the result on others "
                      f"(seed={max(seeds) + 1}), or record on seeds below {HELD_OUT_SEEDS}", VplanWarning,
                      stacklevel=3)
