"""A scripted revisit scenario on the tabletop: the scene goes away from a state and comes back to it, often.

The long-horizon consistency metrics (`vplan.eval.consistency_metrics`) need a long real video in which the
camera's scene returns to states it showed before, and to know which frames those are. `return_cubes` alone
has one return (its end resembles its start) and is only ~140 steps, while ≥32 chunks of 8 frames plus
context need ≥260. So the scenario chains **rounds** of the task in one continuous take:

    start ─► every cube onto its spot ─► gripper home, rest ─► every cube back ─► gripper home, rest ─► …

Each round is the scripted expert's own displace-then-return (`ReturnCubesExpert`, driven through a phase of
the scenario's own, since the env's phase stays "return" after the first success), with two additions: after
each half the gripper flies back to its start pose ("home", where `reset` puts it) and rests there for
`rest_frames` steps. Every rest therefore shows one of two states of the whole scene — **A**: the cubes at
their starts (the scene at reset), **B**: the cubes on their spots — with the gripper at home, so a revisit
differs from its first visit only by where the cubes settled (within the env's 2 cm success tolerance of
their starts, or near the spot centres). Rounds repeat until the take has `min_frames` frames, and the take
always ends on a rest in state A.

Revisit pairs `(first_visit, revisit)`: the k-th frame of the first rest in a state paired with the k-th frame
of each later rest in the same state; state A's first visit is the start of the take (the gripper rests at
home for `rest_frames` steps before the first round). Frames are real renders of `TabletopEnv`; the take is
one continuous simulation (no reset between rounds), so the env's `terminated` at each completed return is
ignored, and the env is stepped directly rather than through gymnasium's `TimeLimit`.

Subgoal texts per frame are the expert's labels; the homing and resting steps carry the label of the step
before them (the expert itself labels its backing-off after a release with the subgoal it just finished),
and the rest before the first round carries the first round's first subgoal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import numpy as np

from vplan.errors import RunError, UsageError
from vplan.utils.settings import check_int, check_seed

HOME_TOL = 0.002  # metres from home at which the gripper counts as back
HOME_MAX_STEPS = 40  # homing gives up after this many steps (never reached on the tabletop: ~10 needed)
HALF_MAX_STEPS = 300  # one displace or return half gives up after this many expert steps


@dataclass
class RevisitScenario:
    """A long real take with revisits: frames, per-frame subgoals and the (first_visit, revisit) pairs."""

    frames: np.ndarray  # (T, H, W, 3) uint8, the front camera
    subgoals: list[str]  # T texts: the subgoal being pursued at each frame
    pairs: list[tuple[int, int]]  # (first_visit, revisit) frame indices, first_visit < revisit
    states: list[str] = field(default_factory=list)  # T labels: "A" / "B" on rest frames, "" while moving
    agent_pos: np.ndarray | None = None  # (T, 4) float32: the env's agent_pos at each frame (tabletop: gripper
    # xyz and opening; blockworld: x, y, z and heading)
    cube_positions: np.ndarray | None = None  # (T, n, 3) cube centres at each frame (None where there are none)
    seed: int = 0
    rounds: int = 0
    fps: float = 10.0  # frames per second of the take (the env's control rate)

    def __len__(self) -> int:
        return len(self.frames)


def revisit_scenario(
    seed: int,
    min_frames: int = 260,
    rest_frames: int = 4,
    env_config: Any = None,
) -> RevisitScenario:
    """Run the tabletop revisit scenario for `seed` (deterministic per seed); see the module docstring.

    `min_frames` defaults to 4 context frames + 32 chunks of 8. `env_config` is a `TabletopConfig`
    (default: the benchmark's 64×64 front camera).
    """
    from vplan.envs.tabletop_v0 import TabletopConfig, TabletopEnv
    from vplan.policies import ReturnCubesExpert
    from vplan.policies.return_cubes_expert import HOVER_MARGIN, HOVER_Z

    check_seed(seed)
    check_int(min_frames, "min_frames")  # "10" was a TypeError, 2.5 taken
    check_int(rest_frames, "rest_frames")
    config = env_config if env_config is not None else TabletopConfig()
    if not isinstance(config, TabletopConfig):
        raise ValueError(f"env_config: expected a TabletopConfig, got {type(config).__name__}")
    env = TabletopEnv(config)
    expert = ReturnCubesExpert(max_delta=config.max_delta)
    # the limits are for the default max_delta (m per action of 1): shorter moves take more steps to the same places
    slower = max(1.0, TabletopConfig.max_delta / config.max_delta)
    home_max_steps, half_max_steps = math.ceil(HOME_MAX_STEPS * slower), math.ceil(HALF_MAX_STEPS * slower)
    try:
        obs, info = env.reset(seed=seed)
        expert.reset(info, seed=seed)
        home = info["gripper_pos"].copy()
        take = _Take(obs, info)

        def step(action: np.ndarray, subgoal: str, state: str = "") -> None:
            nonlocal obs, info
            take.label(subgoal, state)  # the label of the frame the action is taken from
            obs, _, _, _, info = env.step(action)  # terminated at a completed return: the take goes on
            take.add(obs, info)

        def rest(state: str, subgoal: str) -> None:
            for _ in range(rest_frames):
                step(np.array([0.0, 0.0, 0.0, -1.0], np.float32), subgoal, state)

        def go_home(subgoal: str) -> None:
            for _ in range(home_max_steps):
                if np.linalg.norm(info["gripper_pos"] - home) < HOME_TOL:
                    return
                delta = np.clip((home - info["gripper_pos"]) / config.max_delta, -1.0, 1.0)
                step(np.append(delta, -1.0).astype(np.float32), subgoal)
            raise RunError(f"seed {seed}: the gripper did not get back home in {home_max_steps} steps; the "
                           "revisit scenario cannot be played with these env settings")

        def half(phase: str) -> str:
            """Run the expert until every cube is displaced (phase "displace") or returned ("return")."""
            for _ in range(half_max_steps):
                done = info["displaced"] if phase == "displace" else info["returned"]
                clear = info["grasped"] == -1 and info["gripper_pos"][2] >= HOVER_Z - HOVER_MARGIN
                if done.all() and clear:  # let go and backed off upwards, as the expert does after a release
                    return expert.subgoal
                action = expert.select_action(obs, {**info, "phase": phase})
                step(action, expert.subgoal)
            raise RunError(f"seed {seed}: the expert did not finish the {phase} half in {half_max_steps} steps; the "
                           "revisit scenario cannot be played with these env settings")

        # The first frame is labelled once the first subgoal is known; rest at home first (state A).
        first_subgoal = _peek_subgoal(expert, obs, info)
        rest("A", first_subgoal)
        rounds = 0
        while True:
            rounds += 1
            subgoal = half("displace")
            go_home(subgoal)
            rest("B", subgoal)
            subgoal = half("return")
            go_home(subgoal)
            rest("A", subgoal)
            if len(take.frames) >= min_frames:
                break
        take.label(take.subgoals[-1] if take.subgoals else first_subgoal, "A")  # the final frame, after the last rest
    finally:
        env.close()
    return take.finish(seed, rounds, rest_frames, fps=float(config.control_hz))


def _peek_subgoal(expert: Any, obs: dict[str, np.ndarray], info: dict[str, Any]) -> str:
    """The subgoal the expert starts with, without moving its state on (a throwaway copy chooses)."""
    import copy

    probe = copy.deepcopy(expert)
    probe.select_action(obs, {**info, "phase": "displace"})
    return probe.subgoal


class _Take:
    """Frames and per-frame records of the scenario, the label of each frame set when its action is chosen."""

    def __init__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.frames: list[np.ndarray] = []
        self.agent_pos: list[np.ndarray] = []
        self.cubes: list[np.ndarray] = []
        self.subgoals: list[str] = []
        self.states: list[str] = []
        self.add(obs, info)

    def add(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.frames.append(obs["front"])
        self.agent_pos.append(obs["agent_pos"])
        self.cubes.append(info["cube_poses"][:, :3].copy())

    def label(self, subgoal: str, state: str) -> None:
        self.subgoals.append(subgoal)
        self.states.append(state)

    def finish(self, seed: int, rounds: int, rest_frames: int, fps: float) -> RevisitScenario:
        assert len(self.subgoals) == len(self.frames), (len(self.subgoals), len(self.frames))
        pairs = _revisit_pairs(self.states, rest_frames)
        return RevisitScenario(
            frames=np.stack(self.frames),
            subgoals=self.subgoals,
            pairs=pairs,
            states=self.states,
            agent_pos=np.stack(self.agent_pos),
            cube_positions=np.stack(self.cubes),
            seed=seed,
            rounds=rounds,
            fps=fps,
        )


def _revisit_pairs(states: list[str], rest_frames: int) -> list[tuple[int, int]]:
    """Pair the k-th frame of the first rest in each state with the k-th frame of every later rest in it.

    A rest is a run of frames labelled with one state; a frame's label says the action taken *from* it is a
    resting one, so every frame of a run shows the gripper at home. Runs of other lengths (the final frame joins
    the last rest) are paired as far as both go.
    """
    runs: dict[str, list[list[int]]] = {}
    index = 0
    while index < len(states):
        state = states[index]
        end = index
        while end < len(states) and states[end] == state:
            end += 1
        if state:
            runs.setdefault(state, []).append(list(range(index, end)))
        index = end
    pairs: list[tuple[int, int]] = []
    for state_runs in runs.values():
        first = state_runs[0][:rest_frames]
        for later in state_runs[1:]:
            pairs += [(a, b) for a, b in zip(first, later[:rest_frames])]
    return sorted(pairs)


# The revisit scenario of each env, by env name (`configs/env/<name>.yaml`, `vplan.envs.env_name`): a
# "module:function" called as `function(seed=..., min_frames=..., env_config=...)` that returns a
# `RevisitScenario` of at least `min_frames` frames. An env plugs its own in by adding an entry here.
REVISIT_SCENARIOS: dict[str, str] = {
    "tabletop": "vplan.eval.revisit:revisit_scenario",
    "blockworld": "vplan.eval.revisit_blockworld:blockworld_revisit_scenario",
}


class NoRevisitScenarioError(UsageError, ValueError):
    """The env has no revisit scenario (a `UsageError`: the CLI prints one line and exits with code 2)."""


def revisit_scenario_for(env: str) -> Callable[..., RevisitScenario]:
    """The revisit-scenario function of env `env` (see `REVISIT_SCENARIOS`); a clear error for an env without one."""
    if env not in REVISIT_SCENARIOS:
        raise NoRevisitScenarioError(
            f"env {env!r} has no revisit scenario; envs with one: {', '.join(sorted(REVISIT_SCENARIOS))} "
            "(an env adds its own to vplan.eval.revisit.REVISIT_SCENARIOS)"
        )
    module_name, function_name = REVISIT_SCENARIOS[env].split(":")
    return getattr(import_module(module_name), function_name)


__all__ = ["REVISIT_SCENARIOS", "NoRevisitScenarioError", "RevisitScenario", "revisit_scenario", "revisit_scenario_for"]
