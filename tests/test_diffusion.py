"""Masked conditional diffusion on a tiny UNet3D: losses, samplers, guidance, LoRA adapters (CPU, 2 steps)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig

from vplan.worldmodel.config import BETA_SCHEDULES, SAMPLERS, DiffusionConfig, UNetConfig
from vplan.worldmodel.diffusion import masked_diffusion_loss, sample_chunk
from vplan.worldmodel.unet import UNet3D, build_unet

SAMPLER_CASES = [("epsilon", "ddim"), ("epsilon", "dpmsolver++"), ("flow", "flow_euler")]
BATCH, CONTEXT, CHUNK, TOKENS, DIM = 2, 3, 4, 5, 384


@pytest.fixture(scope="module")
def unet() -> UNet3D:
    torch.manual_seed(0)
    return build_unet(UNetConfig.preset("tiny")).eval()


@pytest.fixture()
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    mask[1, 3:] = False
    return {
        "context_latents": torch.randn(BATCH, CONTEXT, 4, 16, 16, generator=g),
        "target_latents": torch.randn(BATCH, CHUNK, 4, 16, 16, generator=g),
        "text_states": torch.randn(BATCH, TOKENS, DIM, generator=g),
        "text_mask": mask,
    }


def null_states() -> torch.Tensor:
    # not zeros: "replaced by the null text" must differ from "zeroed" (the MiniLM null text is not zero either)
    return torch.randn(1, TOKENS, DIM, generator=torch.Generator().manual_seed(123))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ShiftContextOutput(torch.nn.Module):
    """Wraps a UNet and adds a large offset to its output on the first `context` frames only."""

    def __init__(self, unet: UNet3D, context: int) -> None:
        super().__init__()
        self.unet, self.context = unet, context

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor,
                frame_inputs: torch.Tensor | None = None) -> torch.Tensor:
        out = self.unet.predict(latents, timesteps, states).clone()
        out[:, : self.context] += 100.0
        return out


class RecordInputs(torch.nn.Module):
    """Wraps a UNet and keeps every input sequence it is given."""

    def __init__(self, unet: UNet3D) -> None:
        super().__init__()
        self.unet, self.inputs = unet, []

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor,
                frame_inputs: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs.append(latents.clone())
        return self.unet.predict(latents, timesteps, states)


def test_objective_and_sampler_must_match() -> None:
    with pytest.raises(ValueError, match="expected sampler in .*got 'flow_euler'"):
        DiffusionConfig(objective="epsilon", sampler="flow_euler")
    with pytest.raises(ValueError, match="expected sampler in .*got 'ddim'"):
        DiffusionConfig(objective="flow", sampler="ddim")
    with pytest.raises(ValueError, match="expected objective"):
        DiffusionConfig(objective="v_prediction")
    with pytest.raises(ValueError, match="expected guidance_scale"):
        DiffusionConfig(guidance_scale=0.5)
    with pytest.raises(ValueError, match="'squaredcos_cap_v2' \\(no longer offered: its first sampling step"):
        DiffusionConfig(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a model trained with .*text_dropout=0"):
        DiffusionConfig(guidance_scale=2.0, text_dropout=0.0)  # it would guide away from an unlearned condition


def test_unet_config_validates() -> None:
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="model: expected a preset in"):
        UNetConfig.preset("huge")
    assert UNetConfig(block_out_channels=[8, 16], norm_num_groups=4, attention_head_dim=2).down_block_types == (
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    )


@pytest.mark.parametrize("objective,sampler", [SAMPLER_CASES[0], SAMPLER_CASES[2]])
def test_loss_is_finite_and_trains(unet: UNet3D, batch: dict, objective: str, sampler: str) -> None:
    config = DiffusionConfig(objective=objective, sampler=sampler, text_dropout=0.5)
    loss, logs = masked_diffusion_loss(unet, **batch, config=config, null_states=null_states(), generator=seeded())
    assert math.isfinite(loss.item()) and set(logs) == {"loss", "noise_level", "text_dropped"}
    loss.backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    unet.zero_grad()


def test_text_dropout_trains_on_the_null_text(unet: UNet3D, batch: dict) -> None:
    """What classifier-free guidance needs: some samples see the empty text's states instead of their own."""
    always = DiffusionConfig(text_dropout=1.0 - 1e-9)
    with torch.no_grad():
        dropped, logs = masked_diffusion_loss(unet, **batch, config=always, null_states=null_states(),
                                              generator=seeded())
        as_null = masked_diffusion_loss(unet, **{**batch, "text_states": null_states().expand(BATCH, -1, -1),
                                                 "text_mask": torch.ones_like(batch["text_mask"])},  # all of it
                                        config=DiffusionConfig(text_dropout=0.0), generator=seeded())[0]
        kept = masked_diffusion_loss(unet, **batch, config=DiffusionConfig(text_dropout=0.0), generator=seeded())[0]
    assert logs["text_dropped"] == 1.0 and dropped == as_null and dropped != kept


def test_context_frames_carry_no_loss_but_condition(unet: UNet3D, batch: dict) -> None:
    config = DiffusionConfig(text_dropout=0.0)
    loss, _ = masked_diffusion_loss(unet, **batch, config=config, generator=seeded())
    shifted, _ = masked_diffusion_loss(ShiftContextOutput(unet, CONTEXT), **batch, config=config, generator=seeded())
    assert torch.equal(loss, shifted)  # the outputs on context frames are never scored

    context = batch["context_latents"].clone().requires_grad_(True)
    loss, _ = masked_diffusion_loss(unet, **{**batch, "context_latents": context}, config=config, generator=seeded())
    loss.backward()
    assert context.grad.abs().sum() > 0  # ... yet the model sees the context
    unet.zero_grad()
    other = masked_diffusion_loss(
        unet, **{**batch, "context_latents": torch.zeros_like(context)}, config=config, generator=seeded()
    )[0]
    assert math.isfinite(other.item()) and other.item() != loss.item()
    recorder = RecordInputs(unet)
    masked_diffusion_loss(recorder, **batch, config=config, generator=seeded())
    (sequence,) = recorder.inputs
    assert torch.equal(sequence[:, :CONTEXT], batch["context_latents"])  # clean: no noise on the context
    assert not torch.equal(sequence[:, CONTEXT:], batch["target_latents"])


def test_padded_text_tokens_are_ignored(unet: UNet3D, batch: dict) -> None:
    config = DiffusionConfig(num_inference_steps=2, text_dropout=0.0)
    changed = batch["text_states"].clone()
    changed[~batch["text_mask"]] = 5.0
    args = (batch["context_latents"], batch["text_states"], batch["text_mask"], CHUNK, config)
    out = sample_chunk(unet, *args, generator=seeded())
    out_changed = sample_chunk(unet, batch["context_latents"], changed, batch["text_mask"], CHUNK, config,
                               generator=seeded())
    assert torch.equal(out, out_changed)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
@pytest.mark.parametrize("objective,sampler", SAMPLER_CASES)
def test_samplers_shape_and_seed(
    unet: UNet3D, batch: dict, objective: str, sampler: str, guidance_scale: float
) -> None:
    config = DiffusionConfig(objective=objective, sampler=sampler, num_inference_steps=2, guidance_scale=guidance_scale)
    args = (unet, batch["context_latents"], batch["text_states"], batch["text_mask"], CHUNK, config)
    first = sample_chunk(*args, null_states=null_states(), generator=seeded(7))
    again = sample_chunk(*args, null_states=null_states(), generator=seeded(7))
    other = sample_chunk(*args, null_states=null_states(), generator=seeded(8))
    assert first.shape == (BATCH, CHUNK, 4, 16, 16)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again) and not torch.equal(first, other)


class PerfectPredictor(torch.nn.Module):
    """Predicts exactly what the objective asks for, given the clean chunk `x0`: a sampler must land on x0."""

    def __init__(self, x0: torch.Tensor, config: DiffusionConfig) -> None:
        super().__init__()
        from vplan.worldmodel.diffusion import make_scheduler

        self.x0, self.config = x0, config
        self.alphas = make_scheduler(replace(config, objective="epsilon", sampler="ddim")).alphas_cumprod

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor,
                frame_inputs: torch.Tensor | None = None) -> torch.Tensor:
        chunk, out = latents[:, CONTEXT:], torch.zeros_like(latents)
        timesteps = timesteps.expand(latents.shape[0]).view(-1, 1, 1, 1, 1)  # one per sample when training
        if self.config.objective == "epsilon":
            alpha = self.alphas[timesteps.long()]
            out[:, CONTEXT:] = (chunk - alpha.sqrt() * self.x0) / (1 - alpha).sqrt()
        else:  # flow: x_t = (1 - s) x0 + s ε at s = t / num_train_timesteps, velocity ε - x0
            s = timesteps / self.config.num_train_timesteps
            out[:, CONTEXT:] = (chunk - self.x0) / s
        return out


@pytest.mark.parametrize(("objective", "sampler"), SAMPLER_CASES)
@pytest.mark.parametrize("steps", [3, 5, 6, 7, 11])
def test_every_sampler_lands_on_the_clean_chunk_a_perfect_model_predicts(batch, objective, sampler, steps) -> None:
    config = DiffusionConfig(objective=objective, sampler=sampler, num_inference_steps=steps)
    x0 = batch["target_latents"]
    sample = sample_chunk(PerfectPredictor(x0, config), batch["context_latents"], batch["text_states"],
                          batch["text_mask"], CHUNK, config, generator=seeded())
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("objective", "sampler"), SAMPLER_CASES)
@pytest.mark.parametrize(("beta_schedule", "train_steps"), [("linear", 1000), ("scaled_linear", 500)])
def test_samplers_land_on_the_clean_chunk_under_every_schedule(batch, objective, sampler, beta_schedule, train_steps):
    config = DiffusionConfig(objective=objective, sampler=sampler, num_inference_steps=5, beta_schedule=beta_schedule,
                             num_train_timesteps=train_steps)
    sample = sample_chunk(PerfectPredictor(batch["target_latents"], config), batch["context_latents"],
                          batch["text_states"], batch["text_mask"], CHUNK, config, generator=seeded())
    torch.testing.assert_close(sample, batch["target_latents"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS["epsilon"])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_the_first_sampling_step_keeps_a_small_noise_error_small(sampler, beta_schedule) -> None:
    """A schedule whose last timestep keeps almost no signal (diffusers' squaredcos_cap_v2, not offered) turns a 1%
    error in the predicted noise into a 60-fold spread at the first step: a trained model's chunks were noise."""
    from vplan.worldmodel.diffusion import _set_timesteps, make_scheduler

    config = DiffusionConfig(sampler=sampler, beta_schedule=beta_schedule)
    scheduler = make_scheduler(config)
    _set_timesteps(scheduler, config, torch.device("cpu"))
    alphas, (first, second) = scheduler.alphas_cumprod, scheduler.timesteps[:2]
    x0, noise = torch.randn(2, 8, 4, 16, 16, generator=seeded(1)), torch.randn(2, 8, 4, 16, 16, generator=seeded(2))
    latents = alphas[first].sqrt() * x0 + (1 - alphas[first]).sqrt() * noise
    stepped = scheduler.step(noise + 0.01 * torch.randn(noise.shape, generator=seeded(3)), first, latents).prev_sample
    ideal = alphas[second].sqrt() * x0 + (1 - alphas[second]).sqrt() * noise
    assert (stepped - ideal).std() < 0.05


@pytest.mark.parametrize(("objective", "sampler"), SAMPLER_CASES)
def test_training_noise_is_what_the_sampler_inverts(batch, objective, sampler) -> None:
    """The training targets follow the samplers' conventions (noise schedule, timestep scale, the velocity's sign):
    the predictor every sampler lands on x0 with has zero training loss."""
    config = DiffusionConfig(objective=objective, sampler=sampler, text_dropout=0.0)
    loss, _ = masked_diffusion_loss(PerfectPredictor(batch["target_latents"], config), **batch, config=config,
                                    generator=seeded(3))
    assert loss.item() < 1e-8


class GuidedPredictor(torch.nn.Module):
    """A perfect predictor of `conditional` for the text rows of a guided batch and of `null` for its null-text
    rows (the second half): classifier-free guidance must land on null + scale * (conditional - null)."""

    def __init__(self, conditional: torch.Tensor, null: torch.Tensor, config: DiffusionConfig) -> None:
        super().__init__()
        self.conditional, self.null = PerfectPredictor(conditional, config), PerfectPredictor(null, config)

    def predict(self, latents, timesteps, states, frame_inputs=None) -> torch.Tensor:
        half = latents.shape[0] // 2
        assert torch.equal(states[half:], null_states().expand(half, -1, -1))  # the null rows come second
        return torch.cat([self.conditional.predict(latents[:half], timesteps[:half], states[:half]),
                          self.null.predict(latents[half:], timesteps[half:], states[half:])])


@pytest.mark.parametrize(("objective", "sampler"), SAMPLER_CASES)
def test_guidance_moves_from_the_null_prediction_past_the_conditional_one(batch, objective, sampler) -> None:
    config = DiffusionConfig(objective=objective, sampler=sampler, num_inference_steps=5, guidance_scale=2.5)
    conditional = batch["target_latents"]
    null = torch.randn(conditional.shape, generator=seeded(9))
    sample = sample_chunk(GuidedPredictor(conditional, null, config), batch["context_latents"], batch["text_states"],
                          batch["text_mask"], CHUNK, config, null_states=null_states(), generator=seeded())
    torch.testing.assert_close(sample, null + 2.5 * (conditional - null), atol=1e-3, rtol=0)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sampling_keeps_context_clean(unet: UNet3D, batch: dict, guidance_scale: float) -> None:
    recorder = RecordInputs(unet)
    config = DiffusionConfig(num_inference_steps=3, guidance_scale=guidance_scale)
    sample_chunk(recorder, batch["context_latents"], batch["text_states"], batch["text_mask"], CHUNK, config,
                 null_states=null_states(), generator=seeded())
    assert len(recorder.inputs) == 3
    copies = 2 if guidance_scale > 1 else 1
    for sequence in recorder.inputs:
        assert sequence.shape == (copies * BATCH, CONTEXT + CHUNK, 4, 16, 16)
        assert torch.equal(sequence[:, :CONTEXT], batch["context_latents"].repeat(copies, 1, 1, 1, 1))
    assert not torch.equal(recorder.inputs[0][:, CONTEXT:], recorder.inputs[1][:, CONTEXT:])


def test_null_states_are_required_when_used(unet: UNet3D, batch: dict) -> None:
    with pytest.raises(ValueError, match="expected null_states"):
        masked_diffusion_loss(unet, **batch, config=DiffusionConfig(text_dropout=0.1))
    with pytest.raises(ValueError, match="expected null_states"):
        sample_chunk(unet, batch["context_latents"], batch["text_states"], batch["text_mask"], CHUNK,
                     DiffusionConfig(guidance_scale=2.0))


@pytest.mark.parametrize("objective,sampler", [SAMPLER_CASES[0], SAMPLER_CASES[2]])
def test_a_few_steps_reduce_the_loss(batch: dict, objective: str, sampler: str) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig.preset("tiny"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    config = DiffusionConfig(objective=objective, sampler=sampler, text_dropout=0.0)
    losses = []
    for _ in range(15):
        loss, _ = masked_diffusion_loss(model, **batch, config=config, generator=seeded(3))  # same noise each step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_lora_adapter_on_unet(unet: UNet3D, batch: dict) -> None:
    model = build_unet(UNetConfig.preset("tiny")).eval()
    model.load_state_dict(unet.state_dict())
    latents = torch.cat([batch["context_latents"], batch["target_latents"]], dim=1)
    timesteps = torch.tensor([10, 500])
    base = model.predict(latents, timesteps, batch["text_states"])
    # init_lora_weights=False: random non-zero LoRA weights, so the adapter visibly changes the output.
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    model.add_adapter(lora, adapter_name="temp_lora")
    assert model.active_adapters() == ["temp_lora"]
    adapted = model.predict(latents, timesteps, batch["text_states"])
    assert adapted.shape == base.shape and not torch.allclose(adapted, base)
    model.disable_adapters()
    assert torch.allclose(model.predict(latents, timesteps, batch["text_states"]), base, atol=1e-6)
    model.enable_adapters()
    assert torch.allclose(model.predict(latents, timesteps, batch["text_states"]), adapted, atol=1e-6)


# Sampling and training schedules: the perfect-predictor tests land on the clean chunk under any schedule, so they
# could not tell these apart (mutations survived, helper-210).
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_sampling_starts_at_the_last_training_timestep(sampler):
    from vplan.worldmodel.diffusion import _set_timesteps, make_scheduler

    config = DiffusionConfig(sampler=sampler, num_inference_steps=5)
    scheduler = make_scheduler(config)
    _set_timesteps(scheduler, config, torch.device("cpu"))
    assert scheduler.timesteps.tolist() == [999, 799, 599, 399, 199]  # "leading" spacing began at 800


def test_flow_sigmas_are_evenly_spaced_down_to_zero():
    """n steps, not diffusers' own set_timesteps(n), whose n steps act like n - 1."""
    from vplan.worldmodel.diffusion import _set_timesteps, make_scheduler

    config = DiffusionConfig(objective="flow", sampler="flow_euler", num_inference_steps=5)
    scheduler = make_scheduler(config)
    _set_timesteps(scheduler, config, torch.device("cpu"))
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0]))


def test_dpmsolver_is_not_ddim():
    torch.manual_seed(0)
    unet = build_unet(UNetConfig.preset("tiny")).eval()
    generator = torch.Generator().manual_seed(1)
    context, states = torch.randn(1, 2, 4, 16, 16, generator=generator), torch.randn(1, 3, 384, generator=generator)
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = {sampler: sample_chunk(unet, context, states, mask, 2, DiffusionConfig(sampler=sampler,
                                                                              num_inference_steps=3),
                                 generator=seeded(0)) for sampler in ("ddim", "dpmsolver++")}
    assert not torch.allclose(out["ddim"], out["dpmsolver++"])


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
def test_training_noise_levels_cover_the_whole_schedule(objective):
    from vplan.worldmodel.diffusion import add_training_noise

    config = DiffusionConfig(objective=objective, sampler="ddim" if objective == "epsilon" else "flow_euler")
    level = add_training_noise(torch.zeros(4000, 1), config, seeded(0))[3]
    assert level.min() < 0.01 and level.max() > 0.99 and abs(level.mean().item() - 0.5) < 0.02
