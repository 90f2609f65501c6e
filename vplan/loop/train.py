"""`vplan train component=vae|worldmodel|idm data=DIR`: slow learning of one component on an episode dataset.

The last `holdout_episodes` episodes are never trained on. The VAE trains on single frames; the world model
trains on clips (a context of 1..context_frames latents, then a chunk) whose text is the subgoal of the
action leading into the chunk's first frame (`chunk_subgoal`), with the latents of the whole dataset encoded by
the frozen, already trained VAE (once per VAE: they are cached in the dataset, vplan/worldmodel/latent_cache.py);
an action-conditioned world model
(`component.model.conditioning=action|text+action`) also gets the dataset's low-level actions that lead into
each chunk frame.
The inverse-dynamics policy trains on transitions, real and through the VAE (vplan/loop/idm.py).
The finished component is written to `<out>/final` (safetensors + JSON config). The run's settings go to
`<out>/config.yaml` and the VAE's fingerprint to `<out>/checkpoints.json`: rerunning the command resumes from the
newest checkpoint, and is refused if a setting (but for the run's length and logging) or the VAE's files changed.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.constants import ACTION, OBS_IMAGE_FRONT, SUBGOAL
from vplan.data.dataset import chunk_subgoal, open_for_training, warn_if_held_out_seeds
from vplan.errors import UsageError, VplanWarning
from vplan.loop.checkpoint import checkpoint_step, list_checkpoints
from vplan.loop.config import IDMTrainConfig, TrainConfig, VAETrainConfig, WorldModelTrainConfig, check_holdout
from vplan.loop.idm import check_fits, train_idm
from vplan.loop.trainer import (
    FINAL, check_batch_splits, check_out_is_ours, check_steps_reach, is_main_process, main_process_first,
    only_the_main_process_prints, process_count, train, warn_if_lr_not_reached,
)
from vplan.shipped import (
    check_checkpoints_exist, check_outside_results, pin_checkpoints, resolve_checkpoint, vae_folder, vae_hint,
    warn_if_trained_elsewhere,
)
from vplan.utils.files import folder_written_aside, read_json_record, write_json
from vplan.utils.settings import (
    CONFIG_FILE, check_config_is_ours, check_same_config, read_config_record, with_image_size, write_config,
)
from vplan.worldmodel.config import VAEConfig, WorldModelConfig
from vplan.worldmodel.latent_cache import LATENTS_DIR, episode_latents
from vplan.worldmodel.model import CheckpointError, WorldModel, load_vae, read_config
from vplan.worldmodel.text_encoder import resolve_minilm_dir
from vplan.worldmodel.vae import build_vae, decode_latents, encode_frames, estimate_scaling_factor, vae_loss

SPLIT_FILE = "split.json"  # in `out`: the episodes a run holds out, which a resume keeps


# Settings a resumed run may change: how long it runs and how often it checkpoints and logs (the schedule is a
# function of the step, so longer runs and cool-downs extend it); `init` is only read by a run's first step.
RESUMABLE_CHANGES = ("out", "component.init", "component.optim.steps", "component.optim.cooldown_steps",
                     "component.optim.save_every", "component.optim.log_every")


def _sized_for(config: Any, frames: tuple[int, ...], setting: str) -> Any:
    """A VAE's or an IDM's `config` for the dataset's square `frames`, the only size it could train on."""
    if frames[0] != frames[1]:
        return config  # (a frame of another shape is refused as it is checked)
    try:
        return with_image_size(config, frames[0], setting, "the dataset's frames")
    except ValueError as error:
        raise UsageError(f"the dataset's frames are {frames[0]}x{frames[1]}, which {setting} cannot read: "
                         f"{error}") from None


def _check_frame_size(frames: tuple[int, ...], image_size: int) -> None:
    if frames != (image_size, image_size):
        raise UsageError(f"the dataset's frames are {frames[0]}x{frames[1]}; this VAE is for {image_size}x{image_size} "
                         "(set component.vae.image_size)")


def _split(data: str, holdout: int, how_to_make: str) -> tuple[Any, list[int], list[int]]:
    dataset = open_for_training(data, "that every component trains on", how_to_make)
    check_holdout(data, dataset.num_episodes, holdout)
    trained = list(range(dataset.num_episodes - holdout))
    warn_if_held_out_seeds(data, dataset, trained, "train on")  # e.g. `vplan run record=true`'s
    return dataset, trained, list(range(len(trained), dataset.num_episodes))


def _frames(dataset: Any, episodes: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([dataset.episode(e)[OBS_IMAGE_FRONT] for e in episodes]))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of uint8 frames."""
    mse = torch.mean((a.float() - b.float()) ** 2)
    return float(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)))


class VAETraining:
    """Frames of the training episodes, drawn uniformly."""

    def __init__(self, config: VAETrainConfig, frames: torch.Tensor) -> None:
        _check_frame_size(tuple(frames.shape[1:3]), config.vae.image_size)
        torch.manual_seed(config.optim.seed)
        self.config, self.frames, self.module = config, frames, build_vae(config.vae)

    def batch(self, generator: torch.Generator, batch_size: int) -> dict[str, Any]:
        return {"frames": self.frames[torch.randint(len(self.frames), (batch_size,), generator=generator)]}

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return vae_loss(self.module, batch["frames"], self.config.vae)


class WorldModelTraining:
    """Clips of context + chunk latents with the chunk's subgoal text.

    Within a subgoal the context frames already show where the gripper is heading, so a model can learn the
    data while ignoring its text; `boundary_fraction` of the clips therefore end their context on the first
    frame of a subgoal (the chunk follows it), where the next target (which cube, which spot) is in the text alone.

    `actions` (one (T, action_dim) tensor per episode, row t taken at frame t) is for action-conditioned models:
    chunk frame f gets action f - 1, the one that led into it. Drawing them takes no extra random numbers, so a
    step's clips are the same with or without actions.
    """

    def __init__(
        self, config: WorldModelTrainConfig, latents: list[torch.Tensor], texts: list[list[str]], vae: Any,
        actions: list[torch.Tensor] | None = None, resuming: bool = False,
    ):
        model_config = config.model
        torch.manual_seed(config.optim.seed)
        self.module = WorldModel(model_config, vae=vae)
        if config.init is not None and not resuming:  # a resumed run's weights come from its own checkpoint
            _load_init(self.module, config.init)
        for parameter in self.module.vae.parameters():
            parameter.requires_grad_(False)
        self.config, self.latents, self.texts = model_config, latents, texts
        if model_config.uses_actions != (actions is not None):
            raise ValueError(
                f"expected actions exactly for an action-conditioned model (conditioning="
                f"{model_config.conditioning!r}), got {'some' if actions is not None else 'none'}"
            )
        self.actions = actions
        # an action-only model's text encoder (a learned one trains) never reaches the loss
        self.unused_parameters = not model_config.uses_text
        self.boundary_fraction = config.boundary_fraction
        span = model_config.context_frames + model_config.chunk_frames
        self.starts = [(e, s) for e, ep in enumerate(latents) for s in range(len(ep) - span + 1)]
        if not self.starts:
            raise UsageError(f"no episode is long enough for a {span}-frame clip")
        # (episode, k) where frame k - 1 is a subgoal's first, the frame its first action is taken from: a boundary
        # clip's context ends there and its chunk starts at k, as when the agent starts imagining a subgoal (with
        # room for a full context and a chunk)
        self.boundaries = [
            (e, f + 1)
            for e, ep in enumerate(texts)
            for f in range(max(1, model_config.context_frames - 1), len(ep) - model_config.chunk_frames)
            if ep[f] != ep[f - 1]
        ]
        if self.boundary_fraction > 0 and not self.boundaries:
            raise UsageError("boundary_fraction > 0, but no episode has a subgoal change with room for a clip around it")

    def _pick(self, generator: torch.Generator, context: int) -> tuple[int, int]:
        """(episode, clip start): a clip whose context ends on a subgoal's first frame, or any clip."""
        if self.boundary_fraction > 0 and float(torch.rand((), generator=generator)) < self.boundary_fraction:
            episode, first = self.boundaries[int(torch.randint(len(self.boundaries), (), generator=generator))]
            return episode, first - context
        return self.starts[int(torch.randint(len(self.starts), (), generator=generator))]

    def batch(self, generator: torch.Generator, batch_size: int) -> dict[str, Any]:
        context = int(torch.randint(1, self.config.context_frames + 1, (1,), generator=generator))
        clips, texts, actions = [], [], []
        for _ in range(batch_size):
            episode, start = self._pick(generator, context)
            clips.append(self.latents[episode][start : start + context + self.config.chunk_frames])
            texts.append(chunk_subgoal(self.texts[episode], start + context))
            if self.actions is not None:  # the actions taken at the frames before each chunk frame
                first = start + context - 1
                actions.append(self.actions[episode][first : first + self.config.chunk_frames])
        clips_tensor = torch.stack(clips)
        batch = {"context": clips_tensor[:, :context], "target": clips_tensor[:, context:], "texts": texts}
        if self.actions is not None:
            batch["actions"] = torch.stack(actions)
        return batch

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if "actions" in batch:
            return self.module(batch["context"], batch["target"], batch["texts"], generator=generator,
                               actions=batch["actions"])
        return self.module(batch["context"], batch["target"], batch["texts"], generator=generator)


def _load_vae(path: str, optional: bool = False, env: str | None = None) -> Any:
    """A VAE `vplan train component=vae` wrote, or a world-model checkpoint's own (shipped ones included);
    `optional`: the component trains without one too (the IDM), which the errors say; `env`: the dataset's,
    whose shipped world model the errors name."""
    folder = vae_folder(path, vae_hint(optional, env))
    try:
        return load_vae(folder)
    except CheckpointError as error:  # a broken config.json, missing, NaN or integer tensors
        raise UsageError(f"component.vae={path}: {error}") from None


def _load_init(module: WorldModel, init: str) -> None:
    """Start `module` from `init`'s weights (all but its VAE's), or a UsageError naming what did not fit."""
    try:
        source = resolve_checkpoint(init)
        # a text-conditioned source gives an action-conditioned model all but its (new) action encoder,
        # a source without a frame embedding all but that (new, at zero output)
        source_config = read_config(source)
        ours = module.config
        if source_config.frame_input_size and source_config.frame_input_size != ours.frame_input_size:
            settings = ("conditioning", "action_frame_embedding", "action_dim")
            has = " of another size than this model's" if ours.frame_input_size else ", which this model has not"
            raise UsageError(f"component.init={init} gives each frame its action through a frame embedding{has}; "
                             "to continue from it, pass " + " ".join(
                                 f"component.model.{name}={str(getattr(source_config, name)).lower()}"
                                 for name in settings if getattr(source_config, name) != getattr(ours, name)))
        module.load_weights(
            source, vae=False, action_encoder=source_config.uses_actions,
            frame_embedding=source_config.frame_input_size == module.config.frame_input_size,
        )
    except CheckpointError as error:
        raise UsageError(f"component.init={init}: {error}") from None
    ours, theirs = ours.diffusion, source_config.diffusion
    compared = ["objective", "num_train_timesteps"]
    if ours.objective == theirs.objective == "epsilon":  # flow matching has no betas
        compared += ["beta_schedule", "beta_start", "beta_end"]
    differ = [name for name in compared if getattr(ours, name) != getattr(theirs, name)]
    if differ:  # allowed (a warm start for another objective), but its first losses are not the source's
        print(f"component.init={init} was trained with another noise process ("
              + ", ".join(f"{name} {getattr(theirs, name)}, here {getattr(ours, name)}" for name in differ)
              + "): its weights are a starting point, not a model of this run's")


def _with_vae(config: WorldModelConfig, vae: Any) -> WorldModelConfig:
    """The world-model config with the trained VAE's architecture (what gets saved with the checkpoint), and the
    UNet's latent size and channels, which follow from it (a tiny preset then needs no `vae.*` overrides)."""
    c = vae.config
    vae_config = VAEConfig(
        block_out_channels=tuple(c.block_out_channels),
        latent_channels=c.latent_channels,
        layers_per_block=c.layers_per_block,
        norm_num_groups=c.norm_num_groups,
        mid_block_attention=c.mid_block_add_attention,
        image_size=c.sample_size,
        scaling_factor=c.scaling_factor,
    )
    try:
        unet = replace(config.unet, sample_size=vae_config.latent_size, in_channels=vae_config.latent_channels,
                       out_channels=vae_config.latent_channels)
        return replace(config, vae=vae_config, unet=unet)
    except ValueError as error:  # latents the UNet's downsamplings do not divide
        raise UsageError(f"component.vae (frames {vae_config.image_size} px, latents {vae_config.latent_size} px) does "
                         f"not fit component.model: {error}") from None


def _check_actions_fit(features: dict[str, Any], action_dim: int, data: str) -> None:
    """A UsageError, from the dataset's metadata (before anything is written or encoded), where its actions cannot
    condition a model of `action_dim` values."""
    if ACTION not in features:
        raise UsageError(f"{data} has no {ACTION!r} column for an action-conditioned world model")
    if str(features[ACTION].get("dtype", "")).startswith("int"):
        raise UsageError(f"{data} holds discrete moves (its actions are {features[ACTION]['dtype']}), and action "
                         "conditioning reads continuous actions only (moves are not built yet: they would be read as "
                         "one number each); train a text-conditioned model (component.model.conditioning=text)")
    values = int(np.prod(features[ACTION]["shape"]))
    if values != action_dim:
        raise UsageError(f"the actions in {data} have {values} values; set component.model.action_dim={values}")


def _episode_actions(episode: dict[str, Any]) -> torch.Tensor:
    """An episode's low-level actions as float32 (T, values) (`_check_actions_fit` read their shape before)."""
    # a copy (np.array): the dataset's arrays are read-only, which torch warns about
    return torch.as_tensor(np.array(episode[ACTION], dtype=np.float32)).reshape(len(episode[ACTION]), -1)


def _record_config(cfg: TrainConfig, out: Path, resuming: bool, write: bool) -> None:
    """Write `<out>/config.yaml`; a resumed run must have the settings it recorded, but for RESUMABLE_CHANGES.
    `write=False` checks only (every training process checks, so that all refuse together; the first writes)."""
    file = out / CONFIG_FILE
    check_config_is_ours(out, cfg)
    if resuming and file.is_file():
        check_same_config(cfg, file, RESUMABLE_CHANGES)
        began_from = read_config_record(file).get("component", {}).get("init")
        if isinstance(cfg.component, WorldModelTrainConfig) and began_from != cfg.component.init:
            # a resume starts from its checkpoint, whatever init says now: the record keeps what the run began from
            cfg = replace(cfg, component=replace(cfg.component, init=began_from))
    elif resuming:
        warnings.warn(f"{out} does not record the settings it was begun with (begun before vplan recorded them); "
                      "continuing with these, unchecked", VplanWarning, stacklevel=2)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)


def _pin_split(cfg: TrainConfig, out: Path, episodes: int, held_out: list[int], resuming: bool, write: bool) -> None:
    """Record the split a run begins with (`write`); refuse a resume whose dataset has grown or shrunk since, as the
    last `holdout_episodes` would then be other episodes and the held-out ones trained on."""
    file = out / SPLIT_FILE
    if resuming and file.is_file():
        began = read_json_record(file, "choose another out=DIR", keys=("episodes", "held_out"))
        if began["held_out"] != held_out or began["episodes"] != episodes:
            then = began["held_out"]
            effect = (f"the held-out ones (then {then[0]}..{then[-1]}) would be trained on" if then else
                      "the episodes trained on would change part-way")
            raise UsageError(f"{cfg.data} holds {episodes} episodes now, {began['episodes']} when {out} began: "
                             f"{effect}; resume on the dataset as it was, or choose another out=DIR")
        return
    if write:
        write_json(file, {"episodes": episodes, "held_out": held_out})


def train_component(cfg: TrainConfig) -> Path:
    """Train the chosen component, write `<out>/final` and print a held-out figure.

    Under `accelerate launch` every process checks the same inputs and trains on its share of each batch; the
    first alone records the run, encodes the latents (the others read them from the cache), writes and prints.
    """
    with only_the_main_process_prints():
        return _train_component(cfg)


def _train_component(cfg: TrainConfig) -> Path:
    check_batch_splits(cfg.component.optim, process_count(), f"train {cfg.component.name}", "component.optim")
    dataset, train_episodes, held_out = _split(cfg.data, cfg.holdout_episodes, cfg.how_to_make_data())
    out = Path(cfg.out)
    final = out / FINAL
    component = cfg.component
    check_out_is_ours(out, cfg)
    resuming = bool(list_checkpoints(out))
    check_steps_reach(out, component.optim)  # before minutes of reading data
    warn_if_lr_not_reached(component.optim)
    if not isinstance(component, VAETrainConfig):  # (whose `vae` is its settings, not a checkpoint)
        check_outside_results(out, {f"component.{name}": getattr(component, name, None) for name in ("vae", "init")})
    # The checkpoints it starts from, checked before anything is written (and before frames become latents).
    vae = None if isinstance(component, VAETrainConfig) or component.vae is None else _load_vae(
        component.vae, optional=isinstance(component, IDMTrainConfig), env=dataset.env)
    if vae is not None and dataset.env is not None:  # the tabletop's VAE draws blockworld frames at 11.8 dB
        warn_if_trained_elsewhere({"component.vae": component.vae}, dataset.env)
    if isinstance(component, WorldModelTrainConfig) and component.model.text_encoder.kind == "minilm":
        resolve_minilm_dir(component.model.text_encoder.path, "component.model.text_encoder.path")
    frames = tuple(dataset.info["features"][OBS_IMAGE_FRONT]["shape"][:2])  # from the metadata: nothing decoded
    if isinstance(component, VAETrainConfig):
        component = replace(component, vae=_sized_for(component.vae, frames, "component.vae"))
    if isinstance(component, IDMTrainConfig):
        component = replace(component, idm=_sized_for(component.idm, frames, "component.idm"))
    cfg = replace(cfg, component=component)
    if isinstance(component, WorldModelTrainConfig):  # before anything is written or encoded
        size = vae.config.sample_size if vae is not None else component.model.vae.image_size
        if frames != (size, size):
            raise UsageError(f"the dataset's frames are {frames[0]}x{frames[1]}; "
                             + (f"component.vae={component.vae} reads {size}x{size} frames: pass a VAE trained on "
                                "this dataset's frames" if vae is not None else
                                f"the model's VAE is for {size}x{size} (component.model.vae.image_size)"))
    if isinstance(component, WorldModelTrainConfig):
        span = component.model.context_frames + component.model.chunk_frames  # a clip (the metadata's lengths)
        longest = max(int(dataset.episode_meta(e)["length"]) for e in train_episodes)
        if longest < span:  # found after the latents were made, unnamed
            raise UsageError(f"no training episode is long enough for a {span}-frame clip (component.model."
                             f"context_frames + chunk_frames; the longest has {longest} frames): lower them, or "
                             "collect longer episodes (env.max_episode_steps)")
        # a VAE that does not fit the model: refused before anything is written
        model_config = component.model if vae is None else _with_vae(component.model, vae)
        if component.init is not None and not resuming:
            check_checkpoints_exist({"component.init": component.init})
            # loaded into a throwaway model: one of another architecture would be found after the latents were made
            _load_init(WorldModel(model_config, vae=vae), component.init)
    if isinstance(component, WorldModelTrainConfig) and component.model.uses_actions:
        _check_actions_fit(dataset.info["features"], component.model.action_dim, cfg.data)
    if isinstance(component, IDMTrainConfig):
        check_fits(dataset, component, vae)
    if isinstance(component, VAETrainConfig):
        _check_frame_size(frames, component.vae.image_size)
    main = is_main_process()  # every process checks (so all refuse together); the first writes
    _record_config(cfg, out, resuming, write=main)
    _pin_split(cfg, out, len(train_episodes) + len(held_out), held_out, resuming, write=main)
    try:
        return _train_and_write(cfg, dataset, train_episodes, held_out, out, vae, resuming)
    except KeyboardInterrupt:
        newest = list_checkpoints(out)
        if newest and checkpoint_step(newest[-1]) >= component.optim.steps and not final.is_dir():
            print(f"stopped after the last step, before {final} was written; the same command writes it")
        elif not newest:  # stopped while the data was read or encoded, before the trainer (which says its own)
            latents = isinstance(component, WorldModelTrainConfig) and dataset.cache_dir is not None
            print("stopped before the first training step; the same command starts it" + (
                f", reading the latents encoded so far from {dataset.cache_dir / LATENTS_DIR}" if latents else ""))
        raise


def _train_and_write(
    cfg: TrainConfig, dataset: Any, train_episodes: list[int], held_out: list[int], out: Path, vae: Any,
    resuming: bool,
) -> Path:
    """Train the component (its inputs checked and recorded), write `<out>/final` and print a held-out figure."""
    component, final, main = cfg.component, out / FINAL, is_main_process()
    if isinstance(component, VAETrainConfig):
        training = VAETraining(component, _frames(dataset, train_episodes))
        train(training, component.optim, out, "train vae")
        if not main:
            return final
        vae = training.module.eval()
        print("measuring the latents' scale" + (" and scoring the held-out frames" if held_out else "") + " ...",
              flush=True)  # ~13 s on 2 cores for 6 episodes, after the bar has ended
        metrics: dict[str, Any] = {"held_out_episodes": held_out}
        with torch.no_grad():
            vae.register_to_config(scaling_factor=1.0)
            vae.register_to_config(scaling_factor=estimate_scaling_factor(vae, training.frames[:: max(1, len(training.frames) // 2000)]))
            if held_out:
                test = _frames(dataset, held_out)
                score = psnr(decode_latents(vae, encode_frames(vae, test)).cpu(), test)  # a GPU's VAE stays there
                metrics.update(reconstruction_psnr_db=score, frames=len(test))
        with folder_written_aside(final) as folder:
            vae.save_pretrained(folder, safe_serialization=True)
            write_json(folder / "metrics.json", metrics)  # as the IDM's: the figure printed below, kept
        print(f"VAE written to {final}; " + (f"held-out reconstruction PSNR {score:.2f} dB on {len(test)} frames"
                                             if held_out else "no held-out figure (holdout_episodes=0)"))
        return final
    if isinstance(component, IDMTrainConfig):
        from vplan.data.collect import warn_if_expert_only

        warn_if_expert_only(cfg.data)
        if component.vae is not None:
            pin_checkpoints(out, {"vae": component.vae}, resuming, write=main)
        return train_idm(component, dataset, train_episodes, held_out, out, vae)
    if component.model.uses_text:
        from vplan.data.collect import warn_if_exploring

        warn_if_exploring(cfg.data)
    # the latents it trains on: never two VAEs' in one run
    pin_checkpoints(out, {"vae": component.vae}, resuming, write=main)
    component.model = _with_vae(component.model, vae)
    with main_process_first():  # the first encodes them into the dataset's cache, the others read them there
        latents = episode_latents(dataset, train_episodes, vae, progress="frames to latents (cached per VAE)" if main
                                  else None)
    texts, actions = [], []
    for e in train_episodes:
        episode = dataset.episode(e)
        texts.append(list(episode[SUBGOAL]))
        if component.model.uses_actions:
            actions.append(_episode_actions(episode))
    training = WorldModelTraining(component, latents, texts, vae, actions if component.model.uses_actions else None,
                                  resuming=resuming)
    train(training, component.optim, out, "train worldmodel")
    if not main:
        return final
    with folder_written_aside(final) as folder:  # an action model also notes what its actions meant
        training.module.eval().save_pretrained(folder, trained_on_env=dataset.env, action_units=dataset.action_units)
    print(f"world model written to {final}")
    return final
