"""`vplan bench env`: how fast an env steps and renders on one process, and how long an expert episode takes.

The env's step without rendering (`simulate`: the action applied, the physics or kinematic move, the task scored)
and its full step are timed side by side on the same random actions, so the share of rendering is visible; the
observation of every full step includes the camera images, as in training and `run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import MISSING

# Steps+renders per second at 64x64 on one process that the issues ask of each env.
TARGET_STEPS_PER_S = {"tabletop": 500, "blockworld": 300}

from vplan.eval.bench_record import OUT_HELP, make_out_dir, record_bench, says_nothing_kept
from vplan.tasks import TaskConfig
from vplan.utils.settings import check_field_types, check_seed


@dataclass
class BenchEnvConfig:
    """Settings of `vplan bench env`."""

    env: Any = field(default=MISSING, metadata={"help": "Env config (configs/env/)."})
    task: TaskConfig = field(default=MISSING, metadata={"help": "Task config (configs/task/)."})
    steps: int = field(default=2000, metadata={"help": "Random-action steps timed for steps/s."})
    episodes: int = field(default=5, metadata={"help": "Expert episodes timed."})
    seed: int = field(default=0, metadata={"help": "First seed; expert episode i uses seed + i."})
    out: str | None = field(default=None, metadata={"help": OUT_HELP})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.steps < 1 or self.episodes < 1:
            raise ValueError(f"steps and episodes: expected positive numbers, got {self.steps}, {self.episodes}")
        check_seed(self.seed)


def _steps_per_second(env: Any, actions: np.ndarray, seed: int, step: Any) -> tuple[float, float]:
    """Steps per second of wall time, and per second of this process's CPU time (all its threads). The resets
    between episodes are not timed: only the rendered step ends episodes by the time limit, so counting them
    would charge it (the blockworld's: building a new terrain) with work the step without rendering never does."""
    env.reset(seed=seed)
    reset_s = reset_cpu_s = 0.0
    start, start_cpu = time.perf_counter(), time.process_time()
    for action in actions:
        if step(action):
            before, before_cpu = time.perf_counter(), time.process_time()
            env.reset()
            reset_s += time.perf_counter() - before
            reset_cpu_s += time.process_time() - before_cpu
    wall, cpu = time.perf_counter() - start - reset_s, time.process_time() - start_cpu - reset_cpu_s
    return len(actions) / wall, len(actions) / cpu


@says_nothing_kept
def bench_env(cfg: BenchEnvConfig) -> dict[str, float]:
    """Measure and print steps/s (the step without rendering; with it) and expert episode wall time."""
    from tqdm import tqdm

    from vplan.data.collect import rollout_expert
    from vplan.envs import env_name, make_env
    from vplan.policies import EXPERTS, make_expert

    machine = make_out_dir(cfg.out, "bench env")
    env = make_env(cfg.env)
    rng = np.random.default_rng(cfg.seed)
    if isinstance(env.action_space, gym.spaces.Discrete):  # random moves
        actions = rng.integers(0, env.action_space.n, cfg.steps)
    else:
        actions = rng.uniform(-1, 1, (cfg.steps, *env.action_space.shape)).astype(np.float32)
    base = env.unwrapped

    def physics_only(action: np.ndarray) -> bool:  # the env's step without its camera: actions, physics, scoring
        _, terminated, _ = base.simulate(action)
        return terminated

    def full_step(action: np.ndarray) -> bool:
        _, _, terminated, truncated, _ = env.step(action)
        return terminated or truncated

    # adapters of outside simulators (RLBench, MineRL) render inside their step: only the full step is timed
    physics = _steps_per_second(env, actions, cfg.seed, physics_only)[0] if hasattr(base, "simulate") else None
    rendered, rendered_per_cpu_s = _steps_per_second(env, actions, cfg.seed, full_step)

    times, lengths, successes = [], [], 0
    has_expert = cfg.task.name in EXPERTS  # minerl's navigate has none
    if has_expert:
        expert = make_expert(cfg.task.name, cfg.env)
        for episode in tqdm(range(cfg.episodes), desc="expert episodes", unit="episode"):
            start = time.perf_counter()
            _, subgoals, summary = rollout_expert(env, expert, cfg.seed + episode)
            times.append(time.perf_counter() - start)
            lengths.append(len(subgoals))
            successes += summary["success"]
    env.close()

    size = cfg.env.image_size
    # an embedded env's (rlbench runs the tabletop's task), set for 64x64 frames: no ratio at another size
    target = TARGET_STEPS_PER_S.get(env_name(cfg.env)) if size == 64 else None
    results = {
        "steps_without_render_per_s": physics,
        "steps_and_renders_per_s": rendered,
        "steps_and_renders_per_cpu_s": rendered_per_cpu_s,
        "render_share_of_step": None if physics is None else 1.0 - rendered / physics,
        "expert_episode_s": float(np.mean(times)) if times else None,
        "expert_episode_steps": float(np.mean(lengths)) if times else None,
        "expert_success_rate": successes / len(times) if times else None,
    }
    print(f"\n{env_name(cfg.env)} at {size}x{size}, one process, {cfg.steps} random-action steps:")
    versus_target = f", {rendered / target:.2f}x the {target}/s target" if target else ""
    if physics is None:
        print(f"  {'step without render':<24} {'-':>10}          (the env renders inside its step: not timed apart)")
        print(f"  {'step with render (obs)':<24} {rendered:10.0f} steps/s")
    else:
        print(f"  {'step without render':<24} {physics:10.0f} steps/s")
        print(f"  {'step with render (obs)':<24} {rendered:10.0f} steps/s   ({rendered / physics:.2f}x of "
              f"the step without render{versus_target})")
    # On a machine shared with other jobs wall time undercounts; CPU time is what this process got.
    print(f"  {'per second of CPU time':<24} {rendered_per_cpu_s:10.0f} steps    (this process's threads; "
          "about what an idle machine gives)")
    if not has_expert:
        print(f"task {cfg.task.name} has no scripted expert: no expert episodes timed")
        record_bench(cfg.out, "bench env", cfg, results, machine)
        return results
    print(f"expert on {cfg.episodes} episodes of {cfg.task.name}:")
    print(f"  wall time per episode    {results['expert_episode_s']:10.2f} s")
    print(f"  steps per episode        {results['expert_episode_steps']:10.1f}")
    print(f"  success                  {f'{successes}/{cfg.episodes}':>10}")
    record_bench(cfg.out, "bench env", cfg, results, machine)
    return results
