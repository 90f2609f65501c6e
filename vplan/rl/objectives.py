"""Executor finetuning objectives on the world model's own diffusion/flow loss, behind one switch
(`objective=rwr|dpo`), through a LoRA on the slow weights (named `rl`) so the base stays recoverable.

- Reward-weighted regression: per-sample loss × exp(A / β), the weights normalised to mean 1 over the
  iteration's chunks; with equal advantages every weight is 1 and this is exactly the plain loss.
- Preference (Diffusion-DPO, Wallace et al. 2023): on a pair from the same group (chosen w, rejected l) scored on
  identical noise and timesteps, −log σ(−β·((ℓ_w − ℓ_w^ref) − (ℓ_l − ℓ_l^ref))), the reference being the base
  (the adapter switched off): lowering the chosen's loss relative to the reference more than the rejected's.

Both add `penalty × Σ‖ΔW‖²` over the adapted projections: an L2 pull of the finetuned weights toward the
reference model's.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from vplan.memory.config import ATTENTION_PROJECTIONS

ADAPTER_NAME = "rl"


def rwr_weights(advantages: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(A / β) normalised to mean 1 (a softmax times the batch size: stable for any A)."""
    return torch.softmax(advantages.float() / beta, dim=0) * advantages.numel()


def rwr_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reward-weighted regression on per-sample losses (B,), with the samples' `rwr_weights` taken over all the
    samples of an iteration (over a batch alone, one sample would always weigh 1)."""
    return (weights.detach() * losses).mean()


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_ref: torch.Tensor, rejected_ref: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Diffusion-DPO on per-pair losses (P,) of the model and of the reference, on identical draws."""
    margin = (chosen - chosen_ref) - (rejected - rejected_ref)
    return -F.logsigmoid(-beta * margin).mean()


def add_rl_adapter(
    unet: Any, rank: int, seed: int = 0, target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
) -> None:
    """Attach the `rl` LoRA (B = 0: at first exactly the base) on the attention projections; only it trains."""
    from peft import LoraConfig

    with torch.random.fork_rng(devices=[]):  # peft draws LoRA A from the global RNG
        torch.default_generator.manual_seed(seed)  # the CPU's alone: manual_seed reseeds the GPUs too
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), lora_dropout=0.0),
                         adapter_name=ADAPTER_NAME)


def lora_parameters(unet: Any) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in unet.named_parameters() if f".{ADAPTER_NAME}." in name}


def _lora_layers(unet: Any) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield name, module


def delta_penalty(unet: Any) -> torch.Tensor:
    """Σ‖ΔW‖² over the adapted projections: how far the adapter has moved the weights from the reference."""
    total = torch.zeros(())
    for _, layer in _lora_layers(unet):
        total = total + layer.get_delta_weight(ADAPTER_NAME).float().pow(2).sum()
    return total


@contextmanager
def reference(unet: Any) -> Iterator[None]:
    """The reference model: the adapter switched off for the duration."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def merged_copy(model: Any) -> Any:
    """A copy of the world model with the `rl` adapter folded into its weights and removed: a plain model that
    generates as the finetuned one does and saves with `save_pretrained`."""
    merged = copy.deepcopy(model)
    unet = merged.unet
    for name, layer in list(_lora_layers(unet)):
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent, _, attribute = name.rpartition(".")
        setattr(unet.get_submodule(parent), attribute, layer.get_base_layer())
    if hasattr(unet, "peft_config"):  # what diffusers' PeftAdapterMixin reads to tell adapters are attached
        del unet.peft_config
    unet._hf_peft_config_loaded = False
    return merged.eval()
