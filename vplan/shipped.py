"""Checkpoints that ship inside the package, so `vplan run` works without training.

A checkpoint argument is either a directory or `shipped:<env>/<component>` (e.g. `shipped:tabletop/worldmodel`),
which names a directory under vplan/checkpoints/. The README gives the commands that reproduce each one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from vplan.errors import RunError, UsageError, VplanWarning
from vplan.utils.files import read_json_record, write_json
from vplan.utils.settings import with_image_size

PREFIX = "shipped:"
PINNED_FILE = "checkpoints.json"  # in a run directory: the fingerprint of each checkpoint the run used
TRAINED_ON_ENV = "trained_on_env"  # in a checkpoint's config.json: the env whose episodes it last learned from
ACTION_UNITS = "action_units"  # in an IDM's config.json: the env settings its training actions were recorded under
READS_VAE = "reads_vae"  # in an IDM's config.json: the fingerprint of the VAE whose decodes it also learned from


def shipped_checkpoint(env: str, component: str) -> str:
    """The checkpoint argument naming an env's shipped component, e.g. `shipped:tabletop/worldmodel`."""
    return f"{PREFIX}{env}/{component}"


class AgentCheckpoints:
    """Mixin of the configs that load an agent (`worldmodel`, `idm` and `task` fields): unset checkpoints are the
    task's env's shipped ones."""

    @property
    def worldmodel_checkpoint(self) -> str:
        """`worldmodel`, or the task's env's shipped world model."""
        return self.worldmodel or shipped_checkpoint(self._task_env(), "worldmodel")

    @property
    def idm_checkpoint(self) -> str:
        """`idm`, or the task's env's shipped IDM."""
        return self.idm or shipped_checkpoint(self._task_env(), "idm")

    def _task_env(self) -> str:
        """The task's env; a ValueError for a config built in Python without a task (the CLI's always has one)."""
        env = getattr(self.task, "env", None)
        if not isinstance(env, str):  # omegaconf's MISSING, "???"
            raise ValueError(f"task: expected a TaskConfig (e.g. TaskConfig.preset('return_cubes')), got "
                             f"{self.task!r}; set task= and env= before the agent loads")
        return env


def shipped_names() -> list[str]:
    """Every shipped checkpoint, as `<env>/<component>`."""
    root = Path(str(resources.files("vplan") / "checkpoints"))
    if not root.is_dir():
        return []
    return sorted(f"{env.name}/{c.name}" for env in root.iterdir() if env.is_dir() for c in env.iterdir() if c.is_dir())


def resolve_checkpoint(spec: str) -> Path:
    """The directory a checkpoint argument names; a clear error for an unknown shipped name, or for no name at
    all (`checkpoint=""` would be the working directory)."""
    if not spec.strip():
        raise UsageError(f"an empty checkpoint path; give a directory or a shipped name ("
                         f"{', '.join(PREFIX + name for name in shipped_names())})")
    if not spec.startswith(PREFIX):
        return Path(spec)
    name = spec[len(PREFIX) :]
    if name not in shipped_names():
        raise UsageError(f"no shipped checkpoint {name!r}; shipped: {', '.join(shipped_names()) or 'none'}")
    return Path(str(resources.files("vplan") / "checkpoints" / name))


def check_checkpoints_exist(checkpoints: Mapping[str, str | None]) -> None:
    """A UsageError naming the setting (name -> checkpoint argument: `worldmodel`, `idm`, `compare`, ...; None
    for one not asked for) whose checkpoint is not there, and how to make one: for a command to call before it
    writes or runs anything."""
    for name, spec in checkpoints.items():
        if spec is None:
            continue
        component = "idm" if name == "idm" else "worldmodel"
        hint = (f"make one with `vplan finetune data=DIR` and pass {name}=DIR" if name == "finetuned" else
                f"train one with `vplan train component={component}` and pass {name}=DIR")
        try:
            path = resolve_checkpoint(spec)
        except UsageError as err:
            raise UsageError(f"{name}={spec}: {err}; {hint}") from None
        if not (path / "config.json").is_file():
            _refuse_training_folder(name, spec, path)
            raise UsageError(f"{name}={spec}: no checkpoint at {path}; {hint}")
        _check_kind(name, spec, component)


def _refuse_training_folder(name: str, spec: str, path: Path) -> None:
    """A UsageError where `path` (holding no model) is a training run's folder or one of its checkpoints, naming
    the `final/` to pass instead."""
    if (path / "final" / "config.json").is_file():  # the training run's directory, not its result
        raise UsageError(f"{name}={spec}: a training run's directory; pass {name}={path / 'final'}")
    from vplan.loop.checkpoint import TRAINER_STATE, list_checkpoints

    step = (path / TRAINER_STATE).is_file()  # one of a run's checkpoint-N folders
    if step or list_checkpoints(path):  # or the run itself, before its final/
        run = path.parent if step else path
        if (run / "final" / "config.json").is_file():  # the run finished since: its result is there
            raise UsageError(f"{name}={spec}: a training checkpoint, for resuming, not loading; its run has "
                             f"finished: pass {name}={run / 'final'}")
        raise UsageError(f"{name}={spec}: a training checkpoint, for resuming, not loading; run the same "
                         f"command again to finish it (it writes {run / 'final'}), then pass {name}={run / 'final'}")


def vae_hint(optional: bool = False, env: str | None = None) -> str:
    """What to pass as component.vae= instead: `optional` for a component that trains without one too (the IDM);
    `env` (the dataset's) names its shipped world model."""
    shipped = f"{env}/worldmodel" if f"{env}/worldmodel" in shipped_names() else "tabletop/worldmodel"
    return ("train one with `vplan train component=vae` or set component.vae=DIR to the one it wrote (its final/), "
            f"or to a world model's checkpoint (shipped:{shipped}) for its VAE"
            + (", or component.vae=null to train on real frames only" if optional else ""))


def vae_folder(spec: str, hint: str) -> Path:
    """The folder of the VAE component.vae=`spec` names: one `vplan train component=vae` wrote (diffusers' files),
    or a world model's checkpoint (its vae.safetensors). Torch-free, so the CLI refuses a wrong one before torch
    loads; a UsageError with `hint` otherwise, naming a training run's folder or checkpoint as
    `check_checkpoints_exist` does, and an IDM's checkpoint as one."""
    from vplan.worldmodel.config import DIFFUSERS_WEIGHTS_FILE, VAE_FILE

    name = "component.vae"
    try:
        folder = resolve_checkpoint(spec)
    except UsageError as error:
        raise UsageError(f"{name}={spec}: {error}") from None
    if (folder / VAE_FILE).is_file():
        return folder
    if spec.startswith(PREFIX):  # a shipped IDM
        raise UsageError(f"{name}={spec}: holds no VAE; {hint}")
    if not (folder / "config.json").is_file():
        _refuse_training_folder(name, spec, folder)
        raise UsageError(f"{name}={spec}: no trained VAE there; {hint}")
    if not (folder / DIFFUSERS_WEIGHTS_FILE).is_file():
        from vplan.policies.config import CHECKPOINT_KIND as IDM_KIND

        what = ("an IDM's checkpoint, which holds no VAE" if _recorded(spec, "kind") == IDM_KIND else
                f"not a VAE `vplan train component=vae` wrote (no {DIFFUSERS_WEIGHTS_FILE} there)")
        raise UsageError(f"{name}={spec}: {what}; {hint}")
    return folder


def check_outside_results(out: str | Path, checkpoints: Mapping[str, str | None]) -> None:
    """A UsageError naming a checkpoint argument (name -> argument; None: not asked for) that lies where a command
    writing into `out` replaces or prunes folders (`out` itself, its `final/`, its `checkpoint*` folders): a
    finetune of `<out>/final` into the same out= deleted its own base at the first step."""
    out = Path(out).resolve()
    for name, spec in checkpoints.items():
        if spec is None or spec.startswith(PREFIX):
            continue
        path = Path(spec).resolve()
        first = path.relative_to(out).parts[0] if out in path.parents else None
        if path == out or first in ("final", "checkpoint") or (first or "").startswith("checkpoint-"):
            raise UsageError(f"{name}={spec} lies in out={out}, whose results this run replaces; copy it elsewhere "
                             "and pass that, or choose another out=DIR")


def _check_kind(name: str, spec: str, component: str) -> None:
    """A UsageError where the checkpoint is another kind of model than the setting takes (an IDM for a world
    model, a VAE's folder), named by the setting; the loader's own error named only a config.json."""
    from vplan.policies.config import CHECKPOINT_KIND as IDM_KIND
    from vplan.worldmodel.config import CHECKPOINT_KIND as WORLDMODEL_KIND

    kinds = {IDM_KIND: "an IDM's", WORLDMODEL_KIND: "a world model's"}
    wanted = IDM_KIND if component == "idm" else WORLDMODEL_KIND
    try:
        payload = json.loads((resolve_checkpoint(spec) / "config.json").read_text())
    except (OSError, ValueError):  # a damaged file: the loader names what is wrong with it
        return
    found = payload.get("kind") if isinstance(payload, dict) else None
    if found != wanted:
        found_as = (f"{kinds[found]} checkpoint" if found in kinds else
                    f"no vplan model (its config.json has kind {found!r}: a VAE's, or another tool's)")
        raise UsageError(f"{name}={spec}: {found_as}, not {kinds[wanted]}; pass {name}=shipped:<env>/{component} "
                         "or DIR")


def trained_on_env(spec: str) -> str | None:
    """The env whose episodes a checkpoint (a world model or an IDM) was last trained on, as its config.json
    records it; None where it does not say (a checkpoint written before vplan recorded it, or a dataset recorded
    outside vplan)."""
    return _recorded(spec, TRAINED_ON_ENV)


def recorded_config(spec: str, config_class: Any, added_later: tuple[str, ...]) -> Any:
    """The settings (`config_class.from_dict`: a `WorldModelConfig`, an `IDMConfig`) a checkpoint's config.json
    records, or None where they cannot be read or one is missing but those `added_later` to the format (its loader
    names what is wrong; a default would be a guess): torch-free, for the checks said before a model loads."""
    try:
        settings = _recorded(spec, "config")
        return None if missing_setting(settings, config_class, added_later) else config_class.from_dict(settings)
    except (UsageError, TypeError, ValueError):
        return None


def missing_setting(data: Any, config_class: Any, added_later: tuple[str, ...], prefix: str = "") -> str | None:
    """The first field of dataclass `config_class` (and of its nested config dataclasses) that `data` lacks, or
    None; data that is no dict is left to `from_dict` to refuse."""
    if not isinstance(data, dict):
        return None
    for f in fields(config_class):
        if f.name not in data:
            if f.name in added_later:
                continue
            return prefix + f.name
        nested = f.default_factory if f.default_factory is not MISSING else None
        if nested is not None and is_dataclass(nested):
            found = missing_setting(data[f.name], nested, (), f"{prefix}{f.name}.")
            if found is not None:
                return found
    return None


def with_checkpoint_frames(cfg: Any, spec: str | None, setting: str) -> Any:
    """`cfg` with its env (`cfg.env`) rendering the frames of the world model `spec` (the argument of `setting`):
    the only size the model runs at, so `env.image_size` follows it, said since the command gave another (if only
    by default). Unchanged where the env has no `image_size` or the checkpoint's settings cannot be read (the
    command's own checks name what is wrong)."""
    from vplan.worldmodel.config import ADDED_LATER, WorldModelConfig

    settings = recorded_config(spec, WorldModelConfig, ADDED_LATER) if spec else None
    if settings is None or not hasattr(cfg.env, "image_size"):
        return cfg
    try:
        env = with_image_size(cfg.env, settings.vae.image_size, "env", f"the frames {setting}={spec} draws")
    except ValueError:  # a size no env renders (a damaged config.json): the checkpoint's loader names it
        return cfg
    return cfg if env is cfg.env else replace(cfg, env=env)


def _recorded(spec: str, key: str) -> Any:
    """What a checkpoint's config.json records under `key`, or None."""
    try:
        payload = json.loads((resolve_checkpoint(spec) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # loading the checkpoint reports what is wrong with it
    return payload.get(key) if isinstance(payload, dict) else None


class OtherEnvWarning(VplanWarning):
    """A checkpoint is about to run in another env than the one whose episodes it was trained on."""


def warn_if_trained_elsewhere(checkpoints: Mapping[str, str | None], env: str) -> None:
    """An `OtherEnvWarning` for each checkpoint (name -> argument) trained on another env's episodes than the one
    it is about to run in: its frames, words and actions may mean nothing there. Not an error, since trying a
    model on another env can be the point."""
    for name, spec in checkpoints.items():
        trained = trained_on_env(spec) if spec is not None else None
        if trained is not None and trained != env:
            warnings.warn(f"{name}={spec} was trained on {trained} episodes, and this env is {env}; pass {name}= a "
                          f"checkpoint trained on {env}", OtherEnvWarning, stacklevel=2)


def warn_if_decoded_by_another_vae(idm: str, world_model: Any) -> None:
    """A VplanWarning where the IDM `idm` (a checkpoint argument) learned from the decodes of another VAE than
    `world_model`'s (its config.json records the one it trained through): the imagined frames it reads then come
    from a decoder it never saw. Silent where it records none (trained on real frames only, or before 2026-12-07)."""
    recorded = _recorded(idm, READS_VAE)
    if recorded is None:
        return
    from vplan.worldmodel.latent_cache import vae_fingerprint

    ours = vae_fingerprint(world_model.vae)
    if recorded != ours:
        warnings.warn(f"idm={idm} learned to read the decodes of another VAE (fingerprint {recorded}) than the world "
                      f"model's ({ours}), whose frames it is about to read; train it through the world model's: "
                      "vplan train component=idm component.vae=<the world model's checkpoint>", VplanWarning,
                      stacklevel=2)


def warn_if_actions_mean_otherwise(checkpoints: Mapping[str, str | None], units: Mapping[str, float]) -> None:
    """An `OtherEnvWarning` for each checkpoint (name -> argument) that learned actions recorded under other
    action-unit settings (`vplan.envs.action_units`) than the env's `units`: an IDM trained at max_delta=0.03
    reads a motion of 3 cm as 1, which moves 5 cm in an env at 0.05."""
    for name, spec in checkpoints.items():
        recorded = _recorded(spec, ACTION_UNITS) if spec is not None else None
        differ = sorted(key for key in (recorded or {}) if key in units and units[key] != recorded[key])
        if differ:
            there = ", ".join(f"env.{key}={recorded[key]}" for key in differ)
            here = ", ".join(f"{key}={units[key]}" for key in differ)
            warnings.warn(f"{name}={spec} learned actions recorded at {there}, and this env has {here}: the motions "
                          f"it reads would be carried out at another scale; pass {there}, or {name}= a checkpoint "
                          "trained at this env's settings", OtherEnvWarning, stacklevel=2)


def warn_if_training_seeds(seed: int, recording: bool = False) -> None:
    """A VplanWarning where an evaluation starting at `seed` plays the scenes training data comes from (`vplan
    collect` plays seeds 0, 1, ...): its figures would not be held out. `recording` (`vplan run record=true`, which
    the README tells to record below them) says so rather than advising other seeds."""
    from vplan.constants import HELD_OUT_SEEDS

    if seed < HELD_OUT_SEEDS:
        advice = ("right for episodes recorded to train on, but the run's figures are not held-out ones" if recording
                  else f"pass seed>={HELD_OUT_SEEDS} for held-out ones")
        warnings.warn(f"seed={seed}: below {HELD_OUT_SEEDS}, so these episodes may be scenes the model trained on "
                      f"(training data uses 0..{HELD_OUT_SEEDS - 1}); {advice}", VplanWarning, stacklevel=3)


def checkpoint_fingerprint(path: Path) -> str:
    """sha256 (first 16 hex digits) over a checkpoint directory's files, to tell re-shipped weights apart. A
    config.json's `trained_on_env` and `action_units` are left out: notes about the weights' data, not part of
    what they compute, so a checkpoint that gained them keeps the fingerprint its runs pinned."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(_without_notes(file.read_bytes()) if file.name == "config.json" else file.read_bytes())
    return digest.hexdigest()[:16]


def _without_notes(content: bytes) -> bytes:
    """A vplan config.json's bytes as they were before it recorded `trained_on_env` and `action_units` (written
    the same way)."""
    try:
        payload = json.loads(content)
    except ValueError:
        return content
    if not isinstance(payload, dict) or not {TRAINED_ON_ENV, ACTION_UNITS} & set(payload):
        return content
    for key in (TRAINED_ON_ENV, ACTION_UNITS):
        payload.pop(key, None)
    return (json.dumps(payload, indent=2) + "\n").encode()


# the evaluations' checkpoint= is recorded as "worldmodel" (as it was before their refusals named the setting)
RECORDED_AS = {"checkpoint": "worldmodel"}


def pin_checkpoints(out: Path, checkpoints: Mapping[str, str], resuming: bool, write: bool = True) -> dict[str, str]:
    """Record in `<out>/checkpoints.json` the fingerprint of each checkpoint (setting -> argument) a run loads, so
    that continuing the run never mixes two models: a resumed run whose checkpoint's files changed since (a
    re-shipped model, a retrained one in the same directory) stops with a UsageError. The run's settings
    record only the arguments, which still name the same directory. Returns each checkpoint's fingerprint;
    `write=False` checks only (a training process other than the first, which writes)."""
    file = out / PINNED_FILE
    pinned = read_json_record(file, "restore it, or choose another out=DIR") if resuming and file.is_file() else {}
    if any(not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str) for entry in pinned.values()):
        raise RunError(f"{file} is damaged (its entries are no checkpoint records); restore it, or choose another "
                       "out=DIR")
    if resuming and not file.is_file():
        given = ", ".join(f"{k}={v}" for k, v in checkpoints.items())
        warnings.warn(f"{out} does not record which checkpoint files it ran with (it was begun before vplan "
                      f"recorded them); continuing with {given} as they are", VplanWarning, stacklevel=2)
    for name, spec in checkpoints.items():
        fingerprint = checkpoint_fingerprint(resolve_checkpoint(spec))
        key = RECORDED_AS.get(name, name)
        before = pinned.get(key, {}).get("fingerprint", fingerprint)
        if before != fingerprint:
            raise UsageError(f"{name}={spec}: its files changed since {out} ran with them (fingerprint {before}, now "
                             f"{fingerprint}); pass the checkpoint it ran with, or choose another out=DIR")
        pinned[key] = {"checkpoint": spec, "fingerprint": fingerprint}
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(file, pinned)
    return {name: pinned[RECORDED_AS.get(name, name)]["fingerprint"] for name in checkpoints}
