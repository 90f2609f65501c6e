"""Training checkpoints in safetensors only: weights, optimizer state, RNG and step — never pickle.

A checkpoint is a folder `checkpoint-<step>` holding `model.safetensors`, `optimizer.safetensors` (the
optimizer's tensors; its param groups and scalar state as JSON metadata) and `trainer_state.json`, written
last: a folder without it is an interrupted save and is ignored. Folders are written under a temporary name
and renamed once synced to disk, so a kill (or a crash) during a save leaves the previous checkpoint intact.
Torch loads at the first save or load: listing a folder's checkpoints (the CLI's checks of a path) needs none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from vplan.utils.files import fsync_path, fsync_tree, readable_as_umask_allows

TRAINER_STATE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
PREFIX = "checkpoint-"
CUDA_RNG = "rng.cuda."  # + device index, in optimizer.safetensors beside "rng.torch"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import torch

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, metadata


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata["scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": json.loads(metadata["param_groups"])}


def save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any],
    keep: int = 2, keep_steps: Collection[int] = (),
) -> Path:
    """Write `out/checkpoint-<step>` atomically; keep only the newest `keep` checkpoints, and those at
    `keep_steps` (the ends of a finetune's rounds, which a redone inner-loop episode starts from)."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{PREFIX}{step:07d}"
    tmp = out / f".tmp-{PREFIX}{step:07d}"
    for leftover in out.glob(f".tmp-{PREFIX}*"):  # this save's, or one a killed save left at another step
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / MODEL_FILE)
        rng = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():  # what a GPU draws without a generator (the VAE's posterior sample)
            rng |= {f"{CUDA_RNG}{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
        save_optimizer(optimizer, tmp / OPTIMIZER_FILE, rng)
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **extra}, indent=2))
        readable_as_umask_allows(tmp)
        fsync_tree(tmp)
    except BaseException:  # a full disk: the half-written folder would hold the space the user must free
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(final)
    os.replace(tmp, final)
    fsync_path(out)
    for old in [path for path in list_checkpoints(out) if checkpoint_step(path) not in keep_steps][:-keep]:
        _remove(old)
    for cut in out.glob(f"{PREFIX}*"):  # what a kill left of a removal (its state went first): no checkpoint
        if _is_step(cut.name[len(PREFIX):]) and not (cut / TRAINER_STATE).is_file() and cut.is_dir():
            shutil.rmtree(cut, ignore_errors=True)
    return final


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder, its trainer state first: cut short (a kill), it is no longer a checkpoint,
    where `rmtree`'s order could leave the state beside half the weights, counted as complete."""
    if checkpoint.is_dir():
        (checkpoint / TRAINER_STATE).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)


def _is_step(suffix: str) -> bool:
    return suffix.isascii() and suffix.isdigit()  # "²" is a digit to str.isdigit, not to int()


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under `out`, oldest first."""
    if not out.is_dir():
        return []
    # "checkpoint-<digits>" only: a user's copy (checkpoint-0000200.bak) is not one, and named no step
    found = [p for p in out.glob(f"{PREFIX}*") if _is_step(p.name[len(PREFIX):]) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint folder was saved at (its name says it)."""
    return int(path.name[len(PREFIX) :])


class UnreadableTrainerStateError(ValueError):
    """A checkpoint's trainer state is not the JSON object with its step that `save_checkpoint` writes."""


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from a checkpoint folder; returns its trainer state (with `step`)."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / TRAINER_STATE).read_bytes().decode("utf-8"))
    if not isinstance(state, dict) or state.get("step") != checkpoint_step(path):
        raise UnreadableTrainerStateError(f"{TRAINER_STATE} holds no step {checkpoint_step(path)}")
    model.load_state_dict(load_file(path / MODEL_FILE))
    rng = load_optimizer(optimizer, path / OPTIMIZER_FILE)
    torch.set_rng_state(rng.pop("rng.torch"))
    cuda = [rng[key] for key in sorted(rng, key=lambda k: int(k[len(CUDA_RNG):]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return state


def save_optimizer(optimizer: torch.optim.Optimizer, file: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    """An optimizer's state in one safetensors file (its tensors; its param groups and scalars as metadata),
    with `extra` tensors beside them under names whose first dotted part is not a number (e.g. "rng.torch")."""
    from safetensors.torch import save_file

    tensors, metadata = _flatten_optimizer(optimizer.state_dict())
    save_file({**tensors, **(extra or {})}, file, metadata=metadata)


def load_optimizer(optimizer: torch.optim.Optimizer, file: Path) -> dict[str, torch.Tensor]:
    """Restore what `save_optimizer` wrote into `optimizer`; returns the `extra` tensors saved with it."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        metadata = handle.metadata()
        if not metadata or "scalars" not in metadata:  # a TypeError or KeyError below
            raise ValueError(f"{file} holds no optimizer settings (a file save_optimizer did not write)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    extra = {key: tensors.pop(key) for key in list(tensors) if not key.split(".", 1)[0].isdigit()}
    _check_state_shapes(optimizer, tensors, metadata, file)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, metadata))
    return extra


def _check_state_shapes(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                        file: Path) -> None:
    """Refuse state tensors (Adam's exp_avg, ...) whose shape is not their parameter's: torch's load_state_dict
    checks the groups' sizes alone, and such a file failed at the first step, with a traceback."""
    saved = [index for group in json.loads(metadata["param_groups"]) for index in group["params"]]
    params = [param for group in optimizer.param_groups for param in group["params"]]
    shapes = dict(zip(saved, (tuple(param.shape) for param in params)))
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        shape = shapes.get(int(index))
        if tensor.ndim and shape is not None and tuple(tensor.shape) != shape:  # 0-d: a step count
            raise ValueError(f"{file} is from another config: its {name} of parameter {index} has shape "
                             f"{tuple(tensor.shape)}, the parameter {shape}")
