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

from vplan.memory.config import ATTENTION_PROJECTIONS, KINDS, UPDATE_ON, MemoryConfig
from vplan.utils.import_utils import lazy_exports

# The rest is imported on first use: reading or checking a MemoryConfig imports no torch (the CLI checks every
# command's settings before it loads torch), and Temp-LoRA's module pulls in peft.
_LAZY = {
    "EpisodicMemory": "base",
    "MemorySnapshot": "base",
    "make_memory": "factory",
    "memory_class": "factory",
    "NoMemory": "baselines",
    "AnchorFrameMemory": "baselines",
    "TempLoRAMemory": "temp_lora",
}

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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
