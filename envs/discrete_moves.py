"""Minecraft-like discrete moves, shared by every first-person env (the MineRL adapter and the blockworld).

An agent in these envs takes one of five moves per step; the action space is `Discrete(NUM_MOVES)` and the
action's integer is a `Move`. Keep the numbering: datasets store the integer, and an inverse-dynamics model
trained on one env predicts it for the other.

| Move | int | what it does |
| --- | --- | --- |
| `FORWARD` | 0 | walk forward along the facing direction |
| `BACK` | 1 | walk backward |
| `TURN_LEFT` | 2 | turn in place by `TURN_DEGREES` to the left (yaw decreases) |
| `TURN_RIGHT` | 3 | turn in place by `TURN_DEGREES` to the right (yaw increases) |
| `JUMP` | 4 | jump while walking forward: climbs a one-block step (jumping in place does not navigate) |

Yaw follows Minecraft's convention: degrees, growing clockwise seen from above, so turning right adds
`TURN_DEGREES` (15): six turns make a right angle.
"""

from __future__ import annotations

import enum

import numpy as np
from gymnasium import spaces


class Move(enum.IntEnum):
    """One discrete move; the value is the action integer."""

    FORWARD = 0
    BACK = 1
    TURN_LEFT = 2
    TURN_RIGHT = 3
    JUMP = 4


NUM_MOVES = len(Move)
MOVE_NAMES: tuple[str, ...] = tuple(move.name.lower() for move in Move)  # "forward", ..., "jump"
TURN_DEGREES = 15.0  # yaw change of one turn

# Per move: the walking direction (+1 forward, -1 back, 0 none), the yaw change (degrees), and whether it jumps.
WALK: dict[Move, int] = {Move.FORWARD: 1, Move.BACK: -1, Move.TURN_LEFT: 0, Move.TURN_RIGHT: 0, Move.JUMP: 1}
YAW_DELTA: dict[Move, float] = {
    Move.FORWARD: 0.0,
    Move.BACK: 0.0,
    Move.TURN_LEFT: -TURN_DEGREES,
    Move.TURN_RIGHT: TURN_DEGREES,
    Move.JUMP: 0.0,
}
JUMPS: dict[Move, bool] = {move: move is Move.JUMP for move in Move}


def move_space() -> spaces.Discrete:
    """The action space of an env with these moves."""
    return spaces.Discrete(NUM_MOVES)


def to_move(action: int | np.integer | np.ndarray | str | Move) -> Move:
    """The `Move` of an action: its integer (a Python or numpy int, or a 0-d array) or its name."""
    if isinstance(action, str):
        if action.lower() not in MOVE_NAMES:
            raise ValueError(f"move: expected one of {MOVE_NAMES}, got {action!r}")
        return Move(MOVE_NAMES.index(action.lower()))
    array = np.asarray(action)
    if array.shape != () or array.dtype.kind not in "iu" or not 0 <= int(array) < NUM_MOVES:
        raise ValueError(f"move: expected an int in [0, {NUM_MOVES}) (one of {MOVE_NAMES}), got {action!r}")
    return Move(int(array))
