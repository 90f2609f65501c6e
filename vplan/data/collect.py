"""`vplan collect`: roll out an env's scripted expert and append the episodes to a LeRobot v3.0 dataset.

Each episode is committed whole, so a collect killed half-way keeps every finished episode, and running the
same command again resumes where it stopped (episode i always uses seed + i, so a resumed dataset equals an
uninterrupted one).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import MISSING
from tqdm import tqdm

from vplan.constants import (
    ACTION, ACTION_APPLIED, DONE, HELD_OUT_SEEDS, OBS_ENV_STATE, OBS_STATE, REWARD, ROBOT_TYPE_PREFIX, SUCCESS,
)
from vplan.data.lerobot_format import DatasetError, EpisodeWriter
from vplan.errors import DamagedDatasetError, RunError, UsageError, VplanWarning
from vplan.tasks import TaskConfig
from vplan.utils.settings import (
    CONFIG_FILE, check_config_is_ours, check_field_types, check_same_config, check_seed, read_config_record,
    write_config,
)

IMAGE_FEATURE = "observation.images.{camera}"  # env observation key "front" -> observation.images.front


RESUMABLE_CHANGES = ("episodes", "out", "resume")  # settings a resumed collection may change


@dataclass
class CollectConfig:
    """Settings of `vplan collect`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    episodes: int = field(default=10, metadata={"help": "Episodes `out` holds when done; a resume adds the rest."})
    out: str = field(default="data/${task.name}", metadata={"help": "Dataset directory."})
    seed: int = field(default=0, metadata={"help": "Episode i is reset with seed + i (evaluation uses 10000+)."})
    noise_std: float = field(default=0.0, metadata={"help": "Gaussian noise on the expert's actions."})
    explore_fraction: float = field(
        default=0.0, metadata={"help": "Share of steps in exploratory random segments (for inverse dynamics)."}
    )
    resume: bool = field(default=True, metadata={"help": "false: refuse a directory that holds episodes."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.episodes < 1:
            raise ValueError(f"episodes: expected a positive number, got {self.episodes}")
        check_seed(self.seed)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std: expected a finite number >= 0, got {self.noise_std}")
        if not 0 <= self.explore_fraction < 1:
            raise ValueError(f"explore_fraction: expected a share in [0, 1), got {self.explore_fraction}")
        from vplan.policies import EXPERTS

        if self.task.name not in EXPERTS:  # before an adapter's simulator is looked for (its install steps)
            raise ValueError(f"task: vplan collect rolls out a scripted expert, and {self.task.name!r} has none; "
                             f"expected one of {sorted(EXPERTS)}")


def dataset_features(env: gym.Env, info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """LeRobot features of an env that follows the project's contract (camera images, agent_pos, info)."""
    features: dict[str, dict[str, Any]] = {}
    if "environment_state" not in info:  # a KeyError below
        raise ValueError("info: expected 'environment_state', an array recorded with each step (object poses, say), "
                         f"got the keys {sorted(info)}")
    for key, space in env.observation_space.spaces.items():
        if key == "agent_pos":
            features[OBS_STATE] = {"dtype": "float32", "shape": list(space.shape), "names": None}
        elif not (np.dtype(space.dtype) == np.uint8 and len(space.shape) == 3 and space.shape[-1] == 3):
            raise ValueError(f"observation {key!r}: expected a camera (uint8, height x width x 3) or 'agent_pos', "
                             f"got {space}; a dataset records no other observation: put it in agent_pos or in "
                             "info['environment_state']")
        else:
            features[IMAGE_FEATURE.format(camera=key)] = {
                "dtype": "video",
                "shape": list(space.shape),
                "names": ["height", "width", "channels"],
            }
    features[OBS_ENV_STATE] = {"dtype": "float32", "shape": list(np.shape(info["environment_state"])), "names": None}
    if isinstance(env.action_space, gym.spaces.Discrete):  # a move's integer (the blockworld)
        features[ACTION] = {"dtype": "int64", "shape": [1], "names": None}
    else:
        features[ACTION] = {"dtype": "float32", "shape": list(env.action_space.shape), "names": None}
    if "applied_action" in info:  # the action as the env applied it (inverse dynamics trains on it)
        features[ACTION_APPLIED] = {"dtype": "float32", "shape": list(np.shape(info["applied_action"])), "names": None}
    features[REWARD] = {"dtype": "float32", "shape": [1], "names": None}
    features[SUCCESS] = {"dtype": "bool", "shape": [1], "names": None}
    features[DONE] = {"dtype": "bool", "shape": [1], "names": None}
    return features


class EpisodeRecorder:
    """One episode's rows in the dataset format, step by step: the observation at t, the action taken at t,
    its outcome (reward, success, done, the applied action) and the subgoal text the step served.

    Shared by the expert's rollouts (`vplan collect`) and the agent's (`vplan run record=true`), so both write
    the same dataset.
    """

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.subgoals: list[str] = []

    def add(
        self, obs: dict[str, Any], info: dict[str, Any], action: Any, subgoal: str,
        reward: float, next_info: dict[str, Any], done: bool,
    ) -> None:
        """One step: `obs`/`info` before it, `reward`/`next_info`/`done` after it. An info that breaks the contract
        is refused at the step, not after the episode where the writer would find a column missing."""
        if "success" not in next_info:
            raise ValueError(f"info: expected 'success' (a bool) in step()'s info, got the keys {sorted(next_info)}")
        if ("applied_action" in info) != ("applied_action" in next_info):  # the features come from reset()'s
            before = "the info before this step (reset()'s or the last step's)"
            raise ValueError("info: 'applied_action' is in " + (before if "applied_action" in info else
                             "step()'s info") + " but not in " + ("step()'s" if "applied_action" in info else before)
                             + "; give it in every info, reset()'s too (zeros: nothing applied yet), or in none")
        frame = {IMAGE_FEATURE.format(camera=k): v for k, v in obs.items() if k != "agent_pos"}
        frame[OBS_STATE] = obs["agent_pos"]
        frame[OBS_ENV_STATE] = info["environment_state"]
        frame[ACTION] = action
        frame.update({REWARD: np.float32(reward), SUCCESS: bool(next_info["success"]), DONE: done})
        if "applied_action" in next_info:
            frame[ACTION_APPLIED] = next_info["applied_action"]
        for key, value in frame.items():
            self.columns.setdefault(key, []).append(value)
        self.subgoals.append(subgoal)

    def end(self) -> None:
        """Mark the last step as the episode's last (`next.done`), for an episode the agent ended itself, where
        the env said neither terminated nor truncated: every recorded episode ends with a done row."""
        if self.subgoals:
            self.columns[DONE][-1] = True

    def frames(self) -> dict[str, np.ndarray]:
        """Per-feature arrays with one row per step (what `EpisodeWriter.add_episode` takes)."""
        return {key: np.stack([np.asarray(v) for v in values]) for key, values in self.columns.items()}


def rollout_expert(env: gym.Env, expert: Any, seed: int) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """One expert episode: per-frame arrays (observation at t, action at t, its outcome), subgoals, summary."""
    obs, info = env.reset(seed=seed)
    expert.reset(info, seed=seed)
    recorder = EpisodeRecorder()
    done = False
    while not done:
        action = expert.select_action(obs, info)
        subgoal = expert.subgoal
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        done = terminated or truncated
        recorder.add(obs, info, action, subgoal, reward, next_info, done)
        obs, info = next_obs, next_info
    summary = {"seed": seed, "success": bool(info["success"]), "dist": float(info["dist"]), "steps": len(recorder.subgoals)}
    return recorder.frames(), recorder.subgoals, summary


def _check_continues(last: dict[str, Any], cfg: CollectConfig, start: int) -> None:
    """A UsageError unless this collection continues the dataset's seeds (episode i runs seed + i): another seed
    would repeat or skip scenes, and could put copies of training episodes among the held-out last ones."""
    last_seed = last.get("seed")
    if last_seed is not None and int(last_seed) != cfg.seed + start - 1:
        raise UsageError(f"{cfg.out}: its {start} episodes ran seeds from {int(last_seed) - start + 1}, so the next "
                         f"is {int(last_seed) + 1}, not {cfg.seed + start} (seed={cfg.seed}); pass seed="
                         f"{int(last_seed) - start + 1} to continue it, or choose another out=DIR")


def _check_same_settings(cfg: CollectConfig, out: Path) -> None:
    """A UsageError naming the settings (env, task, noise, ...) in which this collection differs from the one that
    began `out`: one dataset, one way of collecting (an env's max_delta, say, sets what its actions mean)."""
    if (out / CONFIG_FILE).is_file():
        check_same_config(cfg, out / CONFIG_FILE, RESUMABLE_CHANGES)
    else:
        warnings.warn(f"{out} does not record the settings it was begun with (begun before vplan recorded them); "
                      "continuing with these, unchecked", VplanWarning, stacklevel=2)


def warn_if_exploring(data: str | Path) -> None:
    """A VplanWarning where `data` was collected with exploration: a text-conditioned world model trained or
    finetuned on it learns each random segment under the subgoal the expert was pursuing."""
    try:
        exploring = explore_fraction(data)
    except RunError as error:  # a warning's record: what it cannot read stops nothing
        warnings.warn(f"whether {data} holds exploratory segments is unknown: {error}", VplanWarning, stacklevel=3)
        return
    if exploring:
        warnings.warn(f"{data} was collected with explore_fraction={exploring:g}: its random segments are "
                      "labelled with the subgoal the expert was pursuing, not what their frames show, so the world "
                      "model learns that text for them; train it on an expert-only dataset (the IDM is what "
                      "exploratory data is for)", VplanWarning, stacklevel=3)


def warn_if_expert_only(data: str | Path) -> None:
    """A VplanWarning where `vplan collect` recorded `data` as the expert alone (no `explore_fraction`, no
    `noise_std`): an IDM trained on it never sees the random motions an imperfect world model draws. Silent for a
    dataset `vplan collect` did not write (no record: a run's recording, one from elsewhere)."""
    path = Path(data) / CONFIG_FILE
    try:
        record = read_config_record(path, "restore it from a copy of the dataset") if path.is_file() else None
    except RunError as error:
        warnings.warn(f"whether {data} holds exploratory segments is unknown: {error}", VplanWarning, stacklevel=3)
        return
    if record is not None and not record.get("explore_fraction") and not record.get("noise_std"):
        env = (record.get("task") or {}).get("env")  # the blockworld's moves take no noise
        extra = " env=blockworld" if env == "blockworld" else " noise_std=0.05"
        warnings.warn(f"{data} holds the expert alone (collected without explore_fraction= or noise_std=): the IDM "
                      "never sees the random motions an imperfect world model draws; collect one for it, e.g. "
                      f"`vplan collect episodes=300 explore_fraction=0.2{extra} out=DIR`, and pass data=DIR",
                      VplanWarning, stacklevel=3)


def _recorded_by_run(out: Path) -> bool:
    """Whether `out` is the dataset of a `vplan run record=true` run directory (its `episodes/`; the run's
    config.yaml, one level up, says record: true): the same columns as an expert's, other episodes."""
    from vplan.run import EPISODES_DIR, recorded_its_episodes

    out = out.resolve()  # out=. inside it, or a link to it
    return out.name == EPISODES_DIR and recorded_its_episodes(out.parent)


def explore_fraction(data: str | Path) -> float:
    """The `explore_fraction` `vplan collect` recorded for a dataset (0 when it recorded none): its random
    segments carry the text of the subgoal the expert was pursuing, not what their frames show."""
    path = Path(data) / CONFIG_FILE
    if not path.is_file():
        return 0.0
    return float(read_config_record(path, "restore it from a copy of the dataset").get("explore_fraction", 0.0) or 0.0)


def collect(cfg: CollectConfig) -> Path:
    """Append expert episodes to `cfg.out` until it holds `cfg.episodes`; returns the dataset path."""
    from vplan.envs import action_units, env_name, make_env
    from vplan.policies import make_expert

    out = Path(cfg.out)
    check_config_is_ours(out, cfg)  # another command's folder: before a dataset file is written there
    if cfg.seed + cfg.episodes > HELD_OUT_SEEDS:  # training data from the scenes the evaluations play
        warnings.warn(f"seed={cfg.seed}, episodes={cfg.episodes}: seeds {max(cfg.seed, HELD_OUT_SEEDS)}.."
                      f"{cfg.seed + cfg.episodes - 1} are the held-out scenes vplan run, the evals and the benches "
                      f"play by default; collect training data on seeds below {HELD_OUT_SEEDS}", VplanWarning)
    try:
        expert = make_expert(cfg.task.name, cfg.env, noise_std=cfg.noise_std, explore_fraction=cfg.explore_fraction)
    except ValueError as error:  # e.g. noise_std for an expert of discrete moves
        raise UsageError(str(error)) from None
    env = make_env(cfg.env)
    try:
        _, first_info = env.reset(seed=cfg.seed)
    except BaseException:  # a simulator's failed first reset (RLBench's TaskEnvironmentError): still shut down
        env.close()
        raise
    try:
        writer = EpisodeWriter.create_or_resume(
            out,
            fps=env.metadata["render_fps"],
            features=dataset_features(env, first_info),
            robot_type=ROBOT_TYPE_PREFIX + env_name(cfg.env),  # rlbench runs the tabletop's task: its own name
            resume=cfg.resume,
            action_units=action_units(cfg.env),
        )
    except DatasetError as error:
        env.close()
        if isinstance(error, DamagedDatasetError):  # says what to do itself
            raise
        hint = "choose another out=DIR" + ("" if cfg.resume else ", or resume=true to append")
        raise UsageError(f"{error}; {hint}") from None
    with writer:
        start = writer.num_episodes
        if start:  # a dataset collected otherwise is refused even when it holds enough episodes
            try:
                if _recorded_by_run(out):  # before the seeds: it ran 10000+, and "pass seed=10000" would mislead
                    raise UsageError(f"{out} holds the agent's episodes that `vplan run record=true` recorded in "
                                     f"{out.parent}, not an expert's; collect into another out=DIR")
                _check_continues(writer.last_extra, cfg, start)
                _check_same_settings(cfg, out)
            except UsageError:
                env.close()
                raise
            if start >= cfg.episodes:  # (episodes >= 1: an empty dataset always has some to collect)
                print(f"{out} already holds {start} episodes (asked for {cfg.episodes}); nothing to do")
                env.close()
                return out
            print(f"resuming {out}: {start} episodes there, collecting {cfg.episodes - start} more")
        write_config(out, cfg)  # what a later resume is held to
        successes = 0
        bar = tqdm(desc="collect", unit="episode", initial=start, total=cfg.episodes)
        try:
            for episode in range(start, cfg.episodes):
                frames, subgoals, summary = rollout_expert(env, expert, cfg.seed + episode)
                writer.add_episode(frames, subgoals, extra={"instruction": cfg.task.instruction, **summary})
                successes += summary["success"]
                # counted with the episode it describes (iterating the bar counted it when the next one began)
                bar.set_postfix(success=f"{successes}/{episode - start + 1}", frames=writer.num_frames, refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            env.close()
            writer.close()  # counts an episode whose commit the stop cut short before the writer did
            print(f"interrupted: {writer.num_episodes} episode(s) kept in {out}; the same command collects the rest",
                  file=sys.stderr)
            raise
        bar.close()
        env.close()
        print(
            f"wrote {cfg.episodes - start} episodes to {out} ({writer.num_episodes} episodes, "
            f"{writer.num_frames} frames in all); expert success {successes}/{cfg.episodes - start}"
        )
    return out
