"""`vplan finetune data=DIR`: SlowFast-VGen's slow-fast learning loop (§3.3, Algorithm 1b) on collected episodes.

Inner loop (fast learning, once per episode, on the world model as its round finds it): the frames are encoded to
latents and walked chunk by chunk as the agent walks them — the first latent is the first observation, chunk
k covers latents `1 + k·chunk_frames ...`, its context is the last `context_frames` latents before it and its
text the subgoal followed as it starts (that of the action leading into its first frame,
`chunk_subgoal`). For every chunk the triple (context, ground-truth chunk, text) is stored
with the Temp-LoRA state the model would generate that chunk with, i.e. after the memory's updates on the
earlier chunks; then the memory updates on (the `chunk_frames` latents before the chunk, the chunk), as
`vplan run memory.update_on=observed` does. The first chunk's state is the freshly reset adapter (LoRA A at
its seeded initialisation, B = 0, so ΔW = 0: exactly the base model, which is what the agent generates the
first chunk with).

One file per episode, `<out>/inner/episode-<index>.safetensors`: the episode's latents (`latents`, T×C×h×w)
and, per chunk k, the adapter's rank-r LoRA factors under `chunk-<k>.` + peft's key (never full weights); the
chunks' first latent, context length and text are JSON in the file's metadata. Files are written under a
temporary name and renamed, so a file that exists is complete and a rerun skips it. `<out>/inner/settings.json`
records what the states depend on (checkpoint, memory settings, episodes); a rerun with other settings in the
same `out` is refused rather than mixing states.

Outer loop (slow learning): the shared trainer (`vplan.loop.trainer.train`: Accelerate, progress, checkpoints,
resume, NaN stop) trains the UNet's weights Φ — the VAE and text encoder are frozen — on random triples at
the slow learning rate. Each sample's stored LoRA state is applied as the memory applies it when generating
(`MemoryConfig.merge_for_generation`): every adapted projection runs with `W + B·A·alpha/r`, computed from the
stored factors as constants inside `torch.func.functional_call`, so the factors get no gradient and stay
bit-identical, the gradient reaches W alone, and no adapter is ever attached (checkpoints hold the plain world
model, and `<out>/final` is a normal world-model checkpoint). Samples with different LoRA states cannot share a
forward pass, so a step runs one forward per sample and averages the losses (one backward).

Rounds (Algorithm 1b's alternation): `rounds=R` splits the episodes into R groups as if they arrived one group
after another; round r runs the inner loop on its group with Φ as the outer loop left it at the end of round
r - 1 (read back from that step's trainer checkpoint, so a resumed run starts it exactly where an uninterrupted
one would), then the outer loop trains on every triple stored so far up to step `optim.steps·(r + 1)/R` of one
lr schedule. Earlier groups keep the states they were stored with. With one round (the default) the inner loop
runs once with the starting Φ, and a rerun with more `optim.steps` continues the outer loop on the same states;
with several, the states depend on the outer loop's settings, so those are fixed for the `out`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vplan.constants import OBS_IMAGE_FRONT, SUBGOAL
from vplan.data.dataset import chunk_subgoal, open_for_training, warn_if_held_out_seeds
from vplan.errors import RunError, UsageError, first_line
from vplan.loop.checkpoint import MODEL_FILE, checkpoint_step, list_checkpoints
from vplan.loop.config import FINETUNE_RECORD, FinetuneConfig, check_holdout
from vplan.loop.trainer import (
    FINAL, check_out_is_ours, check_steps_reach, out_of_memory, refuse_several_processes, train, warn_if_lr_not_reached,
)
from vplan.memory.config import MemoryConfig
from vplan.utils.files import file_written_aside, folder_written_aside, read_json_record, sha256_file, write_json
from vplan.utils.settings import changed_settings, changes_said, plain
from vplan.worldmodel.config import require_text_conditioned
from vplan.worldmodel.model import CONFIG_FILE, UNET_FILE, WorldModel

INNER, SETTINGS = FINETUNE_RECORD.parts
INNER_FORMAT = "vplan-finetune-inner"
INNER_FORMAT_VERSION = "2"  # 2: a chunk's text is the subgoal followed as it starts (`chunk_subgoal`)
UNPINNED_OPTIM = ("save_every", "log_every")  # when the trainer saves and logs: no weight depends on them
RESUMABLE_OPTIM = ("steps", "cooldown_steps", *UNPINNED_OPTIM)  # with one round, a resume may change
# memory settings the stored states do not depend on (bit-identical either way): the inner loop learns from the
# ground truth whatever update_on says, generates nothing, and checkpointing recomputes the same activations
UNPINNED_MEMORY = ("update_on", "merge_for_generation", "gradient_checkpointing")
LATENTS_KEY = "latents"


# -- the inner loop ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Where a chunk lies in its episode's latents: `context` latents before `start`, then `frames` latents."""

    start: int
    context: int
    frames: int
    text: str


def walk_chunks(texts: list[str], context_frames: int, chunk_frames: int) -> list[Chunk]:
    """The chunks of an episode with one subgoal text per frame, as the agent walks it (see the module doc)."""
    chunks = []
    start = 1
    while start + chunk_frames <= len(texts):
        chunks.append(Chunk(start, min(context_frames, start), chunk_frames, chunk_subgoal(texts, start)))
        start += chunk_frames
    return chunks


def _chunk_prefix(index: int) -> str:
    return f"chunk-{index:04d}."


def episode_file(out: Path, episode: int) -> Path:
    """The inner loop's file of dataset episode `episode`."""
    return out / INNER / f"episode-{episode:06d}.safetensors"


def _settings(cfg: FinetuneConfig, checkpoint: Path, episodes: list[int]) -> dict[str, Any]:
    """What the run depends on: the stored states and the outer loop's settings. With one round, more steps may
    follow (`RESUMABLE_OPTIM`); with several, later rounds' states are made with the outer loop's weights at
    steps that `optim.steps` splits, so all of it is fixed."""
    free = RESUMABLE_OPTIM if cfg.rounds == 1 else UNPINNED_OPTIM
    optim = {name: value for name, value in asdict(cfg.optim).items() if name not in free}
    return {
        "format": INNER_FORMAT,
        "format_version": INNER_FORMAT_VERSION,
        "data": str(Path(cfg.data).resolve()),
        "worldmodel": cfg.worldmodel,
        "worldmodel_config_sha256": sha256_file(checkpoint / CONFIG_FILE),
        "worldmodel_unet_sha256": sha256_file(checkpoint / UNET_FILE),
        "memory": {name: value for name, value in asdict(cfg.memory).items() if name not in UNPINNED_MEMORY},
        "episodes": episodes,
        "optim": optim,
        "rounds": cfg.rounds,  # (recorded only for several before 2026-12-07: its default, 1, is no difference)
    }


def _check_settings(inner: Path, settings: dict[str, Any], cfg: FinetuneConfig) -> None:
    """Write settings.json on a first run; refuse an `out` whose stored states were made otherwise (a memory
    setting added since, at its default, made them the same way)."""
    path = inner / SETTINGS
    if path.is_file():
        saved = read_json_record(path, f"choose another out= or delete {inner.parent}")
        # one round recorded no optim before 2026-12-05; the world model is pinned by its files' hashes (its path
        # may be spelled otherwise, or the folder moved)
        ignore = ("worldmodel",) if "optim" in saved else ("worldmodel", "optim")
        for name in UNPINNED_OPTIM:  # several rounds recorded them before 2026-12-06
            saved.get("optim", {}).pop(name, None)
        for name in UNPINNED_MEMORY:  # recorded before 2026-12-06
            saved.get("memory", {}).pop(name, None)
        changed = changed_settings(saved, plain(settings), cfg, ignore=ignore)
        if saved.get("rounds", 1) != settings.get("rounds", 1):  # one round leaves RESUMABLE_OPTIM unrecorded,
            changed = [name for name in changed if name not in {f"optim.{n}" for n in RESUMABLE_OPTIM}]  # several not
        before_outer = not list_checkpoints(inner.parent)
        nothing_stored = before_outer and not any(inner.glob("episode-*.safetensors"))
        if changed and before_outer and (nothing_stored or all(name.startswith("optim.") for name in changed)):
            # stopped before the outer loop's first checkpoint (out of memory, a divergence: its advice is another
            # batch size or lr): no stored state depends on the outer loop yet, so the inner loop's work is kept;
            # and with no state stored at all (stopped in the first episode), any setting may change
            print(f"{', '.join(changed)} changed before anything that depends on it was kept: recorded in {path}")
            write_json(path, settings)
            return
        if changed:
            raise UsageError(f"{inner.parent} holds a finetune made with other settings: "
                             f"{'; '.join(_differences(changed, saved, plain(settings), cfg))}; choose another out= or "
                             "delete that folder")
        return
    if list_checkpoints(inner.parent):  # the trainer would resume from them, whatever made them
        raise UsageError(f"{inner.parent} holds training checkpoints but no finetune record ({path}), so what made "
                         "them is unknown; choose another out= or delete that folder")
    inner.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def _differences(changed: list[str], saved: dict[str, Any], now: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
    """`changes_said`, with the episodes as their count where it changed (the record holds their indices) and the
    world model's files as one `worldmodel=` (it is pinned by their hashes, whatever its path)."""
    said = []
    for name in changed:
        then, given = saved.get(name), now.get(name)
        if name == "episodes" and isinstance(then, list) and isinstance(given, list) and len(then) != len(given):
            said.append(f"episodes={len(then)} when it began, {len(given)} now")  # as episodes= counts them
        elif not name.startswith("worldmodel_"):
            said += changes_said([name], saved, now, cfg)
    if any(name.startswith("worldmodel_") for name in changed):
        said.append("worldmodel= (its files differ from those it began with)")
    return said


def _diverged(episode: int, chunk: int) -> RunError:
    return RunError(f"finetune inner loop: Temp-LoRA's adapter diverged (a value became NaN or inf) in episode "
                    f"{episode}, chunk {chunk}; start again with a lower memory.lr in another out=DIR")


def run_inner_episode(
    world_model: WorldModel, memory: Any, frames: np.ndarray, texts: list[str], path: Path, episode: int
) -> int:
    """Fast learning over one episode's ground-truth frames; writes `path` (atomically). Returns its chunks."""
    config = world_model.config
    with torch.no_grad():
        latents = world_model.encode(torch.from_numpy(np.array(frames))[None])[0]
    chunks = walk_chunks(list(texts), config.context_frames, config.chunk_frames)
    tensors: dict[str, torch.Tensor] = {LATENTS_KEY: latents.contiguous()}
    memory.reset()
    state = memory.state_dict()
    for k, chunk in enumerate(chunks):
        # The state this chunk would be generated with: after the updates on chunks 0..k-1 (reset for k = 0).
        for name, tensor in state.items():
            tensors[_chunk_prefix(k) + name] = tensor.detach().cpu().contiguous()
        previous = latents[max(0, chunk.start - config.chunk_frames) : chunk.start][None]
        try:
            memory.update(previous, latents[chunk.start : chunk.start + chunk.frames][None])
        except RunError:  # the memory's own check, on its loss
            raise _diverged(episode, k) from None
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            way = ("memory.gradient_checkpointing=true (the same command goes on)"
                   if not memory.config.gradient_checkpointing else
                   "more memory free, or a lower memory.rank in another out=DIR")
            raise RunError(f"finetune inner loop: out of memory in episode {episode}, chunk {k} "
                           f"({first_line(error)}); start again with {way}") from error
        state = memory.state_dict()
        if not all(torch.isfinite(t).all() for t in state.values()):
            raise _diverged(episode, k)
    metadata = {
        "format": INNER_FORMAT,
        "format_version": INNER_FORMAT_VERSION,
        "episode": str(episode),
        "chunks": json.dumps([asdict(c) for c in chunks]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_written_aside(path) as scratch:
        save_file(tensors, str(scratch), metadata=metadata)
    return len(chunks)


class InnerEpisode:
    """One stored episode: its latents (in memory), chunks, and its LoRA states (read from the file on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != INNER_FORMAT or metadata.get("format_version") != INNER_FORMAT_VERSION:
                    raise UsageError(f"{path}: expected a {INNER_FORMAT} file (format {INNER_FORMAT_VERSION}), got "
                                     f"{metadata.get('format')!r} ({metadata.get('format_version')!r}); delete it")
                self.latents = handle.get_tensor(LATENTS_KEY)
                self.keys = sorted(k for k in handle.keys() if k != LATENTS_KEY)
            self.chunks = [Chunk(**c) for c in json.loads(metadata["chunks"])]
        except UsageError:  # another file than an inner episode's: its own message
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:  # a disk fault: writes are atomic
            raise RunError(f"{path} cannot be read ({first_line(error, with_type=True)}); delete it, and the inner "
                           "loop redoes that episode") from None

    def triple(self, k: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(context latents, ground-truth chunk latents, text) of chunk k."""
        c = self.chunks[k]
        return self.latents[c.start - c.context : c.start], self.latents[c.start : c.start + c.frames], c.text

    def lora_state(self, k: int) -> dict[str, torch.Tensor]:
        """Chunk k's Temp-LoRA state, keyed as `TempLoRAMemory.state_dict()` (load it with `load_state_dict`)."""
        prefix = _chunk_prefix(k)
        with safe_open(str(self.path), framework="pt") as handle:
            return {key[len(prefix):]: handle.get_tensor(key) for key in self.keys if key.startswith(prefix)}


# -- the outer loop ------------------------------------------------------------------------------------------


def lora_targets(world_model: WorldModel, state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """The base weight (a key of `world_model`'s parameters) each LoRA pair of `state` adapts:
    `{"unet.<module>.weight": ("<module>.lora_A.weight", "<module>.lora_B.weight")}`."""
    params = dict(world_model.named_parameters())
    targets = {}
    for key in state:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        weight = f"unet.{module}.weight"
        if weight not in params or f"{module}.lora_B.weight" not in state:
            raise UsageError(f"stored LoRA state names {module!r}, which is not a projection of this world model's "
                             "UNet (states from another checkpoint?)")
        targets[weight] = (key, f"{module}.lora_B.weight")
    if not targets:
        raise UsageError(f"expected LoRA factors (…lora_A.weight / …lora_B.weight), got keys {sorted(state)[:3]}")
    return targets


def merged_weights(
    world_model: WorldModel, state: dict[str, torch.Tensor], scaling: float, targets: dict[str, tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """`W + (B @ A) * scaling` for every adapted projection: what `TempLoRAMemory` folds in for generation
    (peft's `get_delta_weight`, then `add_`), bit for bit. Gradients flow to W only (the factors are constants)."""
    params = dict(world_model.named_parameters())
    merged = {}
    for weight, (key_a, key_b) in targets.items():
        base = params[weight]
        a = state[key_a].to(device=base.device, dtype=base.dtype)
        b = state[key_b].to(device=base.device, dtype=base.dtype)
        merged[weight] = base + ((b @ a) * scaling).to(base.dtype)
    return merged


class SlowFastTraining:
    """The outer loop's component for the shared trainer: only the UNet's weights Φ are trainable."""

    def __init__(self, world_model: WorldModel, episodes: list[InnerEpisode], memory: MemoryConfig) -> None:
        self.module = world_model.eval()
        world_model.unet.train()
        for parameter in world_model.parameters():
            parameter.requires_grad_(False)
        for parameter in world_model.unet.parameters():
            parameter.requires_grad_(True)
        self.episodes = episodes
        self.triples = [(e, k) for e, episode in enumerate(episodes) for k in range(len(episode.chunks))]
        if not self.triples:
            raise UsageError("no stored chunk to finetune on")
        self.scaling = memory.lora_alpha / memory.rank  # peft's LoRA scaling (no rsLoRA)
        first_episode, first_chunk = self.triples[0]
        self.targets = lora_targets(world_model, episodes[first_episode].lora_state(first_chunk))

    def batch(self, generator: torch.Generator, batch_size: int) -> dict[str, Any]:
        picks = torch.randint(len(self.triples), (batch_size,), generator=generator).tolist()
        items = []
        for pick in picks:
            e, k = self.triples[pick]
            context, target, text = self.episodes[e].triple(k)
            items.append({"context": context, "target": target, "text": text, "lora": self.episodes[e].lora_state(k),
                          "episode": e, "chunk": k})
        return {"items": items}

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(self.module.unet.parameters()).device
        total: torch.Tensor | None = None
        logs: dict[str, float] = {}
        items = batch["items"]
        for item in items:
            overrides = merged_weights(self.module, item["lora"], self.scaling, self.targets)
            loss, item_logs = torch.func.functional_call(
                self.module, overrides,
                (item["context"][None].to(device), item["target"][None].to(device), [item["text"]]),
                {"generator": generator}, strict=False,
            )
            total = loss if total is None else total + loss
            for name, value in item_logs.items():
                logs[name] = logs.get(name, 0.0) + value / len(items)
        assert total is not None
        return total / len(items), logs


def _inner_loop(
    world_model: WorldModel, memory_config: MemoryConfig, dataset: Any, bar: Any, out: Path, loaded: dict[int, Any]
) -> None:
    """Fast learning over the episodes `bar` iterates, each written to its file; `loaded` holds episodes read
    already. The memory's adapter comes off at the end: the UNet is the plain world model again."""
    from vplan.memory.temp_lora import TempLoRAMemory

    world_model.eval()
    memory = TempLoRAMemory(memory_config, world_model)
    try:
        for e in bar:
            episode = loaded[e] if e in loaded else dataset.episode(e)
            chunks = run_inner_episode(
                world_model, memory, episode[OBS_IMAGE_FRONT], list(episode[SUBGOAL]), episode_file(out, e), e
            )
            bar.set_postfix(chunks=chunks)
    finally:
        memory.close()


def _load_outer_weights(world_model: WorldModel, out: Path, step: int) -> None:
    """Φ as the outer loop left it at `step` (the end of the last round), for the next round's inner loop."""
    found = [path for path in list_checkpoints(out) if checkpoint_step(path) == step]
    if not found:
        raise RunError(f"{out} has no outer-loop checkpoint at step {step}, where the last round ended, so the next "
                       f"round's inner loop cannot start from it; choose another out= or delete that folder")
    try:
        weights = load_file(found[0] / MODEL_FILE)
    except (SafetensorError, OSError) as error:
        raise RunError(f"{found[0]} cannot be read ({first_line(error, with_type=True)}); delete it and the "
                       "checkpoints after it to redo that round, or choose another out=") from None
    world_model.load_state_dict(weights)


# -- the command ---------------------------------------------------------------------------------------------


def _shipped_worldmodel_for(dataset: Any, data: str) -> str:
    """The shipped world model of the env a dataset was recorded in (`vplan collect` and `vplan run record=true`
    write it as robot_type `vplan_<env>`), so a blockworld dataset never finetunes the tabletop's model."""
    from vplan.shipped import shipped_checkpoint, shipped_names

    env = dataset.env
    if env is None or f"{env}/worldmodel" not in shipped_names():
        robot_type = dataset.info.get("robot_type")
        recorded = ("records no robot_type (recorded outside vplan's envs), so it names no env" if robot_type is None
                    else f"its robot_type {robot_type!r} names no env" if env is not None
                    else f"its robot_type {robot_type!r} (recorded outside vplan's envs) names no env")
        raise UsageError(f"{data}: {recorded} with a shipped world model; pass worldmodel=DIR or "
                         "worldmodel=shipped:<env>/worldmodel")
    return shipped_checkpoint(env, "worldmodel")


def _usable_episodes(cfg: FinetuneConfig) -> tuple[Any, list[int]]:
    """The dataset and its episodes that are not held out."""
    dataset = open_for_training(cfg.data, "the world model learns from", cfg.how_to_make_data())
    check_holdout(cfg.data, dataset.num_episodes, cfg.holdout_episodes)
    return dataset, list(range(dataset.num_episodes - cfg.holdout_episodes))


def _chosen_episodes(cfg: FinetuneConfig, dataset: Any, usable: list[int], span: int) -> list[int]:
    """The first `cfg.episodes` of the usable episodes that hold a chunk (`span` frames); a shorter one is skipped
    and a later one takes its place (it was dropped from the first `episodes`, leaving fewer)."""
    long_enough = [e for e in usable if int(dataset.episode_meta(e)["length"]) >= span]
    if not long_enough:
        raise UsageError(f"{cfg.data}: no episode has the {span} frames of one chunk (the first frame, then "
                         f"chunk_frames={span - 1}); collect longer episodes")
    episodes = long_enough[: cfg.episodes]
    short = [e for e in usable if e < episodes[-1] and e not in long_enough]
    if short:
        print(f"skipping {len(short)} episodes shorter than one chunk ({span} frames): {short[:10]}")
    if len(episodes) < cfg.episodes:
        print(f"episodes={cfg.episodes}: {cfg.data} has {len(episodes)} of a chunk or more besides the "
              f"{cfg.holdout_episodes} held out; finetuning on {len(episodes)}")
    from vplan.data.collect import warn_if_exploring

    warn_if_exploring(cfg.data)  # the finetuned model, and Temp-LoRA's states, learn each chunk under its text
    warn_if_held_out_seeds(cfg.data, dataset, episodes, "finetune on")
    return episodes


def finetune(cfg: FinetuneConfig) -> Path:
    """Inner loop over the episodes (resumable), outer loop through the trainer, `<out>/final`; prints a summary."""
    from tqdm import tqdm

    from vplan.memory.temp_lora import check_target_modules
    from vplan.shipped import (
        check_checkpoints_exist, check_outside_results, resolve_checkpoint, shipped_names, trained_on_env,
        warn_if_trained_elsewhere,
    )

    refuse_several_processes("finetune")
    dataset, usable = _usable_episodes(cfg)
    if cfg.worldmodel is None:
        cfg = replace(cfg, worldmodel=_shipped_worldmodel_for(dataset, cfg.data))
        print(f"worldmodel: {cfg.worldmodel} (the dataset's env's)")
    check_checkpoints_exist({"worldmodel": cfg.worldmodel})
    check_outside_results(cfg.out, {"worldmodel": cfg.worldmodel})
    checkpoint = resolve_checkpoint(cfg.worldmodel)
    world_model = WorldModel.from_pretrained(checkpoint)
    require_text_conditioned(world_model.config.conditioning, f"worldmodel={cfg.worldmodel}", "vplan finetune")
    check_target_modules(cfg.memory, world_model.unet, "memory.target_modules")  # before settings.json is written
    if dataset.env is not None:
        warn_if_trained_elsewhere({"worldmodel": cfg.worldmodel}, dataset.env)
    size = world_model.config.vae.image_size
    first_index, first = usable[0], dataset.episode(usable[0])  # every episode of a dataset has one frame size
    frame_shape = tuple(np.asarray(first[OBS_IMAGE_FRONT]).shape[1:3])
    if frame_shape != (size, size):
        raise UsageError(f"{cfg.data}: frames are {frame_shape[0]}x{frame_shape[1]}, but worldmodel={cfg.worldmodel} "
                         f"is for {size}x{size} frames; collect at that size or pass another worldmodel=")
    episodes = _chosen_episodes(cfg, dataset, usable, 1 + world_model.config.chunk_frames)
    if cfg.rounds > len(episodes):
        raise UsageError(f"rounds={cfg.rounds}: only {len(episodes)} episodes to split into rounds; pass fewer rounds")
    out = Path(cfg.out)
    check_out_is_ours(out, cfg)
    _check_settings(out / INNER, _settings(cfg, checkpoint, episodes), cfg)
    check_steps_reach(out, cfg.optim, "optim")  # before the inner loop (with one round, steps are not pinned)
    warn_if_lr_not_reached(cfg.optim, "optim")
    final = out / FINAL

    groups = [[int(e) for e in group] for group in np.array_split(np.array(episodes), cfg.rounds)]
    ends = [cfg.optim.steps * (r + 1) // cfg.rounds for r in range(cfg.rounds)]
    stored: list[InnerEpisode] = []
    outer_seconds, trained = 0.0, False
    reached = max((checkpoint_step(path) for path in list_checkpoints(out)), default=0)  # a resumed run's
    for r, (group, end) in enumerate(zip(groups, ends)):
        label = f" round {r + 1}/{cfg.rounds}" if cfg.rounds > 1 else ""
        # Inner loop: fast learning over this round's episodes with Φ as the last round left it (the starting Φ
        # in the first); files already written are kept.
        todo = [e for e in group if not episode_file(out, e).is_file()]
        if todo:
            if r > 0:
                _load_outer_weights(world_model, out, ends[r - 1])
            bar = tqdm(todo, desc=f"finetune inner loop (Temp-LoRA){label}", unit="episode",
                       initial=len(group) - len(todo), total=len(group))
            try:
                _inner_loop(world_model, cfg.memory, dataset, bar, out, {first_index: first})
            except KeyboardInterrupt:
                bar.close()
                kept = sum(episode_file(out, e).is_file() for e in episodes)
                print(f"stopped in the inner loop: {kept} of {len(episodes)} episodes' states kept in {out / INNER}; "
                      "the same command goes on from them" if kept else "stopped in the inner loop before any "
                      "episode's state was kept; the same command starts again")
                raise
        elif cfg.rounds == 1:
            print(f"inner loop: all {len(episodes)} episodes already stored in {out / INNER}")
        stored += [InnerEpisode(episode_file(out, e)) for e in group]
        if end <= reached and r < cfg.rounds - 1:  # a later checkpoint holds this round's outer loop
            continue

        # Outer loop: slow learning of Φ on every triple stored so far, their LoRA states applied and frozen.
        torch.manual_seed(cfg.optim.seed)
        training = SlowFastTraining(world_model, stored, cfg.memory)
        started = time.perf_counter()
        steps = train(training, cfg.optim, out, f"finetune outer loop (slow weights){label}", until=end,
                      optim_key="optim", keep_steps=ends[:-1],  # a redone episode's round starts from one
                      say_resuming=not trained)  # a round after one this process trained goes on from it
        trained = True
        outer_seconds += time.perf_counter() - started
    with folder_written_aside(final) as folder:
        # the env the weights learned from: the dataset's, or for one of no vplan env, the base model's
        training.module.eval().save_pretrained(folder, trained_on_env=dataset.env or trained_on_env(cfg.worldmodel))
    lora_mb = sum(f.path.stat().st_size for f in stored) / 1e6
    print(
        f"finetune: {len(training.triples)} triples from {len(stored)} episode{'s' if len(stored) != 1 else ''} "
        f"(LoRA states and latents: {lora_mb:.1f} MB in {out / INNER}); {cfg.rounds} "
        f"round{'s' if cfg.rounds > 1 else ''}, outer loop at "
        f"step {steps}/{cfg.optim.steps} ({outer_seconds:.0f} s this run, batch {cfg.optim.batch_size}, "
        f"peak lr {cfg.optim.peak_lr():g}); finetuned world model written to {final}"
    )
    if f"{dataset.env}/idm" in shipped_names():  # an IDM to run it with (an env of one's own runs from Python;
        env = "" if dataset.env == "tabletop" else f"env={dataset.env} "  # RLBench's and MineRL's need their own)
        print(f"the agent with it: vplan run {env}worldmodel={final}; the paper's table with it: vplan bench "
              f"planning {env}finetuned={final}")
    return final
