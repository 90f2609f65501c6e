"""`vplan run env=tabletop task=return_cubes`: the main job — the agent plans, imagines and acts, episode after
episode on held-out seeds, and a run directory records how it went.

The run directory (`out`, by default `runs/<task>-<memory>-<time>`) holds `config.yaml` (the resolved config,
secrets redacted), `metrics.json` (success rate, mean Dist, per-episode results, wall time per stage, peak
RSS; rewritten after every episode, so an interrupted run keeps the episodes it finished) and one MP4 per
episode with the executed frame (left) next to the imagined one (right) at every step. With `record=true`
it also holds `episodes/`: the executed episodes as a dataset in `vplan collect`'s format (each step labelled
with the subgoal the agent was imagining), ready for `vplan train` or `vplan finetune data=<out>/episodes`.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vplan.config import STAGES, RunConfig
from vplan.constants import ROBOT_TYPE_PREFIX
from vplan.data.collect import EpisodeRecorder
from vplan.errors import DamagedDatasetError, RunError, UsageError
from vplan.planner import Plan
from vplan.shipped import PINNED_FILE, check_checkpoints_exist, pin_checkpoints
from vplan.tasks import task_progress
from vplan.utils.files import read_json_record, write_json, write_mp4
from vplan.utils.interrupts import interrupts_ignored
from vplan.utils.locks import holding_folder
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.panels import labelled_panels
from vplan.utils.resources import cpu_seconds, peak_rss_mb
from vplan.utils.settings import (
    CONFIG_FILE, check_config_is_ours, check_same_config, read_config_record, refuse_other_records, write_config,
)

METRICS_FILE = "metrics.json"
EPISODES_DIR = "episodes"


def _run_dir(cfg: RunConfig) -> Path:
    if cfg.out is None:  # a dated folder of its own, even beside a run started in the same second
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for attempt in itertools.count(1):
            suffix = "" if attempt == 1 else f"-{attempt}"
            out = Path("runs") / f"{cfg.task.name}-{cfg.memory.kind}-{stamp}{suffix}"
            try:
                out.mkdir(parents=True)
                return out
            except FileExistsError:
                continue
    out = Path(cfg.out)
    if (out / METRICS_FILE).exists() and not (cfg.overwrite or cfg.resume):
        raise UsageError(f"{out} already holds a run ({METRICS_FILE}); choose another out=DIR, overwrite=true, or "
                         "resume=true to continue it")
    records = [name for name in (CONFIG_FILE, PINNED_FILE) if (out / name).exists()]
    if records and not (out / METRICS_FILE).exists() and not (cfg.overwrite or cfg.resume):
        # a run stopped in its first episode, or another command's directory (vplan train, collect)
        raise UsageError(f"{out} holds the records of an unfinished run or another command ({', '.join(records)}); "
                         "choose another out=DIR (or, for a run of vplan run, resume=true or overwrite=true)")
    return out


def recorded_its_episodes(run_dir: Path) -> bool:
    """Whether the run in `run_dir` recorded its episodes (`record=true`: its config.yaml says so) into
    `<run_dir>/episodes`."""
    config = run_dir / CONFIG_FILE
    return config.is_file() and bool(read_config_record(config).get("record", False))


def _check_holds_a_run(cfg: RunConfig, out: Path) -> None:
    """With `resume=true` or `overwrite=true`: a UsageError where `out`'s config.yaml is another command's (vplan
    collect, train, eval), whose records a run would replace; and, before `overwrite=true` removes anything,
    where `record=true` would meet episodes the old run did not record."""
    if not (out / CONFIG_FILE).is_file():
        return
    check_config_is_ours(out, cfg)
    if cfg.overwrite and cfg.record and (out / EPISODES_DIR).exists() and not recorded_its_episodes(out):
        raise UsageError(f"record=true: {out / EPISODES_DIR} holds episodes the run in {out} did not record; "
                         "choose another out=DIR")


def _clear_run(out: Path) -> None:
    """`overwrite=true`: remove what an earlier run wrote in `out` (its records, videos and the episodes it
    recorded, if its config.yaml says it did), so nothing of it is mixed into the new one."""
    if recorded_its_episodes(out) and (out / EPISODES_DIR).is_dir():
        shutil.rmtree(out / EPISODES_DIR)
    for video in out.glob("episode_*_seed*.mp4"):
        video.unlink()
    # config.yaml last: it is what says the episodes are the run's, should Ctrl-C stop this halfway
    for name in (METRICS_FILE, PINNED_FILE, CONFIG_FILE):
        (out / name).unlink(missing_ok=True)


# Settings that may differ between a run and its resumption: they change neither which episodes run nor how (`out`:
# a run begun without it, in its dated folder, continues with out= naming that folder).
RESUMABLE_CHANGES = ("episodes", "resume", "overwrite", "threads", "out")


def _finished_episodes(cfg: RunConfig, out: Path) -> tuple[list[dict[str, Any]], float]:
    """With `resume=true`: the results and wall time of the run in `out` so far, after checking that it ran with
    this config; nothing for a fresh run (or an `out` with no run yet)."""
    if not cfg.resume:
        return [], 0.0
    if not (out / METRICS_FILE).exists():
        print(f"resume=true: {out} holds no run yet; starting one")
        return [], 0.0
    check_same_config(cfg, out / CONFIG_FILE, RESUMABLE_CHANGES, "resume=true")
    advice = "rerun without resume=true (with overwrite=true), or choose another out=DIR"
    metrics = read_json_record(out / METRICS_FILE, advice, keys=("episodes", "wall_s_total"))
    episodes, wall_s = metrics["episodes"], metrics["wall_s_total"]
    if not isinstance(episodes, list) or not all(isinstance(episode, dict) for episode in episodes):
        raise RunError(f"{out / METRICS_FILE} is damaged (its episodes are not a list of objects); {advice}")
    if isinstance(wall_s, bool) or not isinstance(wall_s, (int, float)):
        raise RunError(f"{out / METRICS_FILE} is damaged (its wall_s_total {wall_s!r} is not a number); {advice}")
    if len(episodes) > cfg.episodes:
        raise UsageError(f"resume=true: {out} has {len(episodes)} episodes already; pass episodes>={len(episodes)}")
    for episode in episodes:  # a run from before episodes recorded it: its last part's threads=
        if "threads" not in episode and "threads" in metrics:
            episode["threads"] = metrics["threads"]
    return episodes, float(wall_s)


def write_video(path: Path, episode: dict[str, Any], fps: int) -> None:
    """An MP4 of a `run_episode`: the executed frame (left) next to the imagined one (right) at every step, with
    the step, the chunk and its subgoal under them."""
    panels = [("executed", episode["executed"]), ("imagined", episode["imagined"])]
    write_mp4(path, labelled_panels(panels, episode["captions"]), fps)


def load_agent(cfg: RunConfig) -> Any:
    """The agent from the configured checkpoints; a UsageError naming what to pass for a missing one."""
    from vplan.agent import VideoPlanningAgent
    from vplan.envs import env_name

    check_checkpoints_exist({"worldmodel": cfg.worldmodel_checkpoint, "idm": cfg.idm_checkpoint})
    try:
        agent = VideoPlanningAgent.from_pretrained(cfg.worldmodel_checkpoint, cfg.idm_checkpoint, cfg.task,
                                                   cfg.planner, cfg.memory, cfg.agent, env=env_name(cfg.env))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if getattr(cfg.env, "image_size", agent.image_size) != agent.image_size:
        raise UsageError(f"the world model draws {agent.image_size}x{agent.image_size} frames; "
                         f"set env.image_size={agent.image_size}")
    return agent


def show_chunk(bar: Any, seed: int, after: str = "") -> Callable[[int, str], None]:
    """A `run_episode` `on_chunk` that names the chunk being imagined on a tqdm bar, then `after` (the figures so
    far: a narrow terminal cuts the end of the line, which cut the live part and left a figure half-printed); chunk 0
    is the planning (an LLM planner's request may take a timeout or three)."""
    return lambda n, text: bar.set_postfix_str(f"seed {seed}, " + (f"chunk {n}: {_shortened(text)}" if n else
                                                                   "planning") + (f" | {after}" if after else ""))


def _shortened(text: str, width: int = 40) -> str:
    """`text` cut to `width` characters at a word, marked: the tabletop's subgoals (up to 40) whole, which a cut at
    24 left without the spot or the "back" that tells them apart, and a long one of a user's task short."""
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + "…"


def figures_so_far(results: list[dict[str, Any]]) -> str:
    """The finished episodes' successes and mean Dist, and the last one's wall time: a bar's postfix between
    episodes, in place of the chunk the last episode was imagining."""
    dists = [r["dist"] for r in results if r["dist"] is not None]
    dist = f"{np.mean(dists):.3f}" if dists else "–"  # an env that reports no Dist
    return (f"success {sum(r['success'] for r in results)}/{len(results)}, Dist {dist}, "
            f"last episode {results[-1]['wall_s']:.1f} s")


def run_episode(
    env: Any, agent: Any, instruction: str, seed: int, camera: str, recorder: EpisodeRecorder | None = None,
    agent_seed: int | None = None, on_chunk: Callable[[int, str], None] | None = None, plan: Plan | None = None,
) -> dict[str, Any]:
    """One episode of `agent` in `env` from the env state of `seed` (the agent's sampling seeded with its
    `config.seed` plus `agent_seed`, by default plus `seed`; following `plan` where one is given, see
    `VideoPlanningAgent.reset`): its result, timings, the imagined and executed frames, the agent's chunks (each
    with what was executed while following it) and the final info (and, given a recorder, every step in the dataset
    format). `on_chunk(n, text)` is told when the agent starts following its n-th chunk, for progress display, and
    `on_chunk(0, "")` when it begins planning."""
    agent.check_env(env)
    start, cpu = time.perf_counter(), cpu_seconds()
    obs, info = env.reset(seed=seed)
    obs = {key: np.array(value) for key, value in obs.items()}  # copies: an env may draw every frame into one buffer
    sampling_seed = agent.config.seed + (seed if agent_seed is None else agent_seed)  # agent.seed=0: the env's
    if on_chunk is not None:
        on_chunk(0, "")
    agent.reset(instruction, obs, info, seed=sampling_seed, plan=plan)
    imagined, executed = [obs[camera]], [obs[camera]]  # step 0: the real first frame on both sides
    captions = ["step 0: the first frame"]
    chunks: list[Any] = []
    terminated = truncated = False
    while True:
        action = agent.act(obs, info)
        if agent.done:
            break
        if not chunks or agent.chunk is not chunks[-1]:
            chunks.append(agent.chunk)
            if on_chunk is not None:
                on_chunk(len(chunks), agent.chunk.text)
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        if recorder is not None:
            recorder.add(obs, info, action, agent.chunk.text, reward, next_info, terminated or truncated)
        obs, info = {key: np.array(value) for key, value in next_obs.items()}, next_info
        imagined.append(agent.expected_frame)
        executed.append(obs[camera])
        captions.append(f"step {len(executed) - 1} · chunk {len(chunks)}: {agent.chunk.text}")
        if terminated or truncated:
            break
    agent.wait(obs, info)  # the env's last frame (when the env ended the episode) and the memory's last update
    if recorder is not None:
        recorder.end()  # the agent's plan done: the env said neither terminated nor truncated
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stats = agent.stats()
    result = {
        "seed": seed,
        "success": bool(info["success"]),
        # None where the env has none, or none yet (the blockworld's is inf before its return phase: JSON lacks it)
        "dist": float(info["dist"]) if "dist" in info and np.isfinite(info["dist"]) else None,
        "progress": task_progress(info),
        "phase": info.get("phase"),
        "steps": stats["steps"],
        # an env may end an episode without success (RLBench's `terminate`): "terminated", not "success"
        "ended_by": "plan done" if agent.done else "time limit" if not terminated else (
            "success" if info["success"] else "terminated"),
        "chunks": stats["chunks"],
        "replans": stats["replans"],
        "extra_chunks": stats["extra_chunks"],
        "subgoals_done": stats["subgoals_done"],
        "drift_mean": stats["drift_mean"],
        "drift_max": stats["drift_max"],
        "plan": agent.plan.to_dict(),
        "wall_s": wall,
        "cpu_s": cpu,
        "stages_s": {stage: float(agent.timings[stage]) for stage in STAGES},
        "peak_rss_mb": peak_rss_mb(),  # the process's peak so far
    }
    return {"result": result, "imagined": imagined, "executed": executed, "captions": captions, "chunks": chunks,
            "info": dict(info)}


def summarize(
    cfg: RunConfig, results: list[dict[str, Any]], env_id: str, started: float, dist_unit: str = "m"
) -> dict[str, Any]:
    """metrics.json: the run's figures over the finished episodes; `dist_unit` is the env's unit of Dist
    (its `metadata["dist_unit"]`: metres on the tabletop, blocks in the blockworld)."""
    done = len(results)
    dists = [r["dist"] for r in results if r["dist"] is not None]  # the env's info["dist"], where it has one
    phased = [r for r in results if r["phase"] is not None]
    progress = [r["progress"] for r in results if "progress" in r]  # (runs resumed from before it was recorded)
    stage_means = {s: float(np.mean([r["stages_s"][s] for r in results])) if done else 0.0 for s in STAGES}
    return {
        "env": env_id,
        "task": cfg.task.name,
        "memory": cfg.memory.kind,
        "planner": cfg.planner.kind,
        # how many episodes' plans came from where: an LLM planner falls back to the offline plan on a failure
        "plan_sources": dict(Counter(r["plan"]["source"] for r in results)),
        "worldmodel": cfg.worldmodel_checkpoint,
        "idm": cfg.idm_checkpoint,
        "episodes_requested": cfg.episodes,
        "episodes_done": done,
        "complete": done == cfg.episodes,
        "seeds": [r["seed"] for r in results],
        "success_rate": float(np.mean([r["success"] for r in results])) if done else None,
        "dist_mean": float(np.mean(dists)) if dists else None,
        "dist_std": float(np.std(dists)) if dists else None,
        "dist_unit": dist_unit,
        # Dist alone flatters an agent that never moves the cubes: how far the task got (0 for doing nothing),
        # and how many episodes got to the return phase
        "progress_mean": float(np.mean(progress)) if progress else None,
        "return_phase_rate": float(np.mean([r["phase"] == "return" for r in phased])) if phased else None,
        "wall_s_per_episode": float(np.mean([r["wall_s"] for r in results])) if done else None,
        "wall_s_per_episode_max": float(max(r["wall_s"] for r in results)) if done else None,
        "cpu_s_per_episode": float(np.mean([r["cpu_s"] for r in results])) if done else None,
        "stages_s_per_episode": stage_means,
        # this process's peak, or a resumed run's earlier one (each episode records the peak so far)
        "peak_rss_mb": max([peak_rss_mb(), *(r["peak_rss_mb"] for r in results if "peak_rss_mb" in r)]),
        "threads": cfg.threads,  # this part's; each episode records its own
        "wall_s_total": time.perf_counter() - started,
        "episodes": results,
    }


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    done = metrics["episodes_done"]
    if not done:  # a rerun without resume=true is refused: the folder holds this run's settings
        print(f"no episode finished; run directory: {out}")
        print(f"to run its {metrics['episodes_requested']} episode(s): the same command with resume=true out={out} "
              "(and without overwrite=true)")
        return
    seeds = metrics["seeds"]
    successes = sum(r["success"] for r in metrics["episodes"])
    print(f"\nvplan run: {metrics['task']} on {metrics['env']}, memory={metrics['memory']}, "
          f"planner={metrics['planner']}, {done} episode(s) (seeds {seeds[0]}..{seeds[-1]})"
          + ("" if metrics["complete"] else f" of {metrics['episodes_requested']} (interrupted)"))
    rows = [
        ("success rate", f"{metrics['success_rate']:.0%} ({successes}/{done})"),
        (f"Dist ({metrics['dist_unit']}, mean ± std)", "-" if metrics["dist_mean"] is None
         else f"{metrics['dist_mean']:.4f} ± {metrics['dist_std']:.4f}" + (
             " (lower is better; 0 too for an agent that moved no cube: see task progress)"
             if metrics["task"] == "return_cubes" else "")),
        ("wall time per episode",
         f"{metrics['wall_s_per_episode']:.1f} s (max {metrics['wall_s_per_episode_max']:.1f} s; the agent and the "
         "env, not the video and recording written after each)"),
        ("wall time of the run", f"{metrics['wall_s_total']:.0f} s (loading, videos and recording included)"),
    ]
    threads = Counter(r["threads"] for r in metrics["episodes"] if "threads" in r)
    if len(threads) > 1:  # a resume changed threads=: the times above mix them
        rows.append(("threads", ", ".join(f"{count} episode(s) at {n}" for n, count in sorted(threads.items()))))
    for stage, seconds in metrics["stages_s_per_episode"].items():
        if stage.startswith("memory") and metrics["memory"] != "temp_lora":  # nothing learns: rows of zeros
            continue
        note = " (on the worker; what execution did not hide is in memory wait)" if stage == "memory_update" else ""
        rows.append((f"  {stage.replace('_', ' ')}", f"{seconds:.2f} s{note}"))
    if metrics["planner"] != "offline":
        sources = metrics.get("plan_sources", {})
        rows.insert(2, ("plans", ", ".join(f"{count} from {'the offline fallback' if source == 'fallback' else source}"
                                        for source, count in sources.items())))
    if metrics["return_phase_rate"] is not None:
        returned = sum(r["phase"] == "return" for r in metrics["episodes"])
        rows.insert(2, ("reached the return phase", f"{metrics['return_phase_rate']:.0%} ({returned}/{done})"))
    if metrics["progress_mean"] is not None:
        rows.insert(2, ("task progress (mean, 0..1)", f"{metrics['progress_mean']:.3f}"))
    ended = Counter(r["ended_by"] for r in metrics["episodes"] if "ended_by" in r)  # (runs from before it)
    if ended:
        rows.insert(2, ("episodes ended by", ", ".join(f"{cause} {count}" for cause, count in ended.most_common())))
    rows.append(("CPU time per episode", f"{metrics['cpu_s_per_episode']:.1f} s (all threads; the wall time "
                 "above includes waiting for the CPU on a busy machine)"))
    rows.append(("peak RSS", f"{metrics['peak_rss_mb']:.0f} MB"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print(f"run directory: {out}")
    if (out / EPISODES_DIR).is_dir():  # record=true
        print(f"recorded episodes (a dataset to train or finetune on): {out / EPISODES_DIR}")
    if not metrics["complete"]:
        print(f"to run the other {metrics['episodes_requested'] - done}: the same command with resume=true out={out} "
              "(and without overwrite=true)")


def _episode_writer(cfg: RunConfig, env: Any, out: Path) -> Any:
    """The dataset the executed episodes go to (`record=true`), with the features of `env`; with `resume=true`, the
    run's dataset so far."""
    from vplan.data.collect import dataset_features
    from vplan.data.lerobot_format import DatasetError, EpisodeWriter
    from vplan.envs import action_units, env_name

    _, info = env.reset(seed=cfg.seed)
    try:
        return EpisodeWriter.create_or_resume(out / EPISODES_DIR, fps=int(env.metadata.get("render_fps", 10)),
                                              features=dataset_features(env, info),
                                              robot_type=ROBOT_TYPE_PREFIX + env_name(cfg.env), resume=cfg.resume,
                                              action_units=action_units(cfg.env))
    except DamagedDatasetError:  # says what to do itself
        raise
    except DatasetError as error:
        raise UsageError(f"record=true: {error}; choose another out=DIR") from None


@restores_torch_threads
def run(cfg: RunConfig) -> dict[str, Any]:
    """Run `cfg.episodes` episodes of the agent; write the run directory; print a summary table."""
    from vplan.shipped import warn_if_training_seeds, with_checkpoint_frames

    warn_if_training_seeds(cfg.seed, recording=cfg.record)
    check_checkpoints_exist({"worldmodel": cfg.worldmodel_checkpoint, "idm": cfg.idm_checkpoint})  # before torch
    cfg = with_checkpoint_frames(cfg, cfg.worldmodel_checkpoint, "worldmodel")
    out = _run_dir(cfg)
    with holding_folder(out if cfg.out is None else None):  # the CLI holds a given out=; the dated one is made here
        return _run_in(cfg, out)


def _run_in(cfg: RunConfig, out: Path) -> dict[str, Any]:
    refuse_other_records(out, CONFIG_FILE)  # a model's, an evaluation's, a bench's: before anything is written there
    if cfg.resume or cfg.overwrite:
        _check_holds_a_run(cfg, out)
    results, wall_before = _finished_episodes(cfg, out)
    # said before the libraries and the models load (~5 s on 2 cores without a word)
    print(f"loading worldmodel={cfg.worldmodel_checkpoint} and idm={cfg.idm_checkpoint} ...", flush=True)
    import torch
    from tqdm import tqdm

    from vplan.envs import make_env

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter() - wall_before  # a resumed run's total wall time includes its earlier part
    agent = env = writer = None
    metrics: dict[str, Any] = {}
    try:
        agent = load_agent(cfg)
        env = make_env(cfg.env)
        agent.check_env(env)
        if cfg.overwrite:
            _clear_run(out)  # only now that the new run can start: a refused one leaves the old run as it was
        # a resumed run is held to the checkpoints it began with, even one stopped in its first episode (which
        # record=true may have recorded already)
        resuming = bool(results) or (cfg.resume and (out / PINNED_FILE).is_file())
        pin_checkpoints(out, {"worldmodel": cfg.worldmodel_checkpoint, "idm": cfg.idm_checkpoint}, resuming)
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        fps = int(env.metadata.get("render_fps", 10))
        dist_unit = env.metadata.get("dist_unit", "m")
        out.mkdir(parents=True, exist_ok=True)
        writer = _episode_writer(cfg, env, out) if cfg.record else None  # refused before anything is rewritten
        write_config(out, cfg)
        metrics = summarize(cfg, results, env_id, started, dist_unit)
        write_json(out / METRICS_FILE, metrics)
        # a run killed between recording an episode and writing metrics.json recorded that episode already
        recorded_ahead = writer.num_episodes - sum(r.get("recorded", False) for r in results) if writer else 0
        if recorded_ahead not in (0, 1):
            raise UsageError(f"resume=true: {out / EPISODES_DIR} holds {writer.num_episodes} episodes, {METRICS_FILE} "
                             "does not account for them; choose another out=DIR")
        bar = tqdm(range(len(results), cfg.episodes), desc=f"run ({cfg.memory.kind})", unit="episode",
                   initial=len(results), total=cfg.episodes)
        so_far = ""  # the finished episodes' figures, after what the agent imagines now
        for i in bar:
            recorder = EpisodeRecorder() if writer is not None else None
            episode = run_episode(env, agent, cfg.task.instruction, cfg.seed + i, cfg.agent.camera, recorder,
                                  on_chunk=show_chunk(bar, cfg.seed + i, so_far))
            result = episode["result"]
            result["threads"] = cfg.threads  # a resume may change it: its wall times would mix unsaid
            # an episode the agent ended before any step has no rows
            result["recorded"] = writer is not None and bool(recorder.subgoals)
            if result["recorded"] and recorded_ahead:
                recorded_ahead = 0
            elif result["recorded"]:
                writer.add_episode(recorder.frames(), recorder.subgoals, extra={
                    "instruction": cfg.task.instruction, "seed": result["seed"], "success": result["success"],
                    "dist": float("nan") if result["dist"] is None else result["dist"], "steps": result["steps"]})
            if cfg.video:
                name = f"episode_{i:03d}_seed{result['seed']}.mp4"
                write_video(out / name, episode, fps)
                result["video"] = name
            results.append(result)
            metrics = summarize(cfg, results, env_id, started, dist_unit)
            write_json(out / METRICS_FILE, metrics)
            so_far = figures_so_far(results)
            bar.set_postfix_str(so_far)
        bar.close()
    finally:
        with interrupts_ignored():  # what is done is closed whole, whatever ended the loop
            if writer is not None:
                writer.close()
            if metrics:
                _print_summary(metrics, out)
            if env is not None:
                env.close()
            if agent is not None:
                agent.close()
            if cfg.out is None and not any(out.iterdir()):  # the dated folder it took, refused before any record
                out.rmdir()
                with contextlib.suppress(OSError):  # and runs/, where it is empty (another run may fill it now)
                    out.parent.rmdir()
    return metrics
