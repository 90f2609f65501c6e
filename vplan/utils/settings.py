"""Which settings differ between the config a run recorded and the current one, so that continuing a run never
mixes two configs, while a setting the code gained since the run, left at its default, does not count as a
difference (a new field's default keeps the behaviour the code had before it)."""

from __future__ import annotations

import contextlib
import json
import numbers
import operator
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


CONFIG_FILE = "config.yaml"  # in a run directory: the settings the run was begun with
PROGRESS_FILE = "progress.json"  # in an evaluation's: what it finished, with its settings
RESULTS_FILE = "results.json"  # in a bench's: its figures, with its settings and the command that wrote them
FINETUNE_FILE = "inner/settings.json"  # in a finetune's: how its stored states were made (loop.config.FINETUNE_RECORD)
# The record each kind of command keeps in its out= (run, collect, train, rl: their settings; finetune: the making
# of its stored states; the evals: their progress; the benches: their results), which marks the folder as that kind's.
OUT_RECORDS = {CONFIG_FILE: "another command's settings", PROGRESS_FILE: "another command's evaluation",
               RESULTS_FILE: "a bench's results", FINETUNE_FILE: "a `vplan finetune` run"}
# the folders a run keeps in its out= (its model, its training state, finetune's stored states), besides
# `checkpoint-N/`: another command's out= there would be replaced or read as the run's own
RUN_FOLDERS = ("final", "checkpoint", "inner")
MAX_SEED = 2**32 - 1  # numpy's global seed (RLBench's RNG) takes at most this; torch's and gymnasium's more


def check_seed(seed: Any, name: str = "seed") -> None:
    """A ValueError unless `seed` is an int in [0, MAX_SEED]: what gymnasium's reset, numpy's generators (global
    ones included) and torch's take, with room for a run's seed + i."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name}: expected an int from 0 to {MAX_SEED}, got {seed!r}")


def check_ints(config: Any, names: Iterable[str], low: int | None = 1) -> None:
    """A ValueError naming the first field of `config` among `names` that is not an int >= `low` (a bool is not;
    `low=None`: any int, for fields whose range the caller checks and names itself)."""
    for name in names:
        check_int(getattr(config, name), name, low)


MAX_THREADS = 1024  # torch takes up to 2**31 - 1, then fails (or crashes at exit) far below it


def check_threads(config: Any) -> None:
    """A ValueError unless `config.threads` (torch's intra-op threads) is an int from 1 to `MAX_THREADS`."""
    check_int(config.threads, "threads")
    if config.threads > MAX_THREADS:
        raise ValueError(f"threads: expected at most {MAX_THREADS} (this machine has {os.cpu_count()} cores), got "
                         f"{config.threads}")


def with_image_size(config: Any, size: int, setting: str, source: str) -> Any:
    """`config` (a VAE's, an IDM's or an env's) at `image_size` `size`, the only one `source` (the dataset's
    frames, a world model's) lets it work at: said in one line where the command gave another, if only by
    default. A ValueError where `config` cannot take that size."""
    if config.image_size == size:
        return config
    sized = replace(config, image_size=size)
    print(f"{setting}.image_size={size}, {source} (not {config.image_size})")
    return sized


def thread_counts(rows: Iterable[Mapping[str, Any]]) -> list[int | None]:
    """The torch thread counts recorded by `rows` (episodes, chunks), ascending, with None last for rows that
    recorded none (begun before they did): more than one means a resumption mixed timings or last bits."""
    counts = {row.get("threads") for row in rows}
    return sorted(counts - {None}) + ([None] if None in counts else [])


def check_int(value: Any, name: str, low: int | None = 1) -> None:
    """`check_ints` for one value (a function's argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        wanted = "an int" if low is None else "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name}: expected {wanted}, got {value!r}")


# numbers.Integral and numbers.Real take numpy's scalars too (a sweep over np.arange), held as Python's
def as_index(value: Any, name: str) -> int:
    """`value` as an int, numpy's and a 0-d tensor's too (`operator.index`: `Subset(dataset, torch.arange(n))`); a
    TypeError naming `name` for anything else (a bool or a float is no index)."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            return operator.index(value)
    raise TypeError(f"{name}: expected an int, got {value!r}")


def as_count(value: Any, name: str) -> int:
    """`value` as a positive int (`as_index`); a ValueError naming `name` for anything else."""
    try:
        count = as_index(value, name)
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return count


_FIELD_TYPES = {"bool": ((bool, np.bool_), "true or false"), "int": ((numbers.Integral,), "an int"),
                "float": ((numbers.Real,), "a number"), "str": ((str,), "a string")}
_PLAIN = {"bool": bool, "int": int, "float": float}


def check_field_types(config: Any) -> None:
    """A ValueError naming the first field of dataclass `config` annotated bool, int, float or str whose value
    is not one (`wrist_camera="false"` is truthy; `max_delta="0.05"` failed later as a bare TypeError); a bool
    is no number. For configs built in Python (`gymnasium.make(id, **overrides)`): the CLI's are typed by Hydra. A
    value of another type that is one (numpy's `np.int64(16)`, `np.float32(0.05)`, `np.True_`; 0 or 1 for a bool; a
    `pathlib.Path` for a string) is set as Python's, so what follows (the config's own checks, JSON records) sees a
    plain bool, int, float or str."""
    for f in fields(config):
        if f.type not in _FIELD_TYPES:
            continue
        types, wanted = _FIELD_TYPES[f.type]
        value = getattr(config, f.name)
        if f.type == "str" and isinstance(value, os.PathLike):  # a pathlib.Path for out= or data=, as it was taken
            object.__setattr__(config, f.name, os.fspath(value))
            continue
        if f.type == "bool" and type(value) is int and value in (0, 1):  # as the CLI takes record=0
            object.__setattr__(config, f.name, bool(value))
            continue
        if not isinstance(value, types) or (f.type != "bool" and isinstance(value, bool)):
            raise ValueError(f"{f.name}: expected {wanted}, got {value!r}")
        if f.type in _PLAIN and type(value) is not _PLAIN[f.type] and not (f.type == "float" and type(value) is int):
            object.__setattr__(config, f.name, _PLAIN[f.type](value))


def plain(value: Any) -> Any:
    """`value` as a settings record holds it: dataclasses (at any depth) as dicts, tuples as lists, anything else
    JSON cannot hold as its string."""
    return json.loads(json.dumps(value, default=lambda v: asdict(v) if is_dataclass(v) else str(v)))


def settings_record(config: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The top-level fields of dataclass `config` but `leave_out`, as a settings record holds them (`plain`),
    secrets redacted."""
    from vplan.planner.config import redact_secrets

    return redact_secrets(plain({f.name: getattr(config, f.name) for f in fields(config) if f.name not in leave_out}))


def field_default(config: Any, name: str) -> Any:
    """The default of dataclass `config`'s field `name`, or MISSING where it has none (or is no such field)."""
    if not is_dataclass(config):
        return MISSING
    for f in fields(config):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    return MISSING


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], config: Any = None, ignore: tuple[str, ...] = ()
) -> list[str]:
    """The dotted names of the settings that differ between the `saved` record and the `current` one (both
    nested dicts, `current` made from the dataclass `config`), leaving out the top-level names in `ignore`. A
    name only `current` has is a difference unless its value is its field's default in `config`. Secrets
    (`SECRET_FIELDS`) are not settings and are not compared: a key rotated, or given by the environment instead
    of `api_key=`, continues the run (and a record written before vplan redacted them holds the key itself)."""
    saved = {k: v for k, v in saved.items() if k not in ignore}
    return _changed(saved, {k: v for k, v in current.items() if k not in ignore}, config, "")


def _changed(saved: Mapping[str, Any], current: Mapping[str, Any], config: Any, prefix: str) -> list[str]:
    from vplan.planner.config import SECRET_FIELDS, redact_secrets

    changed = []
    for key in sorted(saved.keys() | current.keys()):
        name = f"{prefix}{key}"
        if key in SECRET_FIELDS:
            continue
        if key in saved and key in current:
            old, new = saved[key], current[key]
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                child = getattr(config, key, None) if is_dataclass(config) else None
                changed += _changed(old, new, child, f"{name}.")
            elif old != new and redact_secrets(old) != redact_secrets(new) and not (
                    key in PATH_SETTINGS and _same_path(old, new)):
                changed.append(name)  # (a record kept before a secret was redacted holds it in full)
        elif key in current:
            default = field_default(config, key)
            if default is MISSING or plain(default) != current[key]:
                changed.append(name)
        else:
            changed.append(name)
    return changed


def changes_said(changed: list[str], saved: Mapping[str, Any], current: Mapping[str, Any],
                 config: Any = None) -> list[str]:
    """Each of `changed_settings`' names as `name=<recorded> when it began, <given> now`, so a refused resume says
    which value to pass again: a setting the record lacks (added since) was its default then; long values are
    cut."""
    def value(record: Mapping[str, Any], name: str) -> Any:
        for key in name.split("."):
            record = record.get(key, MISSING) if isinstance(record, Mapping) else MISSING
        return record

    def default(name: str) -> Any:
        *parents, last = name.split(".")
        node = config
        for key in parents:
            node = getattr(node, key, None)
        found = field_default(node, last)
        return found if found is MISSING else plain(found)

    def shown(found: Any) -> str:  # as the command line takes it: null, true, a string unquoted
        text = ("null" if found is None else str(found).lower() if isinstance(found, bool) else
                found if isinstance(found, str) else repr(found))
        return text if len(text) <= 60 else text[:57] + "..."

    said = []
    for name in changed:
        then, given = value(saved, name), value(current, name)
        then = default(name) if then is MISSING else then
        said.append(f"{name}={'(unrecorded)' if then is MISSING else shown(then)} when it began, "
                    f"{'not a setting' if given is MISSING else shown(given)} now")
    return said


# settings that name a file or folder, wherever they are nested: compared as paths (`_same_path`)
PATH_SETTINGS = frozenset({"data", "out", "vae", "init", "checkpoint", "compare", "idm", "worldmodel", "finetuned",
                           "path", "text_encoder_path", "resnet18_weights", "action_worldmodel"})


def _same_path(old: Any, new: Any) -> bool:
    """Whether two strings are one path spelled two ways ("data/x/" and "data/x", "./data//x"): a path typed
    with a shell's completion continues the run it began."""
    # parts, not os.path.normpath: a/../b is b only where a is no symbolic link, and parts keep the ".."
    return isinstance(old, str) and isinstance(new, str) and bool(old) and bool(new) and \
        Path(old).parts == Path(new).parts


def settings_it_lacks(recorded: Iterable[str], cfg: Any) -> list[str]:
    """The top-level setting names in `recorded` that dataclass `cfg` has no field for: a record another command
    wrote (a command's own older record names none, as no setting was ever removed)."""
    return sorted(set(recorded) - {f.name for f in fields(cfg)})


def read_config_record(path: Path, advice: str = "restore it, or choose another out=DIR") -> dict[str, Any]:
    """The settings a command recorded in `path` (its config.yaml, written whole); a RunError saying it is missing
    or damaged, then `advice` (what to do), where a disk fault or a hand edit left no mapping of settings (an empty
    one would match any defaults)."""
    from omegaconf import OmegaConf

    from vplan.errors import RunError, first_line

    if not Path(path).is_file():
        raise RunError(f"{path} is missing; {advice}")
    try:
        record = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:  # yaml's parser errors, a disk fault, bytes that are no UTF-8
        raise RunError(f"{path} is damaged ({first_line(error, with_type=True)}); {advice}") from None
    if not isinstance(record, dict) or not record:
        what = "no settings" if isinstance(record, dict) or record is None else f"a {type(record).__name__}"
        raise RunError(f"{path} is damaged (it holds {what}, not a mapping of settings); {advice}")
    return record


def refuse_model_folder(out: Path) -> None:
    """A UsageError where `out` is a model checkpoint's folder (its config.json; no command writes one there):
    a run's files in it would change the checkpoint, and the fingerprint runs pinned it by; or a training state's
    (its optimizer.safetensors: a `checkpoint-N/` of `vplan train`, the `checkpoint/` of `vplan rl`), which its run
    resumes from (a run written into an rl run's `checkpoint/` replaced its adapter). Inside one too, and where
    a run keeps its model or training state (`RUN_FOLDERS` of a folder holding a command's record): the run that
    wrote them replaces them whole, with whatever was put inside (an evaluation in an rl run's `final/` went when
    the run was taken further)."""
    from vplan.errors import UsageError

    out = Path(out)
    if (out / "config.json").is_file():
        raise UsageError(f"{out} holds a model checkpoint (config.json): writing a run there would change its "
                         "files, and the fingerprint runs pinned it by; choose another out=DIR")
    if (out / "optimizer.safetensors").is_file():  # vplan.loop.checkpoint.OPTIMIZER_FILE
        raise UsageError(f"{out} holds a training checkpoint (optimizer.safetensors), which its run resumes from; "
                         "choose another out=DIR (outside that run's folder)")
    path = Path(os.path.abspath(out))  # `..` resolved: runs/rl/final/../eval is beside final/, not in it
    for folder in path.parents:
        if _is_vplan_checkpoint(folder):
            raise UsageError(f"{out} is inside {folder}, a vplan model or training checkpoint: the run that wrote it "
                             "replaces it whole, and its fingerprint would change; choose another out=DIR")
    kept_by = [name for name in OUT_RECORDS if (path.parent / name).is_file()]
    if kept_by and (path.name in RUN_FOLDERS or re.fullmatch(r"checkpoint-\d+", path.name)):
        raise UsageError(f"{out}: {path.parent} holds a command's run ({kept_by[0]}), and {path.name}/ is where a "
                         "training, finetune or rl run keeps its model or training state, which it replaces or "
                         f"resumes from; choose another out=DIR (beside it, e.g. {path.parent / 'eval'})")


def _is_vplan_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a vplan model (its config.json's `kind`) or a training state (optimizer.safetensors):
    another tool's config.json beside weights (a model downloaded into a project) is not one."""
    from vplan.policies.config import CHECKPOINT_KIND as IDM_KIND
    from vplan.worldmodel.config import CHECKPOINT_KIND as WORLDMODEL_KIND

    if (folder / "optimizer.safetensors").is_file():  # vplan.loop.checkpoint.OPTIMIZER_FILE
        return True
    try:
        kind = json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return False
    return kind in (IDM_KIND, WORLDMODEL_KIND)


def refuse_other_records(out: Path, own: str, command: str | None = None) -> None:
    """A UsageError where `out` holds the record of another kind of command than one that keeps `own` there
    (`OUT_RECORDS`), and, given the bench's `command`, a results.json another bench wrote: its files would mix with
    this command's, and a later overwrite=true of one would delete the other's (a run's replaced an evaluation's
    metrics.json). A model's or a training state's folder is refused first (`refuse_model_folder`)."""
    from vplan.errors import UsageError

    refuse_model_folder(out)
    for name, what in OUT_RECORDS.items():
        if name != own and (out / name).is_file():
            bench = _bench_of(out / name) if name == RESULTS_FILE else None
            if bench is not None:
                what = f"vplan {bench}'s results"
            raise UsageError(f"{out} holds {what} ({name}); choose another out=DIR")
    written_by = _bench_of(out / RESULTS_FILE) if command is not None and own == RESULTS_FILE else None
    if written_by not in (None, command):  # none: bench planning's or bench executor's, from before it was recorded
        raise UsageError(f"{out / RESULTS_FILE} holds the results of vplan {written_by}, not of vplan {command}; "
                         "choose another out=DIR")


def _bench_of(results: Path) -> str | None:
    """The bench a results.json names as its writer; None where it names none (bench planning's or bench
    executor's from before they recorded it), is missing or cannot be read (the bench's own reading says why)."""
    try:
        written_by = json.loads(results.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return written_by if isinstance(written_by, str) else None


def check_config_is_ours(out: Path, cfg: Any) -> None:
    """A UsageError where `<out>/config.yaml` holds another command's settings (a collect dataset's in a train's
    out=): a top-level setting this command has not. Writing over it would leave that folder's own resume refused
    for good. (Its own older record names no setting this command lacks: a setting removed since is refused on
    resume anyway.) And one where `out` is a model checkpoint's folder or another kind of command's
    (`refuse_other_records`)."""
    from vplan.errors import UsageError

    refuse_other_records(out, CONFIG_FILE)
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    other = settings_it_lacks(read_config_record(path), cfg)
    if other:
        raise UsageError(f"{out} holds another command's settings ({path.name}, with {', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}); choose another out=DIR")


def write_config(out: Path, cfg: Any) -> None:
    """`<out>/config.yaml`: the command's settings (secrets redacted), which `check_same_config` holds a resumed
    run to; another command's is never written over (`check_config_is_ours`)."""
    from omegaconf import OmegaConf

    from vplan.utils.files import write_text_atomic

    check_config_is_ours(out, cfg)
    write_text_atomic(out / CONFIG_FILE, OmegaConf.to_yaml(settings_record(cfg)))


def check_same_config(cfg: Any, config_file: Path, may_change: tuple[str, ...], what: str | None = None) -> None:
    """A UsageError naming the settings (other than `may_change`: top-level or dotted names) in which `cfg`
    differs from the config a run directory recorded, so a resumption never mixes two configs (a setting added
    since, at its default, is no difference); `what` begins the message where the command's name does not say
    it (the CLI prefixes that)."""
    from vplan.errors import UsageError

    saved = read_config_record(config_file)
    top = tuple(name for name in may_change if "." not in name)
    changed = [name for name in changed_settings(saved, settings_record(cfg), cfg, ignore=top)
               if name not in may_change]
    if changed:
        said = changes_said(changed, saved, settings_record(cfg), cfg)
        raise UsageError(f"{what + ': ' if what else ''}{config_file.parent} ran with other settings: "
                         f"{'; '.join(said)} (see its {config_file.name}); pass the same ones, or choose another "
                         "out=DIR")
