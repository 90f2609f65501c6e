"""What a task is, independent of the simulator that runs it: its name, the env it runs on, the instruction."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TaskConfig:
    """A task preset (configs/task/*.yaml)."""

    name: str = field(metadata={"help": "Task name, as in configs/task/<name>.yaml."})
    env: str = field(metadata={"help": "The env the task is defined for (configs/env/<env>.yaml)."})
    instruction: str = field(metadata={"help": "What the user says; the planner decomposes it into subgoals."})

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError(f"task {self.name!r}: expected a non-empty instruction, got {self.instruction!r}")
