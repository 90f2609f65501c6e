"""Scripted expert for vplan/Tabletop-v0's `return_cubes` task, labelling every step with its subgoal.

It reads privileged state from the env's `info` (cube poses, spots, grasp) and is closed-loop: every step
it re-derives what to do from the state, so after an exploratory segment or a dropped cube it recovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from typing import Any

import numpy as np

from vplan.envs.tabletop_v0 import CUBE_HALF_SIZE, FINGER_OPEN, TabletopConfig, spot_names
from vplan.policies.exploration import ExplorationSegments

SUBGOAL_TEMPLATES = {
    "pick": "pick up the {colour} cube",
    "place": "place the {colour} cube on the {spot} spot",
    "return": "put the {colour} cube back where it started",
}

HOVER_Z = 0.09  # tool-centre height for moving: a held cube clears the others
HOVER_MARGIN = 0.015  # below HOVER_Z by more than this, the gripper counts as low
GRASP_Z = 0.012  # tool-centre height for grasping: the finger pads cover the cube's upper 3 cm
ALIGN_TOL = 0.008  # xy error (m) below which the gripper descends
ACT_TOL = 0.012  # xy error (m) below which a low gripper closes on a cube or lets it go
REALIGN_TOL = 0.02  # xy error (m) above which a low gripper first rises straight up
RELEASE_HEIGHT = 0.005  # cube bottom above the table (m) at which the gripper lets go
OPEN_ENOUGH = 1.75 * FINGER_OPEN  # finger opening (m) needed before descending onto a cube


def subgoal_texts(colours: Sequence[str], spots: Sequence[str] = tuple(spot_names(3))) -> list[str]:
    """Every subgoal text the expert can emit for these cube colours and spot names."""
    texts = []
    for colour in colours:
        texts.append(SUBGOAL_TEMPLATES["pick"].format(colour=colour))
        texts += [SUBGOAL_TEMPLATES["place"].format(colour=colour, spot=spot) for spot in spots]
        texts.append(SUBGOAL_TEMPLATES["return"].format(colour=colour))
    return texts


def spot_assignment(info: dict[str, Any]) -> list[int]:
    """The spot index each cube goes to: the assignment with the least total travel (planners reuse it)."""
    starts = np.asarray(info["start_poses"])[:, :2]
    spots = np.asarray(info["spot_positions"])[:, :2]
    n = len(starts)
    if len(spots) < n:
        raise ValueError(f"expected at least one spot per cube, got {len(spots)} spots for {n} cubes")
    return list(min(permutations(range(len(spots)), n), key=lambda p: sum(np.linalg.norm(starts[i] - spots[p[i]]) for i in range(n))))


class ReturnCubesExpert:
    """Moves each cube to a marked spot, then puts each back where it started.

    `noise_std` adds Gaussian noise to every action; `explore_fraction` is the expected fraction of steps
    spent in segments of random gripper motion (the grip command stays the expert's, so a held cube is not
    thrown away every time), labelled with the subgoal the expert was pursuing. `max_delta` must match the
    env's `TabletopConfig.max_delta`. Its gains are tuned for `control_hz` 10 to 50; at 100 Hz the arm
    oscillates and it does not finish.
    """

    def __init__(
        self,
        noise_std: float = 0.0,
        explore_fraction: float = 0.0,
        seed: int | None = None,
        max_delta: float = TabletopConfig.max_delta,
    ) -> None:
        if not noise_std >= 0:  # NaN too (each action was NaN, and the env blamed the action)
            raise ValueError(f"noise_std: expected a non-negative float, got {noise_std!r}")
        if not max_delta > 0:
            raise ValueError(f"max_delta: expected a positive float, got {max_delta!r}")
        self.noise_std = noise_std
        self.explore_fraction = explore_fraction
        self.max_delta = max_delta
        self._seed = seed
        self._exploration = ExplorationSegments(explore_fraction)
        self._rng = np.random.default_rng(seed)
        self._spot_of: list[int] = []
        self._key: tuple[str, int] | None = None
        self._lifted = False
        self._subgoal = ""

    @property
    def subgoal(self) -> str:
        """The subgoal text of the step last chosen by `select_action` ("" before the first)."""
        return self._subgoal

    def reset(self, info: dict[str, Any], seed: int | None = None) -> None:
        """Start an episode from the env's reset `info`: pick the spot each cube goes to, reseed."""
        self._rng = np.random.default_rng(self._seed if seed is None else seed)
        self._spot_of = spot_assignment(info)
        self._key = None
        self._lifted = False
        self._exploration.reset()
        self._subgoal = ""

    def select_action(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        """One action in the env's action space, from the privileged state in `info`."""
        del obs  # the expert acts on privileged state only
        if not self._spot_of:
            raise RuntimeError("call reset(info) before select_action: the expert plans the episode from its "
                               "reset info")
        want = self._choose(info)
        free = info["grasped"] == -1 and info["gripper_pos"][2] >= HOVER_Z - HOVER_MARGIN
        if self._key is None or (want is not None and want != self._key and (free or info["grasped"] != -1)):
            self._key, self._lifted = want, False
        if self._key is None:  # nothing to do: open and stay clear
            action = self._move_to(info, np.append(info["gripper_pos"][:2], HOVER_Z), close=False)
        else:
            action = self._act(info, *self._key)

        if self._exploration.explore(self._rng):
            action[:3] = self._rng.uniform(-1.0, 1.0, 3)
        if self.noise_std > 0:
            action += self._rng.normal(0.0, self.noise_std, 4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _choose(self, info: dict[str, Any]) -> tuple[str, int] | None:
        """The (kind, cube) to work on now: the held cube first, else the first unfinished one."""
        kind = "place" if info["phase"] == "displace" else "return"
        if info["grasped"] != -1:
            return kind, int(info["grasped"])
        finished = info["displaced"] if kind == "place" else info["returned"]
        return next(((kind, i) for i in range(len(finished)) if not finished[i]), None)

    def _act(self, info: dict[str, Any], kind: str, cube: int) -> np.ndarray:
        colour = info["cube_names"][cube]
        cube_pos = info["cube_poses"][cube, :3]
        gripper = info["gripper_pos"]
        held = info["grasped"] == cube
        if kind == "place":
            target = info["spot_positions"][self._spot_of[cube], :2]
            place_text = SUBGOAL_TEMPLATES["place"].format(colour=colour, spot=info["spot_names"][self._spot_of[cube]])
        else:
            target = info["start_poses"][cube, :2]
            place_text = SUBGOAL_TEMPLATES["return"].format(colour=colour)
        pick_text = SUBGOAL_TEMPLATES["pick"].format(colour=colour)
        resting = cube_pos[2] < CUBE_HALF_SIZE + 0.005
        finished = info["displaced"][cube] if kind == "place" else info["returned"][cube]

        if not held and finished and resting:  # released on target: back off upwards, fingers open
            self._subgoal = place_text
            return self._move_to(info, np.append(gripper[:2], HOVER_Z), close=False)
        low = gripper[2] < HOVER_Z - HOVER_MARGIN
        if held:
            self._lifted |= not low
            if not self._lifted:  # grasped: lift straight up
                self._subgoal = pick_text
                return self._move_to(info, np.append(gripper[:2], HOVER_Z), close=True)
            self._subgoal = place_text
            error = np.linalg.norm(target - cube_pos[:2])
            goal_xy = gripper[:2] + (target - cube_pos[:2])  # steer the cube, not the fingers, onto the target
            if error > REALIGN_TOL and low:
                return self._move_to(info, np.append(gripper[:2], HOVER_Z), close=True)
            if error > ALIGN_TOL and not low:
                return self._move_to(info, np.append(goal_xy, HOVER_Z), close=True)
            bottom = cube_pos[2] - CUBE_HALF_SIZE
            # A cube that slipped up between the fingers is let go from as low as the gripper gets.
            release = (bottom < RELEASE_HEIGHT or gripper[2] < GRASP_Z) and error < ACT_TOL
            return self._move_to(info, np.append(goal_xy, gripper[2] - bottom + 0.002), close=not release)

        # Not held: open the fingers, go over the cube, descend, close.
        self._lifted = False
        self._subgoal = pick_text
        error = np.linalg.norm(cube_pos[:2] - gripper[:2])
        at_grasp = gripper[2] < GRASP_Z + 0.005 and error < ACT_TOL
        # Fingers still closing on the cube go on closing (at a high control_hz one step does not get them
        # there); fingers closed past it missed, and open again.
        closing_on_cube = at_grasp and info["gripper_opening"] > CUBE_HALF_SIZE
        if info["gripper_opening"] < OPEN_ENOUGH and not closing_on_cube:
            return self._move_to(info, gripper, close=False)
        if error > REALIGN_TOL and low:
            return self._move_to(info, np.append(gripper[:2], HOVER_Z), close=False)
        if error > ALIGN_TOL and not low:
            return self._move_to(info, np.append(cube_pos[:2], HOVER_Z), close=False)
        return self._move_to(info, np.append(cube_pos[:2], GRASP_Z), close=at_grasp)

    def _move_to(self, info: dict[str, Any], target: np.ndarray, close: bool) -> np.ndarray:
        delta = np.clip((target - info["gripper_pos"]) / self.max_delta, -1.0, 1.0)
        return np.append(delta, 1.0 if close else -1.0)
