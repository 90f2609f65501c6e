"""`vplan bench memory` end to end on a tiny model: every mode times its episodes, ratios against none."""

from __future__ import annotations

import json
import time

from dataclasses import replace

import pytest
import torch

from vplan.eval.bench_memory import bench_memory
from vplan.eval.config import BenchMemoryConfig
from vplan.memory import MemoryConfig
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig


def tiny_world_model() -> WorldModelConfig:
    vae = VAEConfig.tiny(image_size=16)
    unet = replace(UNetConfig.preset("tiny"), sample_size=vae.latent_size, cross_attention_dim=16)
    return WorldModelConfig(
        unet=unet,
        vae=vae,
        text_encoder=TextEncoderConfig(kind="learned", dim=16, max_tokens=6, vocab_buckets=64),
        diffusion=DiffusionConfig(num_inference_steps=2),
        context_frames=2,
        chunk_frames=2,
    )


def test_bench_memory_compares_none_and_temp_lora_with_and_without_overlap(capsys, tmp_path, monkeypatch):
    from vplan.memory.temp_lora import TempLoRAMemory

    # A chunk's execution lasts until the update started beside it is done, however loaded the machine is (a
    # tiny model's update takes ~0.15 s of the 0.6 s when idle, longer than it beside other test runs): the
    # overlapped mode then never waits for an update, whatever it costs.
    memories: list[TempLoRAMemory] = []
    in_flight: list[bool] = []  # whether each update was still running as update_async returned
    update_async, sleep = TempLoRAMemory.update_async, time.sleep

    def start_update(self: TempLoRAMemory, *args: torch.Tensor) -> None:
        memories.append(self)
        update_async(self, *args)
        in_flight.append(self.pending)

    monkeypatch.setattr(TempLoRAMemory, "update_async", start_update)

    def execute(seconds: float) -> None:
        sleep(seconds)
        while any(memory.pending for memory in memories):
            sleep(0.005)

    monkeypatch.setattr("time.sleep", execute)
    cfg = BenchMemoryConfig(
        model=tiny_world_model(), checkpoint=None, memory=MemoryConfig(kind="temp_lora", rank=4),
        episodes=1, chunks=2, execution_s=0.6, threads=1, isolate=False, out=str(tmp_path),
    )
    torch.set_num_threads(2)
    rows = bench_memory(cfg)
    assert torch.get_num_threads() == 2  # threads=1 held while it ran; the caller's count is back
    assert [row["mode"] for row in rows] == ["none", "temp_lora", "temp_lora + overlap"]
    for row in rows:
        # Every chunk waits its execution time; every temp_lora chunk is learned from.
        assert row["wall_s"] >= cfg.chunks * cfg.execution_s
        assert row["peak_rss_mb"] > 0
    # no memory: nothing to wait for but its no-op update's call (a few ms on a VM whose core slept through the
    # execution, so not held to a fixed figure)
    assert rows[0]["blocked_s"] < rows[1]["blocked_s"] / 4
    assert rows[1]["blocked_s"] >= cfg.chunks * rows[1]["update_s_per_chunk"]  # blocking: every update in full
    # overlapped: every update ran while its chunk executed, so the loop's waits found it done
    assert rows[2]["blocked_s"] < rows[1]["blocked_s"] / 4 and any(in_flight)  # on the worker, not in the call
    assert rows[0]["wall_ratio"] == 1.0
    assert [row["wall_ratio"] for row in rows] == [row["wall_s"] / rows[0]["wall_s"] for row in rows]
    assert all(row["rss_ratio"] is None for row in rows)  # one process: every mode's state is resident in all
    assert rows[1]["update_s_per_chunk"] > 0 and rows[2]["update_s_per_chunk"] > 0
    assert rows[0]["update_s_per_chunk"] == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "temp_lora + overlap" in out and "vs none" in out and "its peaks are not compared" in out
    assert "\nan untrained model (checkpoint=null), per episode: 2 chunks" in out  # which model it timed
    assert "bench memory: 100%" in captured.err  # minutes of silence before: a bar over its episodes
    assert "target for temp_lora + overlap: <= 1.10x wall of none" in out
    written = json.loads((tmp_path / "results.json").read_text())  # out=: the same rows, and where they ran
    assert written["command"] == "bench memory" and written["results"] == json.loads(json.dumps(rows))
    assert written["settings"]["chunks"] == 2 and written["machine"]["cpu_count"] >= 1
    assert written["machine"]["torch_threads"] == 1  # what the modes ran with


def test_by_default_each_mode_runs_in_its_own_process_with_its_own_peak(tmp_path, monkeypatch):
    """The default path (isolate=true): every mode in a spawned process, its peak RSS reset per episode, ratios
    given; none's process never holds an adapter, its optimizer state or the update's activations."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # refused with isolated modes; the CLI's passive default
    cfg = BenchMemoryConfig(model=tiny_world_model(), checkpoint=None, memory=MemoryConfig(kind="temp_lora", rank=4),
                            episodes=1, chunks=1, execution_s=0.0, threads=1, out=str(tmp_path))
    rows = bench_memory(cfg)
    assert [row["peak_rss_source"] for row in rows] == ["VmHWM per episode"] * 3
    assert rows[0]["rss_ratio"] == 1.0 and all(row["rss_ratio"] > 1.0 for row in rows[1:])
    assert [row["wall_ratio"] for row in rows] == [row["wall_s"] / rows[0]["wall_s"] for row in rows]
    assert [row["rss_ratio"] for row in rows] == [row["peak_rss_mb"] / rows[0]["peak_rss_mb"] for row in rows]
    assert rows[1]["update_s_per_chunk"] > 0 and rows[0]["update_s_per_chunk"] == 0


def test_the_temp_lora_targets_are_not_printed_for_another_memory(capsys):
    """Issue 4 set its wall and RSS targets for Temp-LoRA; memory=anchor printed them as its own."""
    bench_memory(BenchMemoryConfig(model=tiny_world_model(), checkpoint=None, memory=MemoryConfig(kind="anchor"),
                                   episodes=1, chunks=1, execution_s=0.0, threads=1, isolate=False))
    out = capsys.readouterr().out
    assert "target" not in out
    assert "anchor + overlap" not in out  # no update to overlap: its row was noise (helper-207)


def test_the_overlapped_update_starts_before_the_decode_as_in_the_agent(monkeypatch, tmp_path):
    """The agent submits the update as soon as the chunk is imagined, so it runs beside decoding too; with
    update_on=observed it can start only after the execution."""
    from vplan.eval.bench_memory import ModeRunner
    from vplan.memory.temp_lora import TempLoRAMemory
    from vplan.worldmodel.model import WorldModel

    events: list[str] = []
    update_async, decode = TempLoRAMemory.update_async, WorldModel.decode
    monkeypatch.setattr(TempLoRAMemory, "update_async", lambda self, *a: (events.append("update"),
                                                                          update_async(self, *a))[1])
    monkeypatch.setattr(WorldModel, "decode", lambda self, *a, **k: (events.append("decode"), decode(self, *a, **k))[1])
    monkeypatch.setattr("time.sleep", lambda seconds: events.append("execute"))
    for update_on, order in (("imagined", ["update", "decode", "execute"]),
                             ("observed", ["decode", "execute", "update"])):
        cfg = BenchMemoryConfig(model=tiny_world_model(), checkpoint=None, chunks=1, threads=1, isolate=False,
                                memory=MemoryConfig(kind="temp_lora", rank=4, update_on=update_on))
        runner = ModeRunner(cfg, "temp_lora", overlap=True)
        events.clear()
        runner.episode()
        runner.close()
        assert events == order, update_on


def test_bench_memory_config_checks(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected a memory to compare with none"):
        BenchMemoryConfig(memory=MemoryConfig(kind="none"))
    with pytest.raises(ValueError, match="chunks: expected a positive int, got 0"):
        BenchMemoryConfig(chunks=0)
    with pytest.raises(ValueError, match="execution_s: expected seconds from 0 to 60 per chunk, got 1000000000.0"):
        BenchMemoryConfig(execution_s=1e9)  # would sleep for decades
    from vplan.errors import UsageError

    with pytest.raises(UsageError, match=r"checkpoint=.*: no checkpoint at .*pass checkpoint=DIR"):
        bench_memory(BenchMemoryConfig(checkpoint=str(tmp_path)))

    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # idle mode processes would spin: refused before any starts
    with pytest.raises(UsageError, match="OMP_WAIT_POLICY=ACTIVE .* isolate=false"):
        bench_memory(BenchMemoryConfig(checkpoint=None, model=tiny_world_model(), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # refused before out= was made


def test_bench_memory_config_composes():
    from vplan.cli import COMMANDS, build_config, compose_config

    command = next(c for c in COMMANDS if c.name == "bench memory")
    cfg, choices = compose_config(command, ["memory.steps_per_chunk=2", "episodes=1", "checkpoint=null"])
    config = build_config(cfg)
    assert isinstance(config, BenchMemoryConfig) and isinstance(config.memory, MemoryConfig)
    assert choices == {"memory": "temp_lora", "model": "default"}
    assert (config.memory.kind, config.memory.steps_per_chunk, config.episodes, config.checkpoint) == (
        "temp_lora", 2, 1, None)
    cfg, _ = compose_config(command, ["memory=anchor"])
    assert build_config(cfg).memory.kind == "anchor"
