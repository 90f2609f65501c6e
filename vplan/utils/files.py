"""Durable writes: a kill or a machine crash leaves a file (or checkpoint folder, or video) whole, old or new,
never half.

A file is written aside, synced to disk, and renamed over the old one; the rename itself is then synced in its
folder. Without the syncs a rename can reach the disk before the data it names, so a crash shortly after a save
could leave an empty or truncated file where the previous good one was.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import itertools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vplan.errors import RunError, first_line


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Make a file's contents (or a folder's entries) durable before the step that depends on it. A filesystem that
    cannot sync a folder (some FUSE and network mounts answer EINVAL, ENOTSUP or ENOSYS) leaves its entries to the
    filesystem: refusing would make every write fail there."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _NO_FOLDER_SYNC or not stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise
    finally:
        os.close(descriptor)


_NO_FOLDER_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.ENOSYS}


def _umask() -> int:
    """This process's umask, read without setting it (os.umask sets it, racing other threads' new files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not Linux: the brief swap the standard library offers
    os.umask(mask)
    return mask


def readable_as_umask_allows(path: Path) -> None:
    """Give the files at or under `path` the permissions a new file gets (0666 less the umask): safetensors
    writes its files 0600 whatever the umask, so a checkpoint in a folder a group shares was readable by its
    owner alone, beside JSON files the group could read."""
    mode = 0o666 & ~_umask()
    for file in [path] if path.is_file() else [p for p in Path(path).rglob("*") if p.is_file()]:
        try:
            os.chmod(file, mode)
        except OSError:  # a filesystem that keeps its own permissions (some FUSE and CIFS mounts): it's to decide
            pass


def fsync_tree(folder: Path) -> None:
    """Sync every file under `folder`, then the folders themselves: before the folder is renamed into place."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(folder)


def folders_aside(path: Path) -> tuple[Path, Path]:
    """Where `folder_written_aside` writes the new folder and puts the one it replaces: `.<name>.tmp`, `.<name>.old`."""
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def recover_folder(path: Path, readable: Callable[[Path], bool] = lambda folder: True) -> None:
    """Finish a `folder_written_aside` swap a kill cut between its two renames (no `path`, the previous folder
    aside): the new folder was complete (synced before the first rename), so it goes in place; or the previous one
    goes back, if the new one is missing or not `readable` (a machine crash). A later save then has a folder to
    replace, never none."""
    path = Path(path)
    scratch, old = folders_aside(path)
    if not path.exists() and old.exists():
        os.replace(scratch if scratch.is_dir() and readable(scratch) else old, path)
        fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def folder_written_aside(path: Path) -> Iterator[Path]:
    """Yields a scratch folder beside `path` to write a folder into (a model's `save_pretrained`); when the block
    ends without an error, the folder is synced and replaces `path` whole. A kill between the two renames leaves
    the new folder and the previous one aside and none at `path`, never a mix of two; the next save first puts
    the new one in place (`recover_folder`), so a failure of that save still leaves one."""
    path = Path(path)
    recover_folder(path)
    scratch, old = folders_aside(path)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        readable_as_umask_allows(scratch)
        fsync_tree(scratch)
        if path.exists():
            os.replace(path, old)
        os.replace(scratch, path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if path.exists() or not old.exists():  # else stopped between the renames: the new folder is the one to keep
            shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def file_written_aside(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yields this process's scratch name beside `path` (ending in `suffix`, for writers that read the format off
    it) to write a file into; when the block ends without an error, the file is synced and renamed over `path`,
    and the rename synced. On an error, or a kill, `path` keeps what it held; the scratch file is removed, and one
    a killed writer left is removed by the next write."""
    path = Path(path)
    prefix, ending = f".{path.name}.", f".tmp{suffix}"
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(ending)}"):
        writer = leftover.name[len(prefix) : -len(ending)].split("-")[0]
        if writer.isdigit() and not _running(int(writer)):
            leftover.unlink(missing_ok=True)
    # the writer's pid (for the cleanup above) and a random part: two processes of one pid number (containers
    # sharing a disk) never write one scratch file. (The cleanup judges a writer by this pid namespace's
    # processes: another container's live writer would lose its scratch file and fail, never publish a mix.)
    scratch = path.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}{ending}")
    try:
        yield scratch
        readable_as_umask_allows(scratch)
        fsync_path(scratch)
        os.replace(scratch, path)
    except OSError as error:
        if error.filename in (scratch, str(scratch)):  # a message names the file meant, not its scratch name
            error.filename, error.filename2 = str(path), None  # (a rename's: "<path> -> <path>")
        raise
    finally:
        scratch.unlink(missing_ok=True)
    fsync_path(path.parent)


def _running(pid: int) -> bool:
    """Whether process `pid` exists (a scratch file's writer may still be writing it)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or no pid at all (a foreign file's name)
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` whole with `text` (`file_written_aside`)."""
    with file_written_aside(path) as scratch:
        scratch.write_text(text, encoding="utf-8")


def write_mp4(path: Path, frames: Iterable[Any], fps: float) -> None:
    """An MP4 of uint8 (H, W, 3) frames, written aside and renamed into place: a stopped run leaves the old video
    or none, never a truncated one that plays as if whole (imageio's ffmpeg outlives a kill of its parent). The
    frames are streamed to ffmpeg one by one: an episode's upscaled video is never held whole in memory."""
    import imageio.v2 as imageio
    from imageio_ffmpeg import count_frames_and_secs

    path, frames = Path(path), iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: expected at least one frame, got none")
    given = 0
    with file_written_aside(path, path.suffix) as scratch:  # the suffix tells imageio the format
        try:
            writer = imageio.get_writer(os.path.abspath(scratch), fps=fps, macro_block_size=1)  # "a:b/x" no protocol
            try:
                for frame in itertools.chain([first], frames):
                    writer.append_data(frame)
                    given += 1
            finally:  # also on an error (imageio's `with` closes on success only): ffmpeg ends before the scratch goes
                writer.close()
            # imageio reports an ffmpeg failure (an odd frame size for yuv420p, say) without raising: check the file
            written = (count_frames_and_secs(os.path.abspath(scratch))[0]
                       if scratch.is_file() and scratch.stat().st_size else 0)
        except (OSError, RuntimeError) as error:  # ffmpeg stopped part-way: a broken pipe, or its banner on a cut file
            full = shutil.disk_usage(path.parent).free < 2**20
            lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            raise RunError(f"{path}: ffmpeg could not write the video ("
                           f"{'the disk is full: free some space' if full else lines[-1].strip()}); the old video, "
                           "if any, is kept") from None
        if written != given:
            raise RunError(f"{path}: ffmpeg wrote {written} of {given} frames (frames of "
                           f"{'x'.join(map(str, first.shape))}); the old video, if any, is kept")


def read_json_record(path: Path, advice: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object a command wrote to `path` (atomically, so whole or absent), holding `keys`; a RunError
    saying it is damaged and then `advice` (what to do) where a disk fault or a hand edit left something else."""
    try:
        record = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunError(f"{path} is damaged ({first_line(error, with_type=True)}); {advice}") from None
    missing = [key for key in keys if key not in record] if isinstance(record, dict) else None
    if missing is None or missing:
        what = f"no {', '.join(missing)}" if missing else f"a JSON {type(record).__name__}, not an object"
        raise RunError(f"{path} is damaged (it holds {what}); {advice}")
    return record


def write_json(path: Path, payload: Any) -> None:
    """`payload` as indented JSON, written with `write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
