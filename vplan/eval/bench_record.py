"""A benchmark's figures as a file (`out=DIR` → `<DIR>/results.json`), next to the machine they were measured on,
so that figures from two machines or two days can be set side by side without copying them off a terminal."""

from __future__ import annotations

import functools
import os
import platform
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from vplan.utils.settings import RESULTS_FILE, refuse_other_records

OUT_HELP = "Also write results.json here: the settings, the figures and the machine they were measured on."
Bench = TypeVar("Bench", bound=Callable[..., Any])


def says_nothing_kept(bench: Bench) -> Bench:
    """A bench that writes its figures at its end, saying so when Ctrl-C stops it (the CLI's "interrupted" alone
    left a user to wonder what was kept and how to go on)."""
    @functools.wraps(bench)
    def saying_so(*args: Any, **kwargs: Any) -> Any:
        try:
            return bench(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted: a bench keeps its figures only once it ends, so nothing was kept; the same command "
                  "starts again", file=sys.stderr)
            raise
    return saying_so  # type: ignore[return-value]


def check_model_is_timed(cfg: Any) -> None:
    """A ValueError where a bench that times `cfg.checkpoint`'s model was also given `model.*` settings, which
    only size an untrained model (`checkpoint=null`): they were ignored, and results.json recorded them."""
    from vplan.worldmodel.config import WorldModelConfig

    if cfg.checkpoint is not None and cfg.model != WorldModelConfig():
        raise ValueError(f"model: sizes the untrained model timed with checkpoint=null, and checkpoint="
                         f"{cfg.checkpoint} brings its own; add checkpoint=null to time the model set by model.*")


def timed_model(cfg: Any) -> str:
    """The model a bench timed, for its console (results.json has it in its settings)."""
    return f"checkpoint={cfg.checkpoint}" if cfg.checkpoint else "an untrained model (checkpoint=null)"


def machine() -> dict[str, Any]:
    """What the timings depend on: CPU, cores, torch and its threads, and how OpenMP threads wait."""
    import torch

    return {
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str | None:
    """The CPU's model name on Linux (/proc/cpuinfo); None elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def check_results_are(path: Path, command: str) -> None:
    """A UsageError where `path` (a results.json) was written by another command: bench planning's and bench
    executor's hold their finished episodes, which another bench's figures would replace. A file without a
    `command` is one of theirs, written before they recorded it."""
    import json

    from vplan.errors import UsageError

    try:
        written_by = json.loads(path.read_text()).get("command", "bench planning or bench executor")
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError):
        written_by = "another command"
    if written_by != command:
        raise UsageError(f"{path} holds the results of vplan {written_by}, not of vplan {command}; choose another "
                         "out=DIR")


def make_out_dir(out: str | None, command: str) -> dict[str, Any]:
    """Check `out` (if given) before the bench runs: an unusable folder, or one holding another command's
    results, fails at once, not after minutes of timing; earlier results of its own are said to be replaced. The
    folders it had to make are removed again (`record_bench` makes them), so a bench stopped before its results
    leaves no empty folder. Returns `machine()` as it is before the timing (its load average then says whether
    something else was running; after, it counts the bench itself)."""
    if out is not None:
        path = Path(out)
        made = [folder for folder in (path, *path.parents) if not folder.exists()]  # the deepest first
        path.mkdir(parents=True, exist_ok=True)  # an unusable out= fails here, with the error the CLI names
        for folder in made:
            folder.rmdir()
        refuse_other_records(path, RESULTS_FILE)
        check_results_are(path / RESULTS_FILE, command)
        if (path / RESULTS_FILE).is_file():  # (they went unsaid)
            print(f"{path / RESULTS_FILE} holds an earlier vplan {command}'s figures: this one's replace them when it "
                  "ends (choose another out=DIR to keep both)")
    return machine()


def record_bench(out: str | None, command: str, cfg: Any, results: Any, machine_before: dict[str, Any]) -> None:
    """With `out`, write `<out>/results.json` whole (aside, then renamed), with the machine `make_out_dir`
    described; without, nothing."""
    if out is None:
        return
    from vplan.utils.files import write_json
    from vplan.utils.settings import plain, settings_record

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    check_results_are(path / RESULTS_FILE, command)
    write_json(path / RESULTS_FILE, {
        "command": command,
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_before,
        "settings": settings_record(cfg, leave_out=("out",)),
        "results": plain(results),
    })
    print(f"results in {path / RESULTS_FILE}")
