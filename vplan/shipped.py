"""Checkpoints that ship inside the package, so `vplan run` works without training.

A checkpoint argument is either a directory or `shipped:<env>/<component>` (e.g. `shipped:tabletop/worldmodel`),
which names a directory under vplan/checkpoints/. The README gives the commands that reproduce each one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vplan.errors import UsageError

PREFIX = "shipped:"


def shipped_checkpoint(env: str, component: str) -> str:
    """The checkpoint argument naming an env's shipped component, e.g. `shipped:tabletop/worldmodel`."""
    return f"{PREFIX}{env}/{component}"


class AgentCheckpoints:
    """Mixin of the configs that load an agent (`worldmodel`, `idm` and `task` fields): unset checkpoints are the
    task's env's shipped ones."""

    @property
    def worldmodel_checkpoint(self) -> str:
        """`worldmodel`, or the task's env's shipped world model."""
        return self.worldmodel or shipped_checkpoint(self.task.env, "worldmodel")

    @property
    def idm_checkpoint(self) -> str:
        """`idm`, or the task's env's shipped IDM."""
        return self.idm or shipped_checkpoint(self.task.env, "idm")


def shipped_names() -> list[str]:
    """Every shipped checkpoint, as `<env>/<component>`."""
    root = Path(str(resources.files("vplan") / "checkpoints"))
    if not root.is_dir():
        return []
    return sorted(f"{env.name}/{c.name}" for env in root.iterdir() if env.is_dir() for c in env.iterdir() if c.is_dir())


def resolve_checkpoint(spec: str) -> Path:
    """The directory a checkpoint argument names; a clear error for an unknown shipped name."""
    if not spec.startswith(PREFIX):
        return Path(spec)
    name = spec[len(PREFIX) :]
    if name not in shipped_names():
        raise UsageError(f"no shipped checkpoint {name!r}; shipped: {', '.join(shipped_names()) or 'none'}")
    return Path(str(resources.files("vplan") / "checkpoints" / name))
