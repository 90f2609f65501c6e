"""The `retrace` task: walk an outbound path given as instructions, then go back to the start along it.

The outbound path is `n` instructions, each spanning one chunk of `chunk_steps` steps (the world model's
`chunk_frames`): "walk forward" is `chunk_steps` walking moves (a jump where the ground steps up a block);
"turn left" / "turn right" is a right angle in `TURN_STEPS` turns, then walking moves for the rest of the
chunk. The path's waypoints are where each outbound chunk starts (the start, then every chunk boundary; not
the turning point, where the return begins). Then one instruction for the rest of the episode: "go back to
the start along the same path".

Metrics (SlowFast-VGen's "retrace the path" in Minecraft), horizontal distances in blocks: for each waypoint,
the closest the agent came to it on the return; their mean; success when every waypoint has been passed within
`success_radius` (1 block), the turning point too (so a one-chunk path is not retraced by standing still at the
start), and the agent is back at the start.

Paths are drawn by rejection: a start in the world's interior facing along an axis, a random instruction sequence
(it begins by walking forward, never turns twice in a row and, from three instructions up, turns at least once),
simulated with the env's own moves. A path is kept only if no move is blocked, it never drops more than one block
(so the way back can be climbed), it stays `PATH_MARGIN` blocks inside the world, it does not come back within
`MIN_SEPARATION` blocks of a part of itself more than twice that far back along it, and every step of it can be
walked backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vplan.envs.blockworld.motion import BLOCKED, AgentState, rise_ahead, stand_at, step
from vplan.envs.blockworld.terrain import VoxelWorld
from vplan.envs.discrete_moves import TURN_DEGREES, Move

INSTRUCTIONS = {"forward": "walk forward", "left": "turn left", "right": "turn right"}
RETURN_INSTRUCTION = "go back to the start along the same path"
TURN_STEPS = round(90 / TURN_DEGREES)  # turns in a right angle
PATH_MARGIN = 6  # blocks between the path and the world's edge
MIN_SEPARATION = 2.5  # blocks between any two positions more than twice this apart along the path
PATH_ATTEMPTS = 200  # paths tried per world before drawing another world


def walk_move(rise: int) -> Move:
    """The move that walks forward over ground that rises `rise` blocks (`motion.rise_ahead`)."""
    return Move.JUMP if rise == 1 else Move.FORWARD


def chunk_plan(kind: str, chunk_steps: int) -> list[Move]:
    """The moves of one outbound chunk, FORWARD standing for a walking move (a jump where it climbs)."""
    if kind == "forward":
        return [Move.FORWARD] * chunk_steps
    turn = {"left": Move.TURN_LEFT, "right": Move.TURN_RIGHT}[kind]
    return [turn] * TURN_STEPS + [Move.FORWARD] * (chunk_steps - TURN_STEPS)


@dataclass(frozen=True)
class RetracePath:
    """A planned outbound path: its instructions, and the position (x, y) and feet height after every step."""

    kinds: tuple[str, ...]  # "forward", "left" or "right" per chunk
    start: AgentState
    positions: np.ndarray  # (len(kinds) * chunk_steps + 1, 2): before the first step, then after each
    heights: np.ndarray  # (len(kinds) * chunk_steps + 1,)
    chunk_steps: int

    @property
    def instructions(self) -> list[str]:
        return [INSTRUCTIONS[kind] for kind in self.kinds]

    @property
    def waypoints(self) -> np.ndarray:
        """(n, 2): where each outbound chunk starts."""
        return self.positions[: -1 : self.chunk_steps].copy()

    @property
    def steps(self) -> int:
        return len(self.kinds) * self.chunk_steps


def _sample_kinds(rng: np.random.Generator, n: int) -> list[str]:
    while True:
        kinds = ["forward"]
        for _ in range(n - 1):
            if kinds[-1] != "forward":
                kinds.append("forward")
            else:
                kinds.append(str(rng.choice(["forward", "left", "right"], p=[0.5, 0.25, 0.25])))
        if n < 3 or any(kind != "forward" for kind in kinds):
            return kinds


def _walk(world: VoxelWorld, start: AgentState, kinds: list[str], chunk_steps: int) -> RetracePath | None:
    """Simulate the instructions from `start`; None if the path breaks a rule (module docstring)."""
    state, positions, heights = start, [start.xy], [start.z]
    low, high = PATH_MARGIN, world.size - PATH_MARGIN
    for kind in kinds:
        for move in chunk_plan(kind, chunk_steps):
            if move is Move.FORWARD:
                rise = rise_ahead(world, state)
                if rise == BLOCKED:
                    return None
                move = walk_move(rise)
            state, blocked = step(world, state, move)
            if blocked or state.z < heights[-1] - 1 or not (low <= state.x <= high and low <= state.y <= high):
                return None
            positions.append(state.xy)
            heights.append(state.z)
    positions_array = np.array(positions)
    # Self-avoidance: positions far apart along the path are far apart in the world too.
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions_array, axis=0), axis=1))])
    gaps = np.linalg.norm(positions_array[:, None] - positions_array[None], axis=-1)
    if (gaps[np.abs(along[:, None] - along[None]) >= 2 * MIN_SEPARATION] < MIN_SEPARATION).any():
        return None
    # Reversibility: each step can be walked backwards (a one-block climb at most, landing where it started).
    for k in range(len(positions) - 1, 0, -1):
        x, y = positions_array[k - 1]
        climb = 1 if heights[k - 1] > heights[k] else 0
        if stand_at(world, float(x), float(y), heights[k], climb) != heights[k - 1]:
            return None
    return RetracePath(tuple(kinds), start, positions_array, np.array(heights, float), chunk_steps)


def plan_path(world: VoxelWorld, rng: np.random.Generator, n_chunks: int, chunk_steps: int) -> RetracePath | None:
    """A random outbound path of `n_chunks` instructions in `world`, or None after `PATH_ATTEMPTS` tries."""
    size = world.size
    cells = np.arange(PATH_MARGIN, size - PATH_MARGIN)
    for _ in range(PATH_ATTEMPTS):
        i, j = (int(v) for v in rng.choice(cells, 2))
        heading = float(rng.choice([0.0, 90.0, 180.0, 270.0]))
        kinds = _sample_kinds(rng, n_chunks)
        z = stand_at(world, i + 0.5, j + 0.5, float(world.ground[i, j]), climb=0)
        if z is None or z != world.ground[i, j]:
            continue  # water, a tree, or no room
        path = _walk(world, AgentState(i + 0.5, j + 0.5, z, heading), kinds, chunk_steps)
        if path is not None:
            return path
    return None


class RetraceScore:
    """The return's closest distance to each waypoint, updated with every position on the return.

    The waypoints count as retraced only once the return has also been at the `turning_point` (where the
    outbound path ends): with a one-chunk path the only waypoint is the start, which an agent that never walked
    out passes by standing still.
    """

    def __init__(self, waypoints: np.ndarray, success_radius: float, turning_point: np.ndarray) -> None:
        self.waypoints = np.asarray(waypoints, float)
        self.success_radius = success_radius
        self.closest = np.full(len(self.waypoints), np.inf)  # inf until the return begins
        self.turning_point = np.asarray(turning_point, float)
        self.closest_to_turn = np.inf

    def update(self, xy: np.ndarray) -> None:
        xy = np.asarray(xy, float)
        distance = np.linalg.norm(self.waypoints - xy[None], axis=1)
        np.minimum(self.closest, distance, out=self.closest)
        self.closest_to_turn = min(self.closest_to_turn, float(np.linalg.norm(self.turning_point - xy)))

    @property
    def passed(self) -> np.ndarray:
        return self.closest <= self.success_radius

    @property
    def mean(self) -> float:
        return float(self.closest.mean())

    @property
    def success(self) -> bool:
        """Every waypoint passed on the return, which has been at the turning point."""
        return bool(self.passed.all()) and self.closest_to_turn <= self.success_radius
