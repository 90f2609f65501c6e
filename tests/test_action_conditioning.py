"""Action-conditioned world model (issue 9): config checks, actions change the chunk, both objectives train,
text-only checkpoints are untouched, and `vplan train` trains, saves and reloads an action model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vplan.data.collect import CollectConfig, collect
from vplan.envs import TabletopConfig
from vplan.loop.config import WorldModelTrainConfig
from vplan.loop.train import WorldModelTraining
from vplan.shipped import resolve_checkpoint
from vplan.tasks import TaskConfig
from vplan.worldmodel.config import DiffusionConfig, TextEncoderConfig, UNetConfig, VAEConfig, WorldModelConfig
from vplan.worldmodel.diffusion import sample_chunk
from vplan.worldmodel.model import ACTION_ENCODER_FILE, TEXT_ENCODER_FILE, UNET_FILE, VAE_FILE, WorldModel, read_config
from vplan.worldmodel.vae import build_vae
from test_train import TINY_WORLD_MODEL

DIM, LATENT, CHUNK = 16, 8, 3
OBJECTIVES = [("epsilon", "ddim"), ("flow", "flow_euler")]


def tiny_config(conditioning: str = "action", objective: str = "epsilon", sampler: str = "ddim", **overrides):
    fields = {
        "unet": replace(UNetConfig.preset("tiny"), sample_size=LATENT, cross_attention_dim=DIM),
        "diffusion": DiffusionConfig(objective=objective, sampler=sampler, num_inference_steps=2),
        "vae": VAEConfig.tiny(image_size=16),
        "text_encoder": TextEncoderConfig(kind="learned", dim=DIM, max_tokens=4, vocab_buckets=64),
        "context_frames": 2,
        "chunk_frames": CHUNK,
        "conditioning": conditioning,
    }
    return WorldModelConfig(**{**fields, **overrides})


def tiny_model(conditioning: str = "action", seed: int = 0, **overrides) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(tiny_config(conditioning, **overrides)).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_bad_conditioning_and_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"conditioning: expected one of \('text', 'action', 'text\+action'\), got 'actions'"):
        tiny_config("actions")
    with pytest.raises(ValueError, match="action_dim to be a positive int, got 0"):
        tiny_config(action_dim=0)
    with pytest.raises(ValueError, match=r"action_tail_dropout: expected a share in \[0, 1\), got 1.0"):
        tiny_config(action_tail_dropout=1.0)
    action_model, text_model = tiny_model("action"), tiny_model("text")
    context = randn(1, 2, 4, LATENT, LATENT)
    with pytest.raises(ValueError, match="expected actions .* for conditioning='action', got None"):
        action_model.generate(context, None)
    with pytest.raises(ValueError, match=r"expected actions of shape \(1, k <= 3, 4\), got \(1, 3, 5\)"):
        action_model.generate(context, None, actions=torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="expected no actions for conditioning='text'"):
        text_model.generate(context, ["go"], actions=torch.zeros(1, 3, 4))


@pytest.mark.parametrize("conditioning", ["action", "text+action"])
@pytest.mark.parametrize(("objective", "sampler"), OBJECTIVES)
def test_different_actions_give_different_chunks(conditioning, objective, sampler):
    model = tiny_model(conditioning, objective=objective, sampler=sampler)
    context = randn(2, 2, 4, LATENT, LATENT)
    actions = torch.rand(2, CHUNK, 4, generator=seeded(2)) * 2 - 1
    texts = ["push the red cube left", "push the red cube left"]

    first = model.generate(context, texts, generator=seeded(3), actions=actions)
    again = model.generate(context, texts, generator=seeded(3), actions=actions)
    other = model.generate(context, texts, generator=seeded(3), actions=actions.flip(1) * -1)
    assert first.shape == (2, CHUNK, 4, LATENT, LATENT)
    assert torch.equal(first, again)
    assert (first - other).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3  # every batch element changed


def test_unknown_steps_are_null_tokens_and_guidance_drops_actions():
    model = tiny_model("text+action", diffusion=DiffusionConfig(num_inference_steps=2, sampler="ddim", guidance_scale=3.0))
    encoder = model.action_encoder
    actions = torch.rand(2, CHUNK, 4, generator=seeded(4))
    tokens = encoder(actions[:, :1])  # only the first step's action known
    null = encoder.null(2)
    assert torch.equal(tokens[:, 1:], null[:, 1:])
    assert not torch.allclose(tokens[:, :1], null[:, :1])
    assert torch.equal(encoder(actions[:, :1]), encoder(torch.cat([actions[:, :1], actions[:, :1]], 1), (torch.arange(CHUNK) < 1).expand(2, -1)))
    # guided sampling runs (null = empty text beside all-null action tokens) and differs from unguided
    context = randn(2, 2, 4, LATENT, LATENT)
    seen = []  # the condition states of every UNet call
    predict = model.unet.predict
    model.unet.predict = lambda sequence, t, states, *rest: (seen.append(states),
                                                            predict(sequence, t, states, *rest))[1]
    guided = model.generate(context, ["a", "b"], generator=seeded(5), actions=actions)
    del model.unet.predict
    null_rows = seen[0][2:]  # the second half of the guided batch: empty text beside all-null action tokens
    assert torch.equal(null_rows[:, -CHUNK:], encoder.null(2).to(null_rows.dtype))
    assert not torch.equal(seen[0][:2, -CHUNK:], null_rows[:, -CHUNK:])  # the conditional rows hold the actions
    model.config.diffusion.guidance_scale = 1.0
    plain = model.generate(context, ["a", "b"], generator=seeded(5), actions=actions)
    assert not torch.allclose(guided, plain)


@pytest.mark.parametrize("conditioning", ["action", "text+action"])
@pytest.mark.parametrize(("objective", "sampler"), OBJECTIVES)
def test_both_objectives_train_with_actions(conditioning, objective, sampler):
    model = tiny_model(conditioning, objective=objective, sampler=sampler).train()
    context, target = randn(2, 2, 4, LATENT, LATENT, seed=6), randn(2, CHUNK, 4, LATENT, LATENT, seed=7)
    actions = torch.rand(2, CHUNK, 4, generator=seeded(8)) * 2 - 1
    texts = ["go", "stop"]

    loss, logs = model(context, target, texts, generator=seeded(9), actions=actions)
    other, _ = model(context, target, texts, generator=seeded(9), actions=-actions)
    assert torch.isfinite(loss) and set(logs) >= {"loss", "noise_level"}
    assert loss.item() != other.item()  # the actions reach the loss
    loss.backward()
    assert model.action_encoder.mlp[0].weight.grad.abs().sum() > 0
    assert model.action_encoder.null_token.grad is not None
    with pytest.raises(ValueError, match=r"expected actions of shape \(2, k <= 3, 4\)"):
        model(context, target, texts, generator=seeded(9), actions=actions[:1])


def test_action_tail_dropout_trains_on_known_prefixes_and_the_null_token():
    """A clip keeps a prefix of its chunk's actions (the rest null), as WorldModel-v0 imagines from the actions
    known so far; nothing tested it (the null token's gradient exists, zero, without it)."""
    model = tiny_model("action", action_tail_dropout=0.99).train()
    known = model._training_known(64, CHUNK, seeded(1))
    lengths = known.sum(dim=1)
    assert torch.equal(known, torch.arange(CHUNK)[None] < lengths[:, None])  # prefixes
    assert (lengths < CHUNK).any() and (lengths >= 1).all()
    assert torch.equal(tiny_model("action", action_tail_dropout=0.0)._training_known(64, CHUNK, seeded(1)),
                       torch.ones(64, CHUNK, dtype=torch.bool))
    context, target = randn(4, 2, 4, LATENT, LATENT, seed=6), randn(4, CHUNK, 4, LATENT, LATENT, seed=7)
    actions = torch.rand(4, CHUNK, 4, generator=seeded(8)) * 2 - 1
    loss, _ = model(context, target, ["go"] * 4, generator=seeded(9), actions=actions)
    loss.backward()
    assert model.action_encoder.null_token.grad.abs().sum() > 0


def test_text_conditioning_keeps_the_shipped_checkpoint_as_it_was():
    path = resolve_checkpoint("shipped:tabletop/worldmodel")
    saved = json.loads((Path(path) / "config.json").read_text())["config"]
    new_fields = {"conditioning", "action_dim", "action_tail_dropout"}
    config = WorldModelConfig.from_dict({k: v for k, v in saved.items() if k not in new_fields})  # as written before
    assert config.conditioning == "text" and read_config(path) == config
    model = WorldModel(config).eval()
    model.load_weights(path)  # _load_into rejects missing or unexpected tensors
    assert model.action_encoder is None
    on_disk = {f"unet.{k}" for k in load_file(Path(path) / UNET_FILE)} | {f"vae.{k}" for k in load_file(Path(path) / VAE_FILE)}
    if (Path(path) / TEXT_ENCODER_FILE).exists():
        on_disk |= {f"text_encoder.{k}" for k in load_file(Path(path) / TEXT_ENCODER_FILE)}
    assert set(model.state_dict()) == on_disk  # no new parameters

    # generation is the text-only path: unet + sampler on the text states, nothing else
    context = randn(1, 2, *model.latent_shape)
    states, mask = model.encode_text(["pick up the red cube"])
    direct = sample_chunk(model.unet, context, states, mask, config.chunk_frames, config.diffusion, generator=seeded(0))
    assert torch.equal(model.generate(context, ["pick up the red cube"], generator=seeded(0)), direct)


def test_training_batches_carry_the_actions_that_lead_into_each_chunk_frame():
    vae = build_vae(VAEConfig.tiny(image_size=16))
    lengths = (9, 11)
    # frame f of episode e holds 100 e + f, and so does the action taken at it: a batch from another episode shows
    latents = [(torch.arange(n, dtype=torch.float32) + 100 * e).view(n, 1, 1, 1).expand(n, 4, LATENT, LATENT)
               for e, n in enumerate(lengths)]
    texts = [["a"] * 4 + ["b"] * (n - 4) for n in lengths]
    actions = [torch.arange(n, dtype=torch.float32)[:, None].expand(n, 4) + 100 * e for e, n in enumerate(lengths)]
    with_actions = WorldModelTraining(WorldModelTrainConfig(model=tiny_config("action")), latents, texts, vae, actions)
    text_only = WorldModelTraining(WorldModelTrainConfig(model=tiny_config("text")), latents, texts, vae)

    batch = with_actions.batch(seeded(0), 6)
    frame = batch["target"][:, :, 0, 0, 0]  # the episode and frame index of each chunk frame
    assert batch["actions"].shape == (6, CHUNK, 4)
    assert torch.equal(batch["actions"][..., 0], frame - 1)  # action f - 1 of the same episode led into frame f
    assert len(set((frame[:, 0] // 100).tolist())) == 2  # clips from both episodes
    same = text_only.batch(seeded(0), 6)  # actions take no random draws: the same clips
    assert torch.equal(same["target"], batch["target"]) and same["texts"] == batch["texts"] and "actions" not in same
    with pytest.raises(ValueError, match="expected actions exactly for an action-conditioned model"):
        WorldModelTraining(WorldModelTrainConfig(model=tiny_config("action")), latents, texts, vae)


@pytest.mark.parametrize("conditioning", ["text", "action", "text+action"])
def test_a_world_model_says_when_some_trained_parameter_never_reaches_the_loss(conditioning):
    """Several training processes (DDP) must look for such parameters, or fail at the second step."""
    vae = build_vae(VAEConfig.tiny(image_size=16))
    latents = [torch.randn(9, 4, LATENT, LATENT)]
    actions = [torch.randn(9, 4)] if conditioning != "text" else None
    training = WorldModelTraining(WorldModelTrainConfig(model=tiny_config(conditioning)), latents, [["a"] * 9], vae,
                                  actions)
    loss, _ = training.loss(training.batch(seeded(0), 2), seeded(1))
    loss.backward()
    untouched = [n for n, p in training.module.named_parameters() if p.requires_grad and p.grad is None]
    assert training.unused_parameters == bool(untouched), untouched


def test_init_from_a_text_model_gives_an_action_model_its_weights_and_a_fresh_action_encoder(tmp_path):
    source = tiny_model("text", seed=3)
    source.save_pretrained(tmp_path / "text")
    latents, texts = [torch.zeros(8, 4, LATENT, LATENT)], [["a"] * 8]
    actions = [torch.zeros(8, 4)]
    config = WorldModelTrainConfig(model=tiny_config("text+action"), init=str(tmp_path / "text"))
    torch.manual_seed(0)
    fresh = WorldModel(tiny_config("text+action"), vae=source.vae).action_encoder.state_dict()
    module = WorldModelTraining(config, latents, texts, source.vae, actions).module
    for name, tensor in source.unet.state_dict().items():
        assert torch.equal(module.unet.state_dict()[name], tensor), name
    for name, tensor in source.text_encoder.state_dict().items():
        assert torch.equal(module.text_encoder.state_dict()[name], tensor), name
    for name, tensor in module.action_encoder.state_dict().items():
        assert torch.equal(fresh[name], tensor), name  # as a fresh model draws it (training seeds with optim.seed 0)


def test_action_frame_embedding_gives_each_frame_its_own_action(monkeypatch):
    with pytest.raises(ValueError, match="action_frame_embedding: expected an action-conditioned model, got condit"):
        tiny_config("text", action_frame_embedding=True)
    model = tiny_model("text+action", action_frame_embedding=True)
    assert model.unet.frame_embedding[0].in_features == 4 + 1  # an action and a known flag
    seen = []
    predict = type(model.unet).predict

    def spy(unet, latents, timesteps, states, frame_inputs=None):
        seen.append(frame_inputs)
        return predict(unet, latents, timesteps, states, frame_inputs)

    monkeypatch.setattr(type(model.unet), "predict", spy)
    context, actions = randn(2, 2, 4, LATENT, LATENT), torch.rand(2, 2, 4, generator=seeded(1)) * 2 - 1
    model.generate(context, ["a", "b"], generator=seeded(2), actions=actions)  # 2 of 3 chunk actions known
    inputs = seen[-1]
    assert inputs.shape == (2, 2 + CHUNK, 5)
    assert not inputs[:, :2].any() and not inputs[:, 2 + 2:].any()  # context frames and the unknown step: zeros
    assert torch.equal(inputs[:, 2:4, :4], actions) and torch.equal(inputs[:, 2:4, 4], torch.ones(2, 2))
    latents, states = torch.zeros(2, 5, 4, LATENT, LATENT), torch.zeros(2, 7, DIM)
    with pytest.raises(ValueError, match=r"expected frame_inputs of shape \(2, 5, 5\), got \(2, 5, 4\)"):
        model.unet.predict(latents, torch.zeros(2), states, torch.zeros(2, 5, 4))

    # once trained away from zero, a frame's output depends on its own input, and the hooks are gone after
    torch.nn.init.normal_(model.unet.frame_embedding[2].weight)
    inputs = torch.zeros(2, 5, 5)
    base = predict(model.unet, latents, torch.zeros(2), states, inputs)
    inputs[:, 3] = torch.tensor([1.0, -1.0, 0.5, 0.0, 1.0])
    moved = predict(model.unet, latents, torch.zeros(2), states, inputs)
    assert (moved - base)[:, 3].abs().max() > (moved - base)[:, 0].abs().max()
    assert all(not m._forward_pre_hooks for m in model.unet.modules())

    model.train()
    target = randn(2, CHUNK, 4, LATENT, LATENT, seed=3)
    loss, _ = model(context, target, ["a", "b"], generator=seeded(4), actions=torch.rand(2, CHUNK, 4) * 2 - 1)
    loss.backward()
    assert model.unet.frame_embedding[2].weight.grad.abs().sum() > 0  # the frame embedding learns


def test_guidance_drops_the_frame_inputs_in_its_null_pass(monkeypatch):
    """The null half of a guided batch is the unconditioned model: its per-frame action inputs are zeros, as
    training drops them with the text; nothing tested it."""
    diffusion = DiffusionConfig(num_inference_steps=2, sampler="ddim", guidance_scale=3.0)
    model = tiny_model("text+action", action_frame_embedding=True, diffusion=diffusion)
    seen = []
    predict = type(model.unet).predict
    monkeypatch.setattr(type(model.unet), "predict", lambda unet, latents, timesteps, states, frame_inputs=None: (
        seen.append(frame_inputs), predict(unet, latents, timesteps, states, frame_inputs))[1])
    context, actions = randn(2, 2, 4, LATENT, LATENT), torch.rand(2, CHUNK, 4, generator=seeded(1)) * 2 - 1
    model.generate(context, ["a", "b"], generator=seeded(2), actions=actions)
    inputs = seen[0]
    assert inputs.shape[0] == 4 and inputs[:2].any() and not inputs[2:].any()


def test_init_adds_a_frame_embedding_to_a_model_without_one(tmp_path):
    source = tiny_model("text+action", seed=3)
    source.save_pretrained(tmp_path / "tokens")
    latents, texts, actions = [torch.zeros(8, 4, LATENT, LATENT)], [["a"] * 8], [torch.zeros(8, 4)]
    extended = tiny_config("text+action", action_frame_embedding=True)
    config = WorldModelTrainConfig(model=extended, init=str(tmp_path / "tokens"))
    module = WorldModelTraining(config, latents, texts, source.vae, actions).module.eval()
    for name, tensor in source.unet.state_dict().items():
        assert torch.equal(module.unet.state_dict()[name], tensor), name
    assert not module.unet.frame_embedding[2].weight.any()
    # a new embedding at zero output: the extended model computes what its source did
    context, given = randn(1, 2, 4, LATENT, LATENT), torch.rand(1, CHUNK, 4, generator=seeded(1))
    assert torch.equal(module.generate(context, ["a"], generator=seeded(2), actions=given),
                       source.generate(context, ["a"], generator=seeded(2), actions=given))


TINY_ACTION_MODEL = [*TINY_WORLD_MODEL, "component.model.conditioning=action"]


@pytest.fixture(scope="module")
def tiny_dataset_and_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("actions")
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    collect(CollectConfig(env=TabletopConfig(image_size=16), task=task, episodes=2, out=str(root / "ds")))
    torch.manual_seed(0)
    build_vae(VAEConfig.tiny(image_size=16)).save_pretrained(root / "vae", safe_serialization=True)  # untrained is fine
    return root / "ds", root / "vae"


def test_an_action_model_on_discrete_moves_is_refused_before_anything_is_written(tiny_dataset_and_vae, tmp_path):
    """The blockworld's moves 0-4 were read as one float each (and the imagined env clips them into [-1, 1])."""
    from vplan.envs import BlockworldConfig
    from vplan.errors import UsageError
    from vplan.loop.config import OptimConfig, TrainConfig
    from vplan.loop.train import train_component

    data = tmp_path / "moves"
    collect(CollectConfig(env=BlockworldConfig(image_size=16), task=TaskConfig.preset("retrace"), episodes=2,
                          out=str(data)))
    component = WorldModelTrainConfig(model=replace(WorldModelConfig(**{
        "unet": {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4, "sample_size": 8,
                 "cross_attention_dim": 32},
        "text_encoder": {"kind": "learned", "dim": 32, "vocab_buckets": 64},
        "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4, "image_size": 16},
        "context_frames": 2, "chunk_frames": 2}), conditioning="action", action_dim=1),
        vae=str(tiny_dataset_and_vae[1]), optim=OptimConfig(steps=1, batch_size=2))
    with pytest.raises(UsageError, match=r"moves holds discrete moves \(its actions are int64\), and action "
                                         r"conditioning reads continuous actions only"):
        train_component(TrainConfig(component=component, data=str(data), out=str(tmp_path / "out"),
                                    holdout_episodes=1))
    assert not (tmp_path / "out").exists()


def test_vplan_train_an_action_model_then_save_and_reload_bit_exactly(tiny_dataset_and_vae, tmp_path):
    data, vae = tiny_dataset_and_vae
    out = tmp_path / "wm"

    def vplan_train(*overrides: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vplan.cli", "train", "component=worldmodel", f"data={data}",
                   f"component.vae={vae}", "holdout_episodes=1", "component.optim.steps=2",
                   "component.optim.batch_size=2", *TINY_ACTION_MODEL, *overrides]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    result = vplan_train(f"out={out}")
    assert result.returncode == 0, result.stderr

    final = out / "final"
    assert (final / ACTION_ENCODER_FILE).is_file()
    import json

    recorded = json.loads((final / "config.json").read_text())  # what its actions meant, as the IDM records it
    assert recorded["action_units"] == {"max_delta": 0.03, "control_hz": 10}
    model = WorldModel.from_pretrained(final)
    assert model.config.conditioning == "action" and model.action_encoder is not None
    torch.manual_seed(0)  # the training's seed (OptimConfig.seed): the weights it started from
    fresh = WorldModel(model.config, vae=model.vae)
    # the same start (the text encoder gets no gradient with conditioning=action), then trained action tokens
    assert torch.equal(fresh.text_encoder.token_embedding.weight, model.text_encoder.token_embedding.weight)
    assert not torch.equal(fresh.action_encoder.mlp[0].weight, model.action_encoder.mlp[0].weight)

    model.save_pretrained(tmp_path / "again")
    again = WorldModel.from_pretrained(tmp_path / "again")
    state, state_again = model.state_dict(), again.state_dict()
    assert set(state) == set(state_again) and all(torch.equal(state[k], state_again[k]) for k in state)
    context, actions = randn(1, 2, 4, 8, 8), torch.rand(1, 2, 4, generator=seeded(1))
    assert torch.equal(model.generate(context, None, generator=seeded(2), actions=actions),
                       again.generate(context, None, generator=seeded(2), actions=actions))

    bad = vplan_train("component.model.action_dim=3", f"out={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "set component.model.action_dim=4" in bad.stderr
    assert not (tmp_path / "bad").exists()  # read from the metadata: refused before any latent was encoded
    bad = vplan_train("component.model.conditioning=actions", f"out={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "conditioning: expected one of ('text', 'action', 'text+action')" in bad.stderr


def test_init_from_a_model_with_a_frame_embedding_names_the_settings_to_continue_from_it(tmp_path):
    """The README's "more steps from the shipped action model" without its frame embedding's settings was
    refused naming four unexpected tensors."""
    from vplan.errors import UsageError
    from vplan.loop.train import _load_init

    WorldModel(tiny_config("action", action_frame_embedding=True)).save_pretrained(tmp_path / "source")
    for ours, said in ((tiny_config("text"), "pass component.model.conditioning=action "
                                             "component.model.action_frame_embedding=true$"),
                       (tiny_config("action"), "pass component.model.action_frame_embedding=true$")):
        with pytest.raises(UsageError, match=f"component.init=.*source gives each frame its action through a frame "
                                             f"embedding, which this model has not; to continue from it, {said}"):
            _load_init(WorldModel(ours), str(tmp_path / "source"))
    with pytest.raises(UsageError, match="through a frame embedding of another size than this model's; to continue "
                                         "from it, pass component.model.action_dim=4$"):
        _load_init(WorldModel(tiny_config("action", action_frame_embedding=True, action_dim=3)),
                   str(tmp_path / "source"))
    _load_init(WorldModel(tiny_config("action", action_frame_embedding=True)), str(tmp_path / "source"))


def test_eval_worldmodel_warns_of_an_action_model_trained_on_actions_of_another_scale(tmp_path):
    """Only IDMs were checked: an action model trained at max_delta=0.05 was fed the 3 cm moves of 0.03."""
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.eval.worldmodel import evaluate_worldmodel
    from vplan.shipped import OtherEnvWarning

    torch.manual_seed(0)
    WorldModel(tiny_config("action")).save_pretrained(tmp_path / "wm", action_units={"max_delta": 0.05})
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    with pytest.warns(OtherEnvWarning, match=r"checkpoint=.*wm learned actions recorded at env.max_delta=0.05, and "
                                             r"this env has max_delta=0.03"):
        evaluate_worldmodel(EvalWorldModelConfig(
            env=TabletopConfig(image_size=16, max_episode_steps=20), task=task, checkpoint=str(tmp_path / "wm"),
            episodes=1, out=str(tmp_path / "run"), video_chunks=0, rollout_chunks=0,
        ))


@pytest.mark.parametrize("setting", ["checkpoint", "compare"])
def test_eval_worldmodel_refuses_an_action_model_of_another_action_dim_before_anything_is_written(tmp_path, setting):
    """It was refused in the first episode, after its records were written and an expert episode played, and the
    message named no setting."""
    from vplan.errors import UsageError
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.eval.worldmodel import evaluate_worldmodel

    torch.manual_seed(0)
    WorldModel(tiny_config("action", action_dim=7)).save_pretrained(tmp_path / "seven")
    WorldModel(tiny_config("text")).save_pretrained(tmp_path / "text")
    models = {"checkpoint": str(tmp_path / "text"), "compare": str(tmp_path / "text"), setting: str(tmp_path / "seven")}
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    with pytest.raises(UsageError, match=rf"^{setting}={re.escape(models[setting])}: an action model of action_dim 7, "
                                         r"and the env's actions have 4 values; pass one trained on this env's"):
        evaluate_worldmodel(EvalWorldModelConfig(
            env=TabletopConfig(image_size=16, max_episode_steps=20), task=task, episodes=1, out=str(tmp_path / "run"),
            video_chunks=0, rollout_chunks=1, **models))
    assert not (tmp_path / "run").exists()


def test_eval_worldmodel_feeds_an_action_model_the_executed_actions(tmp_path, monkeypatch):
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.eval.worldmodel import evaluate_worldmodel

    torch.manual_seed(0)
    WorldModel(tiny_config("action")).save_pretrained(tmp_path / "wm")
    given = []
    generate = WorldModel.generate

    def spy(self, context, texts, num_frames=None, generator=None, actions=None):
        given.append(actions)
        return generate(self, context, texts, num_frames=num_frames, generator=generator, actions=actions)

    monkeypatch.setattr(WorldModel, "generate", spy)
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    metrics = evaluate_worldmodel(EvalWorldModelConfig(
        env=TabletopConfig(image_size=16, max_episode_steps=30), task=task, checkpoint=str(tmp_path / "wm"),
        episodes=1, out=str(tmp_path / "run"), video_chunks=0, rollout_chunks=0,
    ))
    assert metrics["conditioning"] == "action" and metrics["all"]["chunks"] >= 8 and metrics["seeds"] == [10000]
    assert metrics["text_sensitivity"] is None  # an action-only model does not read the text
    moving = [row for row in metrics["chunks"] if row["moving"]]
    assert moving and all("order_sensitive" in row for row in moving)
    assert metrics["action_order_sensitivity"] == np.mean([row["order_sensitive"] for row in moving])
    assert metrics["action_direction_sensitivity"] == np.mean([row["direction_sensitive"] for row in moving])
    # per chunk: the executed actions, then (where the gripper moves) the same actions reversed in time, and their
    # motion reversed (the gripper's command kept)
    assert len(given) == metrics["all"]["chunks"] + 2 * len(moving)
    from vplan.data.collect import rollout_expert
    from vplan.envs import make_env
    from vplan.policies import make_expert

    env_config = TabletopConfig(image_size=16, max_episode_steps=30)
    env = make_env(env_config)
    actions = torch.as_tensor(rollout_expert(env, make_expert("return_cubes", env_config), 10000)[0]["action"])
    env.close()
    calls = iter(given)
    for row in metrics["chunks"]:
        executed = next(calls)  # the actions taken at the frame before the chunk's first and on: row t at frame t
        assert torch.equal(executed[0], actions[row["start"] - 1 : row["start"] - 1 + CHUNK].float())
        if row["moving"]:
            assert torch.equal(next(calls), executed.flip(1))
            assert torch.equal(next(calls), torch.cat([-executed[..., :3], executed[..., 3:]], -1))
    assert all(a is not None and a.shape == (1, CHUNK, 4) and a.abs().max() <= 1 for a in given)
    reversals = [(a, b) for a, b in zip(given, given[1:]) if torch.equal(b, a.flip(1)) and not torch.equal(a, b)]
    assert len(reversals) == len(moving)
    assert not all(torch.equal(a, given[0]) for a in given)  # each chunk its own actions


def test_eval_worldmodel_open_loop_puts_a_second_checkpoint_beside_the_first(tmp_path, capsys):
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.eval.worldmodel import evaluate_worldmodel

    torch.manual_seed(0)
    WorldModel(tiny_config("text+action")).save_pretrained(tmp_path / "action")
    torch.manual_seed(1)
    WorldModel(tiny_config("text")).save_pretrained(tmp_path / "text")
    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")

    def evaluate(compare: str) -> dict:
        return evaluate_worldmodel(EvalWorldModelConfig(
            env=TabletopConfig(image_size=16, max_episode_steps=30), task=task, checkpoint=str(tmp_path / "action"),
            compare=str(tmp_path / compare), episodes=1, out=str(tmp_path / f"run-{compare}"), rollout_chunks=3))

    against_text = evaluate("text")["open_loop"]
    assert [row["chunk"] for row in against_text["per_chunk"]] == [0, 1, 2] and against_text["episodes"] == 1
    assert against_text["mean"]["psnr"] != against_text["mean"]["compare_psnr"]
    printed = capsys.readouterr().out
    assert "open loop over 3 chunks" in printed and "compare (text)" in printed
    assert (tmp_path / "run-text" / "open_loop.mp4").stat().st_size > 0
    assert (tmp_path / "run-text" / "open_loop.png").read_bytes().startswith(b"\x89PNG")  # PSNR per chunk, drawn
    against_itself = evaluate("action")["open_loop"]  # same episodes, same noise: the same figures
    assert all(row["psnr"] == row["compare_psnr"] for row in against_itself["rows"])
    assert against_itself["mean"]["psnr"] == against_text["mean"]["psnr"]
    assert against_itself["paired"] == {
        "mean_gain_db": 0.0, "standard_error_db": None, "episodes": 1, "ahead": 0, "behind": 0}
    assert "checkpoint minus compare: 0.00 dB per episode, ahead in 0 and behind in 0 of 1" in capsys.readouterr().out


def test_eval_worldmodel_conditioning_action_puts_the_shipped_action_model_beside_the_text_one(tmp_path):
    from vplan.errors import UsageError
    from vplan.eval.config import EvalWorldModelConfig
    from vplan.eval.worldmodel import evaluate_worldmodel

    task = TaskConfig(name="return_cubes", env="tabletop", instruction="move the cubes, then put them back")
    cfg = EvalWorldModelConfig(env=TabletopConfig(), task=task, conditioning="action")
    assert (cfg.checkpoint, cfg.compare) == ("shipped:tabletop/worldmodel_action", "shipped:tabletop/worldmodel")
    assert read_config(resolve_checkpoint(cfg.checkpoint)).conditioning == "action"
    assert EvalWorldModelConfig(env=TabletopConfig(), task=task, conditioning="action", compare="DIR").compare == "DIR"
    with pytest.raises(ValueError, match="no such model ships; give checkpoint=DIR"):
        EvalWorldModelConfig(env=TabletopConfig(), task=task, conditioning="text+action")
    with pytest.raises(ValueError, match="conditioning: expected one of text, action, text\\+action, got 'actions'"):
        EvalWorldModelConfig(env=TabletopConfig(), task=task, conditioning="actions")
    WorldModel(tiny_config("text")).save_pretrained(tmp_path / "text")
    with pytest.raises(UsageError, match="is conditioned on 'text', not conditioning='action'"):
        evaluate_worldmodel(EvalWorldModelConfig(env=TabletopConfig(image_size=16), task=task,
                                                 checkpoint=str(tmp_path / "text"), conditioning="action"))


def test_paired_gain_averages_each_episode_before_comparing():
    from vplan.eval.worldmodel import paired_gain

    rows = [  # episode 0: +1 and +3 dB (mean +2); episode 1: -1 dB; episode 2: +2 dB
        {"episode": 0, "psnr": 18.0, "compare_psnr": 17.0}, {"episode": 0, "psnr": 20.0, "compare_psnr": 17.0},
        {"episode": 1, "psnr": 16.0, "compare_psnr": 17.0}, {"episode": 2, "psnr": 19.0, "compare_psnr": 17.0},
    ]
    paired = paired_gain(rows)
    assert paired["mean_gain_db"] == 1.0 and (paired["episodes"], paired["ahead"], paired["behind"]) == (3, 2, 1)
    assert paired["standard_error_db"] == np.std([2.0, -1.0, 2.0], ddof=1) / np.sqrt(3)


def test_rollout_gives_each_chunk_its_actions():
    model = tiny_model("action")
    first = randn(1, 1, 4, LATENT, LATENT)
    actions = torch.rand(1, 2 * CHUNK, 4, generator=seeded(1)) * 2 - 1
    video = model.rollout(first, ["", ""], generator=seeded(2), actions=actions)
    assert video.shape == (1, 2 * CHUNK, 4, LATENT, LATENT)
    generator = seeded(2)
    chunk = model.generate(first, None, generator=generator, actions=actions[:, :CHUNK])
    second = model.generate(torch.cat([first, chunk], 1), None, generator=generator, actions=actions[:, CHUNK:])
    assert torch.equal(video, torch.cat([chunk, second], 1))
    with pytest.raises(ValueError, match=r"expected 6 actions \(2 chunks\), got 3"):
        model.rollout(first, ["", ""], actions=actions[:, :CHUNK])


def test_training_text_dropout_drops_the_frame_inputs_too(monkeypatch):
    """Guidance's null pass drops them (tested); training's text dropout did not have to (helper-210)."""
    model = tiny_model("text+action", action_frame_embedding=True,
                       diffusion=DiffusionConfig(num_inference_steps=2, text_dropout=1.0 - 1e-9))
    seen, predict = [], type(model.unet).predict
    monkeypatch.setattr(type(model.unet), "predict", lambda unet, latents, t, states, frame_inputs=None: (
        seen.append(frame_inputs), predict(unet, latents, t, states, frame_inputs))[1])
    context, target = randn(2, 2, 4, LATENT, LATENT), randn(2, CHUNK, 4, LATENT, LATENT, seed=3)
    model(context, target, ["a", "b"], generator=seeded(4), actions=torch.rand(2, CHUNK, 4) * 2 - 1)
    assert seen[0] is not None and not seen[0].any()


def test_action_tail_dropout_cuts_that_share_of_clips():
    """Tested at p=0.99 and "some clip cut", which 1 - p passed too (helper-210)."""
    model = tiny_model("action", action_tail_dropout=0.25)
    lengths = model._training_known(3000, CHUNK, seeded(1)).sum(dim=1)
    share = (lengths < CHUNK).float().mean().item()  # cut clips keep 1..CHUNK steps: 2/3 of them are shorter
    assert 0.25 * 2 / 3 - 0.04 < share < 0.25 * 2 / 3 + 0.04, share
