"""Scripted expert for vplan/Blockworld-v0's `retrace` task, labelling every step with its subgoal.

It follows the planned path (privileged: the env's `info["path"]`), forwards on the outbound, backwards on
the return, point by point: it turns towards the next point (to the nearest heading a turn can reach) and
walks there, jumping where the ground steps up a block. On the planned path this is exactly what the
instructions say ("walk forward": walking moves; "turn left" / "turn right": a right angle in turns, then
walking; the return: turn around, then the path backwards), and after an exploratory detour it finds its way
back to the path. Every step's subgoal is the env's instruction for that step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vplan.envs.blockworld.motion import BLOCKED, WALK_STEP
from vplan.envs.blockworld.retrace import walk_move
from vplan.envs.discrete_moves import NUM_MOVES, TURN_DEGREES, Move
from vplan.policies.exploration import ExplorationSegments

REACH = WALK_STEP / 2  # a path point closer than this (blocks) counts as reached
RESYNC_POINTS = 6  # after a detour, the nearest of this many next path points is taken up


class RetraceExpert:
    """Walks the outbound instructions, then retraces the planned path to the start.

    `explore_fraction` is the expected fraction of steps spent in segments of random moves, labelled with the
    subgoal the expert was pursuing (for inverse-dynamics data). The moves are discrete, so there is no action
    noise: `noise_std` must be 0.
    """

    def __init__(self, noise_std: float = 0.0, explore_fraction: float = 0.0, seed: int | None = None) -> None:
        if noise_std != 0:
            raise ValueError(
                "noise_std: the retrace expert's moves are discrete and take no Gaussian noise; expected 0 "
                f"(explore_fraction adds random moves), got {noise_std!r}"
            )
        self.explore_fraction = explore_fraction
        self._seed = seed
        self._exploration = ExplorationSegments(explore_fraction)
        self._rng = np.random.default_rng(seed)
        self._path = np.zeros((0, 2))
        self._phase = ""
        self._route = np.zeros((0, 2))
        self._next = 0
        self._gate: int | None = None  # the route's turning point, not to be skipped by taking up a later point
        self._subgoal = ""

    @property
    def subgoal(self) -> str:
        """The subgoal text of the step last chosen by `select_action` ("" before the first)."""
        return self._subgoal

    def reset(self, info: dict[str, Any], seed: int | None = None) -> None:
        """Start an episode from the env's reset `info`: read the path, reseed."""
        self._rng = np.random.default_rng(self._seed if seed is None else seed)
        self._path = np.asarray(info["path"], float)
        self._phase = ""
        self._exploration.reset()
        self._subgoal = ""

    def select_action(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        """One move (the env's action integer), from the privileged state in `info`."""
        del obs  # the expert acts on privileged state only
        if not len(self._path):
            raise RuntimeError("call reset(info) before select_action: the expert reads the path from its reset info")
        self._subgoal = info["instruction"]
        if info["phase"] != self._phase:
            self._phase = info["phase"]
            if self._phase == "outbound":
                self._set_route(self._path)
            else:  # what is left of the way out (after a detour), then the whole path backwards
                rest = self._route[self._next :]
                self._set_route(np.concatenate([rest, self._path[::-1]]), gate=len(rest) - 1)
        elif self._phase == "return" and self._at_end(info) and not info["success"]:
            # Back at the start with a waypoint missed (after a detour): out to the farthest one missed and back;
            # with none missed, the turning point was: out to the path's end and back.
            missed = np.flatnonzero(~np.asarray(info["passed"]))
            far = len(self._path) - 1
            if len(missed):
                far = far // len(info["waypoints"]) * int(missed.max())
            self._set_route(np.concatenate([self._path[: far + 1], self._path[far::-1]]), gate=far)
        move = self._follow(info)
        if self._exploration.explore(self._rng):
            move = Move(int(self._rng.integers(NUM_MOVES)))
        return int(move)

    def _set_route(self, route: np.ndarray, gate: int | None = None) -> None:
        """Follow `route` from its start; `gate`, an index into it, is a point to reach before any later one."""
        keep = np.concatenate([[True], np.linalg.norm(np.diff(route, axis=0), axis=1) > 1e-6])
        self._route, self._next = route[keep], 0  # without the repeats of turning in place
        self._gate = None if gate is None else int(keep[: gate + 1].sum()) - 1

    def _at_end(self, info: dict[str, Any]) -> bool:
        position = np.asarray(info["position"], float)[:2]
        return self._next == len(self._route) - 1 and np.linalg.norm(self._route[-1] - position) < REACH

    def _follow(self, info: dict[str, Any]) -> Move:
        """The move towards the next point of the route."""
        position = np.asarray(info["position"], float)[:2]
        route, last = self._route, len(self._route) - 1
        # Not past the gate: on the way back the path's points come again, and the nearest of them can be a
        # copy beyond the turning point, which would be left out.
        limit = last if self._gate is None or self._next > self._gate else self._gate
        ahead = route[self._next : min(self._next + RESYNC_POINTS, limit + 1)]
        self._next += int(np.argmin(np.linalg.norm(ahead - position, axis=1)))  # take up the nearest point
        while self._next < limit and np.linalg.norm(route[self._next] - position) < REACH:
            self._next += 1
        if self._next == self._gate and np.linalg.norm(route[self._gate] - position) < REACH:
            self._gate = None  # reached: the way back may be taken up
            while self._next < last and np.linalg.norm(route[self._next] - position) < REACH:
                self._next += 1
        offset = route[self._next] - position
        if np.linalg.norm(offset) < REACH:  # at the route's end: wait, turning in place
            return Move.TURN_RIGHT
        # Heading of the offset (degrees clockwise from +x), rounded to one a turn can reach.
        wanted = math.degrees(math.atan2(-offset[1], offset[0]))
        wanted = (round(wanted / TURN_DEGREES) * TURN_DEGREES) % 360.0
        error = (wanted - info["heading"] + 180.0) % 360.0 - 180.0
        if abs(error) > 1e-6:
            return Move.TURN_RIGHT if error > 0 else Move.TURN_LEFT
        if info["rise_ahead"] == BLOCKED and self._next < last:
            self._next += 1  # cannot walk there (after a detour): aim at the next point instead
        return walk_move(info["rise_ahead"])
