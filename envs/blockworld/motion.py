"""Kinematic moves of the blockworld's agent, checked against the voxel grid (no physics engine involved).

The agent is a 0.6 x 0.6 x 1.8 block box (Minecraft's player) standing at (x, y) on the ground at height z, facing
`heading` degrees (clockwise from +x seen from above, so turning right adds, as in Minecraft). A walking move
goes `WALK_STEP` blocks along (or against) the heading in one go, or not at all:

* the ground under the box after the move is the highest solid block top, over the cells the box covers, that
  is at most `climb` above the feet (0 for a walk, 1 for a jump): so a one-block step needs a jump, and walking
  off a ledge drops the agent onto the ground below, whatever the height;
* the move is blocked if the box would then overlap a solid block (a wall, a trunk, leaves too low overhead),
  stand in water (the agent does not swim) or leave the world.

Turns rotate in place by `TURN_DEGREES` and are never blocked. The same state and move always give the same
result: the env, the path planner of the `retrace` task and the scripted expert all use these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vplan.envs.blockworld.terrain import SOLID, Block, VoxelWorld
from vplan.envs.discrete_moves import JUMPS, WALK, YAW_DELTA, Move

WALK_STEP = 0.5  # blocks per walking move
HALF_WIDTH = 0.3  # the agent's box is 2 * HALF_WIDTH wide
AGENT_HEIGHT = 1.8
BLOCKED = 2  # `rise_ahead` of a forward move that neither a walk nor a jump can make


@dataclass(frozen=True)
class AgentState:
    """Where the agent is: feet position in blocks, heading in degrees [0, 360), and whether it is mid-jump."""

    x: float
    y: float
    z: float
    heading: float
    airborne: bool = False  # the last move was a jump (the camera shows it higher for that frame)

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])


def direction(heading: float) -> np.ndarray:
    """Unit (dx, dy) of a heading in degrees, clockwise from +x."""
    angle = math.radians(heading)
    return np.array([math.cos(angle), -math.sin(angle)])


def covered_cells(x: float, y: float) -> list[tuple[int, int]]:
    """The (i, j) columns the agent's box overlaps when standing at (x, y) (a box edge on a cell edge doesn't)."""
    eps = 1e-9
    xs = range(math.floor(x - HALF_WIDTH + eps), math.floor(x + HALF_WIDTH - eps) + 1)
    ys = range(math.floor(y - HALF_WIDTH + eps), math.floor(y + HALF_WIDTH - eps) + 1)
    return [(i, j) for i in xs for j in ys]


def _ground(world: VoxelWorld, i: int, j: int, limit: int) -> int:
    """Top of the highest solid block of column (i, j) at or below `limit` (0 if none)."""
    solid = np.flatnonzero(SOLID[world.blocks[i, j, :limit]])
    return int(solid[-1]) + 1 if len(solid) else 0


def stand_at(world: VoxelWorld, x: float, y: float, z: float, climb: int) -> float | None:
    """The feet height after moving to (x, y) from feet height `z` with `climb` blocks of climbing, or None if
    the move is blocked (see the module docstring)."""
    cells = covered_cells(x, y)
    size, height = world.size, world.height
    if any(not (0 <= i < size and 0 <= j < size) for i, j in cells):
        return None
    limit = int(round(z)) + climb
    feet = max(_ground(world, i, j, limit) for i, j in cells)
    head = math.ceil(feet + AGENT_HEIGHT)
    if head > height:
        return None
    for i, j in cells:
        column = world.blocks[i, j, feet:head]
        if SOLID[column].any():
            return None  # something solid where the body would be
        if (column == Block.WATER).any():
            return None  # the agent does not swim
    return float(feet)


def ceiling(world: VoxelWorld, x: float, y: float, feet: float) -> float:
    """The lowest bottom of a solid block above the head of the agent standing at (x, y, feet), over the cells
    its box covers (the world's height if there is none)."""
    head = math.ceil(feet + AGENT_HEIGHT)
    lowest = world.height
    for i, j in covered_cells(x, y):
        solid = np.flatnonzero(SOLID[world.blocks[i, j, head:]])
        if len(solid):
            lowest = min(lowest, head + int(solid[0]))
    return float(lowest)


def step(world: VoxelWorld, state: AgentState, move: Move) -> tuple[AgentState, bool]:
    """The state after `move`, and whether the move was blocked (the agent then stays where it was)."""
    heading = (state.heading + YAW_DELTA[move]) % 360.0
    walk = WALK[move]
    if walk == 0:
        return replace(state, heading=heading, airborne=False), False
    target = np.round(state.xy + walk * WALK_STEP * direction(state.heading), 9)  # exact on axis-aligned paths
    jump = JUMPS[move]
    feet = stand_at(world, float(target[0]), float(target[1]), state.z, climb=1 if jump else 0)
    if feet is None:
        return replace(state, airborne=False), True
    return AgentState(float(target[0]), float(target[1]), feet, heading, airborne=jump), False


def rise_ahead(world: VoxelWorld, state: AgentState) -> int:
    """What a move forward would take: 0 a walk (level or down), 1 a jump (a one-block step), BLOCKED neither."""
    target = np.round(state.xy + WALK_STEP * direction(state.heading), 9)
    if stand_at(world, float(target[0]), float(target[1]), state.z, climb=0) is not None:
        return 0
    if stand_at(world, float(target[0]), float(target[1]), state.z, climb=1) is not None:
        return 1
    return BLOCKED

