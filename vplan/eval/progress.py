"""What an evaluation has finished so far, kept in `<out>/progress.json` as it goes, so that an interrupted one
continues with `resume=true` instead of starting over.

The record holds the evaluation's settings (all but those a resumption may change) next to its results; a
resumption with other settings is refused with their names. A fresh evaluation replaces the one in the same
`out` only with `overwrite=true`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vplan.errors import RunError, UsageError
from vplan.shipped import PINNED_FILE, pin_checkpoints
from vplan.utils.files import read_json_record, write_json
from vplan.utils.settings import (
    PROGRESS_FILE, changed_settings, changes_said, refuse_other_records, settings_it_lacks, settings_record,
)

METRICS_FILE = "metrics.json"  # written when the evaluation ends: its presence marks it finished


def check_resume_or_overwrite(cfg: Any) -> None:
    """An evaluation config's refusal of both: run from its `__post_init__`, before any model loads."""
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=true continues the evaluation in out, overwrite=true replaces it: pass one")


def check_progress_is_ours(out: Path, cfg: Any) -> dict[str, Any] | None:
    """The evaluation record in `out` (None if there is none), after refusing a folder that is a model's, another
    kind of command's (a run's, a dataset's, a bench's: a run's metrics.json would go) or another evaluation's
    (eval worldmodel's in eval consistency's out=: its record names settings this one lacks), which is never
    cleared. The CLI calls it before any model loads."""
    refuse_other_records(out, PROGRESS_FILE)
    file = out / PROGRESS_FILE
    advice = "delete it to start over, or choose another out=DIR"
    recorded = read_json_record(file, advice, keys=("settings",)) if file.is_file() else None
    if recorded is not None:
        _check_types(file, recorded, {"settings": {}}, advice)
        other = settings_it_lacks(recorded["settings"], cfg)
        if other:
            raise UsageError(f"{out} holds another command's evaluation ({PROGRESS_FILE}, with settings "
                             f"{', '.join(other[:3])}); choose another out=DIR")
    return recorded


def start_or_continue(cfg: Any, out: Path, resumable: tuple[str, ...], empty: dict[str, Any],
                      finished: Callable[[dict[str, Any]], str], outputs: Iterable[str],
                      marks: Mapping[str, tuple[Any, str]] | None = None, summaries: Iterable[str] = (),
                      pinned: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The progress record to go on from: with `cfg.resume`, the one in `out` (checked against `cfg`'s settings
    but `resumable`), otherwise `empty`, after clearing the files (globs) `outputs` an earlier evaluation left
    (`cfg.overwrite`: an evaluation in `out` is refused without it). `summaries` (plots drawn from the metrics)
    go with metrics.json whenever it goes, also on a resumption: an unfinished evaluation shows none.
    `finished(progress)` says what is done ("3 rollout(s)"), for the messages. `marks` (key -> (value, what a
    record without it was)) are written into a new record, and a record whose mark differs is not resumed: its
    figures were made otherwise (`eval worldmodel`'s sampling noise); nor is one whose `pinned` checkpoints (name ->
    argument) changed since (`pin_checkpoints`). Files an evaluation writes (`outputs`, metrics.json) found without
    a progress record are refused too, unless `cfg.overwrite`: an evaluation from before the record, or whose
    record was deleted."""
    settings = settings_record(cfg, leave_out=resumable)
    file = out / PROGRESS_FILE
    recorded = check_progress_is_ours(out, cfg)
    advice = "delete it to start over, or choose another out=DIR"
    if recorded is not None:
        _check_types(file, recorded, empty, advice)
    begun = recorded is not None and not any(_holds_rows(recorded.get(key)) for key in empty)
    if begun:  # written at the start, and stopped before anything finished: its leftovers (a video) go with it
        recorded = None
    changed = changed_settings(recorded["settings"], settings, cfg) if recorded is not None else []
    said = "; ".join(changes_said(changed, recorded["settings"], settings, cfg)) if changed else ""
    marks = marks or {}
    if cfg.resume and recorded is not None:
        for key, (value, began) in marks.items():
            if recorded.get(key) != value:  # before a finished one's metrics are cleared below
                raise UsageError(f"resume=true: {out} holds an evaluation {began}, whose figures would mix with "
                                 "these; start again with overwrite=true, or choose another out=DIR")
        if changed:
            raise UsageError(f"resume=true: {out} holds an evaluation with other settings: {said}; "
                             "pass the same ones, or choose another out=DIR")
        if pinned and (out / PINNED_FILE).is_file():  # the same checkpoint files, before its metrics are cleared
            pin_checkpoints(out, pinned, resuming=True, write=False)
        print(f"continuing {out}: {finished(recorded)} finished")
        # unfinished again until it ends (`episodes` may have grown): a fresh run must not replace it meanwhile
        for stale in (METRICS_FILE, *summaries):
            (out / stale).unlink(missing_ok=True)
        return {**recorded, "settings": settings}
    found = sorted({old.name for pattern in (METRICS_FILE, *outputs) for old in out.glob(pattern)})
    if recorded is None and found and not cfg.overwrite and not begun:  # their figures would go without a word
        raise UsageError(f"{out} holds an evaluation's files ({', '.join(found[:3])}) but no {PROGRESS_FILE} to "
                         "continue it from; overwrite=true replaces them, or choose another out=DIR")
    if cfg.resume:
        print(f"resume=true: {out} holds no evaluation yet; starting one")
    elif recorded is not None and not cfg.overwrite:  # its figures would go without a word
        state = "a finished" if (out / METRICS_FILE).is_file() else "an unfinished"
        ways = ("overwrite=true replaces it" if changed else  # resume=true would be refused for them
                "resume=true continues it (episodes may grow), overwrite=true replaces it")
        raise UsageError(f"{out} holds {state} evaluation ({finished(recorded)} finished"
                         f"{', with other settings: ' + said if changed else ''}); {ways}, or choose "
                         "another out=DIR")
    for pattern in (PROGRESS_FILE, METRICS_FILE, *summaries, *outputs):
        for old in out.glob(pattern):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, **empty, **{key: value for key, (value, _) in marks.items()}}
    write_json(file, record)  # now: what an episode writes before it finishes (a video) is this evaluation's
    return record


def _check_types(file: Path, record: dict[str, Any], expected: Mapping[str, Any], advice: str) -> None:
    """A RunError saying `file` is damaged where an entry of `record` is not of its type in `expected` (a hand edit
    or a disk fault: a traceback further on); an entry it lacks is left to the caller."""
    for key, value in expected.items():
        if not isinstance(record.get(key, value), type(value)):
            kind = "an object" if isinstance(value, dict) else f"a {type(value).__name__}"
            raise RunError(f"{file} is damaged (its entry {key!r} is not {kind}); {advice}")


def _holds_rows(value: Any) -> bool:
    """Whether a progress record's entry holds any result: a non-empty list, at any depth of a dict (eval
    consistency keeps one list per mode, and a rerun may ask other modes)."""
    return any(_holds_rows(v) for v in value.values()) if isinstance(value, dict) else bool(value)


def say_interrupted(out: Path, finished: Callable[[dict[str, Any]], str], empty: dict[str, Any]) -> None:
    """The line an interrupted evaluation leaves: what `out`'s progress.json holds (`finished(record)`; nothing
    where none of the entries `empty` names, as `start_or_continue` was given it, holds a row: a result counted in
    memory but not yet saved is not kept) and how to go on."""
    try:
        record = json.loads((out / PROGRESS_FILE).read_text())
    except (OSError, ValueError):  # none written yet (written whole or not at all)
        record = None
    if not isinstance(record, dict) or not any(_holds_rows(record.get(key)) for key in empty):
        print("interrupted before anything finished; the same command starts again", file=sys.stderr)
        return
    print(f"interrupted: {finished(record)} finished, kept in {out / PROGRESS_FILE}; the same command with "
          "resume=true continues", file=sys.stderr)
