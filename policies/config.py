"""The inverse-dynamics policy's settings, apart from the model that builds them, so that reading or checking them
imports no torch (the CLI checks every command's settings before it loads torch)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from vplan.utils.settings import check_field_types
from vplan.worldmodel.config import config_from_dict

CHECKPOINT_KIND = "vplan-idm"  # config.json's "kind", read by the CLI's checks before torch loads
ADDED_LATER = ("num_moves",)  # settings a checkpoint's config.json may lack: their defaults mean what it meant


@dataclass
class IDMConfig:
    """Architecture and loss of the inverse-dynamics CNN; the defaults are the tabletop's (64×64, 4-d action)."""

    image_size: int = field(default=64, metadata={"help": "Height and width of the frames (pixels)."})
    action_dim: int = field(default=4, metadata={"help": "Size of the env's action vector."})
    history_frames: int = field(
        default=1,
        metadata={"help": "Frames up to t the IDM sees (t-h+1 .. t) besides frame t+1; missing ones before an "
                  "episode's first frame repeat it."},
    )
    channels: tuple[int, ...] = field(
        default=(16, 32, 64, 128),
        metadata={"help": "Channels per level; each level halves the size with a stride-2 convolution."},
    )
    hidden_dim: int = field(default=256, metadata={"help": "Width of the MLP head on the flattened last map."})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups; divides every channel count."})
    binary_gripper: bool = field(
        default=True,
        metadata={"help": "The last action dimension is a grip command (> 0 closes): a logit trained with BCE, "
                  "predicted as ±1."},
    )
    gripper_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the grip BCE against the MSE."})
    num_moves: int = field(
        default=0,
        metadata={"help": "0: the env's action is a vector of action_dim values; N > 0: one of N discrete moves "
                  "(the blockworld: 5), read by classification (action_dim becomes 1, binary_gripper false)."},
    )

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)  # YAML and JSON give a list
        check_field_types(self)  # a hand-edited config.json: image_size 16.0 was a torch TypeError at build
        if isinstance(self.num_moves, bool) or not isinstance(self.num_moves, int) or self.num_moves < 0:
            raise ValueError(f"num_moves: expected an int >= 0 (0: continuous actions), got {self.num_moves!r}")
        if self.num_moves:  # one integer per step; no grip dimension
            self.action_dim, self.binary_gripper = 1, False
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ValueError(f"channels: expected positive channel counts, got {self.channels!r}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"norm_num_groups: expected a positive divisor of every channel count {self.channels}, "
                f"got {self.norm_num_groups!r}"
            )
        factor = 2 ** len(self.channels)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"image_size: expected a multiple of 2 ** len(channels) = {factor}, got {self.image_size!r}"
            )
        minimum = 2 if self.binary_gripper else 1
        if self.action_dim < minimum:
            raise ValueError(
                f"action_dim: expected an int >= {minimum} (binary_gripper={self.binary_gripper}), "
                f"got {self.action_dim!r}"
            )
        if self.history_frames < 1:
            raise ValueError(f"history_frames: expected a positive int, got {self.history_frames!r}")
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim: expected a positive int, got {self.hidden_dim!r}")
        if not (math.isfinite(self.gripper_loss_weight) and self.gripper_loss_weight >= 0):
            raise ValueError(f"gripper_loss_weight: expected a float >= 0, got {self.gripper_loss_weight!r}")

    @property
    def window(self) -> int:
        """Frames per input: `history_frames` up to t, then t+1."""
        return self.history_frames + 1

    @classmethod
    def from_dict(cls, data: Any) -> IDMConfig:
        return config_from_dict(cls, data, "the IDM config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def tiny(cls, image_size: int = 16) -> IDMConfig:
        """A few-thousand-parameter IDM for tests."""
        return cls(image_size=image_size, channels=(8, 16), hidden_dim=32, norm_num_groups=4)

    @property
    def discrete(self) -> bool:
        """Whether the env's action is one of `num_moves` discrete moves."""
        return self.num_moves > 0

    @property
    def outputs(self) -> int:
        """Network outputs: a logit per move, or one value per action dimension."""
        return self.num_moves or self.action_dim

    def action_space(self) -> Any:
        """The gymnasium space of the actions the IDM predicts: one of `num_moves` moves, or `action_dim` values in
        [-1, 1] (its env's units)."""
        import numpy as np
        from gymnasium import spaces

        if self.discrete:
            return spaces.Discrete(self.num_moves)
        return spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)


def describe_action_space(space: Any) -> str:
    """An action space as an IDM and an env must agree on it: moves numbered from 0 (a Discrete), a vector of a
    shape (a Box), or another kind of space, named."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        start = int(space.start)
        return f"one of {int(space.n)} moves" + (f" numbered from {start}" if start else "")
    shape = getattr(space, "shape", None)
    kind = "" if isinstance(space, spaces.Box) else f"{type(space).__name__} "
    return f"{kind}actions of shape {tuple(shape)}" if shape is not None else f"a {type(space).__name__} of actions"
