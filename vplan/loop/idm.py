"""`vplan train component=idm data=DIR`: the inverse-dynamics policy on the dataset's transitions.

A transition is (frames up to t, frame t+1, action t) inside one episode. The IDM trains on the real frames
and, when a VAE is given, on the same transitions passed through it (encode, then decode): the world model's
frames are VAE decodes, so the IDM must read those too. Each training sample is drawn from the reconstructed
transitions with probability `vae_fraction`. Reconstruction costs ~30 ms a frame on 2 CPU cores, so only
`vae_episodes` training episodes (spread over the dataset) are reconstructed, once, before training.

At the end the held-out episodes give the error on real and on reconstructed transitions: the mean absolute
error of each continuous action dimension (action units: 1 is the env's full step, `max_delta`) and the grip
accuracy, next to a baseline that always predicts the training transitions' mean action; for an IDM of discrete
moves, the move accuracy next to always the commonest move. They are printed and written to
`<out>/final/metrics.json`.

The IDM learns to read the action the env applied (`component.label=applied`, the dataset's `action.applied`),
not the one commanded: the tabletop clips the gripper's target to its workspace, so a push into the edge moves
nothing and no frame can show it (the expert, stuck reaching a cube outside the workspace, pushes for hundreds
of steps). `component.label=commanded` trains on the recorded `action` instead.

The IDM learns what the data shows. A dataset of the expert alone (`vplan collect` without `explore_fraction=`
or `noise_std=`) only holds the expert's actions in the expert's states; collect with
`explore_fraction=0.2 noise_std=0.05` so that it also sees random motions.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.constants import OBS_IMAGE_FRONT
from vplan.envs.discrete_moves import NUM_MOVES
from vplan.errors import UsageError, VplanWarning
from vplan.loop.config import LABELS, IDMTrainConfig
from vplan.loop.trainer import FINAL, is_main_process, main_process_first, train
from vplan.policies.config import IDMConfig
from vplan.policies.idm import IDMPolicy, windows
from vplan.utils.files import folder_written_aside

METRICS_FILE = "metrics.json"


@dataclass
class Episode:
    """One episode's frames (T, H, W, 3) uint8, the same frames through the VAE (or None), actions (T, A)."""

    frames: torch.Tensor
    actions: torch.Tensor
    reconstructed: torch.Tensor | None = None


class IDMTraining:
    """Transitions of the training episodes, drawn uniformly; each from the VAE's frames with `vae_fraction`."""

    def __init__(self, config: IDMTrainConfig, episodes: list[Episode]) -> None:
        torch.manual_seed(config.optim.seed)
        self.config, self.episodes, self.module = config, episodes, IDMPolicy(config.idm)
        self.real = _transitions(episodes)
        self.vae = _transitions(episodes, reconstructed=True)
        if not len(self.real):
            raise UsageError("no training episode has two frames; collect longer episodes")

    def batch(self, generator: torch.Generator, batch_size: int) -> dict[str, Any]:
        from_vae = torch.rand(batch_size, generator=generator) < self.config.vae_fraction
        real = self.real[torch.randint(len(self.real), (batch_size,), generator=generator)]
        if len(self.vae):
            vae = self.vae[torch.randint(len(self.vae), (batch_size,), generator=generator)]
            real = torch.where(from_vae[:, None], vae, real)
        else:
            from_vae = torch.zeros_like(from_vae)
        history = self.config.idm.history_frames
        frames, actions = [], []
        for (episode, t), reconstructed in zip(real.tolist(), from_vae.tolist()):
            data = self.episodes[episode]
            source = data.reconstructed if reconstructed else data.frames
            frames.append(windows(source, [t], history)[0])
            actions.append(data.actions[t])
        return {"frames": torch.stack(frames), "action": torch.stack(actions)}

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.module(batch)


def _transitions(episodes: list[Episode], reconstructed: bool = False) -> torch.Tensor:
    """(episode, t) of every transition t → t+1 (of the episodes with reconstructions, if `reconstructed`)."""
    pairs = [
        (e, t)
        for e, episode in enumerate(episodes)
        if not reconstructed or episode.reconstructed is not None
        for t in range(len(episode.frames) - 1)
    ]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def evenly_spaced(items: list[int], count: int) -> list[int]:
    """`count` items spread evenly over `items` (all of them if there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def check_fits(dataset: Any, config: IDMTrainConfig, vae: Any | None) -> None:
    """A UsageError where the dataset's features (read from its metadata) or the VAE do not fit the IDM: said
    before `vplan train` writes anything."""
    idm, key = config.idm, LABELS[config.label]
    features = dataset.info["features"]
    if key not in features and config.label == "commanded":
        raise UsageError(f"{dataset.root} has no {key!r} feature, so nothing to learn actions from; collect a "
                         "dataset with `vplan collect`")
    if key not in features and features.get(LABELS["commanded"], {}).get("dtype", "").startswith("int"):
        moves = "" if idm.discrete else f" component.idm.num_moves={NUM_MOVES if dataset.env else 'N'}"
        raise UsageError(f"{dataset.root} holds moves and no {key!r} feature (an env of moves, like the blockworld, "
                         f"reports no applied action); train on the recorded moves: component.label=commanded{moves}")
    if key not in features:
        raise UsageError(
            f"{dataset.root} has no {key!r} feature (collected before the env reported the applied action, or "
            f"from an env that does not); collect it again, or train on the recorded actions with "
            f"component.label=commanded"
        )
    moves = features[key]["dtype"].startswith("int")
    if moves != idm.discrete:
        raise UsageError(
            f"{dataset.root} holds {'discrete moves' if moves else 'continuous actions'}; set "
            + ("component.idm.num_moves=N, the env's number of moves (the blockworld: 5)" if moves
               else "component.idm.num_moves=0")
        )
    if moves and dataset.env is not None and idm.num_moves != NUM_MOVES:  # a move it never sees would be predicted
        raise UsageError(f"{dataset.root} was recorded in vplan's {dataset.env}, whose actions are one of "
                         f"{NUM_MOVES} moves; set component.idm.num_moves={NUM_MOVES}")
    moves_seen = dataset.stats.get(key, {}) if moves else {}  # the episodes' range, in their metadata
    if "min" in moves_seen and "max" in moves_seen:  # (`load_episodes` checks each episode's moves again)
        _check_moves(float(np.min(moves_seen["min"])), float(np.max(moves_seen["max"])), idm.num_moves)
    height, width = features[OBS_IMAGE_FRONT]["shape"][:2]
    if (height, width) != (idm.image_size,) * 2:
        raise UsageError(f"the dataset's frames are {height}x{width}; this IDM is for "
                         f"{idm.image_size}x{idm.image_size} (set component.idm.image_size={height})")
    if vae is not None and vae.config.sample_size != idm.image_size:  # the dataset's size, checked above
        raise UsageError(  # as the world model's training says it
            f"the dataset's frames are {idm.image_size}x{idm.image_size}; component.vae={config.vae} reads "
            f"{vae.config.sample_size}x{vae.config.sample_size} frames: pass a VAE trained on this dataset's frames"
        )
    if int(np.prod(features[key]["shape"])) != idm.action_dim:
        raise UsageError(f"the dataset's actions have shape {tuple(features[key]['shape'])}; this IDM predicts "
                         f"({idm.action_dim},) (set component.idm.action_dim)")


def _check_moves(lowest: float, highest: float, num_moves: int) -> None:
    """A UsageError unless moves from `lowest` to `highest` are among an IDM's `num_moves` (0 .. num_moves - 1)."""
    if not (0 <= lowest and highest < num_moves):
        raise UsageError(f"the dataset's moves lie in [{lowest:.0f}, {highest:.0f}]; this IDM knows "
                         f"num_moves={num_moves} (set component.idm.num_moves)")


def load_episodes(
    dataset: Any, indices: list[int], config: IDMConfig, vae: Any, reconstruct: set[int], label: str = "applied"
) -> list[Episode]:
    """The episodes' frames and actions (`label`: applied or commanded; what `check_fits` found to fit the IDM),
    their moves checked against it; those in `reconstruct` also through `vae`."""
    from tqdm import tqdm

    from vplan.worldmodel.latent_cache import episode_latents
    from vplan.worldmodel.vae import decode_latents

    key = LABELS[label]
    episodes = []
    for index in indices:
        data = dataset.episode(index)
        frames = torch.from_numpy(np.array(data[OBS_IMAGE_FRONT]))
        actions = torch.from_numpy(np.array(data[key], dtype=np.float32)).reshape(len(frames), -1)
        if config.discrete and len(actions):
            _check_moves(float(actions.min()), float(actions.max()), config.num_moves)
        episodes.append(Episode(frames, actions))
    todo = [i for i, index in enumerate(indices) if index in reconstruct]
    if todo:  # the latents come from the dataset's cache where an earlier run with this VAE left them
        main = is_main_process()  # under accelerate launch, the others' progress bars would repeat its
        with main_process_first():  # there, the first encodes the latents into the cache, the others read them
            latents = episode_latents(dataset, [indices[i] for i in todo], vae,
                                      progress="frames to latents" if main else None)
        with torch.no_grad():
            for i, episode_latent in zip(tqdm(todo, desc="latents back to frames", unit="episode", disable=not main),
                                         latents):
                episodes[i].reconstructed = decode_latents(vae, episode_latent)
    return episodes


@torch.no_grad()
def evaluate(policy: IDMPolicy, episodes: list[Episode], baseline: torch.Tensor, reconstructed: bool) -> dict[str, Any]:
    """Held-out error on every transition of `episodes` (real or reconstructed frames), and the baseline's."""
    history = policy.config.history_frames
    predicted, targets = [], []
    for episode in episodes:
        frames = episode.reconstructed if reconstructed else episode.frames
        steps = range(len(frames) - 1)
        if not len(steps):
            continue
        window = windows(frames, steps, history)
        predicted.append(policy.predict_windows(window))
        targets.append(episode.actions[:-1])
    if not predicted:
        raise UsageError("no held-out episode has two frames; collect longer episodes")
    if policy.config.discrete:
        return move_report(torch.cat(predicted), torch.cat(targets).reshape(-1).long(), baseline)
    return error_report(torch.cat(predicted), torch.cat(targets), baseline, policy.config.binary_gripper)


def warn_if_no_grip(actions: torch.Tensor) -> None:
    """A VplanWarning where the last action value, which `binary_gripper` learns as a grip command (±1), lies
    mostly near 0 in the training episodes: an env of one's own whose last value is a motion axis would have it
    learned as ±1 and then sent so (its "grip accuracy" is no warning: an unused axis scores 100%)."""
    median = float(actions[:, -1].abs().median()) if len(actions) else 1.0
    if median < 0.5:
        warnings.warn(f"component.idm.binary_gripper=true learns the last action value as a grip command (±1, > 0 "
                      f"closes), and in the training episodes it lies mostly near 0 (median |value| {median:.2g}); "
                      "if it is not a grip, set "
                      "component.idm.binary_gripper=false", VplanWarning, stacklevel=2)


def baseline_action(actions: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The baseline's constant prediction from the training actions: the mean action, or the commonest move."""
    return actions.reshape(-1).long().mode().values if discrete else actions.mean(0)


def move_report(predicted: torch.Tensor, target: torch.Tensor, commonest: torch.Tensor) -> dict[str, Any]:
    """Accuracy of the predicted moves, next to always predicting the commonest training move."""
    return {
        "transitions": len(target),
        "accuracy": float((predicted == target).float().mean()),
        "baseline_accuracy": float((target == commonest).float().mean()),
    }


def error_report(
    predicted: torch.Tensor, target: torch.Tensor, mean_action: torch.Tensor, binary_gripper: bool
) -> dict[str, Any]:
    """MAE per continuous dimension (and the grip accuracy) of predictions and of always predicting the mean."""
    continuous = slice(0, -1) if binary_gripper else slice(None)
    baseline = mean_action.expand_as(target)
    report: dict[str, Any] = {
        "transitions": len(target),
        "mae": (predicted[:, continuous] - target[:, continuous]).abs().mean(0).tolist(),
        "baseline_mae": (baseline[:, continuous] - target[:, continuous]).abs().mean(0).tolist(),
    }
    if binary_gripper:
        closed = target[:, -1] > 0
        report["grip_accuracy"] = float(((predicted[:, -1] > 0) == closed).float().mean())
        report["baseline_grip_accuracy"] = float(((baseline[:, -1] > 0) == closed).float().mean())
    return report


def _line(label: str, report: dict[str, Any]) -> str:
    if "accuracy" in report:
        return (f"  {label}: move accuracy {100 * report['accuracy']:.1f}% "
                f"(baseline {100 * report['baseline_accuracy']:.1f}%)")
    mae = ", ".join(f"{v:.3f}" for v in report["mae"])
    base = ", ".join(f"{v:.3f}" for v in report["baseline_mae"])
    grip = ""
    if "grip_accuracy" in report:
        accuracy, baseline = 100 * report["grip_accuracy"], 100 * report["baseline_grip_accuracy"]
        grip = f"; grip accuracy {accuracy:.1f}% (baseline {baseline:.1f}%)"
    return f"  {label}: MAE per dim [{mae}] (baseline [{base}]){grip}"


def train_idm(
    config: IDMTrainConfig, dataset: Any, train_episodes: list[int], held_out: list[int], out: Path, vae: Any | None
) -> Path:
    """Train the IDM on `train_episodes` (of a dataset `check_fits` accepted), write `<out>/final` with its
    held-out metrics, print them."""
    # the training episodes' reconstructions only where training samples them; the held-out ones are scored
    trained = evenly_spaced(train_episodes, config.vae_episodes) if config.vae_fraction > 0 else []
    reconstruct = set(trained + held_out) if vae is not None else set()
    episodes = load_episodes(dataset, train_episodes, config.idm, vae, reconstruct, config.label)
    test = load_episodes(dataset, held_out, config.idm, vae, reconstruct, config.label)
    if held_out and not any(len(episode.frames) >= 2 for episode in test):  # before training, not after its minutes
        raise UsageError("no held-out episode has two frames; collect longer episodes (or holdout_episodes=0)")
    if config.idm.binary_gripper:
        warn_if_no_grip(torch.cat([episode.actions for episode in episodes]))
    training = IDMTraining(config, episodes)
    train(training, config.optim, out, "train idm")
    final = out / FINAL
    if not is_main_process():  # the first writes and scores it
        return final
    policy = training.module.eval()
    baseline = baseline_action(torch.cat([e.actions[:-1] for e in episodes]), config.idm.discrete)
    metrics: dict[str, Any] = {"label": config.label, "held_out_episodes": held_out}
    if held_out:
        metrics["real"] = evaluate(policy, test, baseline, False)
        if vae is not None:
            metrics["vae"] = evaluate(policy, test, baseline, True)
    from vplan.worldmodel.latent_cache import vae_fingerprint

    learned_decodes = vae is not None and config.vae_fraction > 0  # which world models' frames it learned to read
    with folder_written_aside(final) as folder:
        policy.save_pretrained(folder, trained_on_env=dataset.env, action_units=dataset.action_units,
                               reads_vae=vae_fingerprint(vae) if learned_decodes else None)
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if not held_out:
        print(f"IDM written to {final}; no held-out figure (holdout_episodes=0)")
        return final
    units = ("moves; baseline: always the commonest training move" if config.idm.discrete
             else "in action units; baseline: always the training mean action")
    lines = [f"IDM written to {final}; held-out error on {metrics['real']['transitions']} transitions of "
             f"{len(held_out)} episode{'s' if len(held_out) != 1 else ''} ({config.label} actions, {units}):"]
    lines.append(_line("real frames", metrics["real"]))
    if vae is not None:
        lines.append(_line("VAE frames ", metrics["vae"]))
    print("\n".join(lines))
    return final
