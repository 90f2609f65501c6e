"""Each task's skills — the subgoal texts the world model was trained on — and its decomposition into them.

A `TaskSkills` knows, for one scene (the env's first `info`): every skill the world model knows there
(`skills`), the order the task's scripted expert works in (`decompose`), and how many env steps each skill of
a sequence takes (`estimate_steps`). The texts come from the expert's own templates, so a plan's texts are
exactly the labels of the episodes the world model learned from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vplan.planner.subgoal import Check
from vplan.policies.return_cubes_expert import spot_assignment


@dataclass(frozen=True)
class Skill:
    """A subgoal the world model knows, with the words that name its arguments (cube colour, spot)."""

    kind: str  # the template's key, e.g. "pick"
    text: str
    arguments: dict[str, str] = field(default_factory=dict)  # e.g. {"colour": "red", "spot": "left"}
    check: Check | None = None


class TaskSkills:
    """Base of the per-task skill libraries (one instance per task, in `TASK_SKILLS`)."""

    name: str = ""
    info_keys: tuple[str, ...] = ()

    def require(self, info: Mapping[str, Any]) -> None:
        """Raise ValueError unless `info` holds the scene facts this task needs (a TypeError unless it is a dict)."""
        if not isinstance(info, Mapping):
            raise TypeError(f"task {self.name!r}: info: expected the env's info dict (of its reset), got "
                            f"{type(info).__name__}")
        missing = [k for k in self.info_keys if k not in info]
        if missing:
            raise ValueError(f"task {self.name!r}: expected the env's info to hold {list(self.info_keys)}, "
                             f"missing {missing} (pass the info of the env's reset; an env of your own: a plan of "
                             "your own, agent.reset(..., plan=Plan(...)), or a TaskSkills of its own)")

    def _require_names(self, info: Mapping[str, Any], key: str, per: str | None = None) -> None:
        """A ValueError unless `info[key]` is a non-empty list of distinct non-empty strings, as long as
        `info[per]` (the poses or positions they name) when given: an adapter's or a hand-made info."""
        names = info[key]
        if isinstance(names, str) or not isinstance(names, Sequence) or not names or \
                not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: info[{key!r}]: expected a list of distinct names, got {names!r}")
        if per is not None and len(info[per]) != len(names):
            raise ValueError(f"task {self.name!r}: info[{key!r}] names {len(names)}, info[{per!r}] holds "
                             f"{len(info[per])}; expected one per name")

    def skills(self, info: Mapping[str, Any]) -> list[Skill]:
        raise NotImplementedError

    def describe(self, info: Mapping[str, Any]) -> str:
        """The scene facts a planner is told, in one line."""
        raise NotImplementedError

    def decompose(self, info: Mapping[str, Any]) -> list[Skill]:
        raise NotImplementedError

    def estimate_steps(self, sequence: Sequence[Skill], info: Mapping[str, Any]) -> list[int]:
        raise NotImplementedError

    def check_order(self, sequence: Sequence[Skill]) -> None:
        """Raise `SkillOrderError` where a skill cannot follow the ones before it; any order by default."""


class SkillOrderError(ValueError):
    """A sequence of skills that cannot be carried out in its order (placing a cube no one picked up)."""


class ReturnCubesSkills(TaskSkills):
    """`return_cubes` on the tabletop: pick / place on a spot / put back, for each cube colour.

    Decomposition (the order `ReturnCubesExpert` works in, so that plans match its labels): each cube in the
    env's cube order is picked up and placed on its spot, then each is picked up and put back. The spot of
    each cube is the expert's: the assignment of spots to cubes with the least total travel.

    Step estimate: the expert moves the gripper at most `max_delta` (3 cm) per axis per step, so a skill takes
    ceil(Chebyshev xy travel / max_delta) steps plus a fixed overhead, `OVERHEAD_STEPS` = 7, for descending,
    gripping or releasing and rising. Travel is tracked along the sequence: a pick starts where the gripper
    last was, a place or put-back moves the cube from where it is. Measured against the expert's 480 labelled
    subgoals of seeds 0-39: pick and place take exactly the estimate or 1 step less; put-back 0-4 less (the
    last one ends the episode before the gripper rises); never more. The planners turn steps into chunks.
    """

    name = "return_cubes"
    info_keys = ("cube_names", "spot_names", "start_poses", "spot_positions", "gripper_pos")
    OVERHEAD_STEPS = 7

    def require(self, info: Mapping[str, Any]) -> None:
        super().require(info)
        self._require_names(info, "cube_names", per="start_poses")
        self._require_names(info, "spot_names", per="spot_positions")

    def __init__(self) -> None:
        # The expert's templates and the env's max_delta (imported here: policies -> envs -> mujoco).
        from vplan.envs.tabletop_v0 import TabletopConfig
        from vplan.policies.return_cubes_expert import SUBGOAL_TEMPLATES

        self.templates = SUBGOAL_TEMPLATES
        self.max_delta = TabletopConfig.max_delta

    def _pick(self, colour: str) -> Skill:
        return Skill("pick", self.templates["pick"].format(colour=colour), {"colour": colour},
                     Check("holding", {"cube": colour}))

    def _place(self, colour: str, spot: str) -> Skill:
        return Skill("place", self.templates["place"].format(colour=colour, spot=spot),
                     {"colour": colour, "spot": spot}, Check("on_spot", {"cube": colour, "spot": spot}))

    def _return(self, colour: str) -> Skill:
        return Skill("return", self.templates["return"].format(colour=colour), {"colour": colour},
                     Check("returned", {"cube": colour}))

    def skills(self, info: Mapping[str, Any]) -> list[Skill]:
        """Every skill for this scene's cubes and spots, in `subgoal_texts`' order."""
        self.require(info)
        out = []
        for colour in info["cube_names"]:
            out.append(self._pick(colour))
            out += [self._place(colour, spot) for spot in info["spot_names"]]
            out.append(self._return(colour))
        return out

    def describe(self, info: Mapping[str, Any]) -> str:
        self.require(info)
        cubes = len(info["cube_names"])
        return (f"{cubes} cube{'s' if cubes != 1 else ''}: {', '.join(info['cube_names'])}; marked spots, left to "
                f"right in the front camera: {', '.join(info['spot_names'])}.")

    def decompose(self, info: Mapping[str, Any]) -> list[Skill]:
        self.require(info)
        colours, spots = list(info["cube_names"]), list(info["spot_names"])
        spot_of = spot_assignment(info)  # the expert's rule, so plans match its labels
        plan = []
        for i, colour in enumerate(colours):
            plan += [self._pick(colour), self._place(colour, spots[spot_of[i]])]
        for colour in colours:
            plan += [self._pick(colour), self._return(colour)]
        return plan

    def check_order(self, sequence: Sequence[Skill]) -> None:
        """The gripper holds one cube at a time: a pick needs it empty, a place or put-back needs that cube; and a
        spot takes one cube."""
        held, on_spot = None, {}  # on_spot: spot -> the cube placed there
        for number, skill in enumerate(sequence, 1):
            colour = skill.arguments["colour"]
            if skill.kind == "pick" and held is not None:
                raise SkillOrderError(f"subgoal {number} picks up the {colour} cube while the {held} one is held")
            if skill.kind != "pick" and held != colour:
                raise SkillOrderError(f"subgoal {number} ({skill.text!r}) moves the {colour} cube, which no subgoal "
                                      "before it picked up" + (f" (the {held} one is held)" if held else ""))
            on_spot = {spot: cube for spot, cube in on_spot.items() if cube != colour}  # it left its spot
            if skill.kind == "place":
                spot = skill.arguments["spot"]
                if spot in on_spot:
                    raise SkillOrderError(f"subgoal {number} places the {colour} cube on the {spot} spot, where the "
                                          f"{on_spot[spot]} one is")
                on_spot[spot] = colour
            held = colour if skill.kind == "pick" else None

    def estimate_steps(self, sequence: Sequence[Skill], info: Mapping[str, Any]) -> list[int]:
        self.require(info)
        colours, spots = list(info["cube_names"]), list(info["spot_names"])
        starts = np.asarray(info["start_poses"], dtype=float)[:, :2]
        spot_xy = np.asarray(info["spot_positions"], dtype=float)[:, :2]
        cubes = np.asarray(info.get("cube_poses", info["start_poses"]), dtype=float)[:, :2].copy()
        gripper = np.asarray(info["gripper_pos"], dtype=float)[:2]
        steps = []
        for skill in sequence:
            i = colours.index(skill.arguments["colour"])
            if skill.kind == "pick":
                target = cubes[i]
            elif skill.kind == "place":
                target = spot_xy[spots.index(skill.arguments["spot"])]
            elif skill.kind == "return":
                target = starts[i]
            else:
                raise ValueError(f"skill kind: expected one of {tuple(self.templates)}, got {skill.kind!r}")
            travel = float(np.abs(target - gripper).max())
            steps.append(math.ceil(travel / self.max_delta - 1e-9) + self.OVERHEAD_STEPS)
            gripper = target.copy()
            if skill.kind != "pick":
                cubes[i] = target
        return steps


class RetraceSkills(TaskSkills):
    """`retrace` on the blockworld: the outbound instructions in order, then the one way back.

    Skills: "walk forward", "turn left" / "turn right" (kind `turn`, argument `direction`) and "go back to the
    start along the same path". The env's reset `info` holds the outbound path's instructions (one chunk of
    `chunk_steps` steps each) and the planned position after every step (`path`), so the decomposition is the
    instructions, then the way back, and the step estimate is exact for the scripted expert: each instruction
    takes `chunk_steps` steps; the way back takes a turn about (180 / 15 = 12 turns) plus one move per outbound
    step (each walk is walked back, each turn turned back), 12 + n * chunk_steps in all.
    """

    name = "retrace"
    info_keys = ("instructions", "path")

    def require(self, info: Mapping[str, Any]) -> None:
        super().require(info)
        instructions = info["instructions"]
        if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
            raise ValueError(f"task {self.name!r}: info['instructions']: expected a non-empty list of the outbound "
                             f"path's instructions, got {instructions!r}")
        steps = len(info["path"]) - 1
        if steps < len(instructions) or steps % len(instructions):
            raise ValueError(f"task {self.name!r}: info['path'] holds {len(info['path'])} positions, expected the "
                             f"start and the same number of steps for each of the {len(instructions)} instructions")

    def __init__(self) -> None:
        # The env's instruction texts (imported here: envs -> mujoco).
        from vplan.envs.blockworld.retrace import INSTRUCTIONS, RETURN_INSTRUCTION
        from vplan.envs.discrete_moves import TURN_DEGREES

        self.instructions = INSTRUCTIONS
        self.return_text = RETURN_INSTRUCTION
        self.turn_around_steps = round(180 / TURN_DEGREES)

    def _skill(self, text: str) -> Skill:
        if text == self.return_text:
            return Skill("return", text, {}, Check("retraced", {}))
        for kind, known in self.instructions.items():
            if text == known:
                return Skill("walk", text) if kind == "forward" else Skill("turn", text, {"direction": kind})
        raise ValueError(f"instruction: expected one of {[*self.instructions.values(), self.return_text]}, "
                         f"got {text!r}")

    def skills(self, info: Mapping[str, Any]) -> list[Skill]:
        self.require(info)
        return [self._skill(text) for text in [*self.instructions.values(), self.return_text]]

    def describe(self, info: Mapping[str, Any]) -> str:
        self.require(info)
        return (f"a first-person walk in a block world; the outbound path, one instruction per chunk: "
                f"{', '.join(info['instructions'])}; then back to the start along the same path.")

    def decompose(self, info: Mapping[str, Any]) -> list[Skill]:
        self.require(info)
        return [self._skill(text) for text in [*info["instructions"], self.return_text]]

    def estimate_steps(self, sequence: Sequence[Skill], info: Mapping[str, Any]) -> list[int]:
        self.require(info)
        outbound = len(info["path"]) - 1
        chunk_steps = outbound // len(info["instructions"])
        steps = []
        for skill in sequence:
            if skill.kind not in ("walk", "turn", "return"):
                raise ValueError(f"skill kind: expected one of ('walk', 'turn', 'return'), got {skill.kind!r}")
            steps.append(self.turn_around_steps + outbound if skill.kind == "return" else chunk_steps)
        return steps


# task name (configs/task/<name>.yaml) -> its skill library
TASK_SKILLS: dict[str, type[TaskSkills]] = {"return_cubes": ReturnCubesSkills, "retrace": RetraceSkills}


def task_skills(task_name: str) -> TaskSkills:
    """The skill library of a task; ValueError naming the tasks that have one."""
    if task_name not in TASK_SKILLS:
        raise ValueError(f"task: expected one with a planner decomposition {tuple(TASK_SKILLS)}, got {task_name!r}")
    return TASK_SKILLS[task_name]()
