"""Durable writes: a kill or a machine crash leaves a file (or checkpoint folder, or video) whole, old or new,
never half.

A file is written aside, synced to disk, and renamed over the old one; the rename itself is then synced in its
folder. Without the syncs a rename can reach the disk before the data it names, so a crash shortly after a save
could leave an empty or truncated file where the previous good one was.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Make a file's contents (or a folder's entries) durable before the step that depends on it."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Sync every file under `folder`, then the folders themselves: before the folder is renamed into place."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(folder)


def folders_aside(path: Path) -> tuple[Path, Path]:
    """Where `folder_written_aside` writes the new folder and puts the one it replaces: `.<name>.tmp`, `.<name>.old`."""
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


@contextmanager
def folder_written_aside(path: Path) -> Iterator[Path]:
    """Yields a scratch folder beside `path` to write a folder into (a model's `save_pretrained`); when the block
    ends without an error, the folder is synced and replaces `path` whole. A kill between the two renames leaves
    the new folder and the previous one aside and none at `path`, never a mix of two; the next save clears both."""
    path = Path(path)
    scratch, old = folders_aside(path)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        fsync_tree(scratch)
        if path.exists():
            os.replace(path, old)
        os.replace(scratch, path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_beside(path: Path, suffix: str = "") -> Path:
    """This process's scratch name for a file about to replace `path`, after deleting any that a killed writer
    left (a name carries its writer's process id, which a later run does not reuse in time to find it)."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{suffix}"):
        leftover.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` whole with `text` (written aside, synced, renamed, the rename synced)."""
    path = Path(path)
    scratch = _scratch_beside(path)
    try:
        with open(scratch, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_mp4(path: Path, frames: Iterable[Any], fps: float) -> None:
    """An MP4 of uint8 (H, W, 3) frames, written aside and renamed into place: a stopped run leaves the old video
    or none, never a truncated one that plays as if whole (imageio's ffmpeg outlives a kill of its parent)."""
    import imageio.v2 as imageio

    path = Path(path)
    scratch = _scratch_beside(path, path.suffix)  # the suffix tells imageio the format
    try:
        imageio.mimwrite(scratch, list(frames), fps=fps, macro_block_size=1)
        fsync_path(scratch)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_json(path: Path, payload: Any) -> None:
    """`payload` as indented JSON, written with `write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
