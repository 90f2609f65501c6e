"""`vplan eval consistency` end to end on a tiny world model: every mode rolls out the same revisit take from the
same start, and the table, metrics.json and one MP4 per mode are written; an interrupted evaluation continues;
envs without a revisit scenario fail with one clear line."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from vplan.cli import main
from vplan.envs import TabletopConfig
from vplan.errors import RunError
from vplan.eval.config import EvalConsistencyConfig
from vplan.eval.consistency import evaluate_consistency
from vplan.eval.revisit import NoRevisitScenarioError, revisit_scenario, revisit_scenario_for
from vplan.memory import MemoryConfig
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.model import WorldModel

SIZE = 16
CONTEXT, CHUNK = 4, 16
# One cube at 16x16: the take returns to its start after ~50-65 frames (seed 10000: frame 51), so 4 chunks of 16
# after 4 context frames (68 frames) hold a revisit. Few long chunks: a tiny UNet's cost is per call.
CHUNKS = 4
OVERRIDES = [f"env.image_size={SIZE}", "env.num_cubes=1", f"chunks={CHUNKS}", "episodes=1", "threads=1",
             "temp_lora.rank=4", "temp_lora.lr=0.01"]  # an untrained tiny model: a large step shows in the frames
TASK = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")


def save_tiny_world_model(path: Path, context_frames: int = CONTEXT, chunk_frames: int = CHUNK) -> Path:
    """An untrained world model of the tiny preset (configs/model/tiny.yaml) at 16x16, saved like a trained one."""
    vae = VAEConfig.tiny(image_size=SIZE)
    unet = replace(UNetConfig.preset("tiny"), sample_size=vae.latent_size, cross_attention_dim=16)
    config = WorldModelConfig(
        unet=unet,
        vae=vae,
        text_encoder=TextEncoderConfig(kind="learned", dim=16, max_tokens=8, vocab_buckets=64),
        diffusion=DiffusionConfig(num_inference_steps=2),
        context_frames=context_frames,
        chunk_frames=chunk_frames,
    )
    torch.manual_seed(0)  # fixed weights: the VAE's features score SRC, so the figures must not vary by run
    WorldModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_world_model(tmp_path_factory.mktemp("wm") / "tiny")


def test_cli_writes_table_metrics_and_one_video_per_mode(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    main(["eval", "consistency", f"checkpoint={tiny_checkpoint}", f"out={out}", *OVERRIDES])
    printed = capsys.readouterr().out
    frames = CONTEXT + CHUNKS * CHUNK

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["modes"]) == ["none", "anchor", "temp_lora"]
    assert (metrics["env"], metrics["frames"], metrics["features"]) == ("tabletop", frames, "vae_encoder")
    assert metrics["seeds"] == list(range(10000, 10000 + metrics["episodes"]))  # each, as vplan run's (was [a, b])
    assert metrics["src_comparable_to_paper"] is False
    per_chunk = {}
    for mode, row in metrics["modes"].items():
        assert row["scuts"] == np.mean([e["scuts"] for e in row["episodes"]])
        assert np.isfinite(row["src"]) and np.isfinite(row["psnr_drift_db_per_chunk"])
        (episode,) = row["episodes"]
        assert episode["seed"] == 10000 and len(episode["psnr_per_chunk"]) == CHUNKS
        assert row["psnr_db"] == pytest.approx(np.mean(episode["psnr_per_chunk"]), abs=1e-2)
        per_chunk[mode] = episode["psnr_per_chunk"]
        assert f"\n  {mode} " in printed
    # Same start, same noise: before any memory acts, every mode draws the same first chunk (the anchor is still
    # inside the context, Temp-LoRA has learned nothing yet); afterwards Temp-LoRA's updates change what it draws.
    assert per_chunk["none"][0] == per_chunk["anchor"][0] == per_chunk["temp_lora"][0]
    assert per_chunk["temp_lora"][1:] != per_chunk["none"][1:]
    assert per_chunk["anchor"][1:] != per_chunk["none"][1:]  # from chunk 1 on, the anchor frame is context only there
    # The real take, scored alike: its revisits look like the first visits.
    assert metrics["real"]["src"] > 90 and metrics["real"]["episodes"][0]["pairs"] > 0
    # One cube returns to its start within the take: every pair's first visit is a real context frame
    for row in (*metrics["modes"].values(), metrics["real"]):
        assert row["src_from_context"] == pytest.approx(row["src"]) and row["src_from_generated"] is None
    for name in ("SCuts", "SRC (%)", "from context", "from generated", "PSNR drift", "real", "not comparable"):
        assert name in printed
    # copy-last-frame: the last real context frame held, scored against the take's chunks as the modes are
    from vplan.eval.consistency_metrics import psnr

    take = revisit_scenario(10000, min_frames=frames, env_config=TabletopConfig(image_size=SIZE, num_cubes=1)).frames
    (real_row,) = metrics["real"]["episodes"]
    expected = [psnr(np.broadcast_to(take[CONTEXT - 1], (CHUNK, *take.shape[1:])),
                     take[CONTEXT + k * CHUNK: CONTEXT + (k + 1) * CHUNK]) for k in range(CHUNKS)]
    assert real_row["copy_last_psnr_per_chunk"] == pytest.approx(expected)
    assert metrics["real"]["copy_last_psnr_db"] == pytest.approx(np.mean(expected))
    assert "\n  copy-last    " in printed and f"{np.mean(expected):10.2f}" in printed
    for mode in ("anchor", "temp_lora"):  # each memory against none on the same episodes
        d = metrics["modes"][mode]["src_vs_none"]
        assert d["mean"] == pytest.approx(metrics["modes"][mode]["src"] - metrics["modes"]["none"]["src"])
        assert d["episodes"] == 1 and d["standard_error"] is None
        assert f"SRC of {mode} minus none, paired by seed" in printed
    assert "src_vs_none" not in metrics["modes"]["none"]

    real = revisit_scenario(10000, min_frames=frames, env_config=TabletopConfig(image_size=SIZE, num_cubes=1))
    from vplan.utils.panels import GAP_PX, PANEL_PX, STRIP_PX

    scale = PANEL_PX // SIZE
    for mode in metrics["modes"]:
        video = np.stack(imageio.mimread(out / f"real_vs_{mode}_seed10000.mp4"))
        assert video.shape == (frames, STRIP_PX + PANEL_PX + STRIP_PX, 2 * PANEL_PX + GAP_PX, 3)  # real | generated
        real_side = video[:, STRIP_PX + scale // 2 : STRIP_PX + PANEL_PX : scale, scale // 2 : PANEL_PX : scale]
        assert np.abs(real_side.astype(int) - real.frames[:frames]).mean() < 8  # lossy H.264
    assert (out / "psnr_per_chunk.png").read_bytes().startswith(b"\x89PNG")  # each mode's PSNR per chunk, drawn


def test_the_psnr_per_chunk_leaves_the_context_frames_out():
    """The context frames are the real ones: scored, they lift the first chunk towards the cap."""
    from vplan.eval.consistency import score_video
    from vplan.eval.consistency_metrics import psnr

    real = np.zeros((CONTEXT + 2 * CHUNK, SIZE, SIZE, 3), np.uint8)
    video = real.copy()
    video[CONTEXT:] = 16  # every generated frame off by the same amount
    flat = lambda frames: torch.as_tensor(frames.reshape(len(frames), -1), dtype=torch.float32) + 1.0  # noqa: E731
    scores = score_video(video, real, [(0, CONTEXT + 1)], flat, 10.0, CONTEXT, CHUNK)
    assert scores["psnr_per_chunk"] == [pytest.approx(psnr(video[-1:], real[-1:]))] * 2


class RecordingMemory:
    """Generates chunks of 3 frames, each filled with 100 + its chunk index, and records what it learns from."""

    def __init__(self) -> None:
        self.updates, self.made = [], 0

    def reset(self) -> None:
        self.updates.clear()

    def generate(self, history, texts, generator=None):
        self.made += 1
        return torch.full((1, 3, 1, 1, 1), 100.0 + self.made - 1)

    def update(self, previous, chunk) -> None:
        self.updates.append((previous.flatten().tolist(), chunk.flatten().tolist()))


@pytest.mark.parametrize("update_on", ["imagined", "observed"])
def test_imagine_updates_on_the_imagined_chunks_or_the_real_latents_of_the_same_steps(update_on):
    from vplan.eval.consistency import imagine

    start = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)  # two real context frames, then three chunks of 3
    observed = torch.arange(11.0).view(1, 11, 1, 1, 1) if update_on == "observed" else None  # frame t holds t
    memory = RecordingMemory()
    history = imagine(None, memory, start, ["a", "b", "c"], None, observed=observed)
    assert history.flatten().tolist() == [0.0, 1.0] + [100.0] * 3 + [101.0] * 3 + [102.0] * 3
    if update_on == "imagined":  # (the frames before, the chunk); none after the last chunk
        assert memory.updates == [([0.0, 1.0], [100.0] * 3), ([100.0] * 3, [101.0] * 3)]
    else:  # the real latents of the same steps
        assert memory.updates == [([0.0, 1.0], [2.0, 3.0, 4.0]), ([2.0, 3.0, 4.0], [5.0, 6.0, 7.0])]


def test_temp_lora_learns_from_the_observed_frames_when_asked(tiny_checkpoint, tmp_path):
    env = TabletopConfig(image_size=SIZE, num_cubes=1)
    runs = {}
    for update_on in ("imagined", "observed"):
        lora = MemoryConfig(kind="temp_lora", rank=4, lr=0.01, update_on=update_on)
        cfg = EvalConsistencyConfig(env=env, task=TASK, checkpoint=str(tiny_checkpoint), chunks=CHUNKS, episodes=1,
                                    modes=["temp_lora"], temp_lora=lora, threads=1, video_episodes=0,
                                    out=str(tmp_path / update_on))
        (episode,) = evaluate_consistency(cfg)["modes"]["temp_lora"]["episodes"]
        runs[update_on] = episode["psnr_per_chunk"]
        assert not list((tmp_path / update_on).glob("*.mp4"))
    # The first chunk comes before any update; later ones differ with what the adapter learned from.
    assert runs["imagined"][0] == runs["observed"][0]
    assert runs["imagined"][1:] != runs["observed"][1:]


def test_envs_without_a_revisit_scenario_fail_with_one_line(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "consistency", "env=rlbench", f"checkpoint={tiny_checkpoint}", f"out={tmp_path}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "env 'rlbench' has no revisit scenario" in error and "envs with one: blockworld, tabletop" in error
    with pytest.raises(NoRevisitScenarioError, match="env 'minerl' has no revisit scenario"):
        revisit_scenario_for("minerl")
    assert revisit_scenario_for("tabletop") is revisit_scenario
    assert not (tmp_path / "metrics.json").exists()


def test_a_rollout_too_short_for_a_revisit_names_the_chunks_needed(tiny_checkpoint, tmp_path):
    from vplan.errors import UsageError

    cfg = EvalConsistencyConfig(env=TabletopConfig(image_size=SIZE, num_cubes=1), task=TASK, chunks=CHUNKS,
                                checkpoint=str(tiny_checkpoint), modes=["none"], threads=1, out=str(tmp_path))
    evaluate_consistency(cfg)  # a finished evaluation in out ...
    kept = sorted(path.name for path in tmp_path.iterdir())
    # ... is not replaced by one that cannot run: every seed's take is checked first (seed 10000 first revisits
    # its start at frame 51, inside 3 chunks; 10001 at frame 56, which needs 4), and the error names what all need
    with pytest.raises(UsageError, match=r"^seed\(s\) 10001: no revisit within the rollout's 52 frames \(3 chunks\); "
                                         r"use chunks >= 4 for a revisit in every episode$"):
        evaluate_consistency(replace(cfg, chunks=3, episodes=2))
    assert sorted(path.name for path in tmp_path.iterdir()) == kept and (tmp_path / "metrics.json").is_file()
    # grown on resume, the chunks it began with cannot change: the advice says so (it advised chunks >= 4, which
    # the resume then refused; helper-207)
    grown = replace(cfg, chunks=3, episodes=1, out=str(tmp_path / "grown"))
    evaluate_consistency(grown)  # seed 10000 alone revisits within 3 chunks
    with pytest.raises(UsageError, match=r"use chunks >= 4 for a revisit in every episode, which .* cannot take on "
                                         r"resume \(it began with chunks=3\): start again with overwrite=true"):
        evaluate_consistency(replace(grown, episodes=2, resume=True))
    with pytest.raises(UsageError, match=r"seed\(s\) 10000, 10001: no revisit .*36 frames .*use chunks >= 4"):
        evaluate_consistency(replace(cfg, chunks=2, episodes=2))
    from vplan.shipped import with_checkpoint_frames  # what evaluate_consistency renders at first

    cfg = replace(cfg, chunks=CHUNKS, env=TabletopConfig(image_size=64, num_cubes=1))
    assert with_checkpoint_frames(cfg, cfg.checkpoint, "checkpoint").env == TabletopConfig(image_size=16, num_cubes=1)


def test_blockworld_instructions_of_another_length_than_the_chunks_are_refused(tiny_checkpoint, tmp_path):
    """env.chunk_steps=8 under 16-frame chunks ran, each chunk spanning two instructions, as `vplan run` refuses."""
    from vplan.envs import BlockworldConfig
    from vplan.errors import SettingMismatchError

    cfg = EvalConsistencyConfig(env=BlockworldConfig(image_size=SIZE), task=TaskConfig.preset("retrace"),
                                chunks=CHUNKS, checkpoint=str(tiny_checkpoint), modes=["none"], threads=1,
                                out=str(tmp_path / "run"))
    with pytest.raises(SettingMismatchError, match=rf"^env.chunk_steps=8: checkpoint={tiny_checkpoint} imagines "
                                                   r"16-frame chunks, one per instruction of the path; set "
                                                   r"env.chunk_steps=16$"):
        evaluate_consistency(cfg)
    assert not (tmp_path / "run").exists()


def test_config_checks_name_the_bad_value():
    env = TabletopConfig()
    with pytest.raises(ValueError, match=r"modes: expected distinct memory kinds .* got \['none', 'none'\]"):
        EvalConsistencyConfig(env=env, task=TASK, modes=["none", "none"])
    with pytest.raises(ValueError, match=r"modes: expected distinct memory kinds .* got \[\['none'\]\]"):
        EvalConsistencyConfig(env=env, task=TASK, modes=[["none"]])  # unhashable: a TypeError
    with pytest.raises(ValueError, match="chunks: expected at least 2"):
        EvalConsistencyConfig(env=env, task=TASK, chunks=1)
    with pytest.raises(ValueError, match=r"^video_episodes: expected an int, got True$"):  # a bool is no count
        EvalConsistencyConfig(env=env, task=TASK, video_episodes=True)
    with pytest.raises(ValueError, match="features: expected one of"):
        EvalConsistencyConfig(env=env, task=TASK, features="clip")
    with pytest.raises(ValueError, match="resnet18_weights: expected a local ResNet-18"):
        EvalConsistencyConfig(env=env, task=TASK, features="resnet18")
    with pytest.raises(ValueError, match="resnet18_weights: used with features=resnet18 only, got it with "
                                         "features=vae; add features=resnet18"):
        EvalConsistencyConfig(env=env, task=TASK, resnet18_weights="r18.safetensors")
    with pytest.raises(ValueError, match="temp_lora.kind: expected 'temp_lora'"):
        EvalConsistencyConfig(env=env, task=TASK, temp_lora=MemoryConfig(kind="anchor"))
    assert EvalConsistencyConfig(env=env, task=TASK).memory_config("anchor").kind == "anchor"


def test_training_seeds_are_warned_of(tmp_path):
    from vplan.errors import UsageError, VplanWarning

    cfg = EvalConsistencyConfig(env=TabletopConfig(), task=TASK, seed=5, checkpoint=str(tmp_path / "nothing"),
                                out=str(tmp_path / "out"))
    with pytest.warns(VplanWarning, match="seed=5: below 10000, so these episodes may be scenes the model trained"):
        with pytest.raises(UsageError):  # the checkpoint is refused after the warning
            evaluate_consistency(cfg)


def test_an_interrupted_evaluation_continues_with_resume_as_if_never_stopped(tiny_checkpoint, tmp_path, capsys):
    from vplan.errors import UsageError

    def evaluate(out: Path, **changes) -> dict:
        cfg = EvalConsistencyConfig(env=TabletopConfig(image_size=SIZE, num_cubes=1), task=TASK, chunks=CHUNKS,
                                    checkpoint=str(tiny_checkpoint), modes=["none", "temp_lora"], threads=1,
                                    temp_lora=MemoryConfig(kind="temp_lora", rank=4, lr=0.01), out=str(out))
        return evaluate_consistency(replace(cfg, **changes))

    def figures(metrics: dict) -> dict:  # all but the time each rollout took
        return {mode: [{k: v for k, v in row.items() if k != "seconds"} for row in summary["episodes"]]
                for mode, summary in metrics["modes"].items()} | {"real": metrics["real"]}

    straight = evaluate(tmp_path / "straight", episodes=2)
    out = tmp_path / "resumed"
    evaluate(out, episodes=1)  # as if interrupted after the first episode ...
    (out / "metrics.json").unlink()  # ... before the metrics were written
    progress = json.loads((out / "progress.json").read_text())
    assert [len(rows) for rows in progress["modes"].values()] == [1, 1]
    with pytest.raises(UsageError, match="holds an unfinished evaluation \\(2 rollout"):
        evaluate(out, episodes=2)  # without resume=true nothing finished is thrown away
    with pytest.raises(UsageError, match=f"other settings: chunks={CHUNKS} when it began, {CHUNKS + 1} now"):
        evaluate(out, episodes=2, resume=True, chunks=CHUNKS + 1)
    capsys.readouterr()
    # task.instruction steers nothing (the scenario's subgoals are the texts): no reason to refuse the resume
    resumed = evaluate(out, episodes=2, resume=True, task=replace(TASK, instruction="stack the cubes"))
    assert "continuing" in capsys.readouterr().out
    assert figures(resumed) == figures(straight) and resumed["threads"] == [1]  # timed alike
    assert sorted(p.name for p in out.glob("*.mp4")) == ["real_vs_none_seed10000.mp4", "real_vs_temp_lora_seed10000.mp4"]
    (out / "metrics.json").unlink()
    from vplan.errors import VplanWarning  # a warning (stderr), not a result line

    with pytest.warns(VplanWarning, match=r"2 rollout\(s\) finished before have no video \(real_vs_none_seed10001.mp4, "
                                          r"real_vs_temp_lora_seed10001.mp4\)") as said:
        evaluate(out, episodes=2, resume=True, video_episodes=2)  # the finished rollouts' frames were not kept
    assert said[0].filename == __file__  # the caller's line, not the threads decorator's

    (Path(tiny_checkpoint) / "notes.txt").write_text("retrained")  # the checkpoint's files change
    try:
        with pytest.raises(UsageError, match="^checkpoint=.*its files changed"):
            evaluate(out, episodes=2, resume=True)
        # refused before the finished evaluation's figures were cleared (they went, and could not be made again)
        assert (out / "metrics.json").is_file() and (out / "psnr_per_chunk.png").is_file()
    finally:
        (Path(tiny_checkpoint) / "notes.txt").unlink()
    assert figures(evaluate(out, episodes=2, resume=True)) == figures(straight)  # all finished: nothing rerun
    progress = json.loads((out / "progress.json").read_text())  # one rollout from before copy-last was kept
    for key in ("copy_last_psnr_db", "copy_last_psnr_per_chunk"):
        del progress["real"][0][key]
    (out / "progress.json").write_text(json.dumps(progress))
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert evaluate(out, episodes=2, resume=True)["real"]["copy_last_psnr_db"] is None  # not one episode's mean
    assert "copy-last    not scored: rollouts kept from before" in capsys.readouterr().out
    assert straight["real"]["copy_last_psnr_db"] is not None
    with pytest.raises(UsageError, match="holds a finished evaluation \\(4 rollout.*overwrite=true replaces it"):
        evaluate(out, episodes=1)  # a finished evaluation's figures are not thrown away without a word
    with pytest.raises(ValueError, match="pass one"):
        evaluate(out, episodes=1, resume=True, overwrite=True)
    with pytest.raises(UsageError, match=rf"finished, with other settings: chunks={CHUNKS} when it began, "
                                         rf"{CHUNKS + 1} now\); overwrite=true replaces it, "
                                         r"or choose another out=DIR$"):  # resume=true would be refused
        evaluate(out, episodes=1, chunks=CHUNKS + 1)
    again = evaluate(out, episodes=1, overwrite=True)  # replaced by a fresh one
    assert figures(again)["none"] == figures(straight)["none"][:1]
    (out / "progress.json").unlink()  # an evaluation from before the record, or whose record was deleted
    for resume in (False, True):
        with pytest.raises(UsageError, match=r"holds an evaluation's files \(metrics.json, real_vs_none_seed10000.mp4"
                                             r".*\) but no progress.json to continue it from; overwrite=true"):
            evaluate(out, episodes=1, resume=resume)
    assert (out / "metrics.json").is_file()


def test_a_rollout_counts_as_done_only_with_its_video_written(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import vplan.eval.consistency
    from vplan.utils.files import write_mp4

    cfg = EvalConsistencyConfig(env=TabletopConfig(image_size=SIZE, num_cubes=1), task=TASK, chunks=CHUNKS,
                                checkpoint=str(tiny_checkpoint), modes=["none"], threads=1, episodes=1,
                                out=str(tmp_path))

    def stopped_while_writing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vplan.eval.consistency, "write_mp4", stopped_while_writing)
    with pytest.raises(KeyboardInterrupt):
        evaluate_consistency(cfg)
    progress = tmp_path / "progress.json"  # the stopped rollout is not in it, so a resume redoes it
    assert not progress.exists() or json.loads(progress.read_text())["modes"]["none"] == []
    # and the line says what the file holds (it said the rollout was kept)
    assert "interrupted before anything finished" in capsys.readouterr().err
    monkeypatch.setattr(vplan.eval.consistency, "write_mp4", write_mp4)
    evaluate_consistency(replace(cfg, resume=True))
    frames = imageio.mimread(tmp_path / "real_vs_none_seed10000.mp4")
    assert len(frames) == CONTEXT + CHUNKS * CHUNK and not list(tmp_path.glob(".*.tmp.mp4"))


def test_src_is_also_split_by_where_the_first_visit_comes_from():
    """Pairs whose first visit is a real context frame (which the anchor memory keeps in view) and pairs whose
    first visit the model imagined are averaged apart as well as together."""
    from vplan.eval.consistency import src_scores

    class Pixels:  # features: the frame's pixels
        def __call__(self, frames: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(frames).reshape(len(frames), -1).float()

    frames = np.full((8, 2, 2, 3), 100, np.uint8)
    frames[5, :, :, 0] = 0  # two of the three channels left: cosine sqrt(2/3) against the others
    scores = src_scores(frames, [(0, 6), (1, 7), (4, 5)], Pixels(), context_frames=2)
    assert scores["src_from_context"] == pytest.approx(100.0)
    assert scores["src_from_generated"] == pytest.approx(100 * np.sqrt(2 / 3))
    assert scores["src"] == pytest.approx((200 + 100 * np.sqrt(2 / 3)) / 3)
    assert (scores["pairs"], scores["pairs_from_context"]) == (3, 2)
    assert src_scores(frames, [(4, 6)], Pixels(), context_frames=2)["src_from_context"] is None


def test_the_last_chunk_is_not_learned_from():
    """Nothing is generated after the last chunk, so an update on it would only cost time."""
    from vplan.eval.consistency import imagine

    class CountingMemory:
        def __init__(self) -> None:
            self.updates = 0

        def reset(self) -> None:
            pass

        def generate(self, history, texts, generator=None):
            return torch.zeros(1, 2, 1, 1, 1)

        def update(self, previous, chunk) -> None:
            self.updates += 1

    memory = CountingMemory()
    latents = imagine(None, memory, torch.zeros(1, 1, 1, 1, 1), ["a", "b", "c"], None)
    assert latents.shape[1] == 1 + 3 * 2 and memory.updates == 2

    class DivergingMemory(CountingMemory):  # its second chunk is NaN (the memory says so): nothing after it
        def generate(self, history, texts, generator=None):
            if history.shape[1] > 1:
                raise RunError("memory temp_lora drew a chunk of NaN or infinite latents (...)")
            return torch.zeros(1, 2, 1, 1, 1)

    memory = DivergingMemory()
    with pytest.raises(RunError, match=r"^chunk 2 of 3: memory temp_lora drew a chunk of NaN"):
        imagine(None, memory, torch.zeros(1, 1, 1, 1, 1), ["a", "b", "c"], None)
    assert memory.updates == 1


def test_a_diverged_rollout_stops_with_one_line_naming_seed_mode_and_chunk(tiny_checkpoint, tmp_path, capsys):
    """A Temp-LoRA whose lr is far too large draws NaN latents (or a NaN loss): one line, the finished
    rollouts kept; it once was a decoder traceback after 32 NaN chunks."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "consistency", f"checkpoint={tiny_checkpoint}", f"out={out}", "modes=[none,temp_lora]",
              "video_episodes=0", *OVERRIDES, "temp_lora.lr=1000"])
    assert exit_info.value.code != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars: one line
    assert error.startswith("vplan eval consistency: error: ")
    assert re.search(r"error: seed 10000: memory: the Temp-LoRA weights are not finite after update \d \(its loss "
                     r"was .*\); lower its lr \(1000.0: memory.lr, or temp_lora.lr in eval consistency\); the "
                     r"rollouts finished before it are in", error)
    progress = json.loads((out / "progress.json").read_text())
    assert [row["seed"] for row in progress["modes"]["none"]] == [10000] and progress["modes"]["temp_lora"] == []


def test_scuts_is_not_called_fewer_is_better_where_the_real_take_cuts(capsys):
    """Blockworld's turns swing the whole view: its real take has cuts of its own (27.5 per episode)."""
    from vplan.eval.consistency import _print_table

    row = {"scuts": 2.0, "src": 18.0, "src_from_context": None, "src_from_generated": 18.0,
           "psnr_drift_db_per_chunk": -0.005, "psnr_db": 10.5, "seconds": 98.0}
    metrics = {"env": "blockworld", "checkpoint_sha256": "0" * 16, "features": "vae_encoder",
               "src_comparable_to_paper": False, "chunk_frames": 8, "context_frames": 4, "threads": [1],
               "modes": {"none": row}}
    cfg = EvalConsistencyConfig(env=TabletopConfig(), task=TASK, modes=["none"])
    for real_cuts, said in ((27.5, "the real take has 27.50 per episode, cuts of its own"), (0.0, "fewer is better")):
        _print_table(cfg, {**metrics, "real": {**row, "scuts": real_cuts}}, Path("out"))
        printed = capsys.readouterr().out
        assert said in printed and ("fewer is better" in printed) == (real_cuts == 0)


def test_paired_difference_matches_episodes_by_seed():
    from vplan.eval.consistency import paired_difference

    none = [{"seed": 1, "src": 50.0}, {"seed": 2, "src": 40.0}, {"seed": 3, "src": 60.0}]
    lora = [{"seed": 3, "src": 58.0}, {"seed": 1, "src": 54.0}, {"seed": 2, "src": 40.0}]  # another order
    d = paired_difference(lora, none, "src")
    assert (d["mean"], d["episodes"], d["ahead"], d["behind"]) == (pytest.approx(2 / 3), 3, 1, 1)
    assert d["standard_error"] == pytest.approx(np.std([4.0, 0.0, -2.0], ddof=1) / np.sqrt(3))


def test_growing_a_finished_evaluation_leaves_it_unfinished_until_it_ends(tmp_path):
    from dataclasses import dataclass

    from vplan.errors import UsageError
    from vplan.eval.progress import METRICS_FILE, PROGRESS_FILE, start_or_continue

    @dataclass
    class Settings:
        episodes: int = 1
        resume: bool = False
        overwrite: bool = False

    def start(**changes) -> dict:
        return start_or_continue(Settings(**changes), tmp_path, ("episodes", "resume", "overwrite"), {"rows": []},
                                 lambda progress: f"{len(progress['rows'])} row(s)", ["video.mp4"],
                                 summaries=["plot.png"])

    (tmp_path / PROGRESS_FILE).write_text(json.dumps({**start(), "rows": [1]}))
    for name in (METRICS_FILE, "plot.png", "video.mp4"):  # finished with one episode
        (tmp_path / name).write_text("{}")
    start(episodes=2, resume=True)  # grown to two, then interrupted before it ends
    # its plot went with its metrics (it showed the one episode as if the two were done); its video stays
    assert not (tmp_path / "plot.png").exists() and (tmp_path / "video.mp4").exists()
    with pytest.raises(UsageError, match=r"holds an unfinished evaluation \(1 row\(s\) finished\)"):
        start(episodes=2)  # a fresh run does not throw the finished rollout away
    (tmp_path / PROGRESS_FILE).write_text('{"settings": {"episodes"')  # a disk fault: a traceback before
    with pytest.raises(RunError, match=r"progress.json is damaged \(JSONDecodeError: .*\); delete it to start over"):
        start(episodes=2, resume=True)


def test_an_evaluation_interrupted_before_anything_finished_says_so_and_starts_again(tmp_path, capsys):
    """eval worldmodel writes its open-loop video inside episode 0: stopped there, "the same command starts
    again" was refused (an evaluation's files, no progress.json), also with resume=true."""
    from dataclasses import dataclass

    from vplan.eval.progress import PROGRESS_FILE, say_interrupted, start_or_continue

    @dataclass
    class Settings:
        episodes: int = 1
        resume: bool = False
        overwrite: bool = False

    def start(modes=("a",), **changes) -> dict:  # one list of rows per mode, as eval consistency keeps them
        return start_or_continue(Settings(**changes), tmp_path, ("resume", "overwrite"),
                                 {"rows": [], "modes": {mode: [] for mode in modes}},
                                 lambda progress: f"{len(progress['rows'])} row(s)", ["video.mp4"])

    for again in ({}, {"resume": True}, {"episodes": 2}, {"modes": ("a", "b")}):
        start()
        assert json.loads((tmp_path / PROGRESS_FILE).read_text())["rows"] == []  # written before any episode
        (tmp_path / "video.mp4").write_text("half an episode's")  # then stopped
        say_interrupted(tmp_path, lambda progress: f"{len(progress['rows'])} row(s)", {"rows": [], "modes": {}})
        assert capsys.readouterr().err.strip() == "interrupted before anything finished; the same command starts again"
        start(**again)
        assert not (tmp_path / "video.mp4").exists()
    record = json.loads((tmp_path / PROGRESS_FILE).read_text())
    (tmp_path / PROGRESS_FILE).write_text(json.dumps({**record, "rows": [1]}))
    say_interrupted(tmp_path, lambda progress: f"{len(progress['rows'])} row(s)", {"rows": [], "modes": {}})
    assert "interrupted: 1 row(s) finished, kept in" in capsys.readouterr().err


def test_an_expert_too_slow_for_the_scenario_is_a_run_error_with_limits_scaled_to_its_moves(monkeypatch):
    """A RuntimeError (a traceback from the CLI); and the step limits, fixed, failed a smaller valid max_delta."""
    from vplan.eval import revisit

    monkeypatch.setattr(revisit, "HALF_MAX_STEPS", 5)
    with pytest.raises(RunError, match=r"^seed 10000: the expert did not finish the displace half in 10 steps; the "
                                        r"revisit scenario cannot be played with these env settings$"):
        revisit_scenario(10000, min_frames=10, env_config=TabletopConfig(image_size=16, max_delta=0.015))


@pytest.mark.parametrize("kwargs", [{"min_frames": "10"}, {"min_frames": 2.5}, {"rest_frames": 0}, {"seed": -1}])
def test_bad_scenario_arguments_name_the_value(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match=rf"^{name}: expected .*, got {re.escape(repr(value))}$"):
        revisit_scenario(**{"seed": 10000, **kwargs})


def test_paired_summary_counts_ahead_and_behind_and_has_no_nan_for_no_episodes():
    from vplan.eval.stats import paired_summary

    summary = paired_summary([1.0, -1.0, 0.0, 3.0])
    assert (summary["mean"], summary["episodes"], summary["ahead"], summary["behind"]) == (0.75, 4, 2, 1)
    assert summary["standard_error"] == pytest.approx(np.std([1.0, -1.0, 0.0, 3.0], ddof=1) / 2)
    assert paired_summary([2.0])["standard_error"] is None
    assert paired_summary([])["mean"] is None  # was NaN, which json writes as the non-JSON NaN


def test_a_paired_difference_never_reads_as_a_signed_zero():
    """`SRC of temp_lora minus none, paired by seed: -0.00, ahead in 0 and behind in 1` read as a tie."""
    from vplan.eval.stats import signed

    assert [signed(v) for v in (-0.00225, 0.004, 0.0, 1.234, -0.5)] == ["-0.0022", "+0.004", "0.00", "+1.23", "-0.50"]
