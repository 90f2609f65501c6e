"""`vplan bench memory`: what episodic memory costs per episode — wall time and peak RSS of none vs the chosen
memory (temp_lora by default), side by side in one run, with and without overlapping the update.

An episode is `chunks` chunks of the agent's loop without the env: generate the next chunk from the context
(through the memory), decode it to frames (for the inverse-dynamics policy; `decode=false` skips it), execute
it — simulated by sleeping `execution_s`, by default the real time of one 8-step chunk at the tabletop's 10 Hz
control rate (the simulator itself runs those 8 steps in ~12 ms, a real robot does not) — and learn from it:

- `none`: nothing to learn; the baseline.
- `<memory>`: `memory.update(previous chunk, chunk)` after the execution, blocking.
- `<memory> + overlap`: `memory.update_async(...)` before the execution, so the update runs on the worker
  thread while the chunk executes; the next generation waits only for what is unfinished.

Each mode runs `episodes` timed episodes (after one untimed warm-up chunk and update) and reports the mean wall
time per episode, the time the loop was blocked on the memory (synchronous updates, or waiting for an
unfinished one), the update's own compute time per chunk, and the peak RSS during an episode: the kernel's
high-water mark (VmHWM) is reset before each episode (`/proc/self/clear_refs`), and with `isolate=true` (the
default) each mode runs in a fresh process, so no mode inherits another's allocations. Where the high-water
mark cannot be reset, the process's lifetime peak (ru_maxrss) is reported instead, and the table says so.
Timings hardly depend on the weights, so `checkpoint=null` times a freshly initialised model of `model`'s size.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from vplan.errors import UsageError
from vplan.memory.config import MemoryConfig
from vplan.worldmodel.model import WorldModelConfig

TARGET_WALL_RATIO = 1.10  # issue 4: temp_lora with overlap adds at most 10% wall time over none ...
TARGET_RSS_RATIO = 1.05  # ... and at most 5% peak RSS
TEXT = "pick up the red cube"


@dataclass
class BenchMemoryConfig:
    """Settings of `vplan bench memory`."""

    model: WorldModelConfig = field(
        default_factory=WorldModelConfig, metadata={"help": "Size of the model timed when checkpoint is null."}
    )
    checkpoint: str | None = field(
        default="shipped:tabletop/worldmodel",
        metadata={"help": "World-model checkpoint (a directory or shipped:<env>/worldmodel); null: a freshly "
                  "initialised model of `model`'s size."},
    )
    memory: MemoryConfig = field(
        default_factory=lambda: MemoryConfig(kind="temp_lora"),
        metadata={"help": "The memory compared with none (configs/memory/): temp_lora or anchor."},
    )
    episodes: int = field(default=3, metadata={"help": "Timed episodes per mode; the mean is reported."})
    chunks: int = field(default=8, metadata={"help": "Chunks per episode."})
    execution_s: float = field(
        default=0.8, metadata={"help": "Simulated execution time per chunk (8 steps at 10 Hz: 0.8 s)."}
    )
    decode: bool = field(default=True, metadata={"help": "Decode every chunk to frames, as the agent does for IDM."})
    threads: int = field(default=2, metadata={"help": "torch threads (the worker thread shares the setting)."})
    isolate: bool = field(default=True, metadata={"help": "Run each mode in a fresh process (clean peak RSS)."})
    seed: int = field(default=0, metadata={"help": "Seeds the first frame and the sampling noise."})

    def __post_init__(self) -> None:
        if self.memory.kind == "none":
            raise ValueError("memory: expected a memory to compare with none (memory=temp_lora or memory=anchor), "
                             "got memory=none")
        for name in ("episodes", "chunks", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not self.execution_s >= 0:
            raise ValueError(f"execution_s: expected seconds >= 0, got {self.execution_s!r}")


def modes(cfg: BenchMemoryConfig) -> list[tuple[str, bool]]:
    """(memory kind, overlap) of every row, in the order they run."""
    return [("none", False), (cfg.memory.kind, False), (cfg.memory.kind, True)]


def _mode_name(kind: str, overlap: bool) -> str:
    return f"{kind} + overlap" if overlap else kind


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset_worked: bool) -> float:
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(cfg: BenchMemoryConfig, kind: str, overlap: bool) -> dict[str, Any]:
    """Time `cfg.episodes` episodes of one mode in this process; the row of the table."""
    import torch

    from vplan.memory import MemoryConfig, make_memory
    from vplan.worldmodel.model import WorldModel

    torch.set_num_threads(cfg.threads)
    if cfg.checkpoint:
        model = WorldModel.from_pretrained(cfg.checkpoint)
    else:
        torch.manual_seed(cfg.seed)
        model = WorldModel(cfg.model).eval()
    memory = make_memory(cfg.memory if kind == cfg.memory.kind else MemoryConfig(kind=kind), model)
    context_frames = model.config.context_frames
    first = torch.randn(1, 1, *model.latent_shape, generator=torch.Generator().manual_seed(cfg.seed))

    def episode(chunks: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(cfg.seed)
        memory.reset()
        history, previous = first, first
        blocked = update_s = 0.0
        start = time.perf_counter()
        for _ in range(chunks):
            waited = time.perf_counter()
            logs = memory.wait()  # an overlapped update still running: the next chunk needs its weights
            blocked += time.perf_counter() - waited
            update_s += (logs or {}).get("seconds", 0.0)
            chunk = memory.generate(history, [TEXT], generator=generator)
            if cfg.decode:
                model.decode(chunk)
            if overlap:
                memory.update_async(previous, chunk)
            time.sleep(cfg.execution_s)  # the chunk is executed
            if not overlap:
                updating = time.perf_counter()
                logs = memory.update(previous, chunk)
                blocked += time.perf_counter() - updating
                update_s += logs.get("seconds", 0.0)
            previous, history = chunk, torch.cat([history, chunk], dim=1)[:, -context_frames:]
        waited = time.perf_counter()
        logs = memory.wait()  # the last chunk is learned from too
        blocked += time.perf_counter() - waited
        update_s += (logs or {}).get("seconds", 0.0)
        return {"wall_s": time.perf_counter() - start, "blocked_s": blocked, "update_s": update_s}

    try:
        episode(1)  # warm-up: first-call allocations, the optimizer's state, the text encoder's cache
        results, peaks, reset_worked = [], [], True
        for _ in range(cfg.episodes):
            reset_worked = _reset_peak_rss() and reset_worked
            results.append(episode(cfg.chunks))
            peaks.append(_peak_rss_mb(reset_worked))
    finally:
        memory.close()
    mean = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    return {
        "mode": _mode_name(kind, overlap),
        "kind": kind,
        "overlap": overlap,
        "wall_s": mean["wall_s"],
        "blocked_s": mean["blocked_s"],
        "update_s_per_chunk": mean["update_s"] / cfg.chunks,
        "peak_rss_mb": max(peaks),
        "peak_rss_source": "VmHWM per episode" if reset_worked else "ru_maxrss (process lifetime)",
    }


def bench_memory(cfg: BenchMemoryConfig) -> list[dict[str, Any]]:
    """Run every mode (each in a fresh process when `cfg.isolate`), print the table with ratios to none."""
    if cfg.checkpoint:
        from vplan.shipped import resolve_checkpoint

        try:
            path = resolve_checkpoint(cfg.checkpoint)
        except UsageError as err:
            raise UsageError(f"{err}; checkpoint=null times a freshly initialised model of `model`'s size") from None
        if not (path / "config.json").is_file():
            raise UsageError(f"no world-model checkpoint at {path}; checkpoint=null times a freshly initialised model")
    rows = []
    for kind, overlap in modes(cfg):
        if cfg.isolate:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                rows.append(pool.submit(run_mode, cfg, kind, overlap).result())
        else:
            rows.append(run_mode(cfg, kind, overlap))
    base = rows[0]
    for row in rows:
        row["wall_ratio"] = row["wall_s"] / base["wall_s"]
        row["rss_ratio"] = row["peak_rss_mb"] / base["peak_rss_mb"]
    _print_table(cfg, rows)
    return rows


def _print_table(cfg: BenchMemoryConfig, rows: list[dict[str, Any]]) -> None:
    memory = cfg.memory
    where = "each mode in its own process" if cfg.isolate else "all modes in this process"
    print(f"\nper episode: {cfg.chunks} chunks, {cfg.execution_s:.2f} s simulated execution per chunk, "
          f"decode {'on' if cfg.decode else 'off'}, {cfg.threads} threads, mean of {cfg.episodes} episodes, {where}")
    if memory.kind == "temp_lora":
        print(f"temp_lora: rank {memory.rank}, {memory.steps_per_chunk} Adam step(s) per chunk at lr {memory.lr:g}, "
              f"merge_for_generation={memory.merge_for_generation}")
    header = (f"  {'mode':22} {'wall (s)':>9} {'vs none':>8} {'blocked (s)':>12} {'update/chunk (s)':>17} "
              f"{'peak RSS (MB)':>14} {'vs none':>8}")
    print(header)
    for row in rows:
        update = f"{row['update_s_per_chunk']:.3f}" if row["kind"] == "temp_lora" else "-"
        print(f"  {row['mode']:22} {row['wall_s']:9.2f} {row['wall_ratio']:7.3f}x {row['blocked_s']:12.2f} "
              f"{update:>17} {row['peak_rss_mb']:14.0f} {row['rss_ratio']:7.3f}x")
    print(f"peak RSS: {rows[-1]['peak_rss_source']}; targets for {memory.kind} + overlap (issue 4): "
          f"<= {TARGET_WALL_RATIO:.2f}x wall and <= {TARGET_RSS_RATIO:.2f}x peak RSS of none")
