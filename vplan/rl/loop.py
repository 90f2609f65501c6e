"""`vplan rl env=tabletop task=return_cubes`: RL finetuning of planner and executor by hierarchical exploration.

Each iteration takes `seeds_per_iteration` task seeds. Per seed, G plans (the planner with each of `plan_offsets`
chunks added to every subgoal; the LLM planner also samples at its temperature) and, per plan, K executor
continuations (the agent from the same env state with the same plan, asked of the planner once, with different
generation noise) are run as episodes; each is scored by the configured rewards (vplan/rl/rewards.py).
Group-relative advantages (vplan/rl/advantages.py) then drive both levels:

- planner: the offsets' logits move by the plan advantages; the tuned offset (the best logit) is written to
  `<out>/planner.yaml` and used as `planner.chunk_offset`. Every seed's best and worst plan, where their texts
  differ, are appended to `<out>/plan_preferences.jsonl` as (prompt, chosen, rejected) for LLM preference
  finetuning elsewhere;
- executor: the imagined chunks of every continuation train a LoRA on the UNet with reward-weighted regression
  or Diffusion-DPO (vplan/rl/objectives.py), with a pull toward the reference weights.

After each iteration `<out>/checkpoint` holds the adapter, the optimizer, the planner's logits and the iteration:
a killed run resumes after its last finished iteration (seeded episodes: the same rollouts as an uninterrupted
run). At the end `<out>/final` is the world model with the adapter merged (`vplan run worldmodel=<out>/final`),
`<out>/lora.safetensors` the adapter alone, and `metrics.json` the before/after evaluation on the same held-out
seeds with the same agent settings: the base model and plan; the finetuned model with the same plan (its replans
and extra chunks follow what it executes); and the finetuned model with the tuned plan. `rewards.png` draws the mean
reward, each reward term and the success rate of the explored episodes, iteration by iteration.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vplan.agent import warn_if_chunk_frames_ignored
from vplan.constants import HELD_OUT_SEEDS
from vplan.errors import RunError, UsageError, VplanWarning, first_line
from vplan.loop.checkpoint import OPTIMIZER_FILE, load_optimizer, save_optimizer
from vplan.rl.advantages import group_advantages
from vplan.rl.config import RLConfig
from vplan.rl.rollout import EpisodeRollout, ImaginedChunk
from vplan.run import run_episode
from vplan.shipped import (
    check_checkpoints_exist,
    check_outside_results,
    pin_checkpoints,
    warn_if_actions_mean_otherwise,
    warn_if_decoded_by_another_vae,
    warn_if_trained_elsewhere,
    with_checkpoint_frames,
)
from vplan.utils.files import (
    file_written_aside, folder_written_aside, recover_folder, write_json, write_text_atomic,
)
from vplan.utils.openmp import restores_torch_threads
from vplan.utils.plots import line_plot
from vplan.utils.settings import (
    CONFIG_FILE, check_config_is_ours, check_same_config, write_config,
)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
NOISE = "shared-across-plans"  # state.json's mark of how exploration seeds its noise: runs are resumed alike
LORA_FILE = "lora.safetensors"
PREFERENCES_FILE = "plan_preferences.jsonl"
VLM_JOURNAL_FILE = "vlm_requests.jsonl"  # the VLM questions since the last checkpoint (a kill keeps their cost)
ITERATIONS_FILE = "iterations.jsonl"
PLOT_FILE = "rewards.png"
# Settings a resumed run may change: how long it runs and how it is evaluated, not what it explores or learns.
RESUMABLE_CHANGES = ("iterations", "eval_episodes", "eval_seed", "threads", "out")  # out: ./runs/rl, runs/rl/


def _imagined(chunk: Any) -> ImaginedChunk:
    return ImaginedChunk(text=chunk.text, context=chunk.context, latents=chunk.latents, frames=chunk.frames,
                         actions=chunk.imagined_actions, observed=list(chunk.observed), drift=list(chunk.drift))


def _load(setting: str, checkpoint: str, from_pretrained: Any) -> Any:
    """`from_pretrained(checkpoint)`, its refusal (another kind, a broken file) a UsageError naming the setting."""
    try:
        return from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        raise UsageError(f"{setting}={checkpoint}: {error}") from None


def _keep_iterations_before(path: Path, iteration: int) -> None:
    """Drop the rows a killed run appended for iterations its checkpoint does not hold (they are redone), and a
    last line it did not finish writing."""
    if path.exists():
        rows = [row for row in map(_parsed, path.read_text().splitlines()) if row and row["iteration"] < iteration]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _parsed(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def iteration_records(iterations: Path) -> list[dict[str, Any]]:
    """The records of `iterations.jsonl`, one per finished iteration (none where there is no file yet)."""
    if not iterations.is_file():
        return []
    return [json.loads(line) for line in iterations.read_text().splitlines() if line.strip()]


def iteration_series(iterations: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per iteration, the explored episodes' mean reward (the weighted sum), success rate and each reward term
    (unweighted; an episode a term gave no score, such as a VLM reply that was not yes/no, is left out of it)."""
    records = iteration_records(iterations)
    x = [record["iteration"] for record in records]
    series = {"reward": (x, [record["reward_mean"] for record in records]),
              "success rate": (x, [record["success_rate"] for record in records])}
    ids = ("task_seed", "plan", "continuation", "reward")
    for term in dict.fromkeys(k for record in records for r in record["rewards"] for k in r if k not in ids):
        points = [(record["iteration"], float(np.mean(values))) for record in records
                  if (values := [r[term] for r in record["rewards"] if term in r])]
        series[f"{term} (unweighted)"] = ([i for i, _ in points], [v for _, v in points])
    return series


def _plot_iterations(out: Path) -> None:
    """Draw `<out>/rewards.png` from every iteration in `<out>/iterations.jsonl`."""
    line_plot(out / PLOT_FILE, iteration_series(out / ITERATIONS_FILE), "iteration",
              "mean over the explored episodes", "vplan rl: exploration, iteration by iteration")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class RLRun:
    """The state of one `vplan rl` run: models, planner logits, optimizer; see the module docstring."""

    def __init__(self, cfg: RLConfig) -> None:
        from vplan.envs import action_units, env_name, make_env
        from vplan.planner import make_planner
        from vplan.policies.idm import IDMPolicy
        from vplan.rl.objectives import add_rl_adapter, lora_parameters
        from vplan.rl.rewards import make_rewards
        from vplan.rl.vlm_reward import VLMReward
        from vplan.worldmodel.config import require_text_conditioned
        from vplan.worldmodel.model import WorldModel

        self.cfg, self.out = cfg, Path(cfg.out)
        if cfg.explored_end > HELD_OUT_SEEDS:  # the config refuses only an overlap with this run's own eval_seed
            played = f"{max(cfg.seed, HELD_OUT_SEEDS)}..{cfg.explored_end - 1}"
            warnings.warn(f"seed={cfg.seed}: exploration plays seeds {played}, among the {HELD_OUT_SEEDS}+ that vplan "
                          f"run, the evals and the benches hold out by default; explore on seeds below "
                          f"{HELD_OUT_SEEDS}", VplanWarning, stacklevel=2)
        checkpoints = _checkpoints(cfg)
        check_checkpoints_exist(checkpoints)
        check_outside_results(cfg.out, checkpoints)
        self.base = _load("worldmodel", cfg.worldmodel_checkpoint, WorldModel.from_pretrained).eval()
        self.idm = _load("idm", cfg.idm_checkpoint, IDMPolicy.from_pretrained)
        warn_if_trained_elsewhere(checkpoints, env_name(cfg.env))
        warn_if_decoded_by_another_vae(cfg.idm_checkpoint, self.base)
        warn_if_actions_mean_otherwise({"idm": cfg.idm_checkpoint, "rewards.action_worldmodel":
                                        cfg.rewards.action_worldmodel}, action_units(cfg.env))
        require_text_conditioned(self.base.config.conditioning, f"worldmodel={cfg.worldmodel_checkpoint}",
                                 "vplan rl's agent")
        warn_if_chunk_frames_ignored(cfg.planner, self.base.config.chunk_frames)  # make_agent takes the model's
        # a missing LLM key or an unknown task: refused before out= is written; an LLM planner's endpoint serves
        # every agent `make_agent` makes, so that its giving up after 3 failed requests holds across the plans
        self._endpoint = getattr(make_planner(cfg.planner, cfg.task), "endpoint", None)
        self.model = copy.deepcopy(self.base)  # the one the adapter trains on
        add_rl_adapter(self.model.unet, cfg.lora_rank)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.params = lora_parameters(self.model.unet)
        for parameter in self.params.values():
            parameter.requires_grad_(True)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr)
        self.logits = np.zeros(len(cfg.plan_offsets))
        self.iteration = 0
        self.vlm = VLMReward(cfg.vlm_reward) if cfg.vlm_reward.enabled else None
        try:
            self.rewards = make_rewards(cfg.rewards, self.vlm, self.base, self.idm)
        except ValueError as error:
            raise UsageError(str(error)) from None
        self.env = make_env(cfg.env)  # last: a refusal above leaves no simulator running

    # -- checkpoint ------------------------------------------------------------------------------------------

    def save(self) -> None:
        """The adapter, the optimizer, the logits and the iteration, written aside and swapped in whole."""
        from safetensors.torch import save_file

        with folder_written_aside(self.out / CHECKPOINT_DIR) as staging:  # a kill mid-swap: see recover()
            save_file({k: v.detach().contiguous() for k, v in self.params.items()}, staging / LORA_FILE)
            save_optimizer(self.optimizer, staging / OPTIMIZER_FILE)
            state = {"iteration": self.iteration, "logits": self.logits.tolist(), "noise": NOISE}
            if self.vlm is not None:  # its request budget and cache run on across a resume, as if never stopped
                state["vlm"] = self.vlm.state()
            (staging / STATE_FILE).write_text(json.dumps(state))
        if self.vlm is not None:  # the checkpoint holds what the journal noted
            self.vlm.clear_journal()

    def recover(self) -> None:
        """Finish a `save` that a kill cut between its two renames: the staged checkpoint was complete, so it goes
        in place (the replaced one, if the staged state does not read after a machine crash)."""
        def readable(staged: Path) -> bool:
            try:
                json.loads((staged / STATE_FILE).read_text())
                return True
            except (OSError, ValueError):
                return False

        recover_folder(self.out / CHECKPOINT_DIR, readable)

    def load(self) -> bool:
        """Continue from `<out>/checkpoint` if there is one (call `recover` first); whether there was."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = self.out / CHECKPOINT_DIR
        if not (folder / STATE_FILE).is_file():
            return False
        if not (folder / OPTIMIZER_FILE).is_file():  # vplan before 2026-12-05 pickled it (optimizer.pt)
            raise UsageError(f"{folder}: no {OPTIMIZER_FILE} (a checkpoint of an older vplan, which wrote the "
                             "optimizer as a pickle, never loaded now); start again in another out=DIR")
        try:  # a damaged file (the checkpoint is swapped in whole, so a disk fault or a hand edit)
            state = json.loads((folder / STATE_FILE).read_text())
            iteration, logits = int(state["iteration"]), np.asarray(state["logits"], np.float64).reshape(-1)
            saved = load_file(folder / LORA_FILE)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise RunError(self._unreadable(folder, error)) from None
        if state.get("noise") != NOISE:  # its iterations explored with each plan's own noise
            raise UsageError(f"{folder} was begun before every plan's continuation k drew the same noise (2026-12-06): "
                             "going on would mix two ways of exploring; start again in another out=DIR")
        if len(logits) != len(self.cfg.plan_offsets):
            raise UsageError(f"{folder} was written with {len(logits)} plan offsets, not "
                             f"{len(self.cfg.plan_offsets)}; pass the same plan_offsets or another out=DIR")
        if set(saved) != set(self.params) or any(saved[k].shape != p.shape for k, p in self.params.items()):
            raise UsageError(f"{folder} holds an adapter of another shape; pass the same lora_rank and worldmodel")
        with torch.no_grad():
            for name, parameter in self.params.items():
                parameter.copy_(saved[name])
        try:
            load_optimizer(self.optimizer, folder / OPTIMIZER_FILE)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise RunError(self._unreadable(folder, error)) from None
        self.iteration, self.logits = iteration, logits
        if self.vlm is not None and "vlm" in state:
            self.vlm.load_state(state["vlm"])
        return True

    @staticmethod
    def _unreadable(folder: Path, error: BaseException) -> str:
        return (f"{folder} cannot be read ({first_line(error, with_type=True)}); delete that folder to start this "
                "run again from its first iteration, or choose another out=DIR")

    # -- one iteration ---------------------------------------------------------------------------------------

    def policy_model(self) -> Any:
        from vplan.rl.objectives import merged_copy

        return merged_copy(self.model)

    def make_agent(self, world_model: Any, chunk_offset: int) -> Any:
        from vplan.agent import VideoPlanningAgent
        from vplan.planner import make_planner

        planner_config = replace(self.cfg.planner, chunk_frames=world_model.config.chunk_frames,
                                 chunk_offset=chunk_offset)
        planner = make_planner(planner_config, self.cfg.task, self._endpoint)
        return VideoPlanningAgent(world_model, self.idm, planner, self.cfg.memory, self.cfg.agent)

    def explore(self, bar: Any) -> list[list[list[EpisodeRollout]]]:
        """This iteration's rollouts: [seed][plan][continuation], each scored."""
        cfg, policy = self.cfg, self.policy_model()
        groups = []
        for j in range(cfg.seeds_per_iteration):
            task_seed = cfg.seed + self.iteration * cfg.seeds_per_iteration + j
            plans = []
            for g, offset in enumerate(cfg.plan_offsets):
                agent = self.make_agent(policy, offset)
                try:
                    continuations, plan = [], None
                    for k in range(cfg.continuations):
                        # common random numbers: continuation k of every plan draws the same noise, so plans
                        # are compared on their plans (distinct noise made any gap, noise alone, a ±1 advantage)
                        agent_seed = task_seed * cfg.continuations + k
                        episode = run_episode(self.env, agent, cfg.task.instruction, task_seed, cfg.agent.camera,
                                              agent_seed=agent_seed, plan=plan)
                        plan = agent.plan  # the K continuations of a plan follow the one plan (an LLM's may vary)
                        rollout = EpisodeRollout(task_seed=task_seed, plan_index=g, continuation=k,
                                                 plan=agent.plan.to_dict(), final_info=episode["info"],
                                                 stats=agent.stats(), chunks=[_imagined(c) for c in episode["chunks"]])
                        self.rewards.score(rollout)
                        continuations.append(rollout)
                        bar.set_postfix(reward=f"{rollout.reward:.3f}", refresh=False)
                        bar.update(1)
                finally:
                    agent.close()
                plans.append(continuations)
            self.rewards.complete_group(plans)
            groups.append(plans)
        return groups

    def update_planner(self, groups: list[list[list[EpisodeRollout]]]) -> list[dict[str, Any]]:
        """Plan advantages move the offsets' logits; each seed's best and worst plan become a preference pair
        where their subgoal texts differ (what an LLM planner answers: plans that differ only in chunks, as the
        offline planner's variants do, teach it nothing)."""
        from vplan.planner.llm import reply_text

        pairs = []
        for plans in groups:
            table = np.array([[r.reward for r in continuations] for continuations in plans])
            plan_advantages, _ = group_advantages(table)
            self.logits += self.cfg.planner_lr * plan_advantages
            means = table.mean(axis=1)
            texts = [[s["text"] for s in continuations[0].plan["subgoals"]] for continuations in plans]
            best = int(np.argmax(means))
            # the worst plan that says something else than the best (the worst overall may say the same)
            others = [g for g in range(len(plans)) if texts[g] != texts[best] and means[g] < means[best]]
            worst = min(others, key=lambda g: means[g]) if others else best
            chosen, rejected = texts[best], texts[worst]
            if means[best] > means[worst] and chosen != rejected:
                pairs.append({"prompt": self.prompt(plans[best][0]), "chosen": reply_text(chosen),
                              "rejected": reply_text(rejected),
                              "rewards": {"chosen": float(means[best]), "rejected": float(means[worst])},
                              "chunk_offsets": {"chosen": self.cfg.plan_offsets[best],
                                                "rejected": self.cfg.plan_offsets[worst]},
                              # an LLM planner's failed request falls back to the offline plan: not its answer
                              "sources": {"chosen": plans[best][0].plan.get("source"),
                                          "rejected": plans[worst][0].plan.get("source")},
                              "task_seed": plans[best][0].task_seed, "iteration": self.iteration})
        return pairs

    def prompt(self, rollout: EpisodeRollout) -> str:
        """The planning request a preference pair answers, as the LLM planner words it (after its system prompt,
        `vplan.planner.llm.SYSTEM_PROMPT`)."""
        from vplan.planner.llm import request_text
        from vplan.planner.skills import task_skills

        _, info = self.env.reset(seed=rollout.task_seed)
        skills = task_skills(self.cfg.task.name)
        return request_text(self.cfg.task.instruction, skills.describe(info), skills.skills(info))

    def samples(self, groups: list[list[list[EpisodeRollout]]]) -> list[tuple[ImaginedChunk, float]]:
        """(chunk, continuation advantage) for every imagined chunk of the iteration (RWR)."""
        samples = []
        for plans in groups:
            _, advantages = group_advantages(np.array([[r.reward for r in cs] for cs in plans]))
            for g, continuations in enumerate(plans):
                for k, rollout in enumerate(continuations):
                    samples += [(chunk, float(advantages[g, k])) for chunk in rollout.chunks]
        return samples

    def pairs(self, groups: list[list[list[EpisodeRollout]]]) -> list[tuple[ImaginedChunk, ImaginedChunk]]:
        """(chosen, rejected) chunks for DPO: per plan, its best and worst continuation, chunk i with chunk i where
        both had the same condition, text and context (Diffusion-DPO compares two samples of one condition): the
        first chunks, imagined from the same start; later ones follow what each continuation executed."""
        pairs = []
        for plans in groups:
            for continuations in plans:
                rewards = [r.reward for r in continuations]
                best, worst = continuations[int(np.argmax(rewards))], continuations[int(np.argmin(rewards))]
                if best.reward > worst.reward:
                    pairs += [(w, l) for w, l in zip(best.chunks, worst.chunks)
                              if w.text == l.text and torch.equal(w.context, l.context)]
        return pairs

    def loss(self, chunk: ImaginedChunk, seed: int) -> torch.Tensor:
        """The model's per-sample diffusion loss of one imagined chunk given its context, on seeded draws."""
        loss, _ = self.model(chunk.context, chunk.latents, [chunk.text], generator=torch.Generator().manual_seed(seed),
                             reduction="none")
        return loss[0]

    def finetune(self, groups: list[list[list[EpisodeRollout]]]) -> dict[str, float]:
        """`steps_per_iteration` Adam steps of the configured objective on this iteration's chunks, under a bar of
        their own (seconds each: the exploration bar stood still through them)."""
        from tqdm import tqdm

        from vplan.rl.objectives import delta_penalty, dpo_loss, reference, rwr_loss, rwr_weights

        cfg = self.cfg
        items: list[Any] = self.samples(groups) if cfg.objective == "rwr" else self.pairs(groups)
        if not items:
            return {"steps": 0}
        rng = np.random.default_rng(cfg.seed + self.iteration)
        if cfg.objective == "rwr":
            weights = rwr_weights(torch.tensor([advantage for _, advantage in items]), cfg.rwr_beta)
        # The model stays in eval mode: in train mode the UNet's temporal-convolution dropout draws from torch's
        # global generator, so a chunk and its reference would not be scored on the same draws (the LoRA has none).
        losses = []
        for step in tqdm(range(cfg.steps_per_iteration), desc=f"rl finetune {cfg.objective}", unit="step",
                         leave=False):
            indices = rng.choice(len(items), min(cfg.batch_size, len(items)), replace=False)
            batch = [items[i] for i in indices]
            seed = loss_seed(self.iteration, step, cfg.steps_per_iteration, cfg.batch_size)
            if cfg.objective == "rwr":
                per_sample = torch.stack([self.loss(chunk, seed + i) for i, (chunk, _) in enumerate(batch)])
                objective = rwr_loss(per_sample, weights[torch.from_numpy(indices)])
            else:
                chosen = torch.stack([self.loss(w, seed + i) for i, (w, _) in enumerate(batch)])
                rejected = torch.stack([self.loss(l, seed + i) for i, (_, l) in enumerate(batch)])
                with torch.no_grad(), reference(self.model.unet):
                    chosen_ref = torch.stack([self.loss(w, seed + i) for i, (w, _) in enumerate(batch)])
                    rejected_ref = torch.stack([self.loss(l, seed + i) for i, (_, l) in enumerate(batch)])
                objective = dpo_loss(chosen, rejected, chosen_ref, rejected_ref, cfg.dpo_beta)
            total = objective + cfg.penalty * delta_penalty(self.model.unet)
            if not torch.isfinite(total):
                milder = "raise rwr_beta" if cfg.objective == "rwr" else "lower dpo_beta"  # rwr: exp(A / beta)
                raise RunError(f"rl: the {cfg.objective} loss is {total.item()} at iteration {self.iteration}, "
                               f"step {step}; lower lr or {milder} (the finished iterations are kept in {self.out})")
            self.optimizer.zero_grad(set_to_none=True)
            total.backward(inputs=list(self.params.values()))
            self.optimizer.step()
            losses.append(float(objective.detach()))
        return {"steps": cfg.steps_per_iteration, "items": len(items), "loss_first": losses[0], "loss_last": losses[-1]}

    @property
    def tuned_offset(self) -> int:
        """The plan offset of the highest logit; on a tie that includes the configured offset, that one."""
        tied = [int(o) for o, logit in zip(self.cfg.plan_offsets, self.logits) if logit == self.logits.max()]
        return self.cfg.planner.chunk_offset if self.cfg.planner.chunk_offset in tied else tied[0]


def loss_seed(iteration: int, step: int, steps_per_iteration: int, batch_size: int) -> int:
    """The seed of a finetune step's first draw (batch item i draws with seed + i): each step's apart from every
    other's at any batch size (1000 apart up to batch 1000, as before)."""
    return (iteration * steps_per_iteration + step) * max(1000, batch_size)


def evaluate(
    run: RLRun, world_model: Any, chunk_offset: int, desc: str, plans: list[Any] | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """Success rate and Dist of the agent on the held-out seeds (as `vplan run`), following `plans` (one per
    episode) where given; with the plans it followed."""
    from tqdm import tqdm

    cfg, env = run.cfg, run.env
    agent = run.make_agent(world_model, chunk_offset)
    results, followed = [], []
    try:
        for i in tqdm(range(cfg.eval_episodes), desc=desc, unit="episode"):
            episode = run_episode(env, agent, cfg.task.instruction, cfg.eval_seed + i, cfg.agent.camera,
                                  plan=plans[i] if plans is not None else None)
            results.append({k: episode["result"][k] for k in ("seed", "success", "dist", "phase", "chunks", "steps")})
            followed.append(agent.plan)
    finally:
        agent.close()
    dists = [r["dist"] for r in results if r["dist"] is not None]
    phased = [r for r in results if r["phase"] is not None]  # MineRL's navigate has no phases
    return {"chunk_offset": chunk_offset, "success_rate": float(np.mean([r["success"] for r in results])),
            "dist_mean": float(np.mean(dists)) if dists else None, "dist_unit": env.metadata.get("dist_unit", "m"),
            "chunks_per_episode": float(np.mean([r["chunks"] for r in results])),
            "return_phase_rate": float(np.mean([r["phase"] == "return" for r in phased])) if phased else None,
            "episodes": results}, followed


def before_and_after(run: RLRun, final: Any) -> dict[str, dict[str, Any]]:
    """The three columns: the base model with the configured plan; the finetuned executor alone, with the plans
    the first followed (an LLM planner asked again may answer otherwise; replans and extra chunks still follow what
    each executes); and the finetuned model with the tuned offset."""
    offset = run.cfg.planner.chunk_offset
    columns = {}
    columns["before"], plans = evaluate(run, run.base, offset, "eval before")
    columns["after_executor"], _ = evaluate(run, final, offset, "eval after (executor)", plans)
    if run.tuned_offset == offset and run.cfg.planner.kind == "offline":
        # the plans the offline planner makes again are those handed over (the scene's alone), on the same model,
        # seeds and noise: the same episodes, not played again
        columns["after"] = columns["after_executor"]
        print("eval after: the tuned offset is the one configured, so its episodes are those of the executor-only "
              "column (not played again)")
    else:
        columns["after"], _ = evaluate(run, final, run.tuned_offset, "eval after")
    return columns


def _evaluation_kept(path: Path) -> dict[str, Any]:
    """The before/after columns of the metrics.json an earlier run of the same iterations wrote, saying so; none
    from a damaged file (a rerun with eval_episodes>0 makes them again)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    columns = ("before", "after_executor", "after")
    figures = {"chunk_offset", "success_rate", "dist_mean", "dist_unit", "chunks_per_episode", "return_phase_rate",
               "episodes"}  # what the summary reads (a file from before 2026-12-05 lacks some: not kept)
    if not (isinstance(earlier, dict) and all(isinstance(earlier.get(name), dict) and figures <= set(earlier[name])
                                              for name in columns)):
        return {}
    print(f"eval_episodes=0: the before/after evaluation in {path} (of this same model) is kept")
    return {name: earlier[name] for name in columns}


def _checkpoints(cfg: RLConfig) -> dict[str, str]:
    """The checkpoints a run loads, by setting: checked, warned of and pinned alike (the IDM-reproduction reward's
    action model too, whose retraining would change the rewards of a resumed run)."""
    action_model = (cfg.rewards.action_worldmodel or "").strip()
    return {"worldmodel": cfg.worldmodel_checkpoint, "idm": cfg.idm_checkpoint,
            **({"rewards.action_worldmodel": action_model} if action_model else {})}


@restores_torch_threads
def run_rl(cfg: RLConfig) -> dict[str, Any]:
    """Explore, score, finetune for `cfg.iterations`; then the before/after evaluation; see the module docstring."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from vplan.envs import env_name

    cfg = with_checkpoint_frames(cfg, cfg.worldmodel_checkpoint, "worldmodel")
    torch.set_num_threads(cfg.threads)
    run = RLRun(cfg)
    out = run.out
    saved = 0  # iterations the checkpoint on disk holds
    bar = None
    try:
        check_config_is_ours(out, cfg)  # before anything is written there
        out.mkdir(parents=True, exist_ok=True)
        run.recover()  # before the settings check, which looks for the checkpoint
        if (out / CONFIG_FILE).is_file() and (out / CHECKPOINT_DIR).is_dir():
            check_same_config(cfg, out / CONFIG_FILE, RESUMABLE_CHANGES)
        resuming = run.load()
        saved = loaded = run.iteration
        if run.vlm is not None:
            run.vlm.keep_journal(out / VLM_JOURNAL_FILE)
        if run.iteration > cfg.iterations:  # its model learned from more: a summary of fewer would misstate it
            raise UsageError(f"{out} has run {run.iteration} iterations already; pass iterations>={run.iteration}, "
                             "or choose another out=DIR")
        if resuming:
            done = "iteration 0" if run.iteration == 1 else f"iterations 0..{run.iteration - 1}"
            then = (f"iteration {run.iteration} next" if run.iteration < cfg.iterations else
                    f"writing final/{' and evaluating' if cfg.eval_episodes else ''}")
            print(f"resuming {out}: {done} done, {then}")
        pin_checkpoints(out, _checkpoints(cfg), resuming)
        for name in (ITERATIONS_FILE, PREFERENCES_FILE):
            _keep_iterations_before(out / name, run.iteration)
        write_config(out, cfg)
        per_iteration = cfg.seeds_per_iteration * len(cfg.plan_offsets) * cfg.continuations
        if run.iteration < cfg.iterations:  # trained further: the results of fewer iterations would pass for these
            shutil.rmtree(out / "final", ignore_errors=True)
            for name in (LORA_FILE, "planner.yaml", "metrics.json"):
                (out / name).unlink(missing_ok=True)
        bar = tqdm(total=cfg.iterations * per_iteration, initial=run.iteration * per_iteration, desc="rl explore",
                   unit="episode")
        while run.iteration < cfg.iterations:
            started = time.perf_counter()
            asked = _vlm_counts(run.vlm)
            groups = run.explore(bar)
            pairs = run.update_planner(groups)
            logs = run.finetune(groups)
            rewards = [r for plans in groups for cs in plans for r in cs]
            record = {"iteration": run.iteration, "reward_mean": float(np.mean([r.reward for r in rewards])),
                      "success_rate": float(np.mean([bool(r.final_info.get("success")) for r in rewards])),
                      "rewards": [{"task_seed": r.task_seed, "plan": r.plan_index, "continuation": r.continuation,
                                   "reward": r.reward, **r.rewards} for r in rewards],
                      "logits": run.logits.tolist(), "finetune": logs, "wall_s": time.perf_counter() - started}
            if run.vlm is not None:
                record["vlm"] = {**{k: v - asked[k] for k, v in _vlm_counts(run.vlm).items()},
                                 "requests_made": run.vlm.requests_made, "max_requests": run.vlm.config.max_requests}
            run.iteration += 1
            _write_jsonl(out / PREFERENCES_FILE, pairs)
            _write_jsonl(out / ITERATIONS_FILE, [_to_jsonable(record)])
            run.save()
            saved = run.iteration
            _plot_iterations(out)
            tqdm.write(f"iteration {record['iteration']}: mean reward {record['reward_mean']:.3f}, success "
                       f"{record['success_rate']:.0%}, {_learned(logs)}, offset logits "
                       f"{(np.round(run.logits, 2) + 0.0).tolist()}" + _vlm_line(record, cfg.rewards.vlm))
        bar.close()
        if run.iteration == loaded and (out / ITERATIONS_FILE).is_file():  # resumed with every iteration done: a
            _plot_iterations(out)  # kill after the last save (or mid-swap) left the plot without the last iteration
        final = run.policy_model()
        with folder_written_aside(out / "final") as folder:
            final.save_pretrained(folder, trained_on_env=env_name(cfg.env))
        with file_written_aside(out / LORA_FILE) as scratch:
            save_file({k: v.detach().contiguous() for k, v in run.params.items()}, scratch)
        write_text_atomic(out / "planner.yaml",
                          f"chunk_offset: {run.tuned_offset}  # vplan run planner.chunk_offset=...\n")
        metrics: dict[str, Any] = {"iterations": cfg.iterations, "objective": cfg.objective,
                                   "worldmodel": cfg.worldmodel_checkpoint, "tuned_chunk_offset": run.tuned_offset,
                                   "memory": cfg.memory.kind}
        if run.vlm is not None:  # over every iteration, those before a resume included
            vlm = [record["vlm"] for record in iteration_records(out / ITERATIONS_FILE) if "vlm" in record]
            metrics["vlm"] = {"requests_made": run.vlm.requests_made, "max_requests": cfg.vlm_reward.max_requests,
                              **{key: sum(v[key] for v in vlm) for key in VLM_COUNTS}}
        if cfg.eval_episodes:
            metrics.update(before_and_after(run, final))
        else:  # a rerun without evaluation keeps the one made of this model (more iterations deleted it above)
            metrics.update(_evaluation_kept(out / "metrics.json"))
        write_json(out / "metrics.json", _to_jsonable(metrics))
        _print_summary(metrics, out)
        return metrics
    except KeyboardInterrupt:
        if bar is not None:  # drawn again below the message otherwise
            bar.close()
        kept = (f"iteration{'s 0..' if saved > 1 else ' '}{saved - 1} kept in {out}; the same command resumes "
                "after the last one finished" if saved else f"no iteration finished in {out}; the same command "
                "starts again")
        tqdm.write(f"interrupted: {kept}", file=sys.stderr)
        raise
    finally:
        run.env.close()
        run.rewards.close()


def _learned(logs: dict[str, Any]) -> str:
    """An iteration's finetuning as its line says it: the loss's first and last values, or that no step ran ("loss
    nan -> nan" read as a diverged loss, which stops a run)."""
    if not logs.get("steps"):
        return "no finetune step (nothing to learn from: every continuation scored alike)"
    return f"loss {logs['loss_first']:.4f} -> {logs['loss_last']:.4f}"


VLM_COUNTS = ("unanswered_chunks", "unscored_episodes")  # VLMReward's counters, per iteration in iterations.jsonl


def _vlm_counts(vlm: Any) -> dict[str, int]:
    """The VLM reward's counts of chunks and episodes left without an answer so far in this process."""
    return {name: getattr(vlm, name) if vlm else 0 for name in VLM_COUNTS}


def _vlm_line(record: dict[str, Any], weight: float) -> str:
    """What an iteration's line adds about the VLM reward: its budget spent, the chunks and episodes it left
    unanswered (each warned, which a long run scrolls away), and, where no episode got its score, that the mean
    reward lacks the term (it fell by the term's weight, as if the policy had got worse)."""
    vlm = record.get("vlm")
    if vlm is None:
        return ""
    line = (f"; VLM: {vlm['requests_made']}/{vlm['max_requests']} requests spent, {vlm['unanswered_chunks']} "
            f"chunk(s) and {vlm['unscored_episodes']} episode(s) unanswered")
    if weight and not any("vlm" in row for row in record["rewards"]):
        line += " (no episode got a VLM score: this mean reward leaves that term out)"
    return line


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    print(f"\nvplan rl: {metrics['iterations']} iteration(s), objective {metrics['objective']}, tuned "
          f"planner.chunk_offset={metrics['tuned_chunk_offset']}")
    if "before" in metrics:
        columns = [metrics["before"], metrics["after_executor"], metrics["after"]]
        seeds = [e["seed"] for e in columns[0]["episodes"]]
        which = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
        print(f"  held-out {which}: before | after, executor only (same plan) | after (tuned plan)")
        rows = [("success rate", "success_rate", "{:.0%}"),
                (f"Dist ({columns[0]['dist_unit']}, mean)", "dist_mean", "{:.4f}"),
                ("chunks per episode", "chunks_per_episode", "{:.1f}"),
                ("reached the return phase", "return_phase_rate", "{:.0%}"),
                ("planner.chunk_offset", "chunk_offset", "{}")]
        for name, key, fmt in rows:  # a column without the figure (no finite Dist in any episode): "–"
            if any(c[key] is not None for c in columns):
                print(f"  {name:24}" + "".join(f"{'–' if c[key] is None else fmt.format(c[key]):>14}"
                                               for c in columns))
    if "vlm" in metrics:
        vlm = metrics["vlm"]
        print(f"  VLM reward: {vlm['requests_made']}/{vlm['max_requests']} requests spent; {vlm['unanswered_chunks']} "
              f"chunk(s) and {vlm['unscored_episodes']} episode(s) explored got no answer")
    print(f"run directory: {out} (final/: the finetuned world model; planner.yaml: the tuned offset)")
    if "memory" in metrics:  # vplan run's default memory is temp_lora: without it, other figures than these
        print(f"the agent it tuned: vplan run worldmodel={out / 'final'} planner.chunk_offset="
              f"{metrics['tuned_chunk_offset']} memory={metrics['memory']}")
