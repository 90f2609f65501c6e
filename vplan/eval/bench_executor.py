"""`vplan bench executor`: how far the agent gets with a perfect world model — the ceiling of `vplan run` that
the executor (the inverse-dynamics policy and the agent's loop) sets, next to what the world model reaches.

| row | what makes each chunk's frames | acts |
| --- | --- | --- |
| expert | nothing: the scripted expert acts on privileged state | the expert |
| expert video | the expert's own next `chunk_frames` frames from the env's current state, through the VAE | the agent |
| world model | the world model, through the episodic memory (`memory=`, default none), as in `vplan run` | the agent |

The expert-video row runs the agent unchanged (planner, replanning, `agent.*` settings, IDM) except that its
"world model" looks ahead: at every chunk a shadow copy of the env is set to the real env's state
(`TabletopEnv.set_state_from`), the expert acts there for one chunk, and its frames are encoded and decoded by
the world model's VAE, which is the best a world model can hand the IDM. So that row's success and Dist measure
the executor alone; the gap to the world-model row is what the world model costs. Tabletop only: the
look-ahead needs the env's state and the task's expert.

All rows run on the same seeds and report success, task progress (`vplan.tasks.task_progress`: 0 for doing
nothing, unlike Dist), Dist, steps and wall time per episode; the video rows also the generation PSNR (imagined
against executed frames, as in `vplan bench planning`). `<out>/results.json` is rewritten after every episode
(each with the torch threads it ran with; `parts` holds each run's machine) and a rerun with the same settings,
`threads` aside, continues it; `table.md` when all rows are done. The first episode of each video row is also an
MP4 (`expert_video_seed<seed>.mp4`, `world_model_seed<seed>.mp4`): the executed frame next to the imagined one at
every step, as `vplan run` writes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.eval.bench_planning import (generation_psnr, keep_episode, load_results, new_part, say_interrupted,
                                       summarize, threads_note)
from vplan.eval.config import BenchExecutorConfig
from vplan.memory.baselines import NoMemory
from vplan.memory.config import MemoryConfig
from vplan.run import write_video
from vplan.shipped import pin_checkpoints
from vplan.tasks import task_progress
from vplan.utils.files import write_json, write_text_atomic
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.settings import RESULTS_FILE

TABLE_FILE = "table.md"
ROWS = ("expert", "expert video", "world model")


class ExpertVideoMemory(NoMemory):
    """Stands in for a perfect world model: `generate` returns the latents of the expert's own next chunk from
    `env`'s current state (rolled out in a shadow copy), whatever the history and text. The agent decodes
    them with the same VAE, so the IDM reads what a world model that imagined the expert would draw."""

    def __init__(self, world_model: Any, env: Any) -> None:
        from vplan.envs.tabletop_v0 import TabletopEnv
        from vplan.policies import make_expert

        super().__init__(MemoryConfig(kind="none"), world_model)
        self.env = env.unwrapped
        self.shadow = TabletopEnv(self.env.config)
        self.expert = make_expert("return_cubes", self.env.config)
        self._expert_ready = False

    def _reset(self) -> None:
        self._expert_ready = False  # reset from the next episode's first state (the agent resets us first)

    def generate(
        self,
        history: torch.Tensor,
        texts: list[str],
        num_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.condition(history)  # the checks every memory makes
        info = self.shadow.set_state_from(self.env)
        if not self._expert_ready:
            self.expert.reset(info)  # the spot each cube goes to, from the episode's start poses
            self._expert_ready = True
        frames = []
        for _ in range(num_frames or self.world_model.config.chunk_frames):
            obs, _, _, _, info = self.shadow.step(self.expert.select_action(obs={}, info=info))
            frames.append(obs["front"])
        return self.world_model.encode(torch.from_numpy(np.stack(frames))[None])

    def _close(self) -> None:
        super()._close()
        self.shadow.close()


def expert_episode(env: Any, seed: int) -> dict[str, Any]:
    """The expert alone in `env` from the state of `seed`: its result."""
    from vplan.policies import make_expert

    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    expert = make_expert("return_cubes", env.unwrapped.config)
    expert.reset(info)
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(expert.select_action(obs, info))
        steps += 1
        if terminated or truncated:
            break
    return {"seed": seed, "success": bool(info["success"]), "dist": float(info["dist"]),
            "progress": task_progress(info), "steps": steps,
            "psnr": None, "wall_s": time.perf_counter() - start}


def markdown_table(summaries: dict[str, dict[str, Any]], seeds: tuple[int, int], memory: str) -> str:
    lines = [
        f"`vplan bench executor` on tabletop, seeds {seeds[0]}..{seeds[1]} (world model with memory={memory})",
        "",
        "| row | success | task progress | Dist (m, mean ± std) | steps / episode | generation PSNR (dB) "
        "| wall s / episode |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summaries.items():
        psnr = "-" if s["psnr"] is None else f"{s['psnr']:.2f}"
        progress = "-" if s["progress"] is None else f"{s['progress']:.3f}"  # episodes from before it was recorded
        lines.append(f"| {name} | {s['success_rate']:.0%} | {progress} | "
                     f"{s['dist_mean']:.4f} ± {s['dist_std']:.4f} | "
                     f"{s['steps']:.0f} | {psnr} | {s['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


@restores_torch_threads
def bench_executor(cfg: BenchExecutorConfig) -> dict[str, Any]:
    """Run the three rows on the same seeds (continuing an interrupted bench); write results and table."""
    from tqdm import tqdm

    from vplan.agent import VideoPlanningAgent
    from vplan.envs import make_env
    from vplan.run import figures_so_far, run_episode, show_chunk
    from vplan.shipped import warn_if_training_seeds, with_checkpoint_frames

    cfg = with_checkpoint_frames(cfg, cfg.worldmodel, "worldmodel")  # after its config's refusals: for a bench
    warn_if_training_seeds(cfg.seed)
    out = Path(cfg.out)
    results = load_results(out / RESULTS_FILE, cfg, list(ROWS), "bench executor", summaries=(TABLE_FILE,))
    torch.set_num_threads(cfg.threads)
    part = new_part(cfg.threads)
    env = make_env(cfg.env)
    agents: dict[str, Any] = {}  # the video rows' agents
    try:
        if any(len(results["rows"][row]) < cfg.episodes for row in ROWS if row != "expert"):
            # loaded and checked before any row runs: a bad checkpoint must not leave an expert-only bench behind
            world = cfg.load_agent(cfg.worldmodel, cfg.memory)
            agents["world model"] = world
            world.check_env(env)
            # the same parts, the expert's look-ahead in place of the memory (it uses only the VAE)
            expert = ExpertVideoMemory(world.world_model, env)
            agents["expert video"] = VideoPlanningAgent(world.world_model, world.idm, world.planner, expert,
                                                        world.config)
        out.mkdir(parents=True, exist_ok=True)
        if agents:
            pin_checkpoints(out, {"worldmodel": cfg.worldmodel, "idm": cfg.idm},
                            resuming=any(results["rows"][name] for name in ROWS if name != "expert"))
        for row in ROWS:
            done = results["rows"][row]
            if len(done) >= cfg.episodes:
                continue
            agent = agents.get(row)
            bar = tqdm(range(len(done), cfg.episodes), desc=row, unit="episode", initial=len(done), total=cfg.episodes)
            for i in bar:
                if agent is None:
                    keep_episode(results, done, expert_episode(env, cfg.seed + i), part)
                else:
                    episode = run_episode(env, agent, cfg.task.instruction, cfg.seed + i, cfg.agent.camera,
                                          on_chunk=show_chunk(bar, cfg.seed + i))
                    result = episode["result"]
                    if i == 0:  # what the IDM was handed, next to what it did with it
                        write_video(out / f"{row.replace(' ', '_')}_seed{cfg.seed}.mp4", episode,
                                    int(env.metadata.get("render_fps", 10)))
                    keep_episode(results, done, {
                        "seed": result["seed"], "success": result["success"], "dist": result["dist"],
                        "progress": result["progress"], "steps": result["steps"], "ended_by": result["ended_by"],
                        "psnr": generation_psnr(episode["imagined"], episode["executed"]),
                        "wall_s": result["wall_s"]}, part)
                write_json(out / RESULTS_FILE, results)
                bar.set_postfix_str(figures_so_far(done))
    except KeyboardInterrupt:
        say_interrupted(out)
        raise
    finally:
        for agent in agents.values():  # each closes its memory: the shadow env; the world model's adapter
            agent.close()
        env.close()

    summaries = {row: summarize(results["rows"][row][: cfg.episodes]) for row in ROWS}
    results["summary"] = summaries
    write_json(out / RESULTS_FILE, results)
    table = markdown_table(summaries, (cfg.seed, cfg.seed + cfg.episodes - 1), cfg.memory.kind)
    table += threads_note({row: results["rows"][row][: cfg.episodes] for row in ROWS})
    write_text_atomic(out / TABLE_FILE, table)
    print("\n" + table + f"\nresults and table in {out}")
    return results

