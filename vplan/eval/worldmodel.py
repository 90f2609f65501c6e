"""`vplan eval worldmodel`: how well a trained world model predicts the next chunk on fresh held-out scenes.

Episodes are rolled out by the scripted expert with seeds from 10000 up (never in training data). For every
chunk position, the model gets the real context frames and the true subgoal text, and its chunk is compared
with the real frames (PSNR and SSIM from torchmetrics) next to the copy-last-frame baseline; the table also
covers only the chunks where the agent moves (or turns, `_moving`), where copying the last frame is wrong. Text
sensitivity is the share of chunks whose generation under the true subgoal is closer to the real frames than under a
different subgoal of the same episode (same seed, same context). An MP4 shows real (left) beside generated.
With `idm=` an inverse-dynamics policy reads the actions off each generated chunk and off the real one (from the
same last real frame): how far apart they are says whether the agent could act on what the model draws.

Each finished episode's rows are kept in `progress.json` as it ends: an interrupted evaluation continues with
`resume=true` (vplan/eval/progress.py).

Open loop (`rollout_chunks`, 8 by default): from each episode's first real context the model imagines that many
chunks in a row, each from its own output, under the true subgoal texts; PSNR and SSIM per chunk index against
the real frames show how fast it drifts from the real env (`open_loop.png` draws them). `compare=` scores a second
checkpoint on the same rollouts (same episodes, same noise), side by side, with `open_loop.mp4` showing real |
checkpoint | compare, and their paired difference per episode (mean, standard error, episodes ahead).
`conditioning=action` puts the task's env's shipped action-conditioned model beside its shipped text one.

An action-conditioned checkpoint (its `conditioning` is `action` or `text+action`) also gets the expert's executed
actions that lead into each chunk frame, and text sensitivity is measured only when the model reads text; with
`compare=` a text-conditioned one, the open-loop rollouts put action- and text-conditioned models side by side.
Its action-order sensitivity is the share of the chunks where the gripper moves whose generation under the
executed actions is closer to the real frames than under the same actions in reverse order: a model that cannot
tell which frame an action leads into scores about half. Its action-direction sensitivity is the same share against
the executed actions with their motion reversed (every value but the last, the gripper's command, negated): a
model that draws the moves it expects whatever it is told scores about half.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.constants import ACTION, OBS_IMAGE_FRONT, OBS_STATE
from vplan.data.dataset import chunk_subgoal
from vplan.errors import VplanWarning
from vplan.eval.config import EvalWorldModelConfig
from vplan.eval.progress import (
    METRICS_FILE, PROGRESS_FILE, say_interrupted, start_or_continue,
)
from vplan.eval.stats import paired_summary, signed
from vplan.shipped import (
    pin_checkpoints, warn_if_actions_mean_otherwise, warn_if_decoded_by_another_vae, warn_if_trained_elsewhere,
)
from vplan.utils.files import file_written_aside, write_json, write_mp4
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.panels import labelled_panels
from vplan.utils.plots import line_plot
from vplan.utils.settings import thread_counts

# A chunk counts as "moving" where the agent's position (metres on the tabletop, blocks on the blockworld) ends
# more than this from where it was before the chunk, or its fourth state value (the tabletop's finger opening, the
# blockworld's heading: a turn in place changes the whole view) changes by more than it.
MOVING_THRESHOLD = 0.01
GRID_FILE = "real_vs_generated.mp4"
GRID_SO_FAR = "real_vs_generated.partial.npz"  # the grid's chunks of finished episodes while it is short of them
VIDEO_FPS = 4  # the grid's and the open loop's: 2.5x slower than the tabletop's 10 Hz, to follow a chunk's 8 frames
OPEN_LOOP_VIDEO = "open_loop.mp4"
OPEN_LOOP_PLOT = "open_loop.png"
# settings a resumption may change
RESUMABLE_CHANGES = ("episodes", "out", "video_chunks", "threads", "resume", "overwrite")


def _to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) → float (N*T, 3, H, W) in [0, 1] for torchmetrics."""
    return frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0


def chunk_scores(predicted: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB) and SSIM of uint8 frames (T, H, W, 3) against the real ones."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from vplan.eval.consistency_metrics import PSNR_MAX_DB

    a, b = _to_images(predicted[None]), _to_images(real[None])
    psnr = min(float(peak_signal_noise_ratio(a, b, data_range=1.0)), PSNR_MAX_DB)  # an exact match: not inf
    return psnr, float(structural_similarity_index_measure(a, b, data_range=1.0))


def action_agreement(idm: Any, last: torch.Tensor, predicted: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """How far the actions `idm` reads off a predicted chunk are from those it reads off the real one, both from
    the last real frame (uint8 (1, H, W, 3) and (T, H, W, 3) each): the IDM's own error cancels. Continuous
    actions: the gripper's displacement over the chunk (the sum of the motion components, action units) as
    the error's norm and the cosine between the two; with a grip command (the last value, `binary_gripper`) the
    share of steps with the same one. Moves: the share of equal moves."""
    read = [idm.actions_for_chunk(torch.cat([last, frames])).numpy() for frames in (predicted, real)]
    if idm.config.discrete:
        return {"move_agreement": float(np.mean(read[0] == read[1]))}
    motion = slice(None, -1) if idm.config.binary_gripper else slice(None)
    moved = [actions[:, motion].sum(axis=0) for actions in read]
    norms = float(np.linalg.norm(moved[0]) * np.linalg.norm(moved[1]))
    scores = {
        "motion_error": float(np.linalg.norm(moved[0] - moved[1])),
        "motion_cosine": float(moved[0] @ moved[1] / norms) if norms > 0 else 0.0,
    }
    if idm.config.binary_gripper:
        scores["grip_agreement"] = float(np.mean((read[0][:, -1] > 0) == (read[1][:, -1] > 0)))
    return scores


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    if not rows:
        return {}
    keys = ["psnr", "ssim", "copy_psnr", "copy_ssim"]
    keys += [key for key in rows[0] if key.startswith(("idm_", "copy_idm_"))]
    return {key: float(np.mean([row[key] for row in rows])) for key in keys} | {"chunks": len(rows)}


def _load_model(setting: str, cfg: EvalWorldModelConfig) -> Any:
    """The world model `setting` (`checkpoint`, `compare`) names, with the sampling overrides, checked against the
    env's frame size and instruction length."""
    from vplan.env_contract import check_chunk_steps
    from vplan.errors import UsageError
    from vplan.worldmodel.config import SAMPLERS
    from vplan.worldmodel.model import WorldModel

    checkpoint = getattr(cfg, setting)
    model = WorldModel.from_pretrained(checkpoint)
    overrides = {"sampler": cfg.sampler, "num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    diffusion = model.config.diffusion
    if cfg.sampler is not None and cfg.sampler not in SAMPLERS[diffusion.objective]:  # the checkpoint fixes it
        raise UsageError(f"sampler: {checkpoint} was trained with the {diffusion.objective!r} objective, whose "
                         f"samplers are {', '.join(SAMPLERS[diffusion.objective])}; got {cfg.sampler!r}")
    try:
        model.config.diffusion = replace(diffusion, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        raise UsageError(f"sampling override: {error}") from None
    size = model.config.vae.image_size
    if size != cfg.env.image_size:  # (the env renders the checkpoint's frames: `with_checkpoint_frames`)
        raise UsageError(f"{setting}={checkpoint}: its frames are {size}x{size}, the env's {cfg.env.image_size}x"
                         f"{cfg.env.image_size}" + ("; pass a model of the checkpoint's frames" if setting == "compare"
                                                     else f"; set env.image_size={size}"))
    check_chunk_steps(cfg.env, model.config.chunk_frames, f"{setting}={checkpoint}")
    return model


NOISE = "per-episode"  # progress.json's mark of the sampling seeds (`scene_seed`): evaluations are resumed alike
NOISE_BEFORE = "begun before each episode drew noise of its own (2026-12-06)"  # a record without the mark


def scene_seed(env_seed: int, start: int) -> int:
    """The sampling seed of the chunk starting at frame `start` of the episode of env seed `env_seed` (0: its open
    loop): the same wherever that episode falls in a run, and different for every episode (until 2026-12-06 the
    chunks at one start shared their noise across episodes, so their scores were correlated)."""
    return env_seed * 1_000_000 + start


def open_loop(model: Any, frames: torch.Tensor, subgoals: list[str], actions: torch.Tensor, chunks: int,
              seed: int) -> torch.Tensor:
    """`chunks` chunks imagined in a row from the episode's first `context_frames` real frames, chunk i under the
    subgoal followed as it starts (`chunk_subgoal`; and, for an action model, the executed actions leading into its
    frames): uint8 frames (chunks * chunk_frames, H, W, 3), to set against frames[context_frames:]."""
    context_n, chunk_n = model.config.context_frames, model.config.chunk_frames
    texts = [chunk_subgoal(subgoals, context_n + i * chunk_n) for i in range(chunks)]
    executed = actions[None, context_n - 1 : context_n - 1 + chunks * chunk_n]
    given = {"actions": executed} if model.config.uses_actions else {}
    latents = model.encode(frames[None, :context_n])
    return model.decode(model.rollout(latents, texts, generator=torch.Generator().manual_seed(seed), **given))[0]


@restores_torch_threads
def evaluate_worldmodel(cfg: EvalWorldModelConfig) -> dict[str, Any]:
    """Score the checkpoint on fresh episodes (continuing an interrupted evaluation with `resume=true`); write
    metrics.json, the MP4s and the plot; print a table."""
    from tqdm import tqdm

    from vplan.env_contract import check_idm_reads, check_takes_actions
    from vplan.envs import action_units, env_name, make_env
    from vplan.errors import UsageError
    from vplan.policies import make_expert
    from vplan.shipped import check_checkpoints_exist, warn_if_training_seeds, with_checkpoint_frames

    cfg = with_checkpoint_frames(cfg, cfg.checkpoint, "checkpoint")
    torch.set_num_threads(cfg.threads)
    check_checkpoints_exist({"checkpoint": cfg.checkpoint, "compare": cfg.compare, "idm": cfg.idm})
    warn_if_training_seeds(cfg.seed)
    model = _load_model("checkpoint", cfg)
    if cfg.conditioning is not None and model.config.conditioning != cfg.conditioning:
        raise UsageError(f"checkpoint={cfg.checkpoint} is conditioned on {model.config.conditioning!r}, not "
                         f"conditioning={cfg.conditioning!r}; give a checkpoint trained with "
                         f"component.model.conditioning={cfg.conditioning}, or leave checkpoint unset")
    compare = _load_model("compare", cfg) if cfg.compare is not None else None
    if compare is not None and (compare.config.context_frames, compare.config.chunk_frames) != (
            model.config.context_frames, model.config.chunk_frames):
        raise UsageError(f"compare={cfg.compare}: its context and chunk lengths differ from the checkpoint's; compare "
                         "models that imagine the same chunks")
    idm = _load_idm(cfg.idm, model) if cfg.idm is not None else None
    checkpoints = {"checkpoint": cfg.checkpoint, "compare": cfg.compare, "idm": cfg.idm}
    out = Path(cfg.out)
    pinned = {name: spec for name, spec in checkpoints.items() if spec is not None}
    empty = {"episodes": [], "chunks": [], "open_loop": []}
    env, expert = make_env(cfg.env), make_expert(cfg.task.name, cfg.env)
    try:
        for name, spec, loaded in (("checkpoint", cfg.checkpoint, model), ("compare", cfg.compare, compare)):
            if loaded is not None:  # (the CLI checked their config.json files before they loaded)
                check_takes_actions(env.action_space, name, spec, loaded.config)
        if idm is not None:
            check_idm_reads(env.action_space, cfg.idm, idm.config.action_space())
        warn_if_trained_elsewhere(checkpoints, env_name(cfg.env))
        # an action model fed this env's actions, which may be of another scale than those it learned from
        warn_if_actions_mean_otherwise({name: spec for name, spec, loaded in (
            ("checkpoint", cfg.checkpoint, model), ("compare", cfg.compare, compare)) if loaded is not None and
            loaded.config.uses_actions}, action_units(cfg.env))
        progress = start_or_continue(cfg, out, RESUMABLE_CHANGES, empty, _finished,
                                     [GRID_FILE, GRID_SO_FAR, OPEN_LOOP_VIDEO], summaries=[OPEN_LOOP_PLOT],
                                     marks={"noise": (NOISE, NOISE_BEFORE)}, pinned=pinned)
        pin_checkpoints(out, pinned, resuming=cfg.resume and bool(progress["episodes"]))
        show_grid = cfg.video_chunks > 0 and not (out / GRID_FILE).is_file()  # a resumed run may have written it
        if (out / GRID_FILE).is_file():
            _say_if_grid_kept_short(out / GRID_FILE, cfg.video_chunks, model.config.chunk_frames)
        grid = _grid_so_far(out / GRID_SO_FAR, progress["episodes"]) if show_grid else []
        todo = [episode for episode in range(cfg.episodes) if episode not in progress["episodes"]]
        for episode in (bar := tqdm(todo, desc="eval worldmodel", unit="episode", total=cfg.episodes,
                                    initial=cfg.episodes - len(todo))):
            rows, open_rows = _evaluate_episode(cfg, episode, env, expert, model, compare, idm, grid, out,
                                                bar.set_postfix_str)
            progress["chunks"] += rows
            progress["open_loop"] += open_rows
            progress["episodes"].append(episode)
            if show_grid and len(grid) >= cfg.video_chunks:  # before the episodes that filled it count as done
                _write_grid(grid[: cfg.video_chunks], out / GRID_FILE)
                show_grid = False
                (out / GRID_SO_FAR).unlink(missing_ok=True)
            elif show_grid and grid:  # kept with the episodes it holds: a resumption goes on filling it
                with file_written_aside(out / GRID_SO_FAR) as scratch, open(scratch, "wb") as handle:
                    np.savez(handle, chunks=np.stack([chunk for chunk, _ in grid]),
                             captions=np.array([caption for _, caption in grid]),
                             episodes=np.array(progress["episodes"]))
            write_json(out / PROGRESS_FILE, progress)
    except KeyboardInterrupt:
        say_interrupted(out, _finished, empty)
        raise
    finally:
        env.close()
    if show_grid and grid:
        _write_grid(grid[: cfg.video_chunks], out / GRID_FILE)  # a resumption may ask fewer than it kept
        (out / GRID_SO_FAR).unlink(missing_ok=True)

    rows = sorted((r for r in progress["chunks"] if r["episode"] < cfg.episodes), key=lambda r: (r["episode"], r["start"]))
    if not rows:  # every episode shorter than a context and a chunk: a table of nothing
        (out / PROGRESS_FILE).unlink(missing_ok=True)  # nothing to keep: the same out= takes the longer episodes
        window = model.config.context_frames + model.config.chunk_frames
        raise UsageError(f"no chunk to score: every episode ended before {window} frames (context_frames + "
                         "chunk_frames); let the episodes run longer (env.max_episode_steps)")
    open_rows = sorted((r for r in progress["open_loop"] if r["episode"] < cfg.episodes),
                       key=lambda r: (r["episode"], r["chunk"]))
    sensitive = [row["text_sensitive"] for row in rows if "text_sensitive" in row]
    order_sensitive = [row["order_sensitive"] for row in rows if "order_sensitive" in row]
    direction_sensitive = [row["direction_sensitive"] for row in rows if "direction_sensitive" in row]
    metrics = {
        "checkpoint": cfg.checkpoint,
        "idm": cfg.idm,
        "conditioning": model.config.conditioning,
        "seeds": list(range(cfg.seed, cfg.seed + cfg.episodes)),  # every one, as vplan run's metrics.json lists them
        "sampling": asdict(model.config.diffusion),
        "all": _summary(rows),
        "moving": _summary([row for row in rows if row["moving"]]),
        "text_sensitivity": float(np.mean(sensitive)) if sensitive else None,
        "text_sensitivity_se": share_error(rows, "text_sensitive"),
        "action_order_sensitivity": float(np.mean(order_sensitive)) if order_sensitive else None,
        "action_order_sensitivity_se": share_error(rows, "order_sensitive"),
        "action_direction_sensitivity": float(np.mean(direction_sensitive)) if direction_sensitive else None,
        "action_direction_sensitivity_se": share_error(rows, "direction_sensitive"),
        "chunks": rows,
        "open_loop": _open_loop_summary(open_rows, cfg.compare),
        # the torch threads the chunks were scored with (a resumption may change them; None: not recorded)
        "threads": thread_counts(rows),
    }
    write_json(out / METRICS_FILE, metrics)
    if metrics["open_loop"]:
        _plot_open_loop(metrics["open_loop"], out / OPEN_LOOP_PLOT, cfg.checkpoint, cfg.compare)

    episodes = f"{cfg.episodes} held-out episode{'s' if cfg.episodes != 1 else ''}"
    print(f"\n{episodes} (seeds {cfg.seed}..{cfg.seed + cfg.episodes - 1}), {len(rows)} chunks, "
          f"conditioning {model.config.conditioning} (PSNR in dB, higher is better):")
    labels = {name: f"{name} ({metrics[name]['chunks']})" for name in ("all", "moving") if metrics[name]}
    width = max([len("chunks"), *map(len, labels.values())])  # "moving (1234)" as wide as it comes
    print(f"  {'chunks':{width}} {'PSNR':>7} {'copy-last PSNR':>15} {'SSIM':>6} {'copy-last SSIM':>15}")
    for name, label in labels.items():
        s = metrics[name]
        print(f"  {label:{width}} {s['psnr']:7.2f} {s['copy_psnr']:15.2f} {s['ssim']:6.3f} {s['copy_ssim']:15.3f}")
    if sensitive:
        print(f"  text sensitivity: {metrics['text_sensitivity']:.0%}{_error(metrics['text_sensitivity_se'])} of "
              f"{len(sensitive)} chunks closer under the true subgoal than under another (chance: 50%)")
    if idm is not None:
        _print_agreement(metrics)
    if order_sensitive:
        print(f"  action-order sensitivity: {metrics['action_order_sensitivity']:.0%}"
              f"{_error(metrics['action_order_sensitivity_se'])} of {len(order_sensitive)} moving chunks closer under "
              "the executed actions than under them reversed (chance: 50%)")
    if direction_sensitive:
        print(f"  action-direction sensitivity: {metrics['action_direction_sensitivity']:.0%}"
              f"{_error(metrics['action_direction_sensitivity_se'])} of {len(direction_sensitive)} moving chunks "
              "closer under the executed actions than under their motion reversed (chance: 50%)")
    _print_open_loop(metrics["open_loop"], model.config.conditioning, compare)
    if len(metrics["threads"]) > 1:
        print(f"  (chunks scored with threads {metrics['threads']}: a resumption changed them, which moves figures "
              "in their last bits)")
    print(f"metrics and video in {out}")
    return metrics


def _evaluate_episode(cfg: EvalWorldModelConfig, episode: int, env: Any, expert: Any, model: Any, compare: Any,
                      idm: Any, grid: list[tuple[np.ndarray, str]], out: Path, say: Callable[[str], None],
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One held-out episode's rows: every chunk from the real context (appended to `grid` while it is short of
    `video_chunks`), and the open-loop rollout's chunks (episode 0's written as an MP4); `say` shows how far it
    is (an episode takes ~30 s with the shipped model)."""
    from vplan.data.collect import rollout_expert

    context_n, chunk_n = model.config.context_frames, model.config.chunk_frames
    rows: list[dict[str, Any]] = []
    open_rows: list[dict[str, Any]] = []
    frames_np, subgoals, _ = rollout_expert(env, expert, cfg.seed + episode)
    frames = torch.from_numpy(frames_np[OBS_IMAGE_FRONT])
    state = np.asarray(frames_np[OBS_STATE], np.float64)
    latents = model.encode(frames[None])[0]
    actions = torch.as_tensor(np.asarray(frames_np[ACTION]), dtype=torch.float32).reshape(len(frames), -1)
    chunks = min(cfg.rollout_chunks, (len(frames) - context_n) // chunk_n)
    if chunks:
        seed = scene_seed(cfg.seed + episode, 0)
        real = frames[context_n : context_n + chunks * chunk_n]
        say(f"episode {episode}: open loop, {chunks} chunks")
        imagined = open_loop(model, frames, subgoals, actions, chunks, seed)
        other = open_loop(compare, frames, subgoals, actions, chunks, seed) if compare is not None else None
        for i in range(chunks):
            span = slice(i * chunk_n, (i + 1) * chunk_n)
            row = {"episode": episode, "chunk": i}
            row["psnr"], row["ssim"] = chunk_scores(imagined[span], real[span])
            last = frames[context_n - 1 : context_n].expand_as(real[span])  # the last real frame, held
            row["copy_psnr"], row["copy_ssim"] = chunk_scores(last, real[span])
            if other is not None:
                row["compare_psnr"], row["compare_ssim"] = chunk_scores(other[span], real[span])
            open_rows.append(row)
        if episode == 0:  # real | checkpoint (| compare), frame after frame
            sides = [("real", real), ("checkpoint", imagined)] + ([("compare", other)] if other is not None else [])
            texts = [chunk_subgoal(subgoals, context_n + i * chunk_n) for i in range(chunks)]
            captions = [f"open loop, chunk {f // chunk_n}: {texts[f // chunk_n]}" for f in range(len(real))]
            write_mp4(out / OPEN_LOOP_VIDEO, labelled_panels([(name, side.numpy()) for name, side in sides], captions),
                      fps=VIDEO_FPS)
    texts_in_episode = sorted(set(subgoals))
    starts = range(context_n, len(frames) - chunk_n + 1, chunk_n)
    for k, start in enumerate(starts):
        say(f"episode {episode}: chunk {k + 1}/{len(starts)}")
        real = frames[start : start + chunk_n]
        context = latents[None, start - context_n : start]
        true_text = chunk_subgoal(subgoals, start)
        other = [t for t in texts_in_episode if t != true_text]
        seed = scene_seed(cfg.seed + episode, start)
        # the executed actions that lead into the chunk's frames (row t is taken at frame t)
        given = {"actions": actions[None, start - 1 : start - 1 + chunk_n]} if model.config.uses_actions else {}
        predicted = model.decode(
            model.generate(context, [true_text], generator=torch.Generator().manual_seed(seed), **given)
        )[0]
        psnr, ssim = chunk_scores(predicted, real)
        copy_psnr, copy_ssim = chunk_scores(frames[start - 1 : start].expand_as(real), real)
        row = {"episode": episode, "start": start, "text": true_text, "psnr": psnr, "ssim": ssim,
               "copy_psnr": copy_psnr, "copy_ssim": copy_ssim, "threads": cfg.threads,
               "moving": _moving(state[start - 1], state[start + chunk_n - 1])}
        if idm is not None:
            last = frames[start - 1 : start]
            row |= {f"idm_{k}": v for k, v in action_agreement(idm, last, predicted, real).items()}
            row |= {f"copy_idm_{k}": v for k, v in action_agreement(idm, last, last.expand_as(real), real).items()}
        if other and model.config.uses_text:
            wrong_text = other[(start // chunk_n) % len(other)]
            wrong = model.decode(
                model.generate(context, [wrong_text], generator=torch.Generator().manual_seed(seed), **given)
            )[0]
            row["text_sensitive"] = _closer(psnr, chunk_scores(wrong, real)[0])
        if given and row["moving"]:
            reversed_actions = {"actions": given["actions"].flip(1)}
            wrong = model.decode(model.generate(
                context, [true_text], generator=torch.Generator().manual_seed(seed), **reversed_actions
            ))[0]
            row["order_sensitive"] = _closer(psnr, chunk_scores(wrong, real)[0])
        if given and row["moving"] and given["actions"].shape[-1] > 1:  # one value is the kept grip: no motion
            reversed_motion = given["actions"].clone()
            reversed_motion[..., :-1] *= -1
            wrong = model.decode(model.generate(
                context, [true_text], generator=torch.Generator().manual_seed(seed), actions=reversed_motion
            ))[0]
            row["direction_sensitive"] = _closer(psnr, chunk_scores(wrong, real)[0])
        rows.append(row)
        if len(grid) < cfg.video_chunks:  # real above generated, as the partial file keeps them
            grid.append((np.concatenate([real.numpy(), predicted.numpy()], axis=1),
                         f"episode {episode}, frames {start}-{start + chunk_n - 1}: {true_text}"))
    return rows, open_rows


def _closer(psnr: float, other_psnr: float) -> float:
    """1 when the generation under the true condition is closer to the real chunk, 0 when the other is, ½ on a
    tie: a model that ignores the condition draws the same chunk both ways and so scores the 50% of chance."""
    return 1.0 if psnr > other_psnr else 0.5 if psnr == other_psnr else 0.0


def _moving(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether the agent moved over a chunk (`MOVING_THRESHOLD`), from its state before the chunk and at its end."""
    moved = np.linalg.norm(after[:3] - before[:3]) > MOVING_THRESHOLD
    return bool(moved or (len(before) > 3 and abs(after[3] - before[3]) > MOVING_THRESHOLD))


def _load_idm(checkpoint: str, model: Any) -> Any:
    from vplan.errors import UsageError
    from vplan.policies.idm import IDMPolicy

    idm = IDMPolicy.from_pretrained(checkpoint)
    warn_if_decoded_by_another_vae(checkpoint, model)
    if idm.config.image_size != model.config.vae.image_size:
        raise UsageError(f"idm={checkpoint} reads {idm.config.image_size}x{idm.config.image_size} frames, the world "
                         f"model draws {model.config.vae.image_size}x{model.config.vae.image_size}; give an IDM "
                         "trained on the world model's frames")
    return idm


def _print_agreement(metrics: dict[str, Any]) -> None:
    """The IDM's reading of generated chunks against its reading of the real ones, next to copy-last-frame."""
    names = {"motion_error": "motion error (action units)", "motion_cosine": "motion cosine",
             "grip_agreement": "same grip", "move_agreement": "same move"}
    print("  actions the IDM reads off a chunk, against those it reads off the real chunk (generated | copy-last):")
    for name in ("all", "moving"):
        s = metrics[name]
        if s:
            # agreements as percentages, as `vplan train component=idm` prints its grip and move accuracy
            cells = [f"{label} {s['idm_' + key]:.1%} | {s['copy_idm_' + key]:.1%}" if key.endswith("agreement") else
                     f"{label} {s['idm_' + key]:.3f} | {s['copy_idm_' + key]:.3f}"
                     for key, label in names.items() if "idm_" + key in s]
            print(f"    {name + ' (' + str(s['chunks']) + ')':12} " + ", ".join(cells))


def _open_loop_summary(rows: list[dict[str, Any]], compare: str | None) -> dict[str, Any]:
    """Mean PSNR/SSIM per chunk index of the open-loop rollouts (and over all of them), checkpoint and compare,
    over the chunk indices every episode reaches: past the shortest rollout, the mean at an index would cover
    fewer episodes and rise or fall as they drop out. `rows` keeps every chunk."""
    if not rows:
        return {}
    keys = [k for k in ("psnr", "ssim", "compare_psnr", "compare_ssim", "copy_psnr", "copy_ssim") if k in rows[0]]
    episodes = {row["episode"] for row in rows}
    reached = min(sum(row["episode"] == e for row in rows) for e in episodes)  # chunks 0..reached-1 in each
    kept = [row for row in rows if row["chunk"] < reached]
    per_chunk = [{"chunk": i} | {k: float(np.mean([r[k] for r in kept if r["chunk"] == i])) for k in keys}
                 for i in range(reached)]
    summary = {"compare": compare, "episodes": len(episodes), "per_chunk": per_chunk,
               "mean": {k: float(np.mean([r[k] for r in kept])) for k in keys}, "rows": rows,
               "chunks_cut": len(rows) - len(kept)}
    return summary | ({"paired": paired_gain(kept)} if "compare_psnr" in keys else {})


def share_error(rows: list[dict[str, Any]], key: str) -> float | None:
    """Standard error of the share (the mean of `key`: 1, ½ or 0 per row), with the episode as the unit: chunks
    of one episode share its scene, so they are not independent draws (the cluster-robust error of a ratio). None
    with fewer than two episodes."""
    by_episode: dict[int, list[float]] = {}
    for row in rows:
        if key in row:
            by_episode.setdefault(row["episode"], []).append(float(row[key]))
    if len(by_episode) < 2:
        return None
    total = sum(len(v) for v in by_episode.values())
    share = sum(sum(v) for v in by_episode.values()) / total
    spread = sum((sum(v) - share * len(v)) ** 2 for v in by_episode.values())
    count = len(by_episode)
    return float(np.sqrt(spread * count / (count - 1)) / total)


def _error(se: float | None) -> str:
    return "" if se is None else f" (standard error {se:.0%}, by episode)"


def _finished(progress: dict[str, Any]) -> str:
    return f"{len(progress['episodes'])} episode(s)"


def _grid_so_far(path: Path, episodes: list[int]) -> list[tuple[np.ndarray, str]]:
    """The grid's chunks (and captions) an interrupted evaluation kept, where they are those of exactly its
    finished episodes (else none: the file and progress.json were written apart)."""
    try:
        with np.load(path, allow_pickle=False) as kept:
            if sorted(kept["episodes"].tolist()) == sorted(episodes):
                # a file kept before 2026-12-06 has no captions
                captions = kept["captions"].tolist() if "captions" in kept.files else [""] * len(kept["chunks"])
                return list(zip(kept["chunks"], captions))
    except (OSError, ValueError, KeyError):  # none, or cut short
        pass
    return []


def _say_if_grid_kept_short(path: Path, video_chunks: int, chunk_frames: int) -> None:
    """A warning where a resumption asks more chunks of a grid its first run wrote (their frames were not kept)."""
    from imageio_ffmpeg import count_frames_and_secs

    try:
        shown = count_frames_and_secs(os.path.abspath(path))[0] // chunk_frames
    except (OSError, RuntimeError):  # a file replaced by hand: the grid is kept as the resumption finds it
        return
    if video_chunks > shown:
        warnings.warn(f"{path} shows {shown} chunk(s), written before, and is kept: video_chunks={video_chunks} "
                      "applies to an evaluation's first run; overwrite=true runs it again", VplanWarning, stacklevel=2)


def _write_grid(chunks: list[tuple[np.ndarray, str]], path: Path) -> None:
    """The grid MP4: chunk after chunk, real beside generated, with the chunk's episode, frames and subgoal."""
    def frames() -> Iterator[np.ndarray]:
        for chunk, caption in chunks:
            height = chunk.shape[1] // 2  # kept real above generated
            yield from labelled_panels([("real", chunk[:, :height]), ("generated", chunk[:, height:])],
                                       [caption] * len(chunk))

    write_mp4(path, frames(), fps=VIDEO_FPS)


def _plot_open_loop(summary: dict[str, Any], path: Path, checkpoint: str, compare: str | None) -> None:
    """Mean PSNR per chunk index of the open-loop rollouts: how fast each model drifts from the real video."""
    chunks = [row["chunk"] for row in summary["per_chunk"]]  # numbered as metrics.json and the table number them
    names = {"psnr": f"checkpoint {checkpoint}", "compare_psnr": f"compare {compare}",
             "copy_psnr": "copy the last real frame"}
    series = {name: (chunks, [row[key] for row in summary["per_chunk"]])
              for key, name in names.items() if key in summary["per_chunk"][0]}
    line_plot(path, series, "chunk of the open-loop rollout (0: the first)", "PSNR against the real frames (dB)",
              f"open loop from the first real context, mean of {summary['episodes']} episode(s)")


def paired_gain(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Checkpoint minus compare in mean open-loop PSNR, episode by episode, so a gap can be told from noise.

    The two checkpoints roll out the same episodes under the same noise, so their per-episode difference is
    paired: its mean, its standard error (None for one episode) and how many episodes each one is ahead in.
    """
    episodes = sorted({row["episode"] for row in rows})
    summary = paired_summary([np.mean([r["psnr"] - r["compare_psnr"] for r in rows if r["episode"] == e])
                              for e in episodes])
    return {"mean_gain_db": summary.pop("mean"), "standard_error_db": summary.pop("standard_error"), **summary}


def _print_open_loop(summary: dict[str, Any], conditioning: str, compare: Any) -> None:
    if not summary:
        return
    names = [f"checkpoint ({conditioning})"] + ([f"compare ({compare.config.conditioning})"] if compare else [])
    keys = ["psnr"] + (["compare_psnr"] if compare else [])
    cut = (f" (the {summary['chunks_cut']} chunks of longer rollouts past the shortest one's left out)"
           if summary.get("chunks_cut") else "")
    print(f"  open loop over {len(summary['per_chunk'])} chunks from the first real context, {summary['episodes']} "
          f"episodes: PSNR (dB) per chunk index{cut}")
    print(f"  {'chunk':>6} " + " ".join(f"{name:>22}" for name in names) + f" {'copy last real frame':>21}")
    for row in summary["per_chunk"] + [{"chunk": "mean", **summary["mean"]}]:
        print(f"  {row['chunk']!s:>6} " + " ".join(f"{row[k]:22.2f}" for k in keys) + f" {row['copy_psnr']:21.2f}")
    if "paired" in summary:
        paired = summary["paired"]
        error = "" if paired["standard_error_db"] is None else f" (standard error {paired['standard_error_db']:.2f})"
        print(f"  checkpoint minus compare: {signed(paired['mean_gain_db'])} dB per episode{error}, ahead in "
              f"{paired['ahead']} and behind in {paired['behind']} of {paired['episodes']} episodes")
