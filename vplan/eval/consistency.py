"""`vplan eval consistency`: long open-loop rollouts of a revisit scenario with each episodic memory, scored for
long-horizon consistency (SCuts, SRC, PSNR drift) against the real take.

For each episode (seed `seed + i`) the env's scripted revisit scenario (`vplan.eval.revisit`; on the tabletop
the cubes go onto their spots and come back, round after round) is played for `context_frames + chunks ×
chunk_frames` frames. Every memory mode then imagines the same take from the same start: the first
`context_frames` real frames, encoded, are the context of chunk 0, chunk k is generated from the subgoal the
scenario pursues as it starts (that of the action leading into its first frame, `chunk_subgoal`), and the model
continues from its own chunks (open loop: nothing observed after the start, which is where episodic memory
matters). The sampling noise is seeded per episode, so the
modes differ only by their memory. Temp-LoRA learns from every chunk before the next one (`update(previous,
chunk)`, synchronously): from the chunk it imagined (`temp_lora.update_on=imagined`, the default and the paper's
setting), or from the real frames of the same steps, encoded (`temp_lora.update_on=observed`: what an agent
would see after executing the chunk), while the video itself stays open loop either way.

Scores per mode and episode, averaged over episodes:

- **SCuts**: scene cuts PySceneDetect finds in the decoded video (the pinned `SCENE_CUT_DETECTOR`, measured on
  tabletop frames: fewer is better there, the real take has none; blockworld's turns swing the whole view, so
  its real take has cuts of its own, and a video with fewer is not the more consistent one).
- **SRC**: mean cosine similarity (percent) of features of the frame where a scene state was first shown and
  of the frames where the scenario shows that state again (the scenario's revisit pairs inside the rollout).
  Features: the world model's own VAE encoder (`features=vae`, the default; ranks the modes, but its absolute
  values are **not comparable** to the paper's ResNet-18 SRC) or ResNet-18 from a local safetensors file
  (`features=resnet18 resnet18_weights=PATH`). Also apart: over the pairs whose first visit is a real context
  frame (a return to what the model was shown, which the anchor memory keeps in view) and over those whose first
  visit the model imagined (what only a memory of the episode keeps).
- **PSNR drift**: the least-squares slope of each chunk's PSNR against the real frames over the chunk index
  (dB per chunk; negative: the video drifts away from the truth), next to the mean PSNR of the chunks.

The real take is scored as a reference row (SCuts and SRC of the ground truth), and copy-last-frame (the last real
context frame held for the whole rollout) as a PSNR baseline. Writes `metrics.json`, one MP4 per mode and shown
episode (`real_vs_<mode>_seed<seed>.mp4`: the real take on the left, the generated video on the right) and
`psnr_per_chunk.png`, each mode's PSNR against the real take chunk by chunk, beside copy-last-frame's. Every
finished rollout is kept in `progress.json` as it ends, so an interrupted evaluation continues with `resume=true`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vplan.data.dataset import chunk_subgoal
from vplan.errors import RunError, VplanWarning
from vplan.eval.config import EvalConsistencyConfig
from vplan.eval.progress import (
    METRICS_FILE, PROGRESS_FILE, say_interrupted, start_or_continue,
)
from vplan.eval.stats import paired_summary, signed
from vplan.shipped import pin_checkpoints
from vplan.utils.files import write_json, write_mp4
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.panels import labelled_panels
from vplan.utils.plots import line_plot
from vplan.utils.settings import thread_counts

PSNR_PLOT = "psnr_per_chunk.png"
# settings a resumption may change (`task` changes nothing: the scenario's own subgoals are the chunks' texts)
RESUMABLE_CHANGES = ("episodes", "threads", "video_episodes", "out", "resume", "overwrite", "task")


def imagine(model: Any, memory: Any, start: Any, texts: list[str], generator: Any, observed: Any = None,
            on_chunk: Any = None) -> Any:
    """Generate one chunk per text from the start latents through `memory`, open loop; the latents of the start ⊕
    every chunk (1, T, C, h, w). After each chunk the memory learns (`update(previous, chunk)`) from the chunk it
    imagined, or, when `observed` (the real take's latents, aligned with the output) is given, from the real
    latents of the same steps; not after the last chunk, which nothing follows."""
    import torch

    memory.reset()
    history = previous = start
    for index, text in enumerate(texts):
        try:
            chunk = memory.generate(history, [text], generator=generator)
        except RunError as error:  # a chunk of NaN or infinite latents: which one
            raise RunError(f"chunk {index + 1} of {len(texts)}: {error}") from None
        last = index == len(texts) - 1  # nothing follows it: learning from it would only cost time
        if observed is None and not last:
            memory.update(previous, chunk)
        elif not last:
            begin, end = history.shape[1], history.shape[1] + chunk.shape[1]
            memory.update(observed[:, max(begin - previous.shape[1], 0):begin], observed[:, begin:end])
        previous, history = chunk, torch.cat([history, chunk], dim=1)
        if on_chunk is not None:
            on_chunk()
    return history


def src_scores(video: np.ndarray, pairs: list[tuple[int, int]], features: Any, context_frames: int) -> dict[str, Any]:
    """SRC over all the revisit pairs, and apart over those whose first visit is one of the real context frames
    (a return to what the model was shown, which the anchor memory keeps in view) and those whose first visit
    the model imagined itself (what only a memory of the episode can keep); None where there is no such pair."""
    from vplan.eval.consistency_metrics import revisit_similarities

    similarities = 100.0 * revisit_similarities(video, pairs, features)
    given = np.array([first < context_frames for first, _ in pairs])
    return {"src": float(similarities.mean()),
            "src_from_context": float(similarities[given].mean()) if given.any() else None,
            "src_from_generated": float(similarities[~given].mean()) if (~given).any() else None,
            "pairs": len(pairs), "pairs_from_context": int(given.sum())}


def score_video(video: np.ndarray, real: np.ndarray, pairs: list[tuple[int, int]], features: Any, fps: float,
                context_frames: int, chunk_frames: int) -> dict[str, Any]:
    """SCuts, SRC and PSNR drift of a generated video (T, H, W, 3) against the real frames of the same steps."""
    from vplan.eval.consistency_metrics import psnr_drift, scene_cut_frames

    cuts = scene_cut_frames(video, fps=fps)
    drift = psnr_drift(video, real, chunk_frames=chunk_frames, start=context_frames)
    return {
        "scuts": len(cuts),
        "cut_frames": cuts,
        **src_scores(video, pairs, features, context_frames),
        "psnr_drift_db_per_chunk": drift.slope,
        "psnr_db": float(drift.per_chunk.mean()),
        "psnr_per_chunk": [float(v) for v in drift.per_chunk],
    }


@restores_torch_threads
def evaluate_consistency(cfg: EvalConsistencyConfig) -> dict[str, Any]:
    """Roll out every mode on every episode, score, print the table; write metrics.json and the MP4s."""
    import torch
    from tqdm import tqdm

    from vplan.env_contract import check_chunk_steps
    from vplan.envs import env_name
    from vplan.errors import UsageError
    from vplan.eval.consistency_metrics import make_feature_extractor, psnr_per_chunk, scene_cut_frames
    from vplan.eval.revisit import revisit_scenario_for
    from vplan.memory import make_memory
    from vplan.memory.temp_lora import check_target_modules
    from vplan.shipped import (
        check_checkpoints_exist, resolve_checkpoint, warn_if_trained_elsewhere, warn_if_training_seeds,
        with_checkpoint_frames,
    )
    from vplan.worldmodel.config import require_text_conditioned
    from vplan.worldmodel.model import WorldModel

    cfg = with_checkpoint_frames(cfg, cfg.checkpoint, "checkpoint")
    torch.set_num_threads(cfg.threads)
    env = env_name(cfg.env)
    scenario_fn = revisit_scenario_for(env)
    warn_if_training_seeds(cfg.seed)
    check_checkpoints_exist({"checkpoint": cfg.checkpoint})
    path = resolve_checkpoint(cfg.checkpoint)
    model = WorldModel.from_pretrained(path)
    require_text_conditioned(model.config.conditioning, f"checkpoint={cfg.checkpoint}", "eval consistency")
    warn_if_trained_elsewhere({"checkpoint": cfg.checkpoint}, env)
    size = model.config.vae.image_size
    if getattr(cfg.env, "image_size", size) != size:
        raise UsageError(f"the checkpoint's frames are {size}x{size}, the env's {cfg.env.image_size}; "
                         f"set env.image_size={size}")
    check_chunk_steps(cfg.env, model.config.chunk_frames, f"checkpoint={cfg.checkpoint}")
    if "temp_lora" in cfg.modes:  # a typo there was found once none and anchor had run the first seed
        check_target_modules(cfg.temp_lora, model.unet, "temp_lora.target_modules")
    if "anchor" in cfg.modes and model.config.context_frames < 2:
        raise UsageError(f"mode 'anchor' needs a world model with context_frames >= 2, the checkpoint has "
                         f"{model.config.context_frames}; leave anchor out of modes")
    try:
        features = make_feature_extractor(cfg.resnet18_weights if cfg.features == "resnet18" else None, vae=model.vae)
    except ValueError as err:
        raise UsageError(str(err)) from None
    context_n, chunk_n = model.config.context_frames, model.config.chunk_frames
    frames_n = context_n + cfg.chunks * chunk_n
    out = Path(cfg.out)
    seeds = range(cfg.seed, cfg.seed + cfg.episodes)
    scenarios = _revisit_takes(scenario_fn, cfg, seeds, frames_n, size, context_n, chunk_n)  # before out is touched
    empty = {"real": [], "modes": {mode: [] for mode in cfg.modes}}
    progress = start_or_continue(cfg, out, RESUMABLE_CHANGES, empty, _finished, ["real_vs_*.mp4"],
                                 summaries=[PSNR_PLOT], pinned={"checkpoint": cfg.checkpoint})
    # the fingerprint now: the files may be replaced while the rollouts run
    fingerprint = pin_checkpoints(out, {"checkpoint": cfg.checkpoint},
                                  resuming=cfg.resume and any(progress["modes"].values()))["checkpoint"]

    todo = {seed: [mode for mode in cfg.modes if not any(row["seed"] == seed for row in progress["modes"][mode])]
            for seed in seeds}
    unfilmed = [name for episode, seed in enumerate(seeds) if episode < cfg.video_episodes for mode in cfg.modes
                if mode not in todo[seed] and not (out / (name := f"real_vs_{mode}_seed{seed}.mp4")).is_file()]
    if unfilmed:  # a resumption that raised video_episodes: the finished rollouts' frames were not kept
        warnings.warn(f"{len(unfilmed)} rollout(s) finished before have no video ({', '.join(unfilmed[:3])}"
                      f"{', ...' if len(unfilmed) > 3 else ''}): video_episodes applies to the rollouts still to run; "
                      "overwrite=true runs them all again", VplanWarning, stacklevel=3)  # past the threads decorator
    bar = tqdm(total=cfg.episodes * len(cfg.modes) * cfg.chunks, desc="eval consistency", unit="chunk",
               initial=sum(len(cfg.modes) - len(modes) for modes in todo.values()) * cfg.chunks)
    try:
        for episode, seed in enumerate(seeds):
            if not todo[seed]:
                continue
            scenario, real, pairs = scenarios.pop(seed)
            texts = [chunk_subgoal(scenario.subgoals, context_n + k * chunk_n) for k in range(cfg.chunks)]
            start = model.encode(torch.from_numpy(np.ascontiguousarray(real[:context_n]))[None])
            observed = None
            if any(cfg.memory_config(mode).update_on == "observed" for mode in todo[seed]):
                observed = model.encode(torch.from_numpy(np.ascontiguousarray(real))[None])
            real_cuts = scene_cut_frames(real, fps=scenario.fps)
            held = real.copy()
            held[context_n:] = real[context_n - 1]  # copy-last: the last real context frame, held for every chunk
            copy_last = psnr_per_chunk(held, real, chunk_n, context_n)
            progress["real"] = [row for row in progress["real"] if row["seed"] != seed] + [
                {"seed": seed, "scuts": len(real_cuts), "cut_frames": real_cuts,
                 **src_scores(real, pairs, features, context_n),
                 "copy_last_psnr_db": float(copy_last.mean()),
                 "copy_last_psnr_per_chunk": [float(v) for v in copy_last]}]
            for mode in todo[seed]:
                bar.set_postfix_str(f"seed {seed}: {mode}")
                began = time.perf_counter()
                memory = make_memory(cfg.memory_config(mode), model)
                try:
                    learn_from = observed if memory.config.update_on == "observed" else None
                    latents = imagine(model, memory, start, texts, torch.Generator().manual_seed(seed),
                                      observed=learn_from, on_chunk=lambda: bar.update(1))
                except RunError as error:  # a diverged rollout: noise seeded by seed, so it diverges again
                    raise RunError(f"seed {seed}: {error}; the rollouts finished before it are in "
                                   f"{out / PROGRESS_FILE}") from None
                finally:
                    memory.close()
                video = model.decode(latents)[0].numpy()
                generated_s = time.perf_counter() - began
                progress["modes"][mode].append(
                    {"seed": seed, **score_video(video, real, pairs, features, scenario.fps, context_n, chunk_n),
                     "seconds": generated_s, "threads": cfg.threads})
                if episode < cfg.video_episodes:  # real | generated, side by side; before the rollout counts as done
                    captions = [f"frame {f}: context, given to the model" if f < context_n else
                                f"frame {f} · chunk {(f - context_n) // chunk_n}: {texts[(f - context_n) // chunk_n]}"
                                for f in range(len(video))]
                    write_mp4(out / f"real_vs_{mode}_seed{seed}.mp4",
                              labelled_panels([("real", real), (mode, video)], captions), scenario.fps)
                write_json(out / PROGRESS_FILE, progress)
    except KeyboardInterrupt:
        bar.close()
        say_interrupted(out, _finished, empty)
        raise
    bar.close()

    def in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # this evaluation's seeds, in order
        return sorted((row for row in rows if row["seed"] in seeds), key=lambda row: row["seed"])

    per_mode = {mode: in_order(progress["modes"][mode]) for mode in cfg.modes}
    real_rows = in_order(progress["real"])

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:  # over the episodes that have it
        values = [row[key] for row in rows if row.get(key) is not None]
        return float(np.mean(values)) if values else None

    src_keys = ("src", "src_from_context", "src_from_generated")
    keys = ("scuts", *src_keys, "psnr_drift_db_per_chunk", "psnr_db", "seconds")
    metrics = {
        "checkpoint": cfg.checkpoint,
        "checkpoint_path": str(path),
        "checkpoint_sha256": fingerprint,
        "env": env,
        "episodes": cfg.episodes,
        "seeds": list(range(cfg.seed, cfg.seed + cfg.episodes)),  # every one, as vplan run's metrics.json lists them
        "chunks": cfg.chunks,
        "context_frames": context_n,
        "chunk_frames": chunk_n,
        "frames": frames_n,
        "features": features.name,
        "src_comparable_to_paper": features.comparable_to_paper,
        "temp_lora": asdict(cfg.temp_lora),
        "modes": {mode: {**{key: mean(rows, key) for key in keys}, "episodes": rows}
                  for mode, rows in per_mode.items()},
        "real": {"scuts": mean(real_rows, "scuts"), **{key: mean(real_rows, key) for key in src_keys},
                 # the last real context frame held, against the real take (None: a resumed evaluation's rows
                 # from before it was kept)
                 "copy_last_psnr_db": mean(real_rows, "copy_last_psnr_db") if all(
                     "copy_last_psnr_db" in row for row in real_rows) else None, "episodes": real_rows},
        # the torch threads the rollouts were timed with (a resumption may change them; None: not recorded)
        "threads": thread_counts(row for rows in per_mode.values() for row in rows),
    }
    if "none" in per_mode:  # each memory's SRC against no memory on the same episodes
        for mode in per_mode:
            if mode != "none":
                metrics["modes"][mode]["src_vs_none"] = paired_difference(per_mode[mode], per_mode["none"], "src")
    write_json(out / METRICS_FILE, metrics)
    _plot_psnr(metrics, out / PSNR_PLOT)
    _print_table(cfg, metrics, out)
    return metrics


def _revisit_takes(scenario_fn: Any, cfg: EvalConsistencyConfig, seeds: range, frames_n: int, size: int,
                   context_n: int, chunk_n: int) -> dict[int, tuple[Any, np.ndarray, list[tuple[int, int]]]]:
    """Each seed's scenario, its first `frames_n` real frames and the revisit pairs among them, checked before the
    evaluation writes anything: seeds whose rollout holds no revisit are named with the chunks they all need."""
    from tqdm import tqdm

    from vplan.errors import UsageError

    takes, short, need = {}, [], 0
    for seed in tqdm(seeds, desc="revisit scenarios", unit="episode", leave=False):
        scenario = scenario_fn(seed=seed, min_frames=frames_n, env_config=cfg.env)
        real = scenario.frames[:frames_n]
        if real.shape[1:3] != (size, size) or len(real) < frames_n:
            raise UsageError(f"seed {seed}: expected a scenario of >= {frames_n} frames of {size}x{size}, got "
                             f"{len(real)} of {real.shape[1]}x{real.shape[2]}")
        pairs = [(a, b) for a, b in scenario.pairs if b < frames_n]
        if not pairs:
            short.append(seed)
            first = min((b for _, b in scenario.pairs), default=None)
            need = max(need, 0 if first is None else -(-(first + 1 - context_n) // chunk_n))
        takes[seed] = (scenario, real, pairs)
    if short:
        hint = f"; use chunks >= {need} for a revisit in every episode" if need else ""
        if hint and cfg.resume and (Path(cfg.out) / PROGRESS_FILE).is_file():  # a resume keeps its chunks
            hint += (f", which {cfg.out} cannot take on resume (it began with chunks={cfg.chunks}): start again with "
                     "overwrite=true, or choose another out=DIR")
        raise UsageError(f"seed(s) {', '.join(map(str, short))}: no revisit within the rollout's {frames_n} frames "
                         f"({cfg.chunks} chunks){hint}")
    return takes


def paired_difference(rows: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """`key` of one mode minus the baseline's, episode by episode (same seeds, same noise): its mean, standard error
    (None for one episode) and in how many episodes the mode is ahead and behind."""
    by_seed = {row["seed"]: row[key] for row in baseline}
    return paired_summary(np.array([row[key] - by_seed[row["seed"]] for row in rows if row["seed"] in by_seed]))


def _finished(progress: dict[str, Any]) -> str:
    return f"{sum(len(rows) for rows in progress['modes'].values())} rollout(s)"


def _plot_psnr(metrics: dict[str, Any], path: Path) -> None:
    """Each mode's PSNR against the real take per chunk, mean over episodes: where a rollout drifts or breaks."""
    series = {}
    for mode, summary in metrics["modes"].items():
        per_chunk = np.mean([row["psnr_per_chunk"] for row in summary["episodes"]], axis=0)
        series[mode] = (list(range(len(per_chunk))), per_chunk.tolist())  # numbered as the videos' captions
    real_rows = metrics["real"]["episodes"]
    if real_rows and all("copy_last_psnr_per_chunk" in row for row in real_rows):
        per_chunk = np.mean([row["copy_last_psnr_per_chunk"] for row in real_rows], axis=0)
        series["copy last context frame"] = (list(range(len(per_chunk))), per_chunk.tolist())
    line_plot(path, series, "generated chunk (0: the first)", "PSNR against the real take (dB)",
              f"{metrics['env']} revisit scenario, mean of {metrics['episodes']} episode(s)")


def _print_table(cfg: EvalConsistencyConfig, metrics: dict[str, Any], out: Path) -> None:
    comparable = "" if metrics["src_comparable_to_paper"] else " (VAE features: not comparable to the paper's SRC)"
    print(f"\n{metrics['env']} revisit scenario, {cfg.episodes} episode(s) (seeds {cfg.seed}.."
          f"{cfg.seed + cfg.episodes - 1}), {cfg.chunks} chunks of {metrics['chunk_frames']} frames after "
          f"{metrics['context_frames']} real context frames, open loop; mean over episodes")
    print(f"checkpoint {cfg.checkpoint} (fingerprint {metrics['checkpoint_sha256']}); SRC features: "
          f"{metrics['features']}{comparable}")
    if "temp_lora" in metrics["modes"]:
        lora = cfg.temp_lora
        replay = ", rehearsing the first sequence" if lora.replay_first else ""
        print(f"temp_lora: rank {lora.rank}, {lora.steps_per_chunk} Adam step(s) per chunk at lr {lora.lr:g}, learning "
              f"from the {lora.update_on} chunks{replay}")
    def src(row: dict[str, Any]) -> str:
        return " ".join("-".rjust(width) if row[key] is None else f"{row[key]:{width}.2f}"
                        for key, width in (("src", 8), ("src_from_context", 12), ("src_from_generated", 14)))

    print(f"  {'mode':12} {'SCuts':>6} {'SRC (%)':>8} {'from context':>12} {'from generated':>14} "
          f"{'PSNR drift (dB/chunk)':>22} {'PSNR (dB)':>10} {'s/episode':>10}")
    for mode, row in metrics["modes"].items():
        print(f"  {mode:12} {row['scuts']:6.2f} {src(row)} {row['psnr_drift_db_per_chunk']:22.3f} "
              f"{row['psnr_db']:10.2f} {row['seconds']:10.1f}")
    real = metrics["real"]
    print(f"  {'real':12} {real['scuts']:6.2f} {src(real)} {'-':>22} {'-':>10} {'-':>10}")
    if real.get("copy_last_psnr_db") is not None:
        print(f"  {'copy-last':12} {'-':>6} {'-':>8} {'-':>12} {'-':>14} {'-':>22} {real['copy_last_psnr_db']:10.2f} "
              f"{'-':>10}")
    else:
        print(f"  {'copy-last':12} not scored: rollouts kept from before vplan scored it (overwrite=true runs them "
              "all again)")
    print("  SRC from context: revisits of a real context frame (the anchor memory keeps the first in view); from "
          "generated: of a frame the model imagined; each a mean over the episodes that have such pairs")
    if len(metrics["threads"]) > 1:
        print(f"  (s/episode averages rollouts timed with threads {metrics['threads']}: a resumption changed them)")
    for mode, row in metrics["modes"].items():
        if "src_vs_none" in row:
            d = row["src_vs_none"]
            error = "" if d["standard_error"] is None else f" (standard error {d['standard_error']:.2f})"
            print(f"  SRC of {mode} minus none, paired by seed: {signed(d['mean'])}{error}, ahead in {d['ahead']} and "
                  f"behind in {d['behind']} of {d['episodes']}")
    scuts = "fewer is better"
    if real["scuts"] > 0:  # blockworld's turns swing the whole view: cuts of the scene itself
        scuts = (f"the real take has {real['scuts']:.2f} per episode, cuts of its own (blockworld: a turn swings "
                 "the whole view), so SCuts does not rank the modes here: closer to the real take's is better, not "
                 "fewer")
    print(f"SCuts: {scuts}; SRC: higher is better; PSNR drift: closer to 0 (or above) is better")
    print(f"metrics and videos in {out}")
