"""A scripted revisit scenario on the blockworld: the agent walks the same round again and again.

The paper measures SRC in Minecraft at places the agent comes back to. On the blockworld the `retrace` task
already comes back (to its start), but one episode is ~110 steps and revisits little, while ≥32 chunks of 8
frames plus context need ≥260. So the scenario chains **rounds** in one continuous take:

    round 1: the retrace expert walks the outbound path and back to the start, then turns in place until it
             faces its starting heading again
    round 2, 3, …: round 1's moves again, the same list, from where the agent is

Round 1 ends where it began (the env terminates only within a quarter block of the start, and on the planned
path's grid the agent is exactly there), so every later round replays round 1's frames; rounds repeat until
the take has `min_frames` frames, and there are always at least two, so the take always has revisits.

Revisit pairs `(first_visit, revisit)`: every frame of a later round at a place round 1 showed — the same
heading (exact: headings are multiples of 15°) and a horizontal position within `SAME_PLACE` blocks — paired
with the nearest such frame of round 1 (the earliest on a tie). `states` names the place of every paired frame
(`"place <first_visit>"`, "" on unpaired ones).

Frames are real renders of `BlockworldEnv`, stepped directly (no gymnasium `TimeLimit`; its `terminated` at
the end of the first return is ignored, and the env takes moves after it). Subgoal texts per frame are the
expert's labels, the env's instructions ("walk forward", "turn left", "turn right", then "go back to the start
along the same path"); the turns at the end of round 1 carry the return's text, and later rounds carry round
1's labels step for step. The final frame carries the label of the step before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vplan.errors import RunError
from vplan.eval.revisit import RevisitScenario
from vplan.utils.settings import check_int, check_seed

SAME_PLACE = 0.25  # blocks between the horizontal positions of a first visit and its revisit, at most


def blockworld_revisit_scenario(seed: int, min_frames: int = 260, env_config: Any = None) -> RevisitScenario:
    """Run the blockworld revisit scenario for `seed` (deterministic per seed); see the module docstring.

    `min_frames` defaults to 4 context frames + 32 chunks of 8. `env_config` is a `BlockworldConfig` (default:
    the benchmark's 64×64 camera); round 1 gets its `max_episode_steps` moves for the expert to finish the task.
    """
    from vplan.envs.blockworld import RETURN_INSTRUCTION, BlockworldConfig, BlockworldEnv
    from vplan.envs.discrete_moves import TURN_DEGREES, Move
    from vplan.policies import RetraceExpert

    check_seed(seed)
    check_int(min_frames, "min_frames")
    config = env_config if env_config is not None else BlockworldConfig()
    if not isinstance(config, BlockworldConfig):
        raise ValueError(f"env_config: expected a BlockworldConfig, got {type(config).__name__}")
    env = BlockworldEnv(config)
    expert = RetraceExpert()
    try:
        obs, info = env.reset(seed=seed)
        expert.reset(info, seed=seed)
        start_heading = info["heading"]
        frames, agent_pos, subgoals = [obs["front"]], [obs["agent_pos"]], []
        moves: list[int] = []

        def step(move: int, subgoal: str) -> None:
            nonlocal obs, info
            subgoals.append(subgoal)  # the label of the frame the move is taken from
            obs, _, _, _, info = env.step(move)  # terminated at the end of the first return: the take goes on
            frames.append(obs["front"])
            agent_pos.append(obs["agent_pos"])

        # Round 1: the retrace task, then turns in place back to the starting heading.
        while not (info["success"] and _home(info)):  # the env's termination: every waypoint passed, back home
            if len(moves) == config.max_episode_steps:
                raise RunError(f"seed {seed}: the expert did not retrace the path in {len(moves)} steps; the "
                               "revisit scenario cannot be played with these env settings")
            move = expert.select_action(obs, info)
            step(move, expert.subgoal)
            moves.append(move)
        for _ in range(round(360 / TURN_DEGREES)):
            error = (start_heading - info["heading"] + 180.0) % 360.0 - 180.0
            if error == 0:
                break
            move = int(Move.TURN_RIGHT if error > 0 else Move.TURN_LEFT)
            step(move, RETURN_INSTRUCTION)
            moves.append(move)
        first_round = len(moves)
        labels = subgoals[:first_round]

        rounds = 1
        while rounds < 2 or len(frames) < min_frames:
            rounds += 1
            for move, subgoal in zip(moves, labels):
                step(move, subgoal)
        subgoals.append(subgoals[-1])  # the final frame
    finally:
        env.close()
    positions = np.stack(agent_pos)
    pairs = _same_place_pairs(positions, first_round)
    states = [""] * len(frames)
    for first, revisit in pairs:
        states[first] = states[revisit] = f"place {first}"
    return RevisitScenario(
        frames=np.stack(frames),
        subgoals=subgoals,
        pairs=pairs,
        states=states,
        agent_pos=positions,
        seed=seed,
        rounds=rounds,
        fps=float(config.control_hz),
    )


def _home(info: dict[str, Any]) -> bool:
    """Whether the agent stands where the planned path starts (within `SAME_PLACE` blocks)."""
    return bool(np.linalg.norm(info["position"][:2] - info["path"][0]) <= SAME_PLACE)


def _same_place_pairs(agent_pos: np.ndarray, first_round: int) -> list[tuple[int, int]]:
    """(first_visit, revisit): each frame from `first_round` on with the nearest frame of the first round at
    the same place (same heading, horizontal position within `SAME_PLACE`), if there is one."""
    first = agent_pos[:first_round]
    pairs = []
    for index in range(first_round, len(agent_pos)):
        x, y, _, heading = agent_pos[index]
        distance = np.hypot(first[:, 0] - x, first[:, 1] - y)
        distance[(first[:, 3] != heading) | (distance > SAME_PLACE)] = np.inf
        nearest = int(np.argmin(distance))
        if np.isfinite(distance[nearest]):
            pairs.append((nearest, index))
    return pairs


__all__ = ["SAME_PLACE", "blockworld_revisit_scenario"]
