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

    @classmethod
    def preset(cls, name: str) -> TaskConfig:
        """The task preset configs/task/<name>.yaml (`return_cubes`, ...) as a TaskConfig."""
        from importlib import resources

        from omegaconf import OmegaConf

        folder = resources.files("vplan.configs") / "task"
        names = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        if name not in names:
            raise ValueError(f"task: expected a preset in {names}, got {name!r}")
        values = OmegaConf.to_container(OmegaConf.load(str(folder / f"{name}.yaml")))
        return cls(**{key: value for key, value in values.items() if key != "defaults"})
