"""Episodic memory: keep an episode's chunks consistent beyond the world model's context window.

One interface (`EpisodicMemory`: reset / condition / generate / update / update_async / wait / state_dict /
load_state_dict / snapshot / restore / save / load / close), three strategies picked by `MemoryConfig.kind`
(`memory=none|anchor|temp_lora`): `NoMemory`, `AnchorFrameMemory` and `TempLoRAMemory`.

```python
from vplan.memory import MemoryConfig, make_memory

memory = make_memory(MemoryConfig(kind="temp_lora"), world_model)
memory.reset()
chunk = memory.generate(history, ["pick up the red cube"])
memory.update_async(history[:, -8:], chunk)  # runs while the chunk is executed; the next generate waits
```
"""

from vplan.memory.base import EpisodicMemory, MemorySnapshot
from vplan.memory.config import ATTENTION_PROJECTIONS, KINDS, UPDATE_ON, MemoryConfig
from vplan.memory.factory import make_memory, memory_class

__all__ = [
    "ATTENTION_PROJECTIONS",
    "KINDS",
    "UPDATE_ON",
    "AnchorFrameMemory",
    "EpisodicMemory",
    "MemoryConfig",
    "MemorySnapshot",
    "NoMemory",
    "TempLoRAMemory",
    "make_memory",
    "memory_class",
]


def __getattr__(name: str):
    """The strategy classes, imported on first use (Temp-LoRA's module pulls in peft)."""
    if name in ("NoMemory", "AnchorFrameMemory"):
        from vplan.memory import baselines

        return getattr(baselines, name)
    if name == "TempLoRAMemory":
        from vplan.memory.temp_lora import TempLoRAMemory

        return TempLoRAMemory
    raise AttributeError(f"module 'vplan.memory' has no attribute {name!r}")
