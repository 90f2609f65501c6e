"""Training under several processes (torchrun on the CPU, as `accelerate launch` runs it on GPUs): each process
trains on its share of the step's batch, the gradients are averaged, and the processes stop together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vplan.loop.checkpoint import list_checkpoints
from vplan.loop.config import OptimConfig
from vplan.loop.trainer import train

OPTIM = OptimConfig(steps=4, batch_size=4, lr=0.05, warmup_steps=1, save_every=2, log_every=1)

# A deterministic component (no noise), so that two processes on half a batch each must step as one does on all
# of it; with a parameter its loss never reaches, as an action-only world model's text encoder. Each process
# writes what it saw and where it ended to rank<N>.json in `out`.
SCRIPT = textwrap.dedent(f"""
    import json, os, signal, sys, time
    from pathlib import Path

    import torch

    import vplan.loop.trainer
    from vplan.errors import RunError
    from vplan.loop.trainer import OptimConfig, train

    class Fit:
        def __init__(self, mode):
            torch.manual_seed(0)
            self.module = torch.nn.ModuleDict({{"fit": torch.nn.Linear(4, 1), "unused": torch.nn.Linear(2, 2)}})
            self.unused_parameters = True
            self.mode, self.calls, self.rows = mode, 0, []

        def batch(self, generator, batch_size):
            x = torch.randn(batch_size, 4, generator=generator)
            return {{"x": x, "y": 3 * x.sum(dim=1, keepdim=True), "row": list(range(batch_size))}}

        def loss(self, batch, generator):
            self.calls += 1
            self.rows.append(batch["row"])
            second = os.environ["RANK"] == "1"
            if self.mode == "signal" and second and self.calls == 3:  # the other process is never signalled
                os.kill(os.getpid(), signal.SIGINT)
            loss = torch.nn.functional.mse_loss(self.module["fit"](batch["x"]), batch["y"])
            if self.mode == "nan" and second and self.calls == 2:
                loss = loss * float("nan")
            return loss, {{}}

    mode, out = sys.argv[1], Path(sys.argv[2])
    component = Fit(mode)
    saved_at = []
    if mode == "signal" and os.environ["RANK"] == "0":  # a slow save of the stop checkpoint (a large model's)
        save = vplan.loop.trainer.save_checkpoint

        def slow_save(*args, **kwargs):
            if args[1] == 3:
                time.sleep(3)
            save(*args, **kwargs)
            saved_at.append(time.time())

        vplan.loop.trainer.save_checkpoint = slow_save
    folder = out / f"r{{os.environ['RANK']}}" if mode == "unshared" else out  # as on machines sharing no folder
    try:
        train(component, OptimConfig(**{OPTIM.__dict__!r}), folder, "toy")
        outcome = "done"
    except KeyboardInterrupt:
        outcome = "stopped"
    except RunError as error:
        outcome = str(error)
    record = {{"outcome": outcome, "rows": component.rows, "ended_at": time.time(), "saved_at": saved_at,
               "weights": [p.detach().flatten().tolist() for p in component.module.parameters()]}}
    (out / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps(record))
""")


def torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Two processes, as plain torchrun starts them (on a machine without a GPU they train on its CPUs; the
    README's ACCELERATE_USE_CPU=1 is run by tests/test_train.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


def ranks(out) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


class Fit:
    """The script's component, in this process (no mode)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.ModuleDict({"fit": torch.nn.Linear(4, 1), "unused": torch.nn.Linear(2, 2)})

    def batch(self, generator, batch_size):
        x = torch.randn(batch_size, 4, generator=generator)
        return {"x": x, "y": 3 * x.sum(dim=1, keepdim=True)}

    def loss(self, batch, generator):
        return torch.nn.functional.mse_loss(self.module["fit"](batch["x"]), batch["y"]), {}


def test_two_processes_on_half_a_batch_each_step_as_one_process_on_all_of_it(tmp_path):
    (tmp_path / "toy.py").write_text(SCRIPT)
    result = torchrun(tmp_path, "toy.py", "plain", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = ranks(tmp_path / "two")
    assert first["outcome"] == second["outcome"] == "done"
    assert first["rows"] == [[0, 1]] * 4 and second["rows"] == [[2, 3]] * 4  # each its share of every step's batch
    one = Fit()
    train(one, OPTIM, tmp_path / "one", "toy")
    expected = [p.detach().flatten().tolist() for p in one.module.parameters()]
    for rank in (first, second):  # the gradients were averaged: both hold the one-process weights
        for got, want in zip(rank["weights"], expected):
            assert got == pytest.approx(want, abs=1e-6)
    # the first process alone wrote the checkpoints and the log, with the loss of the whole batch
    assert [c.name for c in list_checkpoints(tmp_path / "two")] == ["checkpoint-0000002", "checkpoint-0000004"]
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in single], rel=1e-5)


def test_a_signal_or_a_non_finite_loss_in_one_process_stops_both_at_the_same_step(tmp_path):
    (tmp_path / "toy.py").write_text(SCRIPT)
    torchrun(tmp_path, "toy.py", "signal", str(tmp_path / "signal"))
    first, second = ranks(tmp_path / "signal")  # written by both: neither was left waiting for the other
    assert first["outcome"] == second["outcome"] == "stopped"
    assert len(first["rows"]) == len(second["rows"]) == 3
    assert list_checkpoints(tmp_path / "signal")[-1].name == "checkpoint-0000003"
    # the second ended only once the first had saved (a launcher stops the others when one process exits)
    assert second["ended_at"] >= first["saved_at"][-1]

    torchrun(tmp_path, "toy.py", "nan", str(tmp_path / "nan"))
    first, second = ranks(tmp_path / "nan")
    assert first["outcome"] == second["outcome"]
    assert first["outcome"].startswith("toy: loss became nan at step 2;")


def test_processes_that_find_different_checkpoints_are_refused_together(tmp_path):
    (tmp_path / "toy.py").write_text(SCRIPT)
    train(Fit(), OptimConfig(**{**OPTIM.__dict__, "steps": 2}), tmp_path / "unshared" / "r0", "toy")
    torchrun(tmp_path, "toy.py", "unshared", str(tmp_path / "unshared"))
    for rank in ranks(tmp_path / "unshared"):  # both refuse: neither is left waiting for the other
        assert "the processes found different checkpoints" in rank["outcome"] and "at steps [2, 0]" in rank["outcome"]
