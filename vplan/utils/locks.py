"""One command at a time in an output folder.

Two vplan commands writing one `out=` mix their files without a word (two runs' videos and metrics in one folder)
or break each other (a training's save deletes the other's checkpoint written aside). The CLI holds the folder's
lock while a command runs, so the second is refused at once. The lock is `flock` on the folder itself: nothing is
written into it, and the kernel lets go when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vplan.errors import UsageError


@contextmanager
def holding_folder(path: str | Path | None) -> Iterator[None]:
    """Hold the lock of output folder `path` (made if missing, and removed again if still empty at the end, with
    the parents made for it) for the body; a UsageError if another process holds it. None, or a path that is no
    folder or cannot be locked (a filesystem without `flock`), holds nothing: the command reports what it finds."""
    if path is None:
        yield
        return
    folder = Path(path)
    made = [parent for parent in (folder, *folder.parents) if not parent.exists()]  # the deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a file by that name, no permission: the command's own error says so
        descriptor = None
    if descriptor is None:
        yield
        return
    held = False  # refused, the folder is the holder's to remove, even one that seemed missing a moment ago
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{folder} is in use by another vplan command that is still running; wait for it to "
                             "end, or choose another out=DIR") from None
        except OSError:  # no flock on this filesystem: unlocked, as before
            pass
        held = True
        yield
    finally:
        for parent in made if held else []:  # before the lock goes: another command could take it meanwhile
            try:
                parent.rmdir()  # only an empty one: a command that failed before writing leaves no folder
            except OSError:
                break
        os.close(descriptor)
