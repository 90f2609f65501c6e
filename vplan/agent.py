"""`VideoPlanningAgent`: plan with a video world model, act through inverse dynamics, one action per call.

The gym-style agent API, usable in any loop over an env that follows vplan's contract (a camera image in
`obs`, the robot's position in `obs["agent_pos"]`, the task's scene facts in `info`):

```python
agent = VideoPlanningAgent.from_pretrained(task="return_cubes")
obs, info = env.reset(seed=10000)
agent.reset(instruction, obs, info)               # plans the subgoals; the episode's memory starts empty
while True:
    action = agent.act(obs, info)
    if agent.done:  # the plan is used up: `action` is only the idle one, not to be sent
        break
    obs, reward, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        break
agent.wait(obs, info)  # the env's last frame, and the memory's last update
```

Per chunk, inside `act` when the previous chunk's actions are used up: wait for the memory's update still in
flight, imagine the next `chunk_frames` frames for the current subgoal from the real frames so far
(`EpisodicMemory.generate`), start the memory's update on the imagined latents on its worker thread (it
runs while the chunk is decoded, read and executed; `memory.update_on=observed` learns from the executed
frames instead, after the chunk), decode the chunk, and read its actions off the frames with the IDM (the
last real frame, then the imagined ones). Each later `act` returns the next action and compares the frame it got with the
frame the world model imagined there. The observed frames, encoded, are the next chunk's context. With
`actions_from=observed` each action after the chunk's first is read again at its step, from the real frame
towards the next imagined one (closed loop: a lagging gripper is steered back onto the imagined path).

Replanning: when an observed frame differs from the imagined one by more than `replan_drift` (mean absolute
difference, pixels in [0, 1]), or the gripper stalls (it moved less than `stall_distance` over `stall_steps`
steps while the actions asked it to move), the rest of the chunk is dropped and a new chunk for the same
subgoal is imagined from the real frames — at most `max_replans_per_chunk` times per chunk and `max_replans`
per episode. A plan's subgoal spans `Subgoal.chunks` chunks; a replanned chunk takes the place of the one it
cuts short. Given `info`, a subgoal whose check (`Subgoal.check`) is still false after its chunks gets up to
`max_extra_chunks` more. The `act` call that finds the last subgoal over sets `done` and returns the idle action
(zeros), which a loop should not send (on the tabletop it opens the gripper).

An IDM for discrete moves (`num_moves`, the blockworld) makes `action_space` a `Discrete` and `act` return the
move's integer; such envs have no idle move, so the idle action is move 0 (stop stepping once `done`), and
stall detection, defined for continuous motion commands, is off.

`timings` holds the episode's seconds per stage: planning, generation (sampling and decoding), encoding
(observed frames to latents), inverse dynamics, memory wait (the loop blocked on an unfinished update),
memory update (the updates' own compute, on the worker: overlapped with the rest, not part of the loop's
wall time) and execution (the time between an `act` returning and the next call: the env's step and the
caller's loop).
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces

from vplan.config import STAGES, AgentConfig
from vplan.env_contract import (
    check_env_fits, check_idm_reads_frames, detected_stall_steps, frame_mismatch, observation_keys,
)
from vplan.errors import VplanWarning, close_after_block
from vplan.memory import EpisodicMemory, MemoryConfig, make_memory
from vplan.planner import Plan, PlannerConfig, Subgoal, make_planner
from vplan.planner.offline import Planner
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import require_text_conditioned

if TYPE_CHECKING:
    from vplan.policies.idm import IDMPolicy
    from vplan.worldmodel.model import WorldModel

REPLAN_REASONS = ("drift", "stall")


@dataclass
class Chunk:
    """One imagined chunk and how its execution went (`VideoPlanningAgent.chunk`)."""

    index: int  # chunks generated in the episode before this one
    subgoal_index: int
    text: str
    latents: torch.Tensor = field(repr=False)  # (1, T, C, h, w)
    context: torch.Tensor = field(repr=False)  # (1, k, C, h, w): the latents it was generated from (real frames)
    frames: np.ndarray = field(repr=False)  # imagined, uint8 (T, H, W, 3)
    actions: np.ndarray = field(repr=False)  # (T, action_dim), or (T,) moves: action i leads to imagined frame i (read off
    # the imagined frames when the chunk is made; with actions_from=observed each is replaced when it is taken)
    imagined_actions: np.ndarray = field(repr=False)  # what the IDM read off the imagined frames, never replaced
    replanned_from: str | None = None  # the reason, when this chunk replaces the rest of a cut one
    replans: int = 0  # replans of this chunk's slot so far
    executed: int = 0  # actions returned
    observed: list[np.ndarray] = field(default_factory=list, repr=False)  # the frame after each action
    # gripper xyz before each action; None where stall detection is off (the blockworld, stall_steps=0)
    positions: list[np.ndarray | None] = field(default_factory=list, repr=False)
    drift: list[float] = field(default_factory=list)  # per observed frame
    cut: str | None = None  # why the rest was dropped (a replan), if it was
    closed: bool = False  # its frames joined the context and the plan moved on (`act` retried after an error: once)

    @property
    def finished(self) -> bool:
        return self.cut is not None or self.executed == len(self.actions)


class VideoPlanningAgent:
    """Plans subgoals, imagines each chunk with the world model (through the episodic memory), executes the
    actions the inverse-dynamics policy reads off the imagined frames; see the module docstring."""

    def __init__(
        self,
        world_model: WorldModel,
        idm: IDMPolicy,
        planner: Planner,
        memory: EpisodicMemory | MemoryConfig | None = None,
        config: AgentConfig | None = None,
    ) -> None:
        if memory is not None and not isinstance(memory, (EpisodicMemory, MemoryConfig)):  # else found at reset
            raise TypeError(f"memory: expected an EpisodicMemory or a MemoryConfig (e.g. MemoryConfig(kind='none')), "
                            f"got {type(memory).__name__} {memory!r:.60}")
        if config is not None and not isinstance(config, AgentConfig):
            raise TypeError(f"config: expected an AgentConfig, got {type(config).__name__} {config!r:.60}")
        self.config = config or AgentConfig()
        self.world_model = world_model.eval()
        self.idm = idm.eval()
        self.planner = planner
        self.image_size = world_model.config.vae.image_size
        require_text_conditioned(world_model.config.conditioning, "world_model", "the agent")
        if idm.config.image_size != self.image_size:
            raise ValueError(f"expected an IDM that reads the world model's {self.image_size}x{self.image_size} "
                             f"frames, got one for {idm.config.image_size}x{idm.config.image_size}")
        if planner.config.chunk_frames != world_model.config.chunk_frames:
            raise ValueError(f"expected a planner with the world model's chunk_frames="
                             f"{world_model.config.chunk_frames}, got {planner.config.chunk_frames}")
        if memory is None:
            memory = MemoryConfig(kind="temp_lora")
        if isinstance(memory, EpisodicMemory) and memory.world_model is not world_model:
            raise ValueError("memory: expected an EpisodicMemory made for this world model, got another model's")
        # checked before the memory is made: Temp-LoRA attaches its adapter to the world model
        self.memory = make_memory(memory, world_model) if isinstance(memory, MemoryConfig) else memory
        self.action_space: spaces.Space = idm.config.action_space()
        self.idle_action = np.int64(0) if idm.config.discrete else np.zeros(idm.config.action_dim, np.float32)
        frames = world_model.config.chunk_frames
        self._stall_steps = detected_stall_steps(self.config, idm.config.discrete, frames)
        if not idm.config.discrete and self.config.stall_steps >= frames:  # judged within a chunk, before its end
            warnings.warn(f"agent.stall_steps={self.config.stall_steps} is not below the world model's chunk_frames="
                          f"{frames}, so no stall can be seen within a chunk: stall detection is off (set "
                          f"stall_steps below {frames}, or 0)", VplanWarning, stacklevel=2)
        self.idm_checkpoint: str | None = None  # where the IDM came from (from_pretrained): its recorded action units
        self._episodes = 0
        self._closed = False
        self._plan: Plan | None = None
        self._reset_failed = False  # the last reset raised: `act` says so rather than "before reset"
        self._start_episode_state()

    @classmethod
    def from_pretrained(
        cls,
        worldmodel: str | Path | None = None,
        idm: str | Path | None = None,
        task: TaskConfig | str = "return_cubes",
        planner: PlannerConfig | None = None,
        memory: MemoryConfig | None = None,
        config: AgentConfig | None = None,
        env: str | None = None,
    ) -> VideoPlanningAgent:
        """An agent from checkpoints (directories or `shipped:<env>/<component>`; None: the task's env's shipped
        ones), a task (a `TaskConfig` or the name of a preset in configs/task/), and the planner (its chunk_frames
        set to the world model's), memory (default temp_lora) and agent configs. `env` names the env it will act
        in (default: the task's), for the warning about checkpoints trained on another. A checkpoint that cannot
        drive the agent is a SettingMismatchError (a UsageError and a ValueError) naming it."""
        from vplan.policies.idm import IDMPolicy
        from vplan.shipped import shipped_checkpoint, warn_if_decoded_by_another_vae, warn_if_trained_elsewhere
        from vplan.worldmodel.model import WorldModel

        task_config = task if isinstance(task, TaskConfig) else TaskConfig.preset(task)
        worldmodel = str(worldmodel or shipped_checkpoint(task_config.env, "worldmodel"))  # a Path too
        idm = str(idm or shipped_checkpoint(task_config.env, "idm"))
        world_model = WorldModel.from_pretrained(worldmodel)
        require_text_conditioned(world_model.config.conditioning, f"worldmodel={worldmodel}", "the agent")
        idm_policy = IDMPolicy.from_pretrained(idm)
        warn_if_trained_elsewhere({"worldmodel": worldmodel, "idm": idm}, env or task_config.env)
        warn_if_decoded_by_another_vae(idm, world_model)
        check_idm_reads_frames(idm, idm_policy.config.image_size, world_model.config.vae.image_size)
        frames = world_model.config.chunk_frames
        if planner is not None:
            warn_if_chunk_frames_ignored(planner, frames)
        planner = replace(planner or PlannerConfig(), chunk_frames=frames)  # the model's
        agent = cls(world_model, idm_policy, make_planner(planner, task_config), memory, config)
        agent.idm_checkpoint = idm
        return agent

    # -- the episode ------------------------------------------------------------------------------------------

    def reset(
        self, instruction: str, obs: Mapping[str, Any], info: Mapping[str, Any], seed: int | None = None,
        plan: Plan | None = None,
    ) -> Plan:
        """Start an episode from the env's first `obs` and `info`: forget the last episode's memory, plan the
        subgoals, and take the first frame as context. Returns the plan (also `agent.plan`).

        `plan`: follow this plan (say, an earlier reset's, for another try from the same start) instead of asking
        the planner, whose LLM may answer differently each time."""
        self._reset_failed = True  # until the episode is set up
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction: expected a non-empty string, got {instruction!r}")
        if not isinstance(info, Mapping):
            raise ValueError(f"info: expected the env's info dict, got {type(info).__name__}")
        if plan is not None and not isinstance(plan, Plan):
            raise ValueError(f"plan: expected a Plan (what reset returned) or None, got {type(plan).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2**64):
            raise ValueError(f"seed: expected None or an int from 0 to 2**64 - 1 (torch's range), got {seed!r}")
        self._check_open()
        frame, _ = self._read_obs(obs)
        self.memory.reset()  # waits for the last episode's update, then forgets it
        self._plan = None
        self._start_episode_state()
        start = time.perf_counter()
        if plan is None:
            plan = self.planner.plan(instruction, info, first_frame=frame)
        else:
            _warn_of_unknown_texts(plan, self.planner, info)
        self.timings["planning"] += time.perf_counter() - start
        if self.config.max_extra_chunks > 0:  # the checks read info at a subgoal's end: a key it lacks, found now
            for subgoal in plan.subgoals:
                if subgoal.check is not None:
                    try:
                        subgoal.check.holds(info)
                    except ValueError as error:
                        raise ValueError(f"{error} (agent.max_extra_chunks={self.config.max_extra_chunks} reads the "
                                         "plan's checks; pass an info that holds it, or max_extra_chunks=0)") from None
        # an episode's seed once it has a plan: a reset the planner failed, tried again, keeps "episode k: seed + k"
        seed = self.config.seed + self._episodes if seed is None else seed
        self._episodes += 1
        self._generator = torch.Generator().manual_seed(int(seed))
        start = time.perf_counter()
        self._history = self.world_model.encode(torch.from_numpy(frame)[None, None])
        self.timings["encoding"] += time.perf_counter() - start
        self._recent.append(frame)
        self._plan = plan
        self._reset_failed = False
        return plan

    def act(self, obs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> np.ndarray | np.integer:
        """The next action (in `action_space`: float32, or a move's integer) for the current `obs`: the frame the
        previous action led to. `info` is optional; given, subgoal checks can extend a subgoal that is not done."""
        entered = time.perf_counter()
        self._check_open()
        if self._reset_failed:  # refused on its arguments, before it cleared the episode under way: still refused
            raise RuntimeError("act() with no episode under way: the last reset() failed (its error says why); call "
                               "agent.reset(instruction, obs, info) again")
        if self._plan is None:
            raise RuntimeError("act() before reset(): call agent.reset(instruction, obs, info) at the start of "
                               "every episode")
        if info is not None and not isinstance(info, Mapping):  # a subgoal's check reads it by key
            raise ValueError(f"info: expected the env's info dict or None, got {type(info).__name__}")
        if self._returned_at is not None:
            self.timings["execution"] += entered - self._returned_at
            self._returned_at = None
        frame, position = self._read_obs(obs)
        if self.done:
            self._returned_at = time.perf_counter()
            return self.idle_action.copy()
        chunk = self._chunk
        if self._awaiting and chunk is not None:  # obs is the outcome of the chunk's last action
            chunk.observed.append(frame)
            self._recent.append(frame)
            self._judge(chunk, position)
        self._awaiting = False
        if chunk is None or chunk.finished:
            if chunk is not None and not chunk.closed:
                self._close(chunk, info)
                chunk.closed = True
            if self._subgoal_index >= len(self._plan.subgoals):
                self.done = True
                self.expected_frame = None
                self._wait_memory()  # the last update's error, if any, belongs to this episode
                self._returned_at = time.perf_counter()
                return self.idle_action.copy()
            chunk = self._imagine(chunk)
        if self.config.actions_from == "observed" and chunk.executed > 0:
            chunk.actions[chunk.executed] = self._closed_loop_action(chunk.frames[chunk.executed])
        action = chunk.actions[chunk.executed]
        action = action.copy() if self.idm.config.discrete else action.astype(np.float32)
        chunk.positions.append(position)
        self.expected_frame = chunk.frames[chunk.executed]
        chunk.executed += 1
        self.steps += 1
        self._awaiting = True
        self._returned_at = time.perf_counter()
        return action

    def wait(self, obs: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> None:
        """Call it when an episode ends, with the last `obs` (and `info`) the env gave if `act` has not seen them
        (the env ended the episode): that frame is scored for drift and its step's time counted as execution, and a
        chunk it completes counts towards its subgoal (nothing is learned from it: no chunk follows). Then block
        until the memory's update still in flight is done (counted as memory wait), so it is not charged to the
        next episode."""
        if self._returned_at is not None:
            self.timings["execution"] += time.perf_counter() - self._returned_at
            self._returned_at = None
        chunk = self._chunk
        if obs is not None and self._awaiting and chunk is not None:
            frame, _ = self._read_obs(obs)
            chunk.observed.append(frame)
            self._record_drift(chunk)
            self._awaiting = False
            if chunk.finished and not chunk.closed:
                self._close(chunk, info, learn=False)
                chunk.closed = True
        self._wait_memory()

    def close(self) -> None:
        """Wait for the memory, stop its worker and give the world model back as it was (no adapter)."""
        self._closed = True
        try:
            self.memory.close()
        finally:
            self.planner.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the agent is closed (its memory's worker stopped, the world model given back); "
                               "make a new one")

    def __enter__(self) -> VideoPlanningAgent:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        close_after_block(self.close, exc_type is not None, "agent: closing it")

    def check_env(self, env: Any) -> None:
        """A SettingMismatchError (a UsageError and a ValueError), before an episode starts, where `env` cannot
        drive this agent (`vplan.env_contract.check_env_fits`: a vector env, other actions than the IDM predicts,
        observations without the camera's frame of the world model's size or, detecting stalls, the state key). An
        IDM from `from_pretrained` that learned actions recorded under other action units than a vplan env's
        (`max_delta`, `control_hz`) is warned of (`OtherEnvWarning`)."""
        from vplan.envs import action_units
        from vplan.shipped import warn_if_actions_mean_otherwise

        check_env_fits(env, self.config, self.action_space, self.image_size, self.world_model.config.chunk_frames,
                       self._stall_steps)
        env_config = getattr(getattr(env, "unwrapped", env), "config", None)  # a vplan env's settings
        if self.idm_checkpoint is not None and env_config is not None:
            warn_if_actions_mean_otherwise({"idm": self.idm_checkpoint}, action_units(env_config))

    # -- what there is to inspect -----------------------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        """The episode's plan (None before the first reset)."""
        return self._plan

    @property
    def obs_keys(self) -> dict[str, str]:
        """The observation keys `act` reads, by the setting that names each: the camera, and the gripper's state
        where stalls are detected."""
        return observation_keys(self.config, self._stall_steps)

    @property
    def subgoal(self) -> Subgoal | None:
        """The subgoal being executed (None before reset and once the plan is done)."""
        if self._plan is None or self._subgoal_index >= len(self._plan.subgoals):
            return None
        return self._plan.subgoals[self._subgoal_index]

    @property
    def chunk(self) -> Chunk | None:
        """The chunk being executed: its imagined frames and latents, actions, observed frames, drift."""
        return self._chunk

    @property
    def imagined(self) -> np.ndarray | None:
        """The current chunk's imagined frames, uint8 (chunk_frames, H, W, 3)."""
        return None if self._chunk is None else self._chunk.frames

    def stats(self) -> dict[str, Any]:
        """The episode so far: steps, chunks imagined, replans by reason, extra chunks, subgoals done."""
        return {
            "steps": self.steps,
            "chunks": self._chunks_made,
            "replans": dict(self.replans),
            "extra_chunks": self._extra_total,
            "drift_mean": float(np.mean(self._drifts)) if self._drifts else None,
            "drift_max": float(np.max(self._drifts)) if self._drifts else None,
            "subgoals_done": min(self._subgoal_index, len(self._plan.subgoals)) if self._plan else 0,
            "subgoals": len(self._plan.subgoals) if self._plan else 0,
            "done": self.done,
        }

    # -- inside -----------------------------------------------------------------------------------------------

    def _start_episode_state(self) -> None:
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.replans: dict[str, int] = dict.fromkeys(REPLAN_REASONS, 0)
        self.steps = 0
        self.done = False
        self.expected_frame: np.ndarray | None = None  # the imagined frame the last action aims at
        self.events: list[dict[str, Any]] = []  # replans and subgoal changes, with the step they happened at
        self._chunk: Chunk | None = None
        self._chunks_made = 0
        self._subgoal_index = 0
        self._slot = 0  # chunks of the current subgoal executed (a replanned chunk shares its slot)
        self._extra = 0  # extra chunks of the current subgoal
        self._extra_total = 0
        self._drifts: list[float] = []
        self._awaiting = False
        self._returned_at: float | None = None
        self._history: torch.Tensor | None = None  # latents of every observed frame (1, N, C, h, w)
        self._recent: deque[np.ndarray] = deque(maxlen=self.idm.config.history_frames)
        self._generator = torch.Generator().manual_seed(self.config.seed)

    def _read_obs(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """The camera frame (checked) and the gripper position (None without stall detection)."""
        cfg = self.config
        if not isinstance(obs, Mapping):
            raise ValueError(f"obs: expected the env's observation dict, got {type(obs).__name__}")
        if cfg.camera not in obs:
            raise ValueError(f"obs: expected the camera key {cfg.camera!r} (agent.camera), got keys {sorted(obs)}")
        # a copy: the agent keeps it (context, drift, IDM history), and an env may render into one buffer
        frame = np.array(obs[cfg.camera])
        size = self.image_size
        if frame.shape != (size, size, 3) or frame.dtype != np.uint8:
            raise ValueError(f"obs[{cfg.camera!r}]: {frame_mismatch(frame.shape, frame.dtype, size)}")
        if self._stall_steps == 0:
            return frame, None
        if cfg.state_key not in obs:
            raise ValueError(f"obs: expected the state key {cfg.state_key!r} for stall detection, got keys "
                             f"{sorted(obs)}; set agent.stall_steps=0 to turn stall detection off")
        state = np.asarray(obs[cfg.state_key], dtype=np.float64).reshape(-1)
        if state.size < 3 or not np.isfinite(state[:3]).all():
            raise ValueError(f"obs[{cfg.state_key!r}]: expected the gripper's xyz first (3 finite values), got "
                             f"{state.tolist()}")
        return frame, state[:3].copy()

    def _judge(self, chunk: Chunk, position: np.ndarray | None) -> None:
        """After an executed action: the drift of its frame, then replan on drift or a stall."""
        cfg = self.config
        drift = self._record_drift(chunk)
        if chunk.executed == len(chunk.actions):
            return  # the chunk is over anyway: the next one starts from these frames
        if chunk.replans >= cfg.max_replans_per_chunk or sum(self.replans.values()) >= cfg.max_replans:
            return
        reason = None
        if cfg.replan_drift is not None and drift > cfg.replan_drift:
            reason = "drift"
        elif self._stall_steps and position is not None and len(chunk.positions) >= cfg.stall_steps:
            moved = float(np.linalg.norm(position - chunk.positions[-cfg.stall_steps]))  # 3 mm in x and y: 4.2 mm
            commanded = np.abs(chunk.actions[chunk.executed - cfg.stall_steps : chunk.executed, :3]).max(axis=1)
            if moved < cfg.stall_distance and float(commanded.mean()) >= cfg.stall_command:
                reason = "stall"
        if reason is not None:
            chunk.cut = reason
            self.replans[reason] += 1
            self.events.append({"step": self.steps, "event": f"replan ({reason})", "drift": drift})

    def _record_drift(self, chunk: Chunk) -> float:
        """The drift of the chunk's latest observed frame from the imagined one (mean absolute difference in
        [0, 1]), recorded."""
        observed = chunk.observed[-1].astype(np.float32)
        imagined = chunk.frames[len(chunk.observed) - 1].astype(np.float32)
        drift = float(np.abs(observed - imagined).mean() / 255.0)
        chunk.drift.append(drift)
        self._drifts.append(drift)
        return drift

    def _close(self, chunk: Chunk, info: Mapping[str, Any] | None, learn: bool = True) -> None:
        """A chunk is over: its observed frames join the context, the memory learns (observed mode), and the
        plan moves on (unless the chunk was cut: its replacement takes its slot); `learn=False` (the episode has
        ended), or a chunk that ends the plan, skips the context and the memory: no chunk follows. The subgoal's
        check is read first: an info it cannot read raises before anything changes, so `act` can be called again."""
        subgoal = self._plan.subgoals[self._subgoal_index]
        last_slot = chunk.cut is None and self._slot + 1 >= subgoal.chunks + self._extra
        judged = (last_slot and info is not None and subgoal.check is not None
                  and self._extra < self.config.max_extra_chunks)
        reached = subgoal.check.holds(info) if judged else True
        ends_plan = last_slot and reached and self._subgoal_index + 1 == len(self._plan.subgoals)
        if chunk.observed and learn and not ends_plan:
            if self.memory.config.update_on == "observed":
                self._wait_memory()  # the last update's error, if any, before this chunk changes anything
            start = time.perf_counter()
            observed = self.world_model.encode(torch.from_numpy(np.stack(chunk.observed))[None])
            self.timings["encoding"] += time.perf_counter() - start
            previous = self._history[:, -self.world_model.config.chunk_frames :]
            self._history = torch.cat([self._history, observed], dim=1)
            if self.memory.config.update_on == "observed":
                self.memory.update_async(previous, observed)
        if chunk.cut is not None:
            return
        self._slot += 1
        if self._slot < subgoal.chunks + self._extra:
            return
        if not reached:
            if learn:  # an ended episode gets no extra chunk
                self._extra += 1
                self._extra_total += 1
                self.events.append({"step": self.steps, "event": f"extra chunk: {subgoal.check} is false"})
            return
        self._subgoal_index += 1
        self._slot = self._extra = 0

    def _closed_loop_action(self, target: np.ndarray) -> np.ndarray:
        """The IDM's action from the latest real frames to an imagined frame."""
        start = time.perf_counter()
        recent = list(self._recent)
        recent = [recent[0]] * (self.idm.config.history_frames - len(recent)) + recent  # pad like `windows`
        window = torch.from_numpy(np.stack([*recent, target]))[None]
        action = self.idm.predict_windows(window)[0].numpy()
        self.timings["inverse_dynamics"] += time.perf_counter() - start
        return action

    def _wait_memory(self) -> None:
        start = time.perf_counter()
        logs = self.memory.wait()
        self.timings["memory_wait"] += time.perf_counter() - start
        if logs:
            self.timings["memory_update"] += float(logs.get("seconds", 0.0))

    def _imagine(self, previous_chunk: Chunk | None) -> Chunk:
        """The next chunk of the current subgoal: generated from the real frames so far, decoded, handed to the
        memory (imagined mode), and turned into actions."""
        subgoal = self._plan.subgoals[self._subgoal_index]
        replan = previous_chunk.cut if previous_chunk is not None else None
        self._wait_memory()
        start = time.perf_counter()
        # through the memory's own generate (a memory may imagine otherwise: bench executor's expert video)
        latents = self.memory.generate(self._history, [subgoal.text], generator=self._generator)
        context = self.memory.last_context  # what it conditioned on (anchor: the episode's first frame, the last)
        if self.memory.config.update_on == "imagined":
            # learns on the worker while this chunk is decoded, read and executed; the next generation waits
            self.memory.update_async(self._history[:, -self.world_model.config.chunk_frames :], latents)
        frames = self.world_model.decode(latents)[0].numpy()  # the VAE: untouched by the memory's update
        self.timings["generation"] += time.perf_counter() - start
        start = time.perf_counter()
        window = np.concatenate([np.stack(self._recent), frames])
        actions = self.idm.actions_for_chunk(window, context=len(self._recent)).numpy()
        self.timings["inverse_dynamics"] += time.perf_counter() - start
        if replan is None and self._slot == 0 and self._extra == 0:
            self.events.append({"step": self.steps, "event": f"subgoal: {subgoal.text}"})
        chunk = Chunk(
            index=self._chunks_made,
            subgoal_index=self._subgoal_index,
            text=subgoal.text,
            latents=latents,
            context=context,
            frames=frames,
            actions=actions,
            imagined_actions=actions.copy(),
            replanned_from=replan,
            replans=(previous_chunk.replans + 1) if replan is not None else 0,
        )
        self._chunks_made += 1
        self._chunk = chunk
        return chunk


def _warn_of_unknown_texts(plan: Plan, planner: Planner, info: Mapping[str, Any]) -> None:
    """A VplanWarning where a plan the caller wrote names a subgoal that is not one of the task's skills: the
    world model would imagine under a text no episode of the task was labelled with (a typo, say). Silent where
    the skills cannot be read off this `info` (the plan may be meant for another scene)."""
    try:
        known = planner.skill_texts(info)
    except (AttributeError, KeyError, TypeError, ValueError):  # a duck-typed planner; an info without scene facts
        return
    unknown = [subgoal.text for subgoal in plan.subgoals if known is not None and subgoal.text not in known]
    if unknown:
        warnings.warn(f"plan: {unknown[0]!r} is not one of task {planner.task_config.name!r}'s skills {known}, the "
                      "texts its episodes are labelled with; the world model may draw nothing sensible for it",
                      VplanWarning, stacklevel=3)


def warn_if_chunk_frames_ignored(planner: PlannerConfig, frames: int) -> None:
    """A VplanWarning where `planner.chunk_frames` was set to other than the world model's `frames`: the agent
    plans in the model's chunks whatever it says (the default, 8, cannot be told from one typed)."""
    if planner.chunk_frames not in (frames, PlannerConfig().chunk_frames):
        warnings.warn(f"planner.chunk_frames={planner.chunk_frames} is ignored: a chunk is the world model's, "
                      f"{frames} frames", VplanWarning, stacklevel=3)


