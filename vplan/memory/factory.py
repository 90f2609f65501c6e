"""`make_memory(MemoryConfig(kind=...), world_model)`: the memory strategy a config names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vplan.memory.base import EpisodicMemory
from vplan.memory.config import KINDS, MemoryConfig

if TYPE_CHECKING:
    from vplan.worldmodel.model import WorldModel


def memory_class(kind: str) -> type[EpisodicMemory]:
    """The class of a memory kind (Temp-LoRA's module, which needs peft, is imported only when asked for)."""
    if kind == "temp_lora":
        from vplan.memory.temp_lora import TempLoRAMemory

        return TempLoRAMemory
    from vplan.memory.baselines import AnchorFrameMemory, NoMemory

    classes = {"none": NoMemory, "anchor": AnchorFrameMemory}
    if kind not in classes:
        raise ValueError(f"expected a memory kind in {KINDS}, got {kind!r}")
    return classes[kind]


def make_memory(config: MemoryConfig, world_model: WorldModel) -> EpisodicMemory:
    """The memory of `config.kind` for `world_model`, reset for a first episode."""
    if not isinstance(config, MemoryConfig):
        raise ValueError(f"expected a MemoryConfig, got {type(config).__name__}")
    return memory_class(config.kind)(config, world_model)
