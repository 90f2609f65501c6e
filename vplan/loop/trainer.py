"""The slow-learning loop shared by every trainable component: Accelerate, progress, checkpoints, resume.

A component (the VAE, the world model, ...) supplies the module to train, a batch for a given step and the
loss; this loop does the rest. Batches are drawn from a generator seeded by (seed, step), so a run resumed
from a checkpoint takes exactly the batches an uninterrupted run would have taken. SIGINT/SIGTERM save a
checkpoint at the step reached before exiting; a non-finite loss stops with the step named. The loss log
(`train_log.jsonl`) is drawn as `loss.png` at every checkpoint.

Under `accelerate launch` (or torchrun) with several processes, every process draws the step's whole batch and
trains on its own share of the rows, DistributedDataParallel averaging the gradients, so the batches are the same
whatever the number of processes; the first process alone writes checkpoints, logs and results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Collection, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError

from vplan.errors import RunError, UsageError, VplanWarning, first_line
from vplan.loop.checkpoint import (
    UnreadableTrainerStateError, checkpoint_step, list_checkpoints, load_checkpoint, save_checkpoint,
)
from vplan.loop.config import OptimConfig
from vplan.utils.files import write_text_atomic
from vplan.utils.interrupts import interrupted, terminated
from vplan.utils.plots import line_plot
from vplan.utils.resources import launched_processes

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
MIXED_PRECISION = "mixed_precision"  # in trainer_state.json: accelerate's "no", "fp16" or "bf16", held on a resume
GRAD_SCALER = "grad_scaler"  # in trainer_state.json under fp16: the grad scaler's state (its loss scale)


FINAL = "final"  # the trained result each command writes beside its checkpoints


class Trainable(Protocol):
    """What a component gives the loop."""

    module: torch.nn.Module  # the parameters to train (its state is what checkpoints hold)
    # optional, True where some trainable parameter of `module` never reaches the loss (DDP must look for them)
    # unused_parameters: bool

    # a dict of tensors and lists with one row per sample (several processes each take a share of the rows)
    def batch(self, generator: torch.Generator, batch_size: int) -> dict[str, Any]: ...

    # the loss and figures to log (the same keys at every step: several processes average them)
    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...


def refuse_several_processes(description: str) -> None:
    """A RunError under a multi-process `accelerate launch`, for a command that does not share its work between
    processes (every one would do all of it and write the same files); such a command calls it first."""
    processes = _process_state().num_processes
    if processes > 1:
        raise RunError(f"{description}: {processes} processes (accelerate launch): {description} runs in one process "
                       "(CPU, or the one GPU it finds); run the command without accelerate launch")


PROCESS_TIMEOUT = timedelta(hours=1)  # how long processes wait for one another (the first encoding the latents)


def _process_state() -> Any:
    """Accelerate's view of the processes, made before the trainer's Accelerator(), which then shares it.

    Several processes on a machine without a GPU train on its CPUs (as ACCELERATE_USE_CPU=1 asks; PartialState()
    alone would see one process in each, and each would write the same files), and wait up to PROCESS_TIMEOUT for
    one another rather than torch's default (10 minutes under NCCL)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = launched_processes()
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu, timeout=PROCESS_TIMEOUT)
    if launched > 1 and state.num_processes == 1:  # each would train alone, and write the same files
        raise RunError(f"{launched} processes were launched (WORLD_SIZE), but Accelerate sees each alone; "
                       "on a machine without a GPU backend Accelerate knows, set ACCELERATE_USE_CPU=1 to train on its "
                       "CPUs")
    return state


def check_batch_splits(optim: OptimConfig, processes: int, description: str, optim_key: str) -> None:
    """A RunError where the batch does not split evenly between the processes (each takes an equal share)."""
    if optim.batch_size % processes:
        raise RunError(f"{description}: {optim_key}.batch_size={optim.batch_size} does not split evenly between "
                       f"{processes} processes; pass a multiple of {processes}")


def is_main_process() -> bool:
    """Whether this is the process that writes files and prints (the only one, but under `accelerate launch`)."""
    return _process_state().is_main_process


def process_count() -> int:
    """How many processes train together (1 but under `accelerate launch`)."""
    return _process_state().num_processes


def main_process_first() -> Any:
    """A context the first process runs first and the others after it: for a cache the first writes and the others
    read (the world model's latents, encoded once)."""
    return _process_state().main_process_first()


@contextlib.contextmanager
def only_the_main_process_prints() -> Iterator[None]:
    """print() and warnings silenced in every process but the first, which speaks for all (each would come N
    times); errors are each process's own."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _StepLoss(torch.nn.Module):
    """A component's loss as a module's forward, the call Accelerate wraps: with several processes
    DistributedDataParallel averages the gradients of what runs through its forward (the VAE's loss calls its
    encode and decode, not its forward)."""

    def __init__(self, component: Trainable) -> None:
        super().__init__()
        self.trained = component.module  # registered, so its parameters are the wrapper's
        self.component = component

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.component.loss(batch, generator)


def _share(batch: dict[str, Any], rank: int, processes: int) -> dict[str, Any]:
    """Process `rank`'s rows of a step's batch (all of it in one process)."""
    if processes == 1:
        return batch
    rows = len(next(iter(batch.values()))) // processes
    return {key: value[rank * rows : (rank + 1) * rows] for key, value in batch.items()}


def _noise_generator(generator: torch.Generator, rank: int, processes: int) -> torch.Generator:
    """The generator the loss draws its noise from after the batch: the step's own in one process; with several,
    one per process seeded from it (and torch's global generator, for dropout and the VAE's sampling, reseeded
    too), so that processes do not draw the same noise for their different rows, and a resume draws it again."""
    if processes == 1:
        return generator
    seed = int(torch.randint(2**62, (processes,), generator=generator)[rank])
    torch.manual_seed(seed + 1)
    return torch.Generator().manual_seed(seed)


def check_out_is_ours(out: Path, cfg: Any) -> None:
    """A UsageError where `out` holds what another command made, which a training's checkpoints and `final/` would
    mix with or replace: another kind of command's record (for `vplan train`, a finetune's too: it went on from its
    checkpoints and replaced its `final/`) or another command's settings (`check_config_is_ours`), a model
    checkpoint, or a dataset."""
    from vplan.data.lerobot_format import is_dataset
    from vplan.loop.config import FinetuneConfig
    from vplan.utils.settings import FINETUNE_FILE, check_config_is_ours, refuse_other_records

    if isinstance(cfg, FinetuneConfig):  # which keeps no config.yaml: any is another command's
        refuse_other_records(out, FINETUNE_FILE)
    else:
        check_config_is_ours(out, cfg)
    if is_dataset(out):
        raise UsageError(f"{out} holds a dataset (meta/info.json): a training's files there would mix with its "
                         "episodes; choose another out=DIR")


def check_steps_reach(out: Path, optim: OptimConfig, optim_key: str = "component.optim") -> None:
    """A UsageError where `out`'s newest checkpoint is past `optim.steps` (the run would end at once, its result the
    longer run's): `train` checks it, and a command can before it reads its data (the IDM's pass through the VAE
    takes minutes; a finetune's inner loop, longer)."""
    checkpoints = list_checkpoints(out)
    if checkpoints and (step := checkpoint_step(checkpoints[-1])) > optim.steps:
        raise UsageError(f"{checkpoints[-1]} is at step {step}, past {optim_key}.steps={optim.steps}; pass "
                         f"{optim_key}.steps>={step} to go on from it, or another out=DIR")


def warn_if_lr_not_reached(optim: OptimConfig, optim_key: str = "component.optim") -> None:
    """A VplanWarning where warm-up and cool-down overlap so much that the schedule never reaches `optim.lr` (a
    short trial run at the defaults): its flat loss would read as a model that does not learn."""
    peak = optim.peak_lr()
    if peak < 0.99 * optim.lr:
        warnings.warn(f"{optim_key}.steps={optim.steps} with warmup_steps={optim.warmup_steps} and cooldown_steps="
                      f"{optim.cooldown_steps}: the learning rate peaks at {peak:.2g}, not lr={optim.lr:g}; lower "
                      f"{optim_key}.warmup_steps and cooldown_steps for a short run", VplanWarning, stacklevel=2)


def train(
    component: Trainable, optim: OptimConfig, out: Path, description: str, until: int | None = None,
    optim_key: str = "component.optim", keep_steps: Collection[int] = (), say_resuming: bool = True,
) -> int:
    """Train `component` to `optim.steps` steps under `out`, resuming from its newest checkpoint.

    `until` stops (with a checkpoint) at that step instead, on the schedule of the whole run, so a caller can
    interleave other work with one training run (`vplan finetune rounds=`). `optim_key` is where the command's
    overrides set `optim`, for the errors that name a setting to change; the checkpoints at `keep_steps` are kept
    beside the newest two; `say_resuming=False` leaves out the line naming the checkpoint it goes on from (a caller
    going on from its own `until`). Once every check has passed and a step is about to be taken, an earlier,
    shorter run's `<out>/final` goes, so a stopped continuation leaves no stale result beside its checkpoints (and a
    refused one leaves it as it was).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm import tqdm

    _process_state()  # first: the Accelerator shares it
    # several processes: a parameter the loss does not reach (an action-only world model's text encoder) is
    # passed over, where DistributedDataParallel would wait for its gradient and fail at the next step
    unused = DistributedDataParallelKwargs(find_unused_parameters=getattr(component, "unused_parameters", False))
    # no torch.compile of the loss, whatever accelerate's settings say: a compile per context length stalled
    # each new one, and the loop calls the loss through what prepare() returns
    try:
        accelerator = Accelerator(kwargs_handlers=[unused], dynamo_backend="no")
    except (ValueError, ImportError) as error:  # a precision accelerate knows but cannot use here (fp8's library)
        raise RunError(f"{description}: accelerate's settings cannot be used here ({first_line(error)}); change "
                       "them (accelerate config, or ACCELERATE_MIXED_PRECISION=no|bf16|fp16)") from None
    if accelerator.mixed_precision != "no" and not accelerator.native_amp:  # recorded, yet not applied: fp32
        raise RunError(f"{description}: mixed precision {accelerator.mixed_precision!r} (accelerate's setting, e.g. "
                       f"ACCELERATE_MIXED_PRECISION) is not applied on the {accelerator.device.type}, so training "
                       "would run in full precision under its name; use bf16 (or fp16 on a GPU), or no")
    if accelerator.gradient_accumulation_steps > 1:  # the loop steps the optimizer on every batch
        raise RunError(f"{description}: gradient accumulation ({accelerator.gradient_accumulation_steps} steps, from "
                       f"accelerate's settings) is not done by vplan's trainer; leave it at 1 and raise "
                       f"{optim_key}.batch_size instead")
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    check_batch_splits(optim, processes, description, optim_key)
    module = component.module
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    step = 0
    check_steps_reach(out, optim, optim_key)
    checkpoints = list_checkpoints(out)
    if checkpoints:
        try:
            state = load_checkpoint(checkpoints[-1], module, optimizer)
        except (SafetensorError, OSError, UnicodeDecodeError, json.JSONDecodeError, UnreadableTrainerStateError,
                TypeError) as error:  # a damaged file (TypeError: an RNG state not of bytes): the one before is not
            raise RunError(f"{description}: {checkpoints[-1]} cannot be read ({first_line(error, with_type=True)}); "
                           "delete that folder to resume from the checkpoint before it, or choose another out=DIR"
                           ) from None
        except (RuntimeError, ValueError, KeyError) as error:  # intact, but of another model: so are the others
            detail = " ".join(str(error).split())[:300]
            raise RunError(f"{description}: {checkpoints[-1]} does not fit this model ({detail}); choose another "
                           "out=DIR") from None
        step = state["step"]
        began = state.get(MIXED_PRECISION, accelerator.mixed_precision)  # unrecorded before 2026-12-06
        if began not in ("no", "fp16", "bf16", "fp8") or (began == "fp16" and accelerator.device.type == "cpu"):
            # recorded before 2026-12-07 though accelerate never applied it (fp16 on the CPU, "BF16"): it trained
            # in full precision, as it goes on
            accelerator.print(f"{checkpoints[-1]} records mixed precision {began!r}, which accelerate does not apply "
                              f"on the {accelerator.device.type}: it trained, and goes on, in full precision")
            began = "no"
        if began != accelerator.mixed_precision:  # the same weights, trained on in another precision
            raise RunError(f"{description}: {checkpoints[-1]} was trained with mixed precision {began!r}, this run "
                           f"has {accelerator.mixed_precision!r} (accelerate's setting, e.g. ACCELERATE_MIXED_"
                           f"PRECISION); resume with {began!r}, or choose another out=DIR")
        if accelerator.scaler is not None and GRAD_SCALER in state:  # fp16: the loss scale it had reached
            accelerator.scaler.load_state_dict(state[GRAD_SCALER])
        if say_resuming:
            accelerator.print(f"resuming from {checkpoints[-1]} (step {step})")
    if processes > 1:  # each process reads `out` itself: on machines that do not share it, each its own steps
        steps = accelerator.gather(torch.tensor([step], device=accelerator.device)).tolist()
        if len(set(steps)) > 1:
            raise RunError(f"{description}: the processes found different checkpoints in {out} (at steps {steps}); "
                           "out= must be a folder that every process sees (on several machines, a shared one)")
    step_loss, optimizer = accelerator.prepare(_StepLoss(component), optimizer)  # the module moved, not copied
    log_path = out / LOG_FILE
    seconds_before = 0.0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if step == 0:  # no checkpoint: an old log is another run's (killed before its first save, or deleted)
            log_path.unlink(missing_ok=True)
            (out / PLOT_FILE).unlink(missing_ok=True)
        seconds_before = _keep_log_up_to(log_path, step)  # the log's clock goes on from its last kept record

    stop_requested: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: stop_requested.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint(at: int) -> None:
        if main:
            scaler = {} if accelerator.scaler is None else {GRAD_SCALER: accelerator.scaler.state_dict()}
            extra = {"description": description, MIXED_PRECISION: accelerator.mixed_precision, **scaler}
            save_checkpoint(out, at, module, optimizer, extra, keep_steps=keep_steps)
            plot_losses(log_path, out / PLOT_FILE, description)

    try:
        bar = tqdm(total=optim.steps, initial=step, desc=description, unit="step", disable=not main)
        started = time.perf_counter() - seconds_before
        target = optim.steps if until is None else min(until, optim.steps)
        if step < target and main:
            shutil.rmtree(out / FINAL, ignore_errors=True)
        while step < target:
            generator = torch.Generator().manual_seed(optim.seed * 1_000_003 + step)
            try:
                batch = _share(component.batch(generator, optim.batch_size), rank, processes)
                with accelerator.autocast():
                    loss, logs = step_loss(_on(batch, accelerator.device), _noise_generator(generator, rank, processes))
                # every process's loss, so that all stop together (one stopping alone leaves the rest waiting)
                mean = accelerator.reduce(torch.tensor([loss.item(), *logs.values()], dtype=torch.float64,
                                                       device=accelerator.device), "mean").tolist()
                if processes > 1:
                    logs = dict(zip(logs, mean[1:]))
                if not math.isfinite(mean[0]):
                    raise _diverged(description, f"loss became {mean[0]}", step, out, optim_key)
                for group in optimizer.param_groups:
                    group["lr"] = optim.lr_at(step)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                norm = accelerator.clip_grad_norm_(params, optim.grad_clip if optim.grad_clip > 0 else math.inf)
                # stepping would write it into the weights and the next checkpoint (fp16's grad scaler skips such
                # steps itself: an overflow there is routine)
                if not torch.isfinite(norm) and accelerator.scaler is None:
                    raise _diverged(description, f"the gradient norm became {float(norm)}", step, out, optim_key)
                optimizer.step()  # the first allocates Adam's two moments: as much again as the weights
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not out_of_memory(error):
                    raise
                raise _out_of_memory_error(description, error, step, optim, out, optim_key) from error
            step += 1
            bar.set_postfix(loss=f"{mean[0]:.4f}", refresh=False)  # drawn by update, at tqdm's rate: not every step
            bar.update(1)
            if main and (step % optim.log_every == 0 or step == target):
                record = {"step": step, "loss": mean[0], "lr": optimizer.param_groups[0]["lr"], **logs}
                record["seconds"] = round(time.perf_counter() - started, 2)
                with log_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
            saved = step % optim.save_every == 0 or step == target
            if saved:
                checkpoint(step)
            stopping = bool(stop_requested)
            if processes > 1:  # a signal reaches the processes at different steps: they stop at the same one
                stopping = accelerator.reduce(torch.tensor([float(stopping)], device=accelerator.device)).item() > 0
            if stopping and step < optim.steps:  # the whole run done: it ends as if not stopped
                if not saved:
                    checkpoint(step)
                bar.close()
                accelerator.print(f"stopped at step {step}: checkpoint in {out}; the same command resumes from it")
                # the others exit once the first has saved: a launcher stops the rest when one process ends
                accelerator.wait_for_everyone()
                raise terminated() if signal.SIGTERM in stop_requested else interrupted()
        bar.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return step


def _diverged(description: str, what: str, step: int, out: Path, optim_key: str) -> RunError:
    """The error of a run whose loss or gradient is not finite: rerunning replays the same batches, and a resumed
    run keeps its settings, so the way on is a new run."""
    newest = next(reversed(list_checkpoints(out)), None)
    saved = f"the newest checkpoint, {newest}, was saved before it" if newest else "no checkpoint was saved before it"
    return RunError(f"{description}: {what} at step {step + 1}; check the data, or start again with a lower "
                    f"{optim_key}.lr in another out=DIR ({saved})")


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _out_of_memory_error(
    description: str, error: BaseException, step: int, optim: OptimConfig, out: Path, optim_key: str
) -> RunError:
    """The error of a step that did not fit in memory: a smaller batch is the way on, and since a resumed run keeps
    its batch size, a run with checkpoints has to start again elsewhere."""
    where = "" if not list_checkpoints(out) else " in another out=DIR (a resumed run keeps its batch size)"
    return RunError(f"{description}: out of memory at step {step + 1} with batch_size={optim.batch_size} "
                    f"({first_line(error)}); start again with a lower {optim_key}.batch_size{where}")


def _keep_log_up_to(log_path: Path, step: int) -> float:
    """Cut a loss log back to its whole records of steps up to `step`, the checkpoint a run resumes from: a killed
    run logged steps after it, which the resumed run logs again (or, made shorter, never reaches), and a crash or
    a full disk can leave half a line. Returns the training seconds the last kept record reached (0 if none)."""
    if not log_path.is_file():
        return 0.0
    text = log_path.read_bytes().decode("utf-8", errors="replace")
    kept, seconds = [], 0.0
    for line in text.splitlines():
        try:
            record = json.loads(line)
            if int(record["step"]) <= step:
                kept.append(line + "\n")
                seconds = max(seconds, float(record.get("seconds", 0.0)))
        except (ValueError, TypeError, KeyError, AttributeError):  # a blank line, one torn by a crash or a full disk
            continue
    if "".join(kept) != text:
        write_text_atomic(log_path, "".join(kept))
    return seconds


def logged_losses(log_path: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a loss log, in step order; of a step logged twice (a log from before 2026-12-06, which
    kept a killed run's steps after its last checkpoint when it resumed), the newer line."""
    by_step: dict[int, float] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
                by_step[int(record["step"])] = float(record["loss"])
            except (ValueError, TypeError, KeyError):  # a blank line, or one torn by a crash or a full disk
                continue
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_losses(log_path: Path, path: Path, title: str, window: int = 10) -> None:
    """The logged loss against the step, with its running mean over `window` log lines (drawn at each window's
    middle step: at its last, the mean lagged above a falling loss), as a PNG."""
    steps, losses = logged_losses(log_path)
    if not steps:
        return
    series = {"loss": (steps, losses)}
    if len(losses) > window:
        running = [sum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, len(losses))]
        middle = (window - 1) // 2
        series[f"mean of {window} log lines"] = (steps[middle : middle + len(running)], running)
    line_plot(path, series, "step", "loss", title, log_y=all(v > 0 for v in losses))


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on the device the module was prepared on (components build batches on the CPU)."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
