"""The shared slow-learning loop: checkpoints in safetensors, exact resume, a clear stop on a diverged loss."""

from __future__ import annotations

import json
from dataclasses import replace
import os
import shutil
import signal

import pytest
import torch
from accelerate import Accelerator

from vplan.errors import RunError, UsageError
from vplan.loop.checkpoint import list_checkpoints, save_optimizer
from vplan.loop.config import OptimConfig
from vplan.loop.trainer import logged_losses, train
from vplan.utils.interrupts import Terminated


class LinearFit:
    """A toy component: fit y = 3x with a linear layer; `poison_at` makes the loss NaN from that step on."""

    def __init__(self, poison_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 1)
        self.poison_at = poison_at
        self.calls = 0

    def batch(self, generator: torch.Generator, batch_size: int) -> dict:
        x = torch.randn(batch_size, 4, generator=generator)
        return {"x": x, "y": 3 * x.sum(dim=1, keepdim=True)}

    def loss(self, batch: dict, generator: torch.Generator):
        self.calls += 1
        noise = 0.01 * torch.randn(batch["y"].shape)  # torch's global RNG, as dropout and VAE sampling draw from
        loss = torch.nn.functional.mse_loss(self.module(batch["x"]), batch["y"] + noise)
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        return loss, {"calls": self.calls}


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_loss_goes_down_and_checkpoints_are_safetensors(tmp_path):
    component = LinearFit()
    optim = OptimConfig(steps=60, batch_size=16, lr=0.05, warmup_steps=1, save_every=20, log_every=10)
    assert train(component, optim, tmp_path, "toy") == 60
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] / 10
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")  # the loss log, drawn
    newest = list_checkpoints(tmp_path)
    assert [p.name for p in newest] == ["checkpoint-0000040", "checkpoint-0000060"]
    assert sorted(f.name for f in newest[-1].iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]


class RecordingFit(LinearFit):
    """LinearFit that keeps every batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def batch(self, generator: torch.Generator, batch_size: int) -> dict:
        batch = super().batch(generator, batch_size)
        self.batches.append(batch["x"])
        return batch


def test_each_step_draws_its_own_batch_and_follows_the_lr_schedule(tmp_path):
    """The resume test compares two runs of the same code: a generator seeded without the step (one batch for
    every step), or the schedule left out of the optimizer, kept it green."""
    optim = OptimConfig(steps=12, batch_size=4, lr=0.01, warmup_steps=3, cooldown_steps=4, log_every=1)
    component = RecordingFit()
    train(component, optim, tmp_path, "toy")
    assert not any(torch.equal(a, b) for i, a in enumerate(component.batches) for b in component.batches[:i])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in log] == pytest.approx([optim.lr_at(row["step"] - 1) for row in log])
    assert len({row["lr"] for row in log}) > 2  # warm-up, hold and cool-down all logged


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    optim = OptimConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=5, save_every=10)
    straight = LinearFit()
    train(straight, optim, tmp_path / "straight", "toy")

    first = LinearFit()
    train(first, OptimConfig(**{**optim.__dict__, "steps": 20}), tmp_path / "resumed", "toy")
    # a user's copy of a checkpoint is no checkpoint (its name named no step: a traceback)
    shutil.copytree(tmp_path / "resumed" / "checkpoint-0000010", tmp_path / "resumed" / "checkpoint-0000010.bak")
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-0000010", "checkpoint-0000020"]
    second = LinearFit()  # a fresh process would start from the same init, then load the checkpoint
    assert train(second, optim, tmp_path / "resumed", "toy") == 30
    assert second.calls == 10  # only the missing steps ran
    for a, b in zip(weights(straight.module), weights(second.module)):
        assert torch.equal(a, b)


def test_a_torn_log_line_is_cut_and_a_checkpoint_past_steps_is_refused(tmp_path):
    optim = OptimConfig(steps=20, batch_size=8, lr=0.01, warmup_steps=1, save_every=10, log_every=5)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 10}), tmp_path, "toy")
    log = tmp_path / "train_log.jsonl"
    first = [json.loads(line) for line in log.read_text().splitlines()]
    first[-1]["seconds"] = 1000.0  # the first run's clock at its checkpoint: the resumed run's goes on from it
    log.write_text("".join(json.dumps(r) + "\n" for r in first))
    with log.open("a") as handle:  # steps a killed run logged after its last checkpoint, then a crash mid-line
        handle.write('{"step": 15, "loss": 99.0}\n{"step": 25, "loss": 99.0}\n{"step": 30, "loss": 0.0')
    train(LinearFit(), optim, tmp_path, "toy")
    # the raw log (pandas, jq), not only logged_losses: each step once, none past the run's end, none torn
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20] and 99.0 not in [r["loss"] for r in records]
    assert 1000.0 <= records[2]["seconds"] <= records[3]["seconds"] < 1000.0 + 60  # it restarted at 0
    with pytest.raises(UsageError, match=r"checkpoint-0000020 is at step 20, past component.optim.steps=10; pass "
                                       r"component.optim.steps>=20 to go on from it, or another out=DIR"):
        train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 10}), tmp_path, "toy")


def test_a_stopped_continuation_leaves_no_stale_final(tmp_path):
    """More steps continue a finished run; stopped, it once left the shorter run's final/ in place, which a
    `vplan run worldmodel=<out>/final` then took for the result; a refused continuation leaves it."""
    optim = OptimConfig(steps=20, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 10}), tmp_path, "toy")
    (tmp_path / "final").mkdir()  # what train and finetune write after the loop
    with pytest.raises(UsageError, match="past component.optim.steps=5"):
        train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 5}), tmp_path, "toy")
    assert (tmp_path / "final").is_dir()
    stopped = LinearFit()
    stopped.loss = lambda batch, generator: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        train(stopped, optim, tmp_path, "toy")
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.safetensors"])
def test_a_damaged_checkpoint_is_one_error_naming_the_way_back_to_the_one_before(tmp_path, damaged):
    optim = OptimConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 20}), tmp_path, "toy")
    newest = list_checkpoints(tmp_path)[-1]
    file = newest / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # a disk fault, not a kill: writes are atomic
    with pytest.raises(RunError, match=r"checkpoint-0000020 cannot be read \(SafetensorError: .*\); delete that "
                                       r"folder to resume from the checkpoint before it"):
        train(LinearFit(), optim, tmp_path, "toy")
    import shutil

    shutil.rmtree(newest)
    assert train(LinearFit(), optim, tmp_path, "toy") == 30  # as the message says: from step 10


@pytest.mark.parametrize("content", [b"\xff\xfe{", b'{"stage": 1}', b"[20]"])
def test_a_damaged_trainer_state_is_called_damaged(tmp_path, content):
    """Bytes that are not UTF-8 were called another model's checkpoint (to abandon the whole out=), and JSON
    without the step a KeyError traceback; the checkpoint before it is fine."""
    optim = OptimConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 20}), tmp_path, "toy")
    (list_checkpoints(tmp_path)[-1] / "trainer_state.json").write_bytes(content)
    with pytest.raises(RunError, match=r"checkpoint-0000020 cannot be read .*delete that folder to resume from the "
                                       r"checkpoint before it"):
        train(LinearFit(), optim, tmp_path, "toy")


def test_a_checkpoint_of_another_model_is_not_called_damaged(tmp_path):
    """Deleting it, as for a damaged one, would not help: every checkpoint in `out` is of the other model."""
    optim = OptimConfig(steps=20, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 10}), tmp_path, "toy")
    wider = LinearFit()
    wider.module = torch.nn.Linear(5, 1)
    with pytest.raises(RunError, match=r"checkpoint-0000010 does not fit this model \(Error\(s\) in loading "
                                       r"state_dict for Linear: .*size mismatch"):
        train(wider, optim, tmp_path, "toy")


def test_an_optimizer_state_of_another_config_is_refused_at_the_resume(tmp_path):
    """torch checks the groups' sizes alone: Adam's state of a wider layer was taken, and the first step failed
    with a traceback (the size of tensor a (5) must match the size of tensor b (4))."""
    optim = OptimConfig(steps=20, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 10}), tmp_path / "run", "toy")
    wider = torch.nn.Linear(5, 1)  # another config's model: the same groups, wider tensors
    other = torch.optim.AdamW(wider.parameters())
    wider(torch.ones(1, 5)).sum().backward()
    other.step()
    save_optimizer(other, tmp_path / "run" / "checkpoint-0000010" / "optimizer.safetensors",
                   {"rng.torch": torch.get_rng_state()})
    with pytest.raises(RunError, match=r"checkpoint-0000010 does not fit this model \(.*optimizer\.safetensors is "
                                       r"from another config: its exp_avg of parameter 0 has shape \(1, 5\)"):
        train(LinearFit(), optim, tmp_path / "run", "toy")


def test_an_rng_state_not_of_bytes_is_called_damaged(tmp_path):
    """torch.set_rng_state's TypeError ("RNG state must be a torch.ByteTensor") was a traceback."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    optim = OptimConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=1, save_every=10)
    train(LinearFit(), OptimConfig(**{**optim.__dict__, "steps": 20}), tmp_path, "toy")
    file = list_checkpoints(tmp_path)[-1] / "optimizer.safetensors"
    with safe_open(file, framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["rng.torch"] = tensors["rng.torch"].float()
    save_file(tensors, file, metadata=metadata)
    with pytest.raises(RunError, match=r"checkpoint-0000020 cannot be read \(TypeError: .*\); delete that folder to "
                                       r"resume from the checkpoint before it"):
        train(LinearFit(), optim, tmp_path, "toy")


def test_until_stops_with_a_checkpoint_on_the_whole_runs_schedule(tmp_path):
    """Stopping at `until` and going on equals one straight run, cool-down included (its lr needs `steps`)."""
    optim = OptimConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=5, cooldown_steps=20, save_every=100)
    straight = LinearFit()
    train(straight, optim, tmp_path / "straight", "toy")
    first = LinearFit()
    assert train(first, optim, tmp_path / "paused", "toy", until=13) == 13
    assert [p.name for p in list_checkpoints(tmp_path / "paused")] == ["checkpoint-0000013"]
    second = LinearFit()
    assert train(second, optim, tmp_path / "paused", "toy") == 30 and second.calls == 17
    for a, b in zip(weights(straight.module), weights(second.module)):
        assert torch.equal(a, b)


class ScaledAccelerator:
    """accelerate's Accelerator as fp16 on a GPU makes it: a grad scaler on the loss (here torch's CPU one),
    growing its scale every 2 steps, so a resume that forgot it would start again from the initial scale."""

    def __new__(cls, *args, **kwargs):
        accelerator = Accelerator(*args, **kwargs)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=2)
        return accelerator


def test_a_resume_keeps_the_fp16_grad_scalers_loss_scale(tmp_path, monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", ScaledAccelerator)
    optim = OptimConfig(steps=8, batch_size=8, lr=0.01, warmup_steps=1, save_every=100)
    straight = LinearFit()
    train(straight, optim, tmp_path / "straight", "toy")
    train(LinearFit(), optim, tmp_path / "paused", "toy", until=5)
    resumed = LinearFit()
    train(resumed, optim, tmp_path / "paused", "toy")
    scales = [json.loads((list_checkpoints(tmp_path / run)[-1] / "trainer_state.json").read_text())["grad_scaler"]
              for run in ("straight", "paused")]
    assert scales[0]["scale"] == 2.0**8  # grown at steps 2, 4, 6, 8
    assert scales[1] == scales[0]
    for a, b in zip(weights(straight.module), weights(resumed.module)):
        assert torch.equal(a, b)


def test_accelerate_settings_vplan_does_not_follow_are_refused(tmp_path, monkeypatch):
    """Gradient accumulation was ignored silently; a resume in another mixed precision went on silently."""
    import accelerate

    from vplan.errors import RunError

    optim = OptimConfig(steps=4, batch_size=4, lr=0.01, warmup_steps=1, save_every=2)
    train(LinearFit(), replace(optim, steps=2), tmp_path, "toy")
    assert json.loads((list_checkpoints(tmp_path)[-1] / "trainer_state.json").read_text())["mixed_precision"] == "no"

    class Accumulating(Accelerator):
        gradient_accumulation_steps = property(lambda self: 4)

    class InBf16(Accelerator):
        mixed_precision = property(lambda self: "bf16")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp = True  # as bf16 is applied on the CPU

    monkeypatch.setattr(accelerate, "Accelerator", Accumulating)
    with pytest.raises(RunError, match=r"gradient accumulation \(4 steps.* raise component.optim.batch_size instead"):
        train(LinearFit(), optim, tmp_path / "other", "toy")
    monkeypatch.setattr(accelerate, "Accelerator", InBf16)
    with pytest.raises(RunError, match=r"trained with mixed precision 'no', this run has 'bf16'"):
        train(LinearFit(), optim, tmp_path, "toy")

    class NotApplied(Accelerator):  # what accelerate makes of fp16 on the CPU, or of "BF16": recorded, not applied
        mixed_precision = property(lambda self: "fp16")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp = False

    class Unusable(Accelerator):  # fp8 without its library
        def __init__(self, *args, **kwargs):
            raise ValueError("Using `fp8` precision requires `transformer_engine` or `torchao` to be installed.")

    monkeypatch.setattr(accelerate, "Accelerator", NotApplied)  # it trained in fp32, recorded as fp16
    with pytest.raises(RunError, match=r"^toy: mixed precision 'fp16' .* is not applied on the cpu, so training"):
        train(LinearFit(), optim, tmp_path / "fp16", "toy")
    assert not list_checkpoints(tmp_path / "fp16")
    monkeypatch.setattr(accelerate, "Accelerator", Unusable)  # was accelerate's 25-line traceback
    with pytest.raises(RunError, match=r"^toy: accelerate's settings cannot be used here \(Using `fp8` precision"):
        train(LinearFit(), optim, tmp_path / "fp8", "toy")
    monkeypatch.setattr(accelerate, "Accelerator", Accelerator)
    # a run that recorded such a precision before it was refused trained in fp32: it goes on in fp32, as it was
    for recorded in ("fp16", "BF16"):
        out = tmp_path / f"began_{recorded}"
        train(LinearFit(), replace(optim, steps=2), out, "toy")
        state = out / "checkpoint-0000002" / "trainer_state.json"
        state.write_text(json.dumps({**json.loads(state.read_text()), "mixed_precision": recorded}))
        assert train(LinearFit(), optim, out, "toy") == 4


def test_the_loss_runs_under_accelerates_autocast(tmp_path, monkeypatch):
    """prepare() casts only the module's forward: the VAE's loss calls encode and decode, so under
    ACCELERATE_MIXED_PRECISION=bf16 it trained in fp32, recorded as bf16."""
    import contextlib

    import accelerate

    inside: list[bool] = []

    class Recording(Accelerator):
        @contextlib.contextmanager
        def autocast(self, *args, **kwargs):
            inside.append(True)
            try:
                yield
            finally:
                inside.pop()

    class Checked(LinearFit):
        def loss(self, batch, generator):
            assert inside, "the loss ran outside accelerator.autocast()"
            return super().loss(batch, generator)

    monkeypatch.setattr(accelerate, "Accelerator", Recording)
    assert train(Checked(), OptimConfig(steps=2, batch_size=4, lr=0.01, warmup_steps=1), tmp_path, "toy") == 2


class SignalledAt(LinearFit):
    """`signum` (SIGINT by default) arrives during the loss of step `at` (1-based)."""

    def __init__(self, at: int, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.at, self.signum = at, signum

    def loss(self, batch: dict, generator: torch.Generator):
        if self.calls + 1 == self.at:
            os.kill(os.getpid(), self.signum)
        return super().loss(batch, generator)


def test_a_stop_signal_saves_the_step_and_stops_unless_the_run_is_done(tmp_path, capsys):
    optim = OptimConfig(steps=6, save_every=2, warmup_steps=1)
    with pytest.raises(KeyboardInterrupt) as stop:
        train(SignalledAt(3), optim, tmp_path / "mid", "toy")
    assert not isinstance(stop.value, Terminated)  # the command line says "interrupted" and exits 130
    assert [p.name for p in list_checkpoints(tmp_path / "mid")] == ["checkpoint-0000002", "checkpoint-0000003"]
    assert "stopped at step 3" in capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt):  # the last step before `until` (a finetune round's end): still a stop
        train(SignalledAt(3), optim, tmp_path / "until", "toy", until=3)
    assert train(SignalledAt(6), optim, tmp_path / "last", "toy") == 6  # done: it returns, so `final` gets written
    assert [p.name for p in list_checkpoints(tmp_path / "last")] == ["checkpoint-0000004", "checkpoint-0000006"]
    with pytest.raises(Terminated):  # SIGTERM (a job scheduler's stop) saves the step too; the CLI exits 143
        train(SignalledAt(3, signal.SIGTERM), optim, tmp_path / "term", "toy")
    assert [p.name for p in list_checkpoints(tmp_path / "term")] == ["checkpoint-0000002", "checkpoint-0000003"]


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    with pytest.raises(RunError, match=r"loss became nan at step 3; .*lower component.optim.lr in another out=DIR "
                                       r"\(no checkpoint was saved before it\)"):  # was "the newest ..., none, ..."
        train(LinearFit(poison_at=3), OptimConfig(steps=10, save_every=100), tmp_path, "toy")
    with pytest.raises(RunError, match=r"\(the newest checkpoint, .*checkpoint-0000002, was saved before it\)"):
        train(LinearFit(poison_at=3), OptimConfig(steps=10, save_every=2), tmp_path / "saved", "toy")


class OutOfMemoryAt(LinearFit):
    """The loss of step `at` (1-based) asks for more memory than there is, as the CPU allocator or CUDA says it."""

    def __init__(self, at: int, error: BaseException) -> None:
        super().__init__()
        self.at, self.error = at, error

    def loss(self, batch: dict, generator: torch.Generator):
        if self.calls + 1 == self.at:
            raise self.error
        return super().loss(batch, generator)


CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error", [CPU_OOM, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_out_of_memory_names_the_batch_size_to_lower(tmp_path, error):
    optim = OptimConfig(steps=10, batch_size=16, save_every=2, warmup_steps=1)
    with pytest.raises(RunError, match=r"out of memory at step 1 with batch_size=16 \(.*\); start again with a "
                                       r"lower component.optim.batch_size$"):
        train(OutOfMemoryAt(1, error), optim, tmp_path / "first", "toy")
    # with checkpoints, a resume keeps the batch size: the way on is another out
    with pytest.raises(RunError, match=r"at step 5 .* lower optim.batch_size in another out=DIR \(a resumed run"):
        train(OutOfMemoryAt(5, error), optim, tmp_path / "later", "toy", optim_key="optim")
    with pytest.raises(RuntimeError, match="^other$"):  # any other error goes through as it was
        train(OutOfMemoryAt(1, RuntimeError("other")), optim, tmp_path / "other", "toy")


def test_out_of_memory_in_the_optimizers_step_is_named_too(tmp_path, monkeypatch):
    """Adam's first step allocates its two moments, as much again as the weights: a failure there is out of
    memory as well, not a traceback."""
    def no_memory(self, *args, **kwargs):
        raise CPU_OOM

    monkeypatch.setattr(torch.optim.AdamW, "step", no_memory)
    with pytest.raises(RunError, match=r"out of memory at step 1 with batch_size=16 .* lower component.optim.batch_"):
        train(LinearFit(), OptimConfig(steps=10, batch_size=16, warmup_steps=1), tmp_path, "toy")


class InfiniteGradient(LinearFit):
    """A finite loss whose gradient is not (the square root of 0) from step `at` on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def loss(self, batch: dict, generator: torch.Generator):
        loss, logs = super().loss(batch, generator)
        return (loss + (torch.sqrt(self.module.bias * 0).sum() if self.calls >= self.at else 0)), logs


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_gradient_stops_before_it_reaches_the_weights_or_a_checkpoint(tmp_path, grad_clip):
    component = InfiniteGradient(at=3)
    optim = OptimConfig(steps=10, save_every=3, warmup_steps=1, grad_clip=grad_clip)
    with pytest.raises(RunError, match="the gradient norm became (inf|nan) at step 3"):
        train(component, optim, tmp_path, "toy")
    assert all(torch.isfinite(p).all() for p in component.module.parameters())
    assert [p.name for p in list_checkpoints(tmp_path)] == []  # step 3 was never taken, nor saved


@pytest.mark.parametrize(("field", "value"), [("lr", float("nan")), ("weight_decay", -0.1), ("grad_clip", -1.0)])
def test_bad_optimizer_settings_are_refused_up_front(field, value):
    with pytest.raises(ValueError, match=f"{field}: expected a number"):
        OptimConfig(**{field: value})


def test_lr_warms_up_holds_then_cools_down_to_zero():
    optim = OptimConfig(steps=100, lr=1.0, warmup_steps=10, cooldown_steps=20)
    assert optim.lr_at(0) == pytest.approx(0.1)
    assert optim.lr_at(9) == optim.lr_at(50) == optim.lr_at(80) == 1.0
    assert optim.lr_at(90) == pytest.approx(0.5)
    assert optim.lr_at(99) == pytest.approx(0.05)
    short = OptimConfig(steps=4, lr=1.0, warmup_steps=1, cooldown_steps=1500)  # a short run cools down throughout
    assert [short.lr_at(step) for step in range(4)] == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="cooldown_steps"):
        OptimConfig(steps=10, cooldown_steps=-1)


def test_loss_log_lines_a_resumed_run_repeats_are_read_once_the_newer_winning(tmp_path):
    log = tmp_path / "train_log.jsonl"
    lines = [{"step": 10, "loss": 4.0}, {"step": 20, "loss": 3.0}, {"step": 30, "loss": 9.0},  # killed after 20
             {"step": 30, "loss": 2.0}, {"step": 40, "loss": 1.0}]  # resumed from the step-20 checkpoint
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    assert logged_losses(log) == ([10, 20, 30, 40], [4.0, 3.0, 2.0, 1.0])
    assert logged_losses(tmp_path / "missing.jsonl") == ([], [])


def test_the_running_mean_of_the_loss_is_drawn_at_its_windows_middle(tmp_path, monkeypatch):
    """Drawn at each window's last step, the mean of a falling loss sat above the loss all along."""
    from vplan.loop import trainer

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": 10 * (i + 1), "loss": 12.0 - i}) + "\n" for i in range(12)))
    drawn = {}
    monkeypatch.setattr(trainer, "line_plot", lambda path, series, *args, **kwargs: drawn.update(series))
    trainer.plot_losses(log, tmp_path / "loss.png", "toy", window=4)
    steps, means = drawn["mean of 4 log lines"]
    assert means[0] == 10.5 and steps[0] in (20, 30)  # the mean of steps 10-40: at 20 (not 40), as the loss there
    assert len(steps) == len(means) == 9


def test_the_progress_bar_is_drawn_at_tqdms_rate_not_at_every_step(tmp_path, monkeypatch, capsys):
    """The loss in the bar's postfix redrew it at every step (twice): 12k lines of bar in a 10,000-step log."""
    monkeypatch.setenv("TQDM_MININTERVAL", "1000")  # tqdm's own setting: draw at the start and the end only
    train(LinearFit(), OptimConfig(steps=60, batch_size=4, lr=0.01, warmup_steps=1, log_every=60), tmp_path, "toy")
    drawn = capsys.readouterr().err.count("\r")
    assert 0 < drawn < 10, drawn


def test_a_run_from_step_0_starts_a_new_loss_log(tmp_path):
    """Without a checkpoint the run begins anew: an old log (its checkpoints deleted) kept its later steps in the
    log and the plot, beside this run's."""
    train(LinearFit(), OptimConfig(steps=6, batch_size=4, lr=0.01, warmup_steps=1, log_every=1), tmp_path, "toy")
    for checkpoint in list_checkpoints(tmp_path):
        shutil.rmtree(checkpoint)
    train(LinearFit(), OptimConfig(steps=3, batch_size=4, lr=0.02, warmup_steps=1, log_every=1), tmp_path, "toy")
    assert logged_losses(tmp_path / "train_log.jsonl")[0] == [1, 2, 3]


def test_finetune_refuses_several_processes_before_any_work(tmp_path, monkeypatch):
    """finetune does not share its work between processes (train does: see the torchrun tests below)."""
    from accelerate import PartialState

    from vplan.loop.config import FinetuneConfig
    from vplan.loop.finetune import finetune

    PartialState()  # its shared state made first, as an earlier Accelerator would (the property has no setter)
    monkeypatch.setattr(PartialState, "num_processes", property(lambda self: 2), raising=False)  # accelerate launch
    nothing = str(tmp_path / "no_dataset")  # refused before the dataset is even opened
    with pytest.raises(RunError, match="finetune: 2 processes .* run the command without accelerate launch"):
        finetune(FinetuneConfig(data=nothing, out=str(tmp_path / "finetune")))


def test_a_batch_that_does_not_split_between_the_processes_is_refused(tmp_path, monkeypatch):
    import accelerate

    class TwoProcesses(Accelerator):
        num_processes = property(lambda self: 2)

    monkeypatch.setattr(accelerate, "Accelerator", TwoProcesses)
    component = LinearFit()
    with pytest.raises(RunError, match=r"toy: component.optim.batch_size=3 does not split evenly between 2 "
                                       r"processes; pass a multiple of 2"):
        train(component, OptimConfig(steps=2, batch_size=3), tmp_path, "toy")
    assert component.calls == 0 and not list(tmp_path.iterdir())


def test_train_refuses_a_batch_that_does_not_split_before_reading_data_and_only_the_first_process_prints(
        tmp_path, monkeypatch, capsys):
    from accelerate import PartialState

    from vplan.loop import trainer
    from vplan.loop.config import TrainConfig, VAETrainConfig
    from vplan.loop.train import train_component

    PartialState()
    monkeypatch.setattr(PartialState, "num_processes", property(lambda self: 2), raising=False)
    component = VAETrainConfig(optim=OptimConfig(batch_size=3))
    with pytest.raises(RunError, match="train vae: component.optim.batch_size=3 does not split evenly"):
        train_component(TrainConfig(component=component, data=str(tmp_path / "no_dataset"), out=str(tmp_path / "o")))
    monkeypatch.setattr(trainer, "is_main_process", lambda: False)
    import warnings

    from vplan.errors import VplanWarning

    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")  # (the CLI's setting for some: each would be shown)
        with trainer.only_the_main_process_prints():
            print("a line each process would give")
            warnings.warn("a warning each process would give", VplanWarning)
    assert capsys.readouterr().out == "" and given == []


def test_each_process_takes_its_share_of_the_steps_batch_and_its_own_noise():
    from vplan.loop.trainer import _noise_generator, _share

    batch = {"x": torch.arange(6).reshape(6, 1), "texts": list("abcdef")}
    assert _share(batch, 0, 1) is batch
    assert _share(batch, 1, 3)["x"].flatten().tolist() == [2, 3] and _share(batch, 1, 3)["texts"] == ["c", "d"]
    step = torch.Generator().manual_seed(5)
    assert _noise_generator(step, 0, 1) is step  # one process: as before, the step's own generator
    draws = [torch.randn(3, generator=_noise_generator(torch.Generator().manual_seed(5), r, 2)) for r in (0, 1)]
    again = torch.randn(3, generator=_noise_generator(torch.Generator().manual_seed(5), 1, 2))
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[1], again)  # per process, and reproducible


def test_a_save_the_disk_refuses_leaves_no_half_checkpoint_and_says_free_some_space(tmp_path, monkeypatch, capsys):
    """The half-written folder held the space the user was to free, and safetensors' error was a traceback."""
    from safetensors import SafetensorError

    from vplan.cli import main
    from vplan.loop import checkpoint as checkpoint_module
    from vplan.loop.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, 1, model, optimizer, {})

    def disk_full(*args, **kwargs):
        raise SafetensorError("I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint_module, "save_optimizer", disk_full)
    with pytest.raises(SafetensorError):
        save_checkpoint(tmp_path, 2, model, optimizer, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001"]

    monkeypatch.setattr("vplan.data.collect.collect", disk_full)  # as a command's save meets it
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", "episodes=1", f"out={tmp_path / 'data'}"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().endswith("error: No space left on device; free some space (or write to "
                                                    "another out=DIR) and run it again")


def test_a_schedule_that_never_reaches_its_learning_rate_is_warned_of():
    """A short trial run at the default warm-up and cool-down (40 steps of 100 and 1,500) peaked at a quarter of its
    lr, unsaid: its flat loss read as a model that does not learn (helper-200)."""
    import warnings

    from vplan.errors import VplanWarning
    from vplan.loop.trainer import warn_if_lr_not_reached

    with pytest.warns(VplanWarning, match=r"component.optim.steps=40 with warmup_steps=100 and cooldown_steps=1500: "
                                          r"the learning rate peaks at 5.8e-05, not lr=0.0002; lower"):
        warn_if_lr_not_reached(OptimConfig(steps=40, lr=2e-4, warmup_steps=100, cooldown_steps=1500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_lr_not_reached(OptimConfig(steps=400, lr=2e-4, warmup_steps=100, cooldown_steps=300))  # reaches it


def test_a_killed_saves_staging_folder_is_cleared_by_the_next_save(tmp_path):
    """A half-written `.tmp-checkpoint-*` (hundreds of MB) left by a kill: kept forever, no test said (helper-210)."""
    from vplan.loop.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (4, 5):
        (tmp_path / f".tmp-checkpoint-{step:07d}").mkdir()
        (tmp_path / f".tmp-checkpoint-{step:07d}" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, 5, model, optimizer, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000005"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-0000005").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "trainer_state.json"]


@pytest.mark.parametrize("name", ["checkpoint-²", "checkpoint-١٢"])
def test_a_folder_named_with_non_ascii_digits_is_no_checkpoint(tmp_path, name):
    """int() reads these as steps (12; "²" then crashed the sort)."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "trainer_state.json").write_text('{"step": 12}')
    assert list_checkpoints(tmp_path) == []
