"""Temp-LoRA: SlowFast-VGen's fast learning (§3.2, Algorithm 1a), episodic memory in a temporary LoRA.

After every chunk a peft LoRA adapter named `temp_lora` on the UNet's attention projections takes a few Adam
steps on the paper's eq. 3: the previous chunk and the new chunk are concatenated into one sequence, the whole
sequence is noised (no clean conditioning frames), and the world model's own objective (ε-prediction or flow
matching, whichever it was trained with) is scored on every frame. No text: the cross-attention gets the null
condition (the empty text's encoding, computed once when the memory is built), so the memory is action-agnostic
and remembers what the episode looked like, not what was asked. Only the adapter learns: the optimizer holds
only LoRA parameters and gradients are taken only for them (`backward(inputs=...)`), so the base weights never
change and never get a `.grad`. `MemoryConfig.replay_first` (off by default; not in the paper) adds, to every
update after an episode's first, the loss of that first update's sequence (the real context and the first chunk),
so the adapter keeps rehearsing the scene the episode started in.

The adapter is added with diffusers' `PeftAdapterMixin.add_adapter` (`vplan.worldmodel.unet.UNet3D`). Until the
first update of an episode it is out of the way, so a fresh or `reset()` memory generates with exactly the base
model (bit for bit); `reset()` also puts back the adapter's initial weights (LoRA B = 0), a fresh Adam and the
update noise seed. `close()` removes the adapter (diffusers' `unload_lora`), after which
`WorldModel.save_pretrained` works again; while the adapter is attached it refuses, by design. The adapter
alone is saved with `save(path)`: a safetensors file of peft's LoRA state dict (`get_peft_model_state_dict`).

Generation with the adapter (`MemoryConfig.merge_for_generation`, on by default): peft's unmerged forward adds
two rank-r matmuls to every attention projection at every denoising step (~15% of a chunk with the default
UNet), and its wrapper modules alone slow diffusers' per-forward module walks by ~10%. Instead, `condition()`
folds the adapter in: each wrapped projection's base weight is copied aside, `W + ΔW` (peft's
`get_delta_weight`) is written in place, and the projection itself goes back in the wrapper's place in the
module tree; every method that trains, changes or reads the adapter (update, reset, load_state_dict,
restore, close) first copies the base weights back, bit for bit, and puts the wrappers back where training
needs them. So between a `condition()` and the next update the UNet's attention weights hold base + LoRA
(what the model is, with its memory), and at every other time exactly the base. Before the first update of
an episode, generation runs the base module tree itself.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vplan.errors import RunError, SettingMismatchError
from vplan.memory.base import EpisodicMemory, check_state
from vplan.memory.config import ATTENTION_PROJECTIONS, MemoryConfig

if TYPE_CHECKING:
    from pathlib import Path

    from vplan.worldmodel.config import DiffusionConfig
    from vplan.worldmodel.model import WorldModel
    from vplan.worldmodel.unet import UNet3D

ADAPTER_NAME = "temp_lora"


def sequence_diffusion_loss(
    unet: UNet3D,
    latents: torch.Tensor,
    null_states: torch.Tensor,
    config: DiffusionConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 3: the denoising loss of the whole latent sequence (B, T, C, h, w), all of it noised, null text.

    One noise level per sample for the whole sequence (`add_training_noise`, as in `masked_diffusion_loss`, which
    needs a clean context and so cannot serve here).
    """
    from vplan.worldmodel.diffusion import add_training_noise

    if latents.ndim != 5 or latents.shape[1] < 1:
        raise ValueError(f"expected latents of shape (B, T >= 1, C, h, w), got {tuple(latents.shape)}")
    noisy, goal, unet_timesteps, _ = add_training_noise(latents, config, generator)
    states = null_states.to(device=latents.device, dtype=latents.dtype).expand(latents.shape[0], -1, -1)
    prediction = unet.predict(noisy, unet_timesteps, states)
    return F.mse_loss(prediction.float(), goal.float())


@contextmanager
def checkpointed(unet: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every resnet, temporal conv and (spatial or temporal) transformer of `unet` runs under
    `torch.utils.checkpoint` (non-reentrant): only its inputs are kept for backward, its insides are recomputed.

    diffusers' 3D UNet blocks have no gradient-checkpointing path of their own (`enable_gradient_checkpointing`
    refuses `UNet3DConditionModel`), so the modules' `forward` is wrapped on the instances for the duration and
    unwrapped after; nothing else about the UNet changes.
    """
    if not enabled:
        yield
        return
    from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
    from torch.utils.checkpoint import checkpoint

    kinds = (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel)
    wrapped = [module for module in unet.modules() if isinstance(module, kinds)]
    # an instance's own forward (a hook a library installed so, as accelerate's) is wrapped and put back as it was
    own = {id(module): vars(module)["forward"] for module in wrapped if "forward" in vars(module)}
    for module in wrapped:
        # preserve_rng_state=False: the forward draws nothing, and saving and setting the process-wide generator
        # from this worker thread would rewind draws the main thread makes meanwhile
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False, preserve_rng_state=False)
    try:
        yield
    finally:
        for module in wrapped:
            if id(module) in own:
                module.forward = own[id(module)]
            else:
                del module.forward


def _lora_config(config: MemoryConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank, lora_alpha=config.lora_alpha, target_modules=list(config.target_modules), lora_dropout=0.0
    )


def check_target_modules(config: MemoryConfig, unet: torch.nn.Module, setting: str = "target_modules") -> None:
    """Refuse target modules that match nothing or something other than a Linear layer, before peft starts
    wrapping (a failure halfway would leave the UNet half-adapted), and in commands before any work or record
    (`setting` names them there: memory.target_modules)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    lora = _lora_config(config)
    matched = {name: module for name, module in unet.named_modules() if name and check_target_module_exists(lora, name)}
    if not matched:
        raise SettingMismatchError(f"{setting}: expected names of modules in the UNet (e.g. "
                                   f"{list(ATTENTION_PROJECTIONS)}), got {list(config.target_modules)}, which match "
                                   "none")
    others = sorted(name for name, module in matched.items() if type(module) is not torch.nn.Linear)
    if others:
        more = " ..." if len(others) > 3 else ""
        raise SettingMismatchError(f"{setting}: expected them to match Linear layers only, got "
                                   f"{list(config.target_modules)} matching {others[:3]}{more}")


class TempLoRAMemory(EpisodicMemory):
    """A LoRA adapter on the UNet that learns the episode chunk by chunk (see the module docstring)."""

    kind = "temp_lora"

    def __init__(self, config: MemoryConfig, world_model: WorldModel) -> None:
        super().__init__(config, world_model)
        unet = world_model.unet
        if any(p.is_inference() for p in unet.parameters()):
            raise ValueError("expected a world model whose weights can be trained through, got one built or loaded "
                             "inside torch.inference_mode() (its tensors can never take part in a backward pass); "
                             "build it outside, or under torch.no_grad()")
        # The adapter and its copies are trainable tensors even for a caller in inference mode (whose updates
        # leave it, see EpisodicMemory.update): made in it, they are inference tensors, and the first update fails.
        with torch.inference_mode(False):
            self._add_adapter(config, world_model)
        self._generator = torch.Generator(device=next(unet.parameters()).device)
        self._first_sequence: torch.Tensor | None  # what `replay_first` rehearses; set by _reset
        self._optimizer: torch.optim.Optimizer
        self._active = False
        self._updates = 0
        self._reset()

    def _add_adapter(self, config: MemoryConfig, world_model: WorldModel) -> None:
        from peft.tuners.lora import LoraLayer

        unet = world_model.unet
        adapters = sorted(getattr(unet, "peft_config", None) or {})
        if ADAPTER_NAME in adapters:
            raise ValueError(f"expected a UNet without a {ADAPTER_NAME!r} adapter, got one already attached; close() "
                             "the memory that added it first")
        if adapters:  # add_adapter would switch it off, and closing would leave empty wrappers behind
            raise ValueError(f"expected a UNet without adapters, got {adapters}; merge them into the weights first "
                             "(peft's merge_and_unload, or vplan.rl.objectives.merged_copy)")
        # By parameter, not name: the adapter renames a wrapped layer's weight (`to_q.base_layer.weight`).
        self._requires_grad = [(p, p.requires_grad) for p in unet.parameters()]
        lora = _lora_config(config)
        check_target_modules(config, unet)
        # peft draws LoRA A's initial weights from the global RNG: seed it from the config, leave the caller's alone.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(config.seed)  # the CPU's alone: manual_seed reseeds the GPUs too
            unet.add_adapter(lora, adapter_name=ADAPTER_NAME)
        # add_adapter freezes everything but adapters; give the base its flags back (gradients are taken for the
        # LoRA parameters only, see _update), so the memory leaves the world model as it found it.
        self._give_back_requires_grad()
        self._params = {name: p for name, p in unet.named_parameters() if f".{ADAPTER_NAME}." in name}
        self._initial = {name: p.detach().clone() for name, p in self._params.items()}
        # Each wrapped projection: its parent module and attribute, so the wrapper can be swapped out and back.
        self._layers: dict[str, tuple[torch.nn.Module, str, Any]] = {}
        for name, module in unet.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                parent, _, attribute = name.rpartition(".")
                self._layers[name] = (unet.get_submodule(parent), attribute, module)
        self._base_weights = {name: layer.get_base_layer().weight.detach().clone()
                              for name, (_, _, layer) in self._layers.items()}
        self._attached, self._folded = True, False
        with torch.no_grad():
            self._null_states = world_model.encode_text([""])[0].detach()

    @property
    def active(self) -> bool:
        """Whether the adapter holds anything learned (and so is used for generation)."""
        return self._active

    @property
    def updates(self) -> int:
        """Updates since the last reset."""
        return self._updates

    @property
    def folded(self) -> bool:
        """Whether the adapter is folded into the attention weights right now (see the module docstring)."""
        return self._folded

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The adapter's parameters by name in the UNet: the only ones an update changes."""
        return dict(self._params)

    def _give_back_requires_grad(self) -> None:
        for parameter, flag in self._requires_grad:
            parameter.requires_grad_(flag)

    # -- the adapter's states --------------------------------------------------------------------------------
    #
    # attached: peft's LoRA wrappers sit in the UNet (training, the unmerged forward, peft's state-dict tools);
    # detached: the wrapped projections themselves sit there, so the UNet is its base module tree and runs at
    # exactly the base cost (with wrappers, diffusers' per-forward module walks alone cost ~10% of a chunk);
    # folded: detached, with W + ΔW written into the projections' weights.

    def _attach(self, attached: bool) -> None:
        if self._attached == attached:
            return
        for parent, attribute, layer in self._layers.values():
            setattr(parent, attribute, layer if attached else layer.get_base_layer())
        self._attached = attached

    def _enable(self) -> None:
        """The adapter on in every wrapper (peft's `set_adapter` also marks its parameters trainable)."""
        for _, _, layer in self._layers.values():
            layer.set_adapter(ADAPTER_NAME)
            layer.enable_adapters(True)

    @torch.no_grad()
    def _fold(self) -> None:
        """Base weights aside, `W + ΔW` in place, wrappers out: generation at the base model's cost."""
        if self._folded:
            return
        self._attach(False)
        for name, (_, _, layer) in self._layers.items():
            self._base_weights[name].copy_(layer.get_base_layer().weight)
        self._folded = True
        try:
            for _, _, layer in self._layers.values():
                weight = layer.get_base_layer().weight
                weight.add_(layer.get_delta_weight(ADAPTER_NAME).to(weight.dtype))
        except BaseException:  # Ctrl-C, out of memory: half the layers hold W + ΔW; the next fold starts over
            self._unfold()
            raise

    @torch.no_grad()
    def _unfold(self) -> None:
        """Copy the base weights back (bit-exact): the state every update, reset and save starts from."""
        if not self._folded:
            return
        for name, (_, _, layer) in self._layers.items():
            layer.get_base_layer().weight.copy_(self._base_weights[name])
        self._folded = False

    # -- EpisodicMemory --------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._unfold()
        with torch.no_grad():
            for name, parameter in self._params.items():
                parameter.copy_(self._initial[name])
        self._start_learning(active=False)
        self._attach(False)  # nothing learned: the base model, module for module

    def _start_learning(self, active: bool) -> None:
        """Learning from the adapter as it is now, as after a reset: a fresh Adam, the noise seed, no update yet
        (so `replay_first` rehearses the next sequence learned)."""
        self._optimizer = torch.optim.Adam(list(self._params.values()), lr=self.config.lr)
        self._generator.manual_seed(self.config.seed)
        self._active, self._updates, self._first_sequence = active, 0, None

    def _condition(self, history: torch.Tensor) -> torch.Tensor:
        if not self._active:
            self._unfold()
            self._attach(False)
        elif self.config.merge_for_generation:
            self._fold()
        else:
            self._unfold()
            self._attach(True)
            self._enable()
        return history

    def _update(self, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
        start = time.perf_counter()
        unet = self.world_model.unet
        parameter = next(unet.parameters())
        sequence = torch.cat([previous, new], dim=1).to(device=parameter.device, dtype=parameter.dtype)
        params = list(self._params.values())
        self._unfold()
        self._attach(True)
        self._enable()
        sequences = [sequence]
        if self.config.replay_first:
            if self._updates == 0:
                self._first_sequence = sequence
            elif self._first_sequence is not None:
                sequences.append(self._first_sequence)
        losses = []
        modes = [(module, module.training) for module in unet.modules()]  # given back as they were, mixed ones too
        unet.eval()  # the temporal convolutions' dropout would make the update random (and its recompute differ)
        try:
            with torch.enable_grad(), checkpointed(unet, self.config.gradient_checkpointing):
                for _ in range(self.config.steps_per_chunk):
                    loss = sum(
                        sequence_diffusion_loss(unet, each, self._null_states, self.world_model.config.diffusion,
                                                generator=self._generator)
                        for each in sequences
                    ) / len(sequences)
                    if not torch.isfinite(loss):  # the next chunk would be NaN, its decoding the first error
                        raise RunError(f"memory: the Temp-LoRA loss is {loss.item()} at update {self._updates + 1}; "
                                       f"lower its lr ({self.config.lr}: memory.lr, or temp_lora.lr in eval "
                                       "consistency)")
                    self._optimizer.zero_grad(set_to_none=True)
                    loss.backward(inputs=params)
                    self._optimizer.step()
                    losses.append(loss.item())
                    if not all(bool(torch.isfinite(p).all()) for p in params):  # a finite loss, a step too far
                        raise RunError(f"memory: the Temp-LoRA weights are not finite after update "
                                       f"{self._updates + 1} (its loss was {loss.item():.4g}); lower its lr "
                                       f"({self.config.lr}: memory.lr, or temp_lora.lr in eval consistency)")
        finally:
            for module, mode in modes:
                module.training = mode
        self._active = True
        self._updates += 1
        return {"loss": sum(losses) / len(losses), "steps": float(len(losses)), "frames": float(sequence.shape[1]),
                "seconds": time.perf_counter() - start}

    def _nonfinite_cause(self) -> str:
        if not self._active:
            return super()._nonfinite_cause()
        return (f"a diverged Temp-LoRA, after {self._updates} update(s): lower its lr ({self.config.lr}: memory.lr, "
                "or temp_lora.lr in eval consistency)")

    def _state_dict(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        self._unfold()  # wrappers over W + ΔW would add ΔW twice in the next generation
        self._attach(True)  # peft reads the adapter from the wrappers in the module tree
        state = get_peft_model_state_dict(self.world_model.unet, adapter_name=ADAPTER_NAME)
        return {name: tensor.detach().clone() for name, tensor in state.items()}

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        unet = self.world_model.unet
        expected = self._state_dict()
        check_state(state, expected, self.kind)
        self._unfold()
        parameter = next(unet.parameters())
        state = {name: tensor.to(device=parameter.device, dtype=expected[name].dtype) for name, tensor in state.items()}
        result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"expected LoRA tensors of the {ADAPTER_NAME!r} adapter, got unexpected "
                             f"{result.unexpected_keys[:3]}")
        self._start_learning(active=True)  # from the loaded adapter, not from whatever this memory did before

    def _check_file(self, path: str | Path, state: dict[str, torch.Tensor]) -> None:
        # a file of another rank was called one of another alpha, then one of unnamed shapes
        expected = self._state_dict()
        for name, tensor in state.items():
            if name in expected and tensor.ndim >= 2 and (".lora_A." in name or ".lora_B." in name):
                rank = int(tensor.shape[0 if ".lora_A." in name else 1])  # A: (r, in, ...), B: (out, r, ...)
                if rank != self.config.rank:
                    raise ValueError(f"{path}: holds a rank-{rank} adapter ({name!r} of shape {tuple(tensor.shape)}),"
                                     f" this memory's rank is {self.config.rank}; load it into a memory of its rank "
                                     f"(memory.rank={rank})")
        super()._check_file(path, state)

    def _meaning(self) -> dict[str, str]:
        # alpha scales the update (alpha / rank) without changing a tensor's shape
        cfg = self.config
        return {"alpha": str(float(cfg.alpha if cfg.alpha is not None else cfg.rank))}

    def _snapshot(self) -> dict[str, Any]:
        return {
            "weights": {name: p.detach().clone() for name, p in self._params.items()},
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
            "generator": self._generator.get_state(),
            "active": self._active,
            "updates": self._updates,
            "first_sequence": self._first_sequence,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        check_state(state["weights"], self._params, self.kind)  # before anything changes: never half restored
        self._unfold()
        with torch.no_grad():
            for name, parameter in self._params.items():
                parameter.copy_(state["weights"][name])
        self._optimizer = torch.optim.Adam(list(self._params.values()), lr=self.config.lr)
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._generator.set_state(state["generator"])
        self._active, self._updates = state["active"], state["updates"]
        self._first_sequence = state["first_sequence"]

    def _close(self) -> None:
        self._unfold()
        self._attach(True)  # diffusers removes the adapter by finding its wrappers in the module tree
        unet = self.world_model.unet
        if set(getattr(unet, "peft_config", None) or {}) == {ADAPTER_NAME}:
            unet.unload_lora()  # puts the original modules back: state_dict keys as before the adapter
        else:
            unet.delete_adapters(ADAPTER_NAME)
        self._give_back_requires_grad()
        self._params, self._initial, self._layers, self._base_weights = {}, {}, {}, {}
