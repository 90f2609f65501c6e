"""What a planner returns: validated `Subgoal`s in a `Plan`, each with an optional `Check` on the env's `info`.

A check is data, not code: a predicate name from `PREDICATES` and its arguments (cube colours, spot names), so
a plan can come from an LLM, be written to JSON and be read back without running anything it contains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

MAX_SUBGOAL_CHARS = 200  # bound on a subgoal text: the world model's skills are short sentences
SOURCES = ("offline", "llm", "fallback")
ON_SPOT_TOLERANCE = 0.02  # m: a cube is on a spot when its centre is within its half size of the spot's centre


def _cube_index(info: Mapping[str, Any], cube: str) -> int:
    names = list(info["cube_names"])
    if cube not in names:
        raise ValueError(f"cube: expected one of the scene's cubes {names}, got {cube!r}")
    return names.index(cube)


def _spot_index(info: Mapping[str, Any], spot: str) -> int:
    names = list(info["spot_names"])
    if spot not in names:
        raise ValueError(f"spot: expected one of the scene's spots {names}, got {spot!r}")
    return names.index(spot)


def _holding(info: Mapping[str, Any], cube: str) -> bool:
    return int(info["grasped"]) == _cube_index(info, cube)


def _on_spot(info: Mapping[str, Any], cube: str, spot: str) -> bool:
    i, s = _cube_index(info, cube), _spot_index(info, spot)
    offset = np.asarray(info["cube_poses"])[i, :2] - np.asarray(info["spot_positions"])[s, :2]
    return int(info["grasped"]) != i and float(np.linalg.norm(offset)) <= ON_SPOT_TOLERANCE


def _returned(info: Mapping[str, Any], cube: str) -> bool:
    i = _cube_index(info, cube)
    return int(info["grasped"]) != i and bool(np.asarray(info["returned"])[i])


def _retraced(info: Mapping[str, Any]) -> bool:
    # The env's own success (the waypoints passed on the return, the turning point too, back at the start):
    # the waypoints alone are passed by an agent that stops a block short of home, or, on a one-chunk path,
    # never walks out.
    return info["phase"] == "return" and bool(info["success"])


# name -> (argument names, predicate on the env's info). The tabletop's info keys: envs/tabletop_v0.py; the
# blockworld's: envs/blockworld/blockworld_v0.py.
PREDICATES: dict[str, tuple[tuple[str, ...], Callable[..., bool]]] = {
    "holding": (("cube",), _holding),  # the gripper holds the cube
    "on_spot": (("cube", "spot"), _on_spot),  # the cube rests, released, on the marked spot
    "returned": (("cube",), _returned),  # the cube is back at its start (the env's tolerance), released
    "retraced": ((), _retraced),  # the return has passed every outbound waypoint and the turn, and is home
}


@dataclass(frozen=True)
class Check:
    """A named predicate on the env's `info` that tells whether a subgoal is reached, e.g. holding(cube=red)."""

    name: str = field(metadata={"help": f"One of {tuple(PREDICATES)}."})
    args: dict[str, str] = field(default_factory=dict, metadata={"help": "The predicate's arguments by name."})

    def __post_init__(self) -> None:
        if self.name not in PREDICATES:
            raise ValueError(f"check name: expected one of {tuple(PREDICATES)}, got {self.name!r}")
        expected = PREDICATES[self.name][0]
        if not isinstance(self.args, Mapping) or sorted(self.args) != sorted(expected):
            raise ValueError(f"check {self.name!r}: expected arguments {expected}, got {self.args!r}")
        bad = {k: v for k, v in self.args.items() if not isinstance(v, str) or not v}
        if bad:
            raise ValueError(f"check {self.name!r}: expected non-empty string arguments, got {bad!r}")
        object.__setattr__(self, "args", dict(self.args))

    def holds(self, info: Mapping[str, Any]) -> bool:
        """Whether the predicate is true of this `info` (raises ValueError on a cube or spot not in the scene, or
        an info without a key the predicate reads)."""
        try:
            return PREDICATES[self.name][1](info, **self.args)
        except KeyError as error:
            raise ValueError(f"info: expected the key {error.args[0]!r} for the check {self}, got keys "
                             f"{sorted(info)}") from None

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args.items())})"


@dataclass(frozen=True)
class Subgoal:
    """One step of a plan: the text that conditions the world model, the chunks it spans, an optional check."""

    text: str = field(metadata={"help": "A skill text the world model was trained on."})
    chunks: int = field(default=1, metadata={"help": "World-model chunks (of `chunk_frames` frames) it spans."})
    check: Check | None = field(default=None, metadata={"help": "Predicate on info that is true once it is done."})

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text: expected a non-empty string, got {self.text!r}")
        if len(self.text) > MAX_SUBGOAL_CHARS:
            raise ValueError(f"text: expected at most {MAX_SUBGOAL_CHARS} characters, got {len(self.text)}")
        if not self.text.isprintable():  # a line break or a control character: no skill the model learned
            raise ValueError(f"text: expected one line of printable characters, got {self.text!r}")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, Integral) or self.chunks < 1:
            raise ValueError(f"chunks: expected a positive int, got {self.chunks!r}")
        object.__setattr__(self, "chunks", int(self.chunks))  # numpy's ints too, as JSON writes them
        if self.check is not None and not isinstance(self.check, Check):
            raise ValueError(f"check: expected a Check or None, got {type(self.check).__name__}")

    def to_dict(self) -> dict[str, Any]:
        check = None if self.check is None else {"name": self.check.name, "args": dict(self.check.args)}
        return {"text": self.text, "chunks": self.chunks, "check": check}


@dataclass(frozen=True)
class Plan:
    """The subgoals in order, and where they came from: the offline planner, the LLM, or the fallback."""

    subgoals: tuple[Subgoal, ...]
    source: str = field(metadata={"help": f"One of {SOURCES}."})
    instruction: str = ""
    note: str = field(default="", metadata={"help": "Why a fallback plan was used (empty otherwise)."})

    def __post_init__(self) -> None:
        subgoals = tuple(self.subgoals)
        if not subgoals:
            raise ValueError("subgoals: expected at least one subgoal, got none")
        bad = [type(s).__name__ for s in subgoals if not isinstance(s, Subgoal)]
        if bad:
            raise ValueError(f"subgoals: expected Subgoal objects, got {bad}")
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {self.source!r}")
        object.__setattr__(self, "subgoals", subgoals)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.subgoals]

    @property
    def total_chunks(self) -> int:
        return sum(s.chunks for s in self.subgoals)

    def __len__(self) -> int:
        return len(self.subgoals)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for metrics and logs."""
        return {
            "source": self.source,
            "instruction": self.instruction,
            "note": self.note,
            "subgoals": [s.to_dict() for s in self.subgoals],
        }
