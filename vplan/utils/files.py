"""Durable writes: a kill or a machine crash leaves a file (or checkpoint folder, or video) whole, old or new,
never half.

A file is written aside, synced to disk, and renamed over the old one; the rename itself is then synced in its
folder. Without the syncs a rename can reach the disk before the data it names, so a crash shortly after a save
could leave an empty or truncated file where the previous good one was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
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


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` whole with `text` (written aside, synced, renamed, the rename synced)."""
    path = Path(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
    scratch = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells imageio the format
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
