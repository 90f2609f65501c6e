"""Write episodes in the LeRobot v3.0 on-disk layout, safely against a collect killed at any moment.

The layout and field names follow lerobot's `datasets/utils.py`, `dataset_metadata.py` and `dataset_writer.py`
(codebase v3.0); lerobot itself is not a dependency, so this module writes the files with pyarrow and
imageio-ffmpeg:

    meta/info.json                                  schema, counters, path templates
    meta/stats.json                                 per-feature min/max/mean/std/count/quantiles
    meta/tasks.parquet                              task text (index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode (lengths, file positions, stats)
    data/chunk-000/file-000.parquet                 the non-video features, one row per frame
    videos/<video_key>/chunk-000/file-000.mp4       the video features

Crash safety. Every episode goes into its own files (the next file position, rolling over to the next chunk
after `chunks_size` files; a v3.0 file may hold any number of episodes, one included). Each file is written
under `.staging/`, flushed to disk, and moved into place with `os.replace`; `meta/info.json` is replaced last,
so its `total_episodes` is the commit point. A writer killed half-way leaves at most files beyond the last
committed episode, which vplan's reader ignores and the next vplan writer on the directory deletes before
appending; lerobot's reader globs every file, so rerun the stopped `vplan collect` (or `vplan run record=true`)
before lerobot reads or appends to it.
A lock file (`.lock`, released by the OS when the process dies) stops two writers sharing one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any

import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vplan.constants import EPISODE_INDEX, FRAME_INDEX, INDEX, ROBOT_TYPE_PREFIX, TASK_INDEX, TIMESTAMP
from vplan.errors import DamagedDatasetError, DatasetError, RunError, UsageError, first_line
from vplan.utils.files import fsync_path

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # max files per chunk folder (lerobot's default)
DEFAULT_DATA_FILE_SIZE_IN_MB = 100  # recorded for lerobot; this writer starts a new file per episode
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
ACTION_UNITS_KEY = "vplan_action_units"  # in info.json: the env settings that say what an action means
DEFAULT_TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
VIDEO_DIR = "videos"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = VIDEO_DIR + "/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
STAGING_DIR = ".staging"  # files of the episode being written; deleted when a writer opens the directory
CACHE_DIR = ".cache"  # decoded-frame cache of the reader
LOCK_FILE = ".lock"
# The columns of an episode's metadata row that are not `extra` (with those holding a "/": files and stats).
STANDARD_EPISODE_COLUMNS = (EPISODE_INDEX, "tasks", "length", "dataset_from_index", "dataset_to_index")

# H.264 in 4:4:4 at CRF 10: on 64x64 tabletop frames 4:2:0 chroma subsampling alone caps PSNR near 30 dB
# (saturated cube edges), while 4:4:4 at CRF 10 decodes at 39-49 dB for about 2-7 KB a frame.
VIDEO_CODEC = "libx264"
VIDEO_CODEC_NAME = "h264"  # the stream's codec name, as lerobot records it
VIDEO_PIX_FMT = "yuv444p"
VIDEO_CRF = 10

# Per-frame columns the writer fills itself (lerobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
    FRAME_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    INDEX: {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
MAX_STATS_FRAMES = 100
_REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path")
_FILE_NAME = re.compile(r"chunk-(\d+)/file-(\d+)\.(parquet|mp4)$")


DAMAGED = "the dataset is damaged (an interrupted copy?): copy it again, or make it again in another folder"


# ----------------------------------------------------------------------------------------------- layout


def is_dataset(root: str | Path) -> bool:
    """Whether `root` holds a dataset's `meta/info.json` (readable or not): where one does, an error reading it
    is about that dataset, and "make one" is not the way out."""
    return (Path(root) / INFO_PATH).is_file()


def recorded_episodes(root: str | Path) -> int | None:
    """The episode count `meta/info.json` records (its commit point), read alone so that a command can check it
    before its libraries load; None where it cannot be read (opening the dataset then says why)."""
    try:
        count = json.loads((Path(root) / INFO_PATH).read_text()).get("total_episodes")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _no_dataset(root: str | Path) -> str:
    return f"{Path(root)} is not a LeRobot dataset: {Path(root) / INFO_PATH} does not exist"


def require_dataset(data: str | Path, how_to_make: str) -> None:
    """A UsageError where `data` holds no dataset: a file, or a folder without `meta/info.json` (saying
    `how_to_make` one). Reads no more than that, so a command can say it before its libraries load."""
    if is_dataset(data):
        return
    folder = Path(data)
    if folder.is_file():  # collect would refuse the out= the hint names
        raise UsageError(f"data={data}: a file, not a dataset folder; pass the folder `vplan collect` wrote")
    if is_dataset(folder / "episodes"):  # a `vplan run record=true` folder (the README's data=<run>/episodes)
        raise UsageError(f"data={data}: a `vplan run` folder; the episodes it recorded are the dataset in "
                         f"{folder / 'episodes'}: pass data={folder / 'episodes'}")
    near = _dataset_beside(folder)
    said = _no_dataset(data) + (f" (did you mean data={near}?)" if near else "")
    if folder.is_dir() and any(folder.iterdir()):  # collect refuses a folder that holds other files
        raise UsageError(f"{said}; {folder} holds other files: pass the folder that `vplan collect` wrote (or the "
                         "episodes/ folder of a `vplan run record=true`)")
    raise UsageError(f"{said}; make one with {how_to_make}")


def _dataset_beside(folder: Path) -> Path | None:
    """The dataset next to `folder` whose name is closest to its, if one is close (a typo: `run/episode`)."""
    import difflib

    parent = folder.parent
    try:
        names = [entry.name for entry in parent.iterdir() if entry.name != folder.name and is_dataset(entry)]
    except OSError:  # no such folder, or none to read
        return None
    close = difflib.get_close_matches(folder.name, names, n=1, cutoff=0.8)
    return parent / close[0] if close else None


def recorded_env(info: dict[str, Any]) -> str | None:
    """The vplan env a dataset's episodes were recorded in (`vplan collect` and `vplan run record=true` write the
    robot_type `vplan_<env>`), from its info; None for a dataset recorded elsewhere."""
    robot_type = str(info.get("robot_type") or "")
    return robot_type.removeprefix(ROBOT_TYPE_PREFIX) if robot_type.startswith(ROBOT_TYPE_PREFIX) else None


def load_info(root: str | Path) -> dict[str, Any]:
    """Read and check `meta/info.json`, naming the path in the error when `root` is not a v3.0 dataset."""
    path = Path(root) / INFO_PATH
    if not is_dataset(root):
        raise DatasetError(_no_dataset(root))
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # the writer replaces it whole: a cut copy
        raise DamagedDatasetError(f"{path} is not valid JSON ({first_line(err)}); {DAMAGED}") from None
    except OSError as err:
        raise DamagedDatasetError(f"{path} cannot be read ({first_line(err)}); {DAMAGED}") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path} holds a JSON {type(info).__name__}, not a LeRobot dataset's info object")
    if "codebase_version" in info and info["codebase_version"] != CODEBASE_VERSION:  # an older layout lacks fields
        raise DatasetError(
            f"{path} has codebase_version {info['codebase_version']!r}; expected {CODEBASE_VERSION!r} (convert a "
            "v2.1 dataset with LeRobot's converter, python -m lerobot.datasets.v30.convert_dataset_v21_to_v30)"
        )
    missing = [key for key in _REQUIRED_INFO_KEYS if key not in info]
    if missing:
        raise DatasetError(f"{path} lacks the LeRobot fields {missing}")
    for key in ("total_episodes", "total_frames"):
        if isinstance(info[key], bool) or not isinstance(info[key], int) or info[key] < 0:
            raise DatasetError(f"{path}: {key} {info[key]!r}; expected an int >= 0")
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:  # NaN too
        raise DatasetError(f"{path}: fps {fps!r}; expected a number > 0")
    if not isinstance(info["features"], dict) or not all(isinstance(f, dict) for f in info["features"].values()):
        raise DatasetError(f"{path}: features is not an object of feature objects (dtype, shape, names)")
    for key, feature in info["features"].items():
        dtype = feature.get("dtype") if isinstance(feature, dict) else None
        if dtype != "video" and not _numeric(dtype):
            hint = (" (a dataset recorded with images rather than videos needs its images encoded as videos first)"
                    if dtype == "image" else "")
            raise DatasetError(f"{path}: feature {key!r} has dtype {dtype!r}; vplan reads numeric, bool and video "
                               f"features{hint}")
        shape = feature.get("shape")  # numpy_column reshapes by it
        if not isinstance(shape, list) or not all(type(size) is int and size > 0 for size in shape):
            raise DatasetError(f"{path}: feature {key!r} has shape {shape!r}; expected a list of ints > 0")
        if dtype == "video":  # decoded as RGB: a depth map (lerobot's gray12le) would come back as noise
            extra = feature.get("info") or {}
            depth = bool(extra.get("video.is_depth_map") or extra.get("is_depth_map"))
            shape = list(feature.get("shape") or [])
            if _channels_first(feature):  # the MP4 is RGB all the same (see `channels_last`)
                shape = [*shape[1:], 3]
            if depth or (shape and shape[-1] != 3):
                raise DatasetError(f"{path}: video feature {key!r} is {'a depth map' if depth else f'of shape {shape}'}"
                                   "; vplan reads RGB video features (height, width, 3 or 3, height, width) only")
    if video_keys(info["features"]) and not info.get("video_path"):
        raise DatasetError(f"{path} has video features {video_keys(info['features'])} but no video_path")
    _check_file_names(path, info)
    return info


def channels_last(info: dict[str, Any]) -> dict[str, Any]:
    """`info` with its video features declared (3, height, width) as (height, width, 3), for a reader: the MP4 holds
    RGB frames either way. A writer keeps the declaration as it found it."""
    features = {key: {**feature, "shape": [*feature["shape"][1:], 3], "names": ["height", "width", "channels"]}
                if feature.get("dtype") == "video" and _channels_first(feature) else feature
                for key, feature in info["features"].items()}
    return {**info, "features": features}


def _channels_first(feature: dict[str, Any]) -> bool:
    """Whether a video feature is declared (3, height, width), as some LeRobot recorders write it (gym_manipulator's
    images): by its names where it has them, else by its shape."""
    shape, names = list(feature.get("shape") or []), feature.get("names")
    if len(shape) != 3 or shape[0] != 3:
        return False
    if isinstance(names, list) and len(names) == 3:
        return str(names[0]).lower() in ("c", "channel", "channels")
    return shape[2] != 3


def _check_file_names(path: Path, info: dict[str, Any]) -> None:
    """A DatasetError where info.json could name files outside the dataset (a template with "..", an absolute
    path, a field other than lerobot's, a video key with a "/"), or ask a huge format width: a dataset from
    elsewhere would have vplan read, cache and, appending, write files there."""
    for key, fields in _TEMPLATE_FIELDS.items():
        template = info.get(key)
        if template is None and key == "video_path":
            continue
        problem = _template_problem(template, fields)
        if problem:
            raise DatasetError(f"{path}: {key} {template!r} {problem}; vplan reads and writes files inside the "
                               "dataset only, as lerobot's own templates name them")
    for key in video_keys(info["features"]):
        if not _SAFE_NAME.fullmatch(key) or set(key) == {"."}:
            raise DatasetError(f"{path}: video feature {key!r} names a folder; expected letters, digits, '_', '.' "
                               "and '-' only")
    chunks_size = info.get("chunks_size", 1)
    if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or chunks_size < 1:
        raise DatasetError(f"{path}: chunks_size {chunks_size!r}; expected a positive int")


_TEMPLATE_FIELDS = {"data_path": ("chunk_index", "file_index"),
                    "video_path": ("video_key", "chunk_index", "file_index")}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _template_problem(template: Any, fields: tuple[str, ...]) -> str | None:
    """What makes a path template unsafe to fill in, or None."""
    from string import Formatter

    if not isinstance(template, str):
        return "is not a string"
    try:
        parts = list(Formatter().parse(template))
    except ValueError as error:
        return f"does not parse ({error})"
    for _, field, spec, conversion in parts:
        if field is not None and (field not in fields or conversion or not re.fullmatch(r"0?[0-9]?d?", spec or "")):
            return f"has the field {field!r} (with {spec!r}); expected {fields}, each with at most a width such as :03d"
    if _outside("".join(literal + ("x" if field is not None else "") for literal, field, _, _ in parts)):
        return "names a file outside the dataset"
    return None


def _outside(relative: str) -> bool:
    """Whether a path the metadata names could lead out of the dataset's folder."""
    return "\\" in relative or PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts


def dataset_file(root: Path, relative: str) -> Path:
    """`root / relative` for a file the metadata names (filled in from its episode rows), or a DatasetError
    where that would be outside `root`."""
    if _outside(relative):
        raise DatasetError(f"{root}: its metadata names the file {relative!r}, outside the dataset")
    return root / relative


def data_file(root: Path, info: dict[str, Any], row: dict[str, Any]) -> Path:
    """The data (parquet) file holding an episode's frames, from its metadata row."""
    return dataset_file(root, info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                       file_index=row["data/file_index"]))


def video_file(root: Path, info: dict[str, Any], key: str, row: dict[str, Any]) -> Path:
    """The video file holding an episode's `key` frames, from its metadata row."""
    return dataset_file(root, info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                        file_index=row[f"videos/{key}/file_index"]))


def _numeric(dtype: Any) -> bool:
    """Whether a feature's dtype names a numpy number or bool type."""
    try:
        return np.issubdtype(np.dtype(dtype), np.number) or np.dtype(dtype) == np.bool_
    except TypeError:
        return False


def chunk_and_file(position: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk_index, file_index) of the `position`-th file of a kind (lerobot's rollover rule)."""
    return divmod(position, chunks_size)


def video_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the features stored as mp4."""
    return [key for key, ft in features.items() if ft["dtype"] == "video"]


# ------------------------------------------------------------------------------------------------ video


def encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 (T, H, W, 3) frames to an H.264 mp4 (any size: 4:4:4 needs no macro-block resize)."""
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        os.path.abspath(path),  # ffmpeg reads a relative "run:2/..." as the protocol "run"
        (width, height),
        fps=fps,
        codec=VIDEO_CODEC,
        pix_fmt_in="rgb24",
        pix_fmt_out=VIDEO_PIX_FMT,
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-crf", str(VIDEO_CRF)],
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    # imageio-ffmpeg does not read ffmpeg's exit status: a killed ffmpeg left a 48-byte file that was committed
    try:
        written = imageio_ffmpeg.count_frames_and_secs(os.path.abspath(path))[0]
    except (OSError, RuntimeError):  # no file, or none ffmpeg can read
        written = 0
    if written != len(frames):
        full = "; the disk is full: free some space" if shutil.disk_usage(path.parent).free < 2**20 else ""
        raise RunError(f"{path}: ffmpeg wrote {written} of {len(frames)} frames; the episode is not added{full}")


def decode_video(path: Path, size: tuple[int, int] | None = None, max_frames: int | None = None) -> np.ndarray:
    """Decode an mp4's frames to uint8 (T, H, W, 3): every one, or the first `max_frames` (what its episodes
    use: a few kilobytes of video can claim gigabytes of frames). With `size` (height, width), frames of another
    size are refused before any is decoded."""
    frames: list[np.ndarray] = []
    try:
        reader = imageio_ffmpeg.read_frames(os.path.abspath(path), pix_fmt="rgb24")
        try:
            width, height = next(reader)["size"]
            if size is not None and (height, width) != tuple(size):
                raise DatasetError(f"{path} holds {height}x{width} frames, and info.json's feature says "
                                   f"{size[0]}x{size[1]}")
            for buffer in reader:
                frames.append(np.frombuffer(buffer, np.uint8).reshape(height, width, 3))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        finally:
            reader.close()  # stops ffmpeg when the frames wanted were read before its end
    except (OSError, RuntimeError) as error:  # missing, truncated, not a video: ffmpeg's banner follows the first line
        if getattr(error, "errno", None):  # the machine's (too many open files), not the file's
            raise
        raise DamagedDatasetError(f"{path} cannot be decoded ({first_line(error)}); {DAMAGED}") from None
    if not frames:
        raise DatasetError(f"{path} holds no video frames")
    return np.stack(frames)


def video_info(feature: dict[str, Any], fps: int) -> dict[str, Any]:
    """The `info` block lerobot records for a video feature (it probes the file; here settings are fixed)."""
    height, width, channels = feature["shape"]
    return {
        "video.height": height,
        "video.width": width,
        "video.codec": VIDEO_CODEC_NAME,
        "video.pix_fmt": VIDEO_PIX_FMT,
        "video.fps": fps,
        "video.channels": channels,
        "video.crf": VIDEO_CRF,
        "has_audio": False,
        "is_depth_map": False,
    }


# ------------------------------------------------------------------------------------------------ stats


def feature_stats(values: np.ndarray, is_video: bool) -> dict[str, np.ndarray]:
    """lerobot's per-episode stats: per dimension for vectors; for video per channel in [0, 1], shape
    (3, 1, 1), over at most `MAX_STATS_FRAMES` evenly spaced frames (lerobot samples too; count = frames).
    """
    values = np.asarray(values)
    if is_video:
        values = values[np.unique(np.linspace(0, len(values) - 1, MAX_STATS_FRAMES).round().astype(int))]
        per_channel = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        stats = _stats_along_rows(per_channel)
        stats = {key: value.reshape(-1, 1, 1) for key, value in stats.items()}
    else:
        rows = values.reshape(len(values), -1).astype(np.float64)
        stats = _stats_along_rows(rows)
        stats = {key: value.reshape(values.shape[1:] or (1,)) for key, value in stats.items()}
    stats["count"] = np.array([len(values)])
    return stats


def _stats_along_rows(rows: np.ndarray) -> dict[str, np.ndarray]:
    stats = {
        "min": rows.min(axis=0),
        "max": rows.max(axis=0),
        "mean": rows.mean(axis=0),
        "std": rows.std(axis=0),
    }
    for q, value in zip(QUANTILES, np.quantile(rows, QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = value
    return stats


def aggregate_stats(
    stats_list: Iterable[dict[str, dict[str, np.ndarray]]],
) -> dict[str, dict[str, np.ndarray]]:
    """Merge per-episode stats exactly for min/max/mean/std; quantiles as lerobot's `aggregate_feature_stats`
    merges them (since its #3804: a count-weighted mean before, far from the real quantiles), an envelope of the
    episodes': the least of each quantile up to q50, the greatest above (bounds, not estimates; so a dataset
    lerobot appends to keeps one meaning)."""
    stats_list = list(stats_list)
    merged: dict[str, dict[str, np.ndarray]] = {}
    for key in dict.fromkeys(key for stats in stats_list for key in stats):
        parts = [stats[key] for stats in stats_list if key in stats]
        counts = np.array([part["count"][0] for part in parts], dtype=np.float64)
        means = np.stack([part["mean"] for part in parts])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1))) / counts.sum()
        mean = (means * weights).sum(axis=0)
        variance = ((np.stack([part["std"] for part in parts]) ** 2 + (means - mean) ** 2) * weights).sum(
            axis=0
        )
        merged[key] = {
            "min": np.min([part["min"] for part in parts], axis=0),
            "max": np.max([part["max"] for part in parts], axis=0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": np.array([int(counts.sum())]),
        }
        for q in QUANTILES:
            name = f"q{round(q * 100):02d}"
            if all(name in part for part in parts):
                bound = np.min if q <= 0.5 else np.max
                merged[key][name] = bound(np.stack([part[name] for part in parts]), axis=0)
    return merged


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Nested lists, as lerobot's `serialize_dict` writes stats.json."""
    return {
        key: {name: np.asarray(value).tolist() for name, value in ft.items()} for key, ft in stats.items()
    }


def stats_from_row(row: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The per-episode stats stored in an episodes-metadata row as `stats/<feature>/<stat>` columns."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if column.startswith("stats/") and value is not None:
            key, name = column[len("stats/") :].rsplit("/", 1)
            stats.setdefault(key, {})[name] = np.asarray(value)
    return stats


# ---------------------------------------------------------------------------------------------- parquet


def arrow_column(values: np.ndarray, feature: dict[str, Any]) -> pa.Array:
    """A per-frame column as lerobot's HF features: a scalar for shape [1], else (nested) fixed-size lists."""
    dtype = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = list(feature["shape"])
    if shape == [1]:
        return pa.array(values.reshape(-1), type=dtype)
    column: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1), type=dtype)
    for size in reversed(shape):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def numpy_column(column: pa.ChunkedArray | pa.Array, feature: dict[str, Any]) -> np.ndarray:
    """Inverse of `arrow_column`: (T,) for shape [1], (T, *shape) otherwise."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    length = len(array)
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False).astype(feature["dtype"], copy=False)
    shape = list(feature["shape"])
    return values.reshape(length) if shape == [1] else values.reshape(length, *shape)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """`pyarrow.parquet.read_table`; a missing or unreadable file is a DamagedDatasetError naming it."""
    try:
        return pq.read_table(os.path.abspath(path), columns=columns)  # "run:2/..." read as a URI otherwise
    except (pa.ArrowException, OSError) as error:
        raise DamagedDatasetError(f"{path} cannot be read ({first_line(error)}); {DAMAGED}") from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a parquet file as dicts."""
    return read_table(path).to_pylist()


def tasks_table(tasks: list[str]) -> pa.Table:
    """`meta/tasks.parquet` as pandas writes lerobot's DataFrame: index "task", column "task_index"."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def load_tasks(root: Path, total_tasks: int) -> list[str]:
    """Task texts ordered by task_index; rows past `total_tasks` belong to an uncommitted episode."""
    path = root / DEFAULT_TASKS_PATH
    if total_tasks == 0:
        return []
    if not path.is_file():
        raise DamagedDatasetError(f"{path} is missing, though {INFO_PATH} counts {total_tasks} tasks; {DAMAGED}")
    table = read_table(path)
    text_column = "task" if "task" in table.column_names else "__index_level_0__"
    by_index = dict(
        zip(table.column(TASK_INDEX).to_pylist(), table.column(text_column).to_pylist(), strict=True)
    )
    missing = [i for i in range(total_tasks) if i not in by_index]
    if missing:
        raise DatasetError(f"{path} has no text for task_index {missing[:5]}, though {INFO_PATH} counts "
                           f"{total_tasks} tasks")
    return [by_index[i] for i in range(total_tasks)]


def check_episode_files(root: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A DamagedDatasetError naming a data or video file the episodes' metadata names and `root` lacks (a copy
    cut short): a writer resuming such a dataset appended to it and called it whole."""
    paths = [data_file(root, info, row) for row in rows]
    paths += [video_file(root, info, key, row) for key in video_keys(info["features"]) for row in rows]
    for path in dict.fromkeys(paths):
        if not path.is_file():
            raise DamagedDatasetError(f"{path} is missing; {DAMAGED}")


def load_episode_rows(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The committed episodes-metadata rows by episode index, skipping an unfinished episode's leftovers; their
    frames must add up to info.json's count."""
    total_episodes = info["total_episodes"]
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted((root / EPISODES_DIR).glob("*/*.parquet")):
        for row in read_rows(path):
            if row[EPISODE_INDEX] < total_episodes:
                rows[row[EPISODE_INDEX]] = row
    if len(rows) != total_episodes:
        missing = sorted(set(range(total_episodes)) - set(rows))
        raise DatasetError(f"{root / EPISODES_DIR} lacks the metadata of committed episodes {missing[:10]}")
    start = 0
    for i in range(total_episodes):  # each episode's frames follow the last's, as many as its length says
        row = rows[i]
        if (row["dataset_from_index"], row["dataset_to_index"]) != (start, start + row["length"]):
            raise DatasetError(f"{root / EPISODES_DIR}: episode {i} spans frames {row['dataset_from_index']}.."
                               f"{row['dataset_to_index']} with length {row['length']}; expected {start}.."
                               f"{start + row['length']}")
        start = row["dataset_to_index"]
    if start != info["total_frames"]:
        raise DatasetError(f"{root / INFO_PATH} counts {info['total_frames']} frames, its episodes {start}")
    return [rows[i] for i in range(total_episodes)]


# ----------------------------------------------------------------------------------------------- writer


class EpisodeWriter:
    """Appends whole episodes to a LeRobot v3.0 dataset; each `add_episode` is committed atomically.

    Create it with `create_or_resume`; use it as a context manager (or call `close`) to release the lock.
    """

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        tasks: list[str],
        rows: list[dict[str, Any]],
        lock: int,
    ) -> None:
        """Internal: use `create_or_resume`."""
        self.root = root
        self._info = info
        self._tasks = tasks
        self._lock: int | None = lock
        self._stats = aggregate_stats(stats_from_row(row) for row in rows)
        last = rows[-1] if rows else None
        # Next file position of each kind: one past the last committed episode's (lerobot's resume rule).
        self._next_position = {kind: 0 for kind in self._file_kinds()}
        if last is not None:
            for kind in self._file_kinds():
                chunk, file = last[f"{kind}/chunk_index"], last[f"{kind}/file_index"]
                self._next_position[kind] = chunk * info["chunks_size"] + file + 1
        # the extra columns every episode has, fixed by the first (None: no episode yet), so that every episode
        # metadata file has one schema
        self._extra_types: dict[str, pa.DataType] | None = None if last is None else self._extra_types_of(rows[0])
        if last is not None and self._extra_types_of(last).keys() != self._extra_types.keys():
            raise DatasetError(  # lerobot appended it: a vplan episode after it would mix two schemas
                f"{root}: episode {len(rows) - 1} has other episode columns than episode 0 "
                f"({sorted(self._extra_types_of(last))} against {sorted(self._extra_types)}): another tool (lerobot) "
                "wrote it, and vplan cannot continue the dataset; write into another out="
            )
        # the `extra` of the last committed episode: what a resumed collection checks it continues
        self.last_extra = {} if last is None else {key: last[key] for key in self._extra_types or {}}

    # -- opening

    @classmethod
    def create_or_resume(
        cls,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        *,
        resume: bool = True,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        action_units: dict[str, float] | None = None,
    ) -> EpisodeWriter:
        """Open `root` for appending: create the dataset, or resume after its last committed episode.

        `features` is lerobot-style ({name: {"dtype", "shape", "names"}}, dtype "video" for uint8 (H, W, 3)
        frames); the per-frame index columns are added. Raises `DatasetError` (one line) when `root` holds
        something else: files but `resume=False`, a non-dataset, a dataset whose fps, robot_type or features
        differ from those asked (one that holds no episode yet is begun again as asked), or a directory another
        writer has open. `action_units` (the env settings that say what an action means, e.g. `max_delta`:
        `vplan.envs.action_units`) go into info.json; a dataset recorded with other values is refused too.
        """
        root = Path(root)
        if fps <= 0:
            raise ValueError(f"expected fps > 0, got {fps}")
        if chunks_size <= 0:
            raise ValueError(f"expected chunks_size > 0, got {chunks_size}")
        wanted = _normalize_features(features, fps)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / INFO_PATH).is_file() and _has_files(root):  # refused before a lock file is left in it
            raise DatasetError(f"{root} is not empty and holds no dataset ({INFO_PATH} is missing)")

        def resumable() -> dict[str, Any] | None:
            """The dataset's info to append to; None for one that holds no episode (a writer stopped before its
            first), which is begun again as asked."""
            info = load_info(root)
            if info["total_episodes"] == 0:
                return None
            if not resume:
                raise DatasetError(f"{root} already holds a dataset and resume is off")
            _check_compatible(root, info, fps, robot_type, wanted)
            recorded = info.get(ACTION_UNITS_KEY)
            if action_units and recorded is not None and recorded != dict(action_units):
                raise DatasetError(f"cannot resume {root}: its actions were recorded with {recorded}, asked "
                                   f"{dict(action_units)}")
            return info

        if (root / INFO_PATH).is_file():
            resumable()  # refused before a lock file is left in someone's dataset; checked again under the lock
        lock = _acquire_lock(root)
        try:
            # under the lock: a writer that just created it has closed
            info = resumable() if (root / INFO_PATH).is_file() else None
            is_new = info is None
            if is_new:
                info = _new_info(fps, wanted, robot_type, chunks_size)
                if action_units:
                    info[ACTION_UNITS_KEY] = dict(action_units)
            shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
            (root / STAGING_DIR).mkdir()
            rows = load_episode_rows(root, info)
            check_episode_files(root, info, rows)  # appended to, a copy cut short would stay damaged
            writer = cls(root, info, load_tasks(root, info["total_tasks"]), rows, lock)
            writer._delete_leftovers()
            if is_new:
                writer._commit_files({INFO_PATH: _json_bytes(info)})
            else:
                writer._repair_meta()
        except BaseException:
            os.close(lock)
            raise
        return writer

    # -- state

    @property
    def fps(self) -> int:
        return self._info["fps"]

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """All features as stored in info.json, the index columns included."""
        return deepcopy(self._info["features"])

    @property
    def num_episodes(self) -> int:
        return self._info["total_episodes"]

    @property
    def num_frames(self) -> int:
        return self._info["total_frames"]

    # -- writing

    def add_episode(
        self,
        frames: dict[str, np.ndarray],
        subgoals: list[str],
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one whole episode and commit it; returns its episode index.

        `frames` maps every declared feature to an array with one row per frame (video: uint8 (T, H, W, 3);
        shape-[1] features may be (T,) or (T, 1)). `subgoals[t]` is frame t's language action, stored as its
        task_index. `extra` holds episode-level scalars (instruction text, seed, success, ...) stored as
        columns of the episode's metadata row; every episode of a dataset must carry the same keys and types.
        """
        if self._lock is None:
            raise RuntimeError("this EpisodeWriter is closed")
        features = self._info["features"]
        length = self._check_frames(frames, subgoals)
        extra = self._check_extra(extra or {})
        episode = self._info["total_episodes"]
        first_index = self._info["total_frames"]
        tasks = self._tasks + [text for text in dict.fromkeys(subgoals) if text not in self._tasks]
        task_of = {text: i for i, text in enumerate(tasks)}
        columns = {
            **{key: np.asarray(frames[key], dtype=_numpy_dtype(features[key])) for key in frames},
            TIMESTAMP: (np.arange(length) / self.fps).astype(np.float32),
            FRAME_INDEX: np.arange(length, dtype=np.int64),
            EPISODE_INDEX: np.full(length, episode, dtype=np.int64),
            INDEX: np.arange(first_index, first_index + length, dtype=np.int64),
            TASK_INDEX: np.array([task_of[text] for text in subgoals], dtype=np.int64),
        }
        episode_stats = {
            key: feature_stats(columns[key], features[key]["dtype"] == "video") for key in features
        }
        staging = self.root / STAGING_DIR
        files: dict[str, Path | bytes] = {}
        row: dict[str, Any] = {
            EPISODE_INDEX: episode,
            "tasks": list(dict.fromkeys(subgoals)),
            "length": length,
        }
        for kind in self._file_kinds():
            chunk, file = chunk_and_file(self._next_position[kind], self._info["chunks_size"])
            row[f"{kind}/chunk_index"], row[f"{kind}/file_index"] = chunk, file
        for key in video_keys(features):
            staged = staging / f"{key}.mp4"
            encode_video(staged, columns[key], self.fps)
            files[self._path_of(f"videos/{key}", row)] = staged
            row[f"videos/{key}/from_timestamp"] = 0.0
            row[f"videos/{key}/to_timestamp"] = length / self.fps
        data = pa.table(
            {key: arrow_column(columns[key], ft) for key, ft in features.items() if ft["dtype"] != "video"}
        )
        files[self._path_of("data", row)] = _staged_parquet(data, staging / "data.parquet")
        row["dataset_from_index"], row["dataset_to_index"] = first_index, first_index + length
        row.update(extra)
        for key, per_stat in episode_stats.items():
            for name, value in per_stat.items():
                row[f"stats/{key}/{name}"] = value.tolist()
        files[self._path_of("meta/episodes", row)] = _staged_parquet(
            pa.Table.from_pylist([row]), staging / "episode.parquet"
        )
        files[DEFAULT_TASKS_PATH] = _staged_parquet(tasks_table(tasks), staging / "tasks.parquet")
        merged_stats = aggregate_stats([self._stats, episode_stats])
        info = deepcopy(self._info)
        info["total_episodes"] = episode + 1
        info["total_frames"] = first_index + length
        info["total_tasks"] = len(tasks)
        info["splits"] = {"train": f"0:{episode + 1}"}
        files[STATS_PATH] = _json_bytes(stats_to_json(merged_stats))
        files[INFO_PATH] = _json_bytes(info)  # last: the commit point
        self._commit_files(files)
        for kind in self._file_kinds():  # before `_info` counts the episode: close() relies on that order
            self._next_position[kind] += 1
        self._info, self._tasks, self._stats = info, tasks, merged_stats
        if self._extra_types is None:
            self._extra_types = {key: _arrow_type(value) for key, value in extra.items()}
        self.last_extra = dict(extra)
        return episode

    def close(self) -> None:
        """Release the directory; committed episodes are already on disk. Files of an episode that never
        committed go (LeRobot's reader, which globs the folders, would read them), and stats.json and
        tasks.parquet count the committed ones only."""
        if self._lock is not None:
            try:
                info = self.root / INFO_PATH
                on_disk = json.loads(info.read_text()) if info.is_file() else {"total_episodes": 0}
                if on_disk["total_episodes"] == self._info["total_episodes"]:
                    self._delete_leftovers()
                    (self.root / STAGING_DIR).mkdir(exist_ok=True)
                    self._repair_meta()
                else:  # stopped between a commit and counting it in `_info` (the positions move first): the next
                    self._info = on_disk  # open cleans up; num_episodes counts the committed episode meanwhile
            finally:  # whatever the clean-up met, the directory is released
                shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
                os.close(self._lock)
                self._lock = None

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers

    def _file_kinds(self) -> list[str]:
        return ["data", "meta/episodes", *(f"videos/{key}" for key in video_keys(self._info["features"]))]

    def _path_of(self, kind: str, row: dict[str, Any]) -> str:
        if kind == "meta/episodes":
            return DEFAULT_EPISODES_PATH.format(chunk_index=row[f"{kind}/chunk_index"],
                                                file_index=row[f"{kind}/file_index"])
        path = data_file(self.root, self._info, row) if kind == "data" else \
            video_file(self.root, self._info, kind[len("videos/") :], row)
        return path.relative_to(self.root).as_posix()

    def _delete_leftovers(self) -> None:
        """Remove files at or past each kind's next position: written by an episode that never committed."""
        for kind in self._file_kinds():  # each kind's folder is named like the kind
            for path in (self.root / kind).glob("chunk-*/file-*.*"):
                match = _FILE_NAME.search(path.as_posix())
                if (
                    match
                    and int(match[1]) * self._info["chunks_size"] + int(match[2]) >= self._next_position[kind]
                ):
                    path.unlink()

    def _repair_meta(self) -> None:
        """Rewrite stats.json and tasks.parquet where they still count an episode that never committed (a writer
        stopped between moving them in and info.json): LeRobot reads them as they are."""
        repairs: dict[str, Path | bytes] = {}
        stats_path, tasks_path = self.root / STATS_PATH, self.root / DEFAULT_TASKS_PATH
        if stats_path.is_file() and self._info["total_episodes"] > 0:
            try:  # a file without index stats (another writer's) is left as it is; an unreadable one made anew
                count = json.loads(stats_path.read_text()).get(INDEX, {}).get("count", [self._info["total_frames"]])[0]
            except (ValueError, AttributeError, TypeError, IndexError):
                count = None
            if count != self._info["total_frames"]:
                repairs[STATS_PATH] = _json_bytes(stats_to_json(self._stats))
        if tasks_path.is_file() and read_table(tasks_path).num_rows > len(self._tasks):
            staged = self.root / STAGING_DIR / "tasks.parquet"
            repairs[DEFAULT_TASKS_PATH] = _staged_parquet(tasks_table(self._tasks), staged)
        if repairs:
            self._move_in(repairs)

    def _commit_files(self, files: dict[str, Path | bytes]) -> None:
        """Move staged files into place, info.json (the last of `files`) last; each step is made durable before
        the next."""
        *body, (info, content) = files.items()
        self._move_in(dict(body))
        self._move_in({info: content})

    def _move_in(self, files: dict[str, Path | bytes]) -> None:
        """Move each staged file (or bytes, staged first) to its path under the root, durably."""
        moves: list[tuple[Path, Path]] = []
        for relative, content in files.items():
            source = content if isinstance(content, Path) else self.root / STAGING_DIR / Path(relative).name
            if isinstance(content, bytes):
                source.write_bytes(content)
            fsync_path(source)
            moves.append((source, self.root / relative))
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        for folder in {target.parent for _, target in moves}:
            fsync_path(folder)

    def _check_frames(self, frames: dict[str, np.ndarray], subgoals: list[str]) -> int:
        features = self._info["features"]
        expected = [key for key in features if key not in DEFAULT_FEATURES]
        if sorted(frames) != sorted(expected):
            raise ValueError(f"expected frames for the features {sorted(expected)}, got {sorted(frames)}")
        lengths = {key: len(frames[key]) for key in expected}
        lengths["subgoals"] = len(subgoals)
        if len(set(lengths.values())) != 1 or lengths["subgoals"] == 0:
            raise ValueError(f"expected one non-zero frame count across features and subgoals, got {lengths}")
        for key in expected:
            value, feature = np.asarray(frames[key]), features[key]
            shape = list(feature["shape"])
            if feature["dtype"] == "video":
                if value.dtype != np.uint8 or list(value.shape[1:]) != shape:
                    wanted = ", ".join(map(str, shape))
                    raise ValueError(
                        f"expected {key} as uint8 (T, {wanted}), got {value.dtype} {value.shape}"
                    )
            elif list(value.shape[1:]) != shape and not (shape == [1] and value.ndim == 1):
                raise ValueError(
                    f"expected {key} with shape (T, {', '.join(map(str, shape))}), got {value.shape}"
                )
            elif not np.can_cast(value.dtype, feature["dtype"], "same_kind"):
                raise ValueError(f"expected {key} castable to {feature['dtype']}, got {value.dtype}")
        if not all(isinstance(text, str) and text for text in subgoals):
            raise ValueError("expected every subgoal to be a non-empty string")
        return lengths["subgoals"]

    def _check_extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        extra = {
            key: value.item() if isinstance(value, np.generic) else value for key, value in extra.items()
        }
        reserved = [key for key in extra if key in STANDARD_EPISODE_COLUMNS or "/" in key]
        if reserved:
            raise ValueError(f"extra keys {reserved} clash with lerobot's episode columns")
        types = {key: _arrow_type(value) for key, value in extra.items()}
        if self._extra_types is not None and types != self._extra_types:
            raise ValueError(
                f"expected extra with the keys and types of earlier episodes {_describe(self._extra_types)}, "
                f"got {_describe(types)}"
            )
        return extra

    @staticmethod
    def _extra_types_of(row: dict[str, Any]) -> dict[str, pa.DataType]:
        return {
            key: _arrow_type(value) for key, value in row.items()
            if key not in STANDARD_EPISODE_COLUMNS and "/" not in key
        }


def _numpy_dtype(feature: dict[str, Any]) -> np.dtype:
    return np.dtype(np.uint8 if feature["dtype"] == "video" else feature["dtype"])


def _arrow_type(value: Any) -> pa.DataType:
    try:
        return pa.scalar(value).type
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(
            f"expected extra values that parquet can store (str, int, float, bool, lists), got {value!r}"
        ) from err


def _describe(types: dict[str, pa.DataType]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in sorted(types.items())) + "}"


def _normalize_features(features: dict[str, dict[str, Any]], fps: int) -> dict[str, dict[str, Any]]:
    """Validate user features and return them plus the index columns, in the form info.json stores."""
    normalized: dict[str, dict[str, Any]] = {}
    for key, feature in features.items():
        if key in DEFAULT_FEATURES:
            if {**feature, "shape": list(feature["shape"])} != DEFAULT_FEATURES[key]:
                raise ValueError(
                    f"feature {key!r} is written by EpisodeWriter as {DEFAULT_FEATURES[key]}, got {feature}"
                )
            continue
        if "/" in key:  # LeRobot splits stats.json's keys on "/" (and refuses such names itself)
            raise ValueError(f"feature {key!r}: expected a name without '/'")
        dtype, shape = feature.get("dtype"), [int(size) for size in feature.get("shape", [])]
        if dtype == "video":
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"expected video feature {key!r} with shape [H, W, 3], got {shape}")
            entry = {
                "dtype": "video",
                "shape": shape,
                "names": feature.get("names") or ["height", "width", "channels"],
            }
            entry["info"] = video_info(entry, fps)
        else:
            try:
                np.dtype(dtype)
                pa.from_numpy_dtype(np.dtype(dtype))
            except (TypeError, pa.ArrowNotImplementedError) as err:
                raise ValueError(
                    f"expected feature {key!r} with a numeric or bool dtype or 'video', got {dtype!r}"
                ) from err
            if not shape:
                raise ValueError(f"expected feature {key!r} with a non-empty shape, got {shape}")
            entry = {"dtype": dtype, "shape": shape, "names": feature.get("names")}
        normalized[key] = entry
    return {**normalized, **deepcopy(DEFAULT_FEATURES)}


def _new_info(
    fps: int, features: dict[str, dict[str, Any]], robot_type: str | None, chunks_size: int
) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps,
        "splits": {},
        "data_path": DEFAULT_DATA_PATH,
        "video_path": DEFAULT_VIDEO_PATH if video_keys(features) else None,
        "features": features,
    }


def _check_compatible(
    root: Path, info: dict[str, Any], fps: int, robot_type: str | None, wanted: dict[str, dict[str, Any]]
) -> None:
    """Refuse to append episodes that would not match the existing dataset's schema."""
    if info["fps"] != fps:
        raise DatasetError(f"cannot resume {root}: it was recorded at fps={info['fps']}, asked fps={fps}")
    if info.get("robot_type") != robot_type:
        raise DatasetError(
            f"cannot resume {root}: its robot_type is {info.get('robot_type')!r}, asked {robot_type!r}"
        )
    existing = info["features"]
    differences = [f"{key} missing from the dataset" for key in wanted if key not in existing]
    differences += [f"{key} not asked" for key in existing if key not in wanted]
    for key in wanted.keys() & existing.keys():
        for field in ("dtype", "shape", "names"):
            if wanted[key].get(field) != existing[key].get(field):
                differences.append(
                    f"{key}.{field} is {existing[key].get(field)} there, asked {wanted[key].get(field)}"
                )
    if differences:
        raise DatasetError(f"cannot resume {root}: features differ ({'; '.join(sorted(differences))})")


def _acquire_lock(root: Path) -> int:
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DatasetError(f"{root} is being written by another process (it holds {root / LOCK_FILE}); wait for it "
                           "to end") from None
    return descriptor


def _has_files(root: Path) -> bool:
    """Whether `root` holds anything besides this package's own scratch (lock, staging, cache)."""
    scratch = {LOCK_FILE, STAGING_DIR, CACHE_DIR}
    return any(path.is_file() for path in root.rglob("*") if path.relative_to(root).parts[0] not in scratch)


def _staged_parquet(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, os.path.abspath(path), compression="snappy")
    return path


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=4) + "\n").encode()
