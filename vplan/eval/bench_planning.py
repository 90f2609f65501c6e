"""`vplan bench planning`: the paper's Table 2 in one command — the agent on the same held-out seeds with five
world-model/memory combinations, side by side.

| row | world model | memory |
| --- | --- | --- |
| no memory (AVDC-like) | slow-learned (`worldmodel`) | none |
| anchor frame (StreamingT2V-like) | slow-learned | anchor |
| ours w/o Temp-LoRA | slow-fast finetuned (`finetuned`, from `vplan finetune`) | none |
| ours w/o loop | slow-learned | temp_lora |
| ours | slow-fast finetuned | temp_lora |

Every row runs `vplan run`'s episode loop (same planner, IDM, agent settings and seeds) and reports the env's
Dist (mean over episodes), the success rate, and the generation PSNR: how closely the frames the agent imagined
match the frames it then observed, pooled over an episode's executed steps and averaged over the episodes.
`<out>/results.json` is rewritten after every episode (each with the torch threads it ran with; `parts` holds
each run's machine) and a rerun with the same settings, `threads` aside, continues where an interrupted one
stopped (the rows on the slow-learned model run first, so they can run while `vplan finetune` makes the other);
when all rows are done, `table.md` and `dist.png` (a bar plot of Dist) are written next to it.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vplan.errors import RunError, UsageError, VplanWarning
from vplan.eval.bench_record import machine
from vplan.eval.config import AgentBenchConfig, BenchPlanningConfig
from vplan.eval.consistency_metrics import psnr
from vplan.shipped import PREFIX, pin_checkpoints
from vplan.utils.files import read_json_record, write_json, write_text_atomic
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.plots import bar_plot
from vplan.utils.settings import (
    RESULTS_FILE, changed_settings, changes_said, refuse_other_records, settings_record, thread_counts,
)

TABLE_FILE = "table.md"
PLOT_FILE = "dist.png"


@dataclass(frozen=True)
class Row:
    """One line of the table: which world model (`slow` or `finetuned`) under which memory."""

    name: str
    worldmodel: str
    memory: str


ROWS = (
    Row("no memory (AVDC-like)", "slow", "none"),
    Row("anchor frame (StreamingT2V-like)", "slow", "anchor"),
    Row("ours w/o Temp-LoRA", "finetuned", "none"),
    Row("ours w/o loop", "slow", "temp_lora"),
    Row("ours", "finetuned", "temp_lora"),
)


def load_results(path: Path, cfg: AgentBenchConfig, row_names: list[str], command: str,
                 summaries: tuple[str, ...] = ()) -> dict[str, Any]:
    """The results a bench (`command`) with these settings wrote to `path` so far (to continue it), or empty rows.
    Every setting but `episodes`, `out` and `threads` must match (one added since the bench ran may be at its
    default); a file another command wrote is refused. A continued bench's summary and the files drawn from it
    (`summaries`, beside `path`) go until it ends: stopped part-way, they would describe fewer episodes than its
    rows hold."""
    refuse_other_records(path.parent, RESULTS_FILE)
    settings = settings_record(cfg, leave_out=("episodes", "out", "threads"))
    if not path.is_file():
        return {"command": command, "settings": settings, "rows": {name: [] for name in row_names}}
    advice = "choose another out=DIR, or delete the file to start the bench again"
    results = read_json_record(path, advice)
    written_by, rows = results.get("command"), results.get("rows")  # no command: written before benches recorded it
    other_rows = rows is None or isinstance(rows, dict) and set(rows) != set(row_names)
    if written_by not in (None, command) or (written_by is None and other_rows):
        raise UsageError(f"{path} holds the results of {f'vplan {written_by}' if written_by else 'another bench'}, "
                         f"not of vplan {command}; choose another out=DIR")
    if not isinstance(rows, dict) or not all(isinstance(done, list) for done in rows.values()):
        raise RunError(f"{path} is damaged (its rows are not an object of episode lists); {advice}")
    if not isinstance(results.get("settings", {}), dict):
        raise RunError(f"{path} is damaged (its settings are not an object); {advice}")
    if set(rows) != set(row_names):
        raise RunError(f"{path} holds vplan {command} rows {sorted(rows)}, not its rows {sorted(row_names)} "
                       f"(damaged, or written by another vplan version); {advice}")
    results["command"] = command
    changed = changed_settings(results.get("settings", {}), settings, cfg)
    if changed:
        said = "; ".join(changes_said(changed, results.get("settings", {}), settings, cfg))
        raise UsageError(f"{path} holds a bench with other settings: {said}; pass the same ones, or choose another "
                         "out=DIR to start a new one")
    results["settings"] = settings  # with the settings added since, at their defaults
    results.pop("summary", None)
    for name in summaries:
        (path.parent / name).unlink(missing_ok=True)
    print(f"continuing {path}: " + ", ".join(f"{name} {len(done)}" for name, done in results["rows"].items()))
    return results


def say_interrupted(out: Path) -> None:
    """What an interrupted bench kept (what its results.json holds: an episode counted but not yet written is not
    kept), and that rerunning it continues; or, stopped before its first episode ended (while an agent loaded,
    say), that it wrote no results."""
    try:
        rows = json.loads((out / RESULTS_FILE).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):  # none written yet (written whole or not at all)
        rows = {}
    if not isinstance(rows, dict) or not any(rows.values()):
        print("interrupted before any episode finished: no results were written; the same command starts again",
              file=sys.stderr)
        return
    done = ", ".join(f"{name} {len(episodes)}" for name, episodes in rows.items())
    print(f"interrupted: the finished episodes ({done}) are kept in {out / RESULTS_FILE}; the same command "
          "continues", file=sys.stderr)


def new_part(threads: int) -> dict[str, Any]:
    """This run of a bench (a resumed one has several): when it started, its torch threads and its machine
    (`bench_record.machine`, read after setting the threads and before any episode), so that wall times can be
    tied to what they were measured with."""
    return {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": threads,
            "machine": machine()}


def keep_episode(results: dict[str, Any], done: list[dict[str, Any]], episode: dict[str, Any],
                 part: dict[str, Any]) -> None:
    """Append a finished episode to its row (`done`) with the torch threads it ran with and the index of its
    `part` in `results["parts"]`, which gets the part with its first episode (threads may change on a resume)."""
    parts = results.setdefault("parts", [])
    if not parts or parts[-1] is not part:
        parts.append(part)
    done.append({**episode, "threads": part["threads"], "part": len(parts) - 1})


def threads_note(rows: dict[str, list[dict[str, Any]]]) -> str:
    """A line for under the table where its episodes ran with more than one torch thread count (a resumed
    bench may change threads=), whose wall times do not compare; empty otherwise."""
    counts = thread_counts(episode for episodes in rows.values() for episode in episodes)
    if len(counts) < 2:
        return ""
    said = ", ".join(str(n) for n in counts if n is not None)
    if None in counts:  # episodes of a bench begun before 2026-12-07, which recorded none
        return (f"\nThe episodes run since 2026-12-07 ran with torch threads {said}; the earlier ones recorded none, "
                "so their wall times may not compare.\n")
    return (f"\nThe episodes ran with torch threads {said} (a resumed bench changed threads=), so their wall "
            "times do not compare; results.json records each episode's threads and part.\n")


def generation_psnr(imagined: list[np.ndarray], executed: list[np.ndarray]) -> float:
    """PSNR (dB) of the imagined frames against the executed ones, pooled over the steps after the first (a row
    reports its episodes' mean)."""
    return psnr(np.stack(imagined[1:]), np.stack(executed[1:]))


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's figures over its episodes (task progress over those that recorded it)."""
    dists = [e["dist"] for e in episodes if e["dist"] is not None]
    psnrs = [e["psnr"] for e in episodes if e.get("psnr") is not None]  # none for a row that imagines nothing
    progress = [e["progress"] for e in episodes if "progress" in e]
    return {
        "episodes": len(episodes),
        "dist_mean": float(np.mean(dists)) if dists else None,
        "dist_std": float(np.std(dists)) if dists else None,
        "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else None,
        "psnr": float(np.mean(psnrs)) if psnrs else None,
        "wall_s": float(np.mean([e["wall_s"] for e in episodes])) if episodes else None,
        "steps": float(np.mean([e["steps"] for e in episodes])) if episodes else None,
        "progress": float(np.mean(progress)) if progress else None,
    }


def markdown_table(summaries: dict[str, dict[str, Any]], env: str, seeds: tuple[int, int], dist_unit: str) -> str:
    lines = [
        f"`vplan bench planning` on {env}, seeds {seeds[0]}..{seeds[1]}",
        "",
        f"| method | Dist ({dist_unit}, mean ± std) | success | generation PSNR (dB) | episodes | wall s / episode |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summaries.items():
        dist = "-" if s["dist_mean"] is None else f"{s['dist_mean']:.4f} ± {s['dist_std']:.4f}"
        psnr = "-" if s["psnr"] is None else f"{s['psnr']:.2f}"  # summarize's none: no episode has one
        lines.append(f"| {name} | {dist} | {s['success_rate']:.0%} | {psnr} | {s['episodes']} | "
                     f"{s['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _exists(checkpoint: str) -> bool:
    return checkpoint.startswith(PREFIX) or (Path(checkpoint) / "config.json").is_file()


@restores_torch_threads
def bench_planning(cfg: BenchPlanningConfig) -> dict[str, Any]:
    """Run every row on the same seeds (continuing an interrupted bench); write results, table and plot."""
    import torch
    from tqdm import tqdm

    from vplan.envs import env_name, make_env
    from vplan.memory.temp_lora import check_target_modules
    from vplan.run import figures_so_far, run_episode, show_chunk
    from vplan.shipped import (
        check_checkpoints_exist, checkpoint_fingerprint, resolve_checkpoint, trained_on_env, warn_if_training_seeds,
        with_checkpoint_frames,
    )
    from vplan.worldmodel.config import require_text_conditioned
    from vplan.worldmodel.model import read_config
    from vplan.worldmodel.unet import build_unet

    warn_if_training_seeds(cfg.seed)
    cfg = with_checkpoint_frames(cfg, cfg.worldmodel, "worldmodel")
    # the finetuned model may come later, made by `vplan finetune` at a path that does not exist yet
    later = not cfg.finetuned.startswith(PREFIX) and not Path(cfg.finetuned).exists()
    check_checkpoints_exist({"worldmodel": cfg.worldmodel, "idm": cfg.idm,
                             "finetuned": None if later else cfg.finetuned})
    bench_env, trained = env_name(cfg.env), None if later else trained_on_env(cfg.finetuned)
    if trained is not None and trained != bench_env:  # its default path is the same for every env
        raise UsageError(f"finetuned={cfg.finetuned}: finetuned on {trained} episodes, and this bench runs "
                         f"{bench_env}; pass finetuned= a model `vplan finetune` made from {bench_env} episodes")
    if not later and checkpoint_fingerprint(resolve_checkpoint(cfg.finetuned)) == checkpoint_fingerprint(
            resolve_checkpoint(cfg.worldmodel)):
        warnings.warn(f"finetuned={cfg.finetuned} holds the same weights as worldmodel={cfg.worldmodel}, so ours w/o "
                      "Temp-LoRA repeats no memory and ours repeats ours w/o loop; pass finetuned= the model `vplan "
                      "finetune` made from worldmodel=", VplanWarning, stacklevel=3)  # past the threads decorator
    checkpoints = {"slow": cfg.worldmodel, "finetuned": cfg.finetuned}
    arguments = {"slow": "worldmodel", "finetuned": "finetuned"}  # the settings that name them
    missing = f"finetuned={cfg.finetuned}: no world model there; make one with `vplan finetune data=DIR`"
    # the Temp-LoRA rows come after an hour of others: their setting is checked on the UNet's layout now, and a
    # finetuned model's config.json read and its conditioning checked (found after the slow model's rows, an
    # action model named worldmodel=)
    settings = read_config(resolve_checkpoint(cfg.worldmodel))
    require_text_conditioned(settings.conditioning, f"worldmodel={cfg.worldmodel}", "bench planning")
    if not later:
        require_text_conditioned(read_config(resolve_checkpoint(cfg.finetuned)).conditioning,
                                 f"finetuned={cfg.finetuned}", "bench planning", fix="one `vplan finetune` made")
    check_target_modules(cfg.memory, build_unet(settings.unet, settings.frame_input_size), "memory.target_modules")
    if not _exists(cfg.finetuned):
        warnings.warn(f"{missing}; the slow-learned model's rows run first, then the bench stops for it "
                      "(rerun the same command to continue)", VplanWarning, stacklevel=3)  # past the threads decorator
    out = Path(cfg.out)  # made by the first row's pin_checkpoints, once its agent fits the env
    results = load_results(out / RESULTS_FILE, cfg, [row.name for row in ROWS], "bench planning",
                           summaries=(TABLE_FILE, PLOT_FILE))
    torch.set_num_threads(cfg.threads)
    part = new_part(cfg.threads)
    env = make_env(cfg.env)
    dist_unit = env.metadata.get("dist_unit", "m")  # metres on the tabletop, blocks in the blockworld
    try:
        for row in sorted(ROWS, key=lambda r: r.worldmodel != "slow"):  # the rows that need no finetuning first
            done = results["rows"][row.name]
            if len(done) >= cfg.episodes:
                continue
            if not _exists(checkpoints[row.worldmodel]):  # the rows so far shown, not only kept (~15 min of them)
                finished = {name: summarize(rows[: cfg.episodes]) for name, rows in results["rows"].items()
                            if len(rows) >= cfg.episodes}
                print("\n" + markdown_table(finished, env_name(cfg.env), (cfg.seed, cfg.seed + cfg.episodes - 1),
                                            dist_unit), flush=True)
                raise UsageError(f"{missing}, then rerun this command: the finished rows are kept in {out}")
            agent = cfg.load_agent(checkpoints[row.worldmodel], replace(cfg.memory, kind=row.memory))
            try:
                agent.check_env(env)
                pin_checkpoints(out, {arguments[row.worldmodel]: checkpoints[row.worldmodel], "idm": cfg.idm},
                                resuming=any(results["rows"].values()))
                bar = tqdm(range(len(done), cfg.episodes), desc=row.name, unit="episode", initial=len(done),
                           total=cfg.episodes)
                for i in bar:
                    episode = run_episode(env, agent, cfg.task.instruction, cfg.seed + i, cfg.agent.camera,
                                          on_chunk=show_chunk(bar, cfg.seed + i))
                    result = episode["result"]
                    keep_episode(results, done, {
                        "seed": result["seed"], "dist": result["dist"], "success": result["success"],
                        "psnr": generation_psnr(episode["imagined"], episode["executed"]),
                        "wall_s": result["wall_s"], "steps": result["steps"]}, part)
                    write_json(out / RESULTS_FILE, results)
                    bar.set_postfix_str(figures_so_far(done))
            finally:
                agent.close()
    except KeyboardInterrupt:
        say_interrupted(out)
        raise
    finally:
        env.close()

    summaries = {row.name: summarize(results["rows"][row.name][: cfg.episodes]) for row in ROWS}
    results["summary"] = summaries
    write_json(out / RESULTS_FILE, results)
    seeds = (cfg.seed, cfg.seed + cfg.episodes - 1)
    table = markdown_table(summaries, env_name(cfg.env), seeds, dist_unit)
    table += threads_note({row.name: results["rows"][row.name][: cfg.episodes] for row in ROWS})
    write_text_atomic(out / TABLE_FILE, table)
    bar_plot(out / PLOT_FILE, {name: (s["dist_mean"], s["dist_std"]) for name, s in summaries.items()},
             f"Dist ({dist_unit}), lower is better",
             f"{cfg.task.name} on {env_name(cfg.env)}: mean ± std over {cfg.episodes} held-out "
             f"seed{'s' if cfg.episodes != 1 else ''}")
    print("\n" + table + f"\nresults, table and plot in {out}")
    return results
