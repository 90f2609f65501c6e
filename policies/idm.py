"""Inverse dynamics: a small CNN that reads the action taken between two frames (frame_t, frame_t+1).

The agent turns an imagined chunk into actions with it: the world model draws the frames, the IDM says what
the robot must do to go from each frame to the next. Frames cross this module as channel-last uint8 (or float
in [0, 1]) arrays, the layout envs, datasets and the VAE use, and are normalised inside. The input stacks
`history_frames` frames up to t, frame t+1 and the difference frame_t+1 - frame_t (small motions stand out in
it) on the channel axis; stride-2 convolutions shrink it to a small map that is flattened, so where things are
in the picture is kept (the front camera shows depth as height in the image).

The action's last dimension is a grip command when `binary_gripper` is on (the tabletop: > 0 closes, <= 0
opens): it is predicted as a logit, trained with binary cross-entropy on the sign of the recorded command and
returned as ±1. The other dimensions are regressed with MSE. An env with discrete moves (the blockworld's
`Discrete(5)`) sets `num_moves`: the IDM is then a classifier over the moves (cross-entropy) and predicts the
move's integer.

A checkpoint is a directory: `config.json` (`kind`, `format_version`, the `IDMConfig`, `trained_on_env` when known) and
`model.safetensors`. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vplan.errors import UsageError
from vplan.policies.config import ADDED_LATER, CHECKPOINT_KIND, IDMConfig
from vplan.shipped import resolve_checkpoint
from vplan.utils.settings import check_int
from vplan.worldmodel.model import (
    _contiguous,
    _load_into,
    check_weights_fit,
    read_pretrained_config,
    write_pretrained_config,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class IDMInputError(UsageError, ValueError):
    """Frames the IDM cannot read (wrong size, layout or value range); the message says what it expects."""


class IDMPolicy(nn.Module):
    """(frames up to t, frame t+1) → the action taken at t.

    `predict(frames_t, frames_t1)` reads a batch of transitions; `actions_for_chunk(frames)` the actions that
    lead through a chunk of frames; `forward(batch) -> (loss, logs)` is the training entry point.
    """

    name = "idm"
    config_class = IDMConfig

    def __init__(self, config: IDMConfig) -> None:
        super().__init__()
        self.config = config
        groups = config.norm_num_groups
        layers: list[nn.Module] = []
        in_channels = 3 * config.window + 3  # the window's frames, then frame t+1 - frame t
        for channels in config.channels:
            layers += [
                nn.Conv2d(in_channels, channels, 3, stride=2, padding=1),
                nn.GroupNorm(groups, channels),
                nn.SiLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.GroupNorm(groups, channels),
                nn.SiLU(),
            ]
            in_channels = channels
        self.encoder = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channels)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * side * side, config.hidden_dim),
            nn.SiLU(),
            nn.Linear(config.hidden_dim, config.outputs),
        )

    # -- inputs

    def _check_frames(self, frames: Any, name: str, lead: str) -> torch.Tensor:
        """Frames as a tensor of shape (*lead, H, W, 3), e.g. lead "B" or "B, T", checked against the config."""
        tensor = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.array(frames))
        size = self.config.image_size
        if tensor.ndim != lead.count(",") + 4 or tensor.shape[-1] != 3:
            raise IDMInputError(
                f"{name}: expected channel-last RGB frames ({lead}, {size}, {size}, 3), got shape {tuple(tensor.shape)}"
            )
        if tuple(tensor.shape[-3:-1]) != (size, size):
            raise IDMInputError(
                f"{name}: frames of {tensor.shape[-3]}×{tensor.shape[-2]} given; this IDM reads {size}×{size}"
            )
        if tensor.dtype != torch.uint8:
            if not tensor.is_floating_point():
                raise IDMInputError(f"{name}: expected uint8 or float frames, got {tensor.dtype}")
            if not torch.isfinite(tensor).all():  # NaN passes the range check, and gave NaN moves
                raise IDMInputError(f"{name}: NaN or infinite values; expected uint8, or float values in [0, 1]")
            if tensor.numel() and (tensor.min() < 0.0 or tensor.max() > 1.0):
                raise IDMInputError(
                    f"{name}: expected uint8, or float values in [0, 1], got {tensor.dtype} values in "
                    f"[{tensor.min().item():.3g}, {tensor.max().item():.3g}]"
                )
        return tensor

    def _input(self, window: torch.Tensor) -> torch.Tensor:
        """(B, window, H, W, 3) uint8 or float in [0, 1] → network input (B, 3 * window + 3, H, W) in [-1, 1]."""
        param = next(self.parameters())
        x = window.to(device=param.device)
        x = x.to(param.dtype) / 255.0 if window.dtype == torch.uint8 else x.to(param.dtype)
        x = x.permute(0, 1, 4, 2, 3) * 2.0 - 1.0  # (B, T, 3, H, W)
        diff = x[:, -1] - x[:, -2]
        return torch.cat([x.flatten(1, 2), diff], dim=1)

    def _window(self, frames_t: Any, frames_t1: Any) -> torch.Tensor:
        """Check a batch of transitions and stack it into windows (B, history_frames + 1, H, W, 3)."""
        history = self.config.history_frames
        frames_t = self._check_frames(frames_t, "frames_t", "B" if history == 1 else "B, history_frames")
        frames_t1 = self._check_frames(frames_t1, "frames_t1", "B")
        if history == 1:
            frames_t = frames_t[:, None]
        elif frames_t.shape[1] != history:
            raise IDMInputError(
                f"frames_t: expected the last history_frames={history} frames up to t (B, {history}, H, W, 3), "
                f"got shape {tuple(frames_t.shape)}"
            )
        if len(frames_t) != len(frames_t1):
            raise IDMInputError(f"expected as many frames_t as frames_t1, got {len(frames_t)} and {len(frames_t1)}")
        if frames_t.dtype != frames_t1.dtype:
            raise IDMInputError(f"expected frames_t and frames_t1 of one dtype, got {frames_t.dtype} and {frames_t1.dtype}")
        return torch.cat([frames_t, frames_t1[:, None]], dim=1)

    # -- outputs

    def raw(self, window: torch.Tensor) -> torch.Tensor:
        """Network outputs (B, outputs) for windows (B, history_frames + 1, H, W, 3); the grip, or each move,
        as a logit."""
        window = self._check_frames(window, "window", f"B, {self.config.window}")
        if window.shape[1] != self.config.window:
            raise IDMInputError(
                f"window: expected history_frames + 1 = {self.config.window} frames per window, got shape "
                f"{tuple(window.shape)}"
            )
        return self.head(self.encoder(self._input(window)))

    @torch.no_grad()
    def predict_windows(self, window: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Env actions for windows (B, history_frames + 1, H, W, 3) (see `windows`), `batch_size` at a time:
        (B, action_dim) float clamped to [-1, 1] with the grip ±1, or with `num_moves` the moves (B,) int64."""
        return self._predict(self._check_frames(window, "window", "B, history_frames + 1"), batch_size)

    def _predict(self, window: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`predict_windows` of windows already checked (`predict` and `actions_for_chunk` check their frames)."""
        if not len(window):
            raise IDMInputError("expected at least one transition, got none")
        check_int(batch_size, "batch_size")
        raw = torch.cat([self.raw(part) for part in window.split(batch_size)]).float().cpu()
        if self.config.discrete:
            return raw.argmax(dim=1)
        if self.config.binary_gripper:
            raw[:, -1] = torch.where(raw[:, -1] > 0, 1.0, -1.0)
        return raw.clamp(-1.0, 1.0)

    @torch.no_grad()
    def predict(self, frames_t: Any, frames_t1: Any, batch_size: int = 256) -> torch.Tensor:
        """The actions (B, action_dim) taken between `frames_t` and `frames_t1`, in [-1, 1] (grip ±1), or the
        moves (B,) with `num_moves`.

        `frames_t` is (B, H, W, 3), or (B, history_frames, H, W, 3) (oldest first) with more history;
        `frames_t1` is (B, H, W, 3). uint8, or float in [0, 1]; numpy or torch.
        """
        return self._predict(self._window(frames_t, frames_t1), batch_size)

    @torch.no_grad()
    def actions_for_chunk(self, frames: Any, context: int = 1, batch_size: int = 256) -> torch.Tensor:
        """The actions (N - context, action_dim), or moves (N - context,), that lead from frame to frame through
        a chunk.

        `frames` (N, H, W, 3) is `context` real frames (at least the last one before the chunk) followed by the
        chunk's frames; action i takes frame context - 1 + i to frame context + i. History before the first
        frame repeats it.
        """
        frames = self._check_frames(frames, "frames", "N")
        check_int(context, "context")
        if not 1 <= context < len(frames):
            raise IDMInputError(
                f"expected 1 <= context < number of frames, got context={context} with {len(frames)} frames"
            )
        window = windows(frames, range(context - 1, len(frames) - 1), self.config.history_frames)
        return self._predict(window, batch_size)

    # -- training

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training entry point: `batch` holds "frames" (B, history_frames + 1, H, W, 3) and "action"
        (B, action_dim); returns `(loss, logs)`."""
        raw = self.raw(batch["frames"])
        if self.config.discrete:
            moves = batch["action"].reshape(-1).to(device=raw.device, dtype=torch.long)
            cross_entropy = F.cross_entropy(raw, moves)
            accuracy = (raw.argmax(dim=1) == moves).float().mean()
            return cross_entropy, {"ce": cross_entropy.item(), "acc": accuracy.item()}
        target = batch["action"].to(raw)
        if not self.config.binary_gripper:
            mse = F.mse_loss(raw, target)
            return mse, {"mse": mse.item()}
        mse = F.mse_loss(raw[:, :-1], target[:, :-1])
        closed = (target[:, -1] > 0).to(raw.dtype)
        bce = F.binary_cross_entropy_with_logits(raw[:, -1], closed)
        accuracy = ((raw[:, -1] > 0).to(raw.dtype) == closed).float().mean()
        loss = mse + self.config.gripper_loss_weight * bce
        return loss, {"mse": mse.item(), "bce": bce.item(), "grip_acc": accuracy.item()}

    # -- checkpoints

    def save_pretrained(
        self, path: str | Path, trained_on_env: str | None = None, action_units: dict[str, float] | None = None,
        reads_vae: str | None = None,
    ) -> None:
        """Write the checkpoint directory; config.json goes last, so a half-written one is not a checkpoint. It
        records `trained_on_env`, the env whose episodes the weights learned from, `action_units`, the env
        settings those episodes' actions were recorded under (`vplan.envs.action_units`), and `reads_vae`, the
        fingerprint (`vae_fingerprint`) of the VAE whose decodes it learned from, when given."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).unlink(missing_ok=True)
        save_file(_contiguous(self.state_dict()), path / WEIGHTS_FILE)
        write_pretrained_config(path, CHECKPOINT_KIND, FORMAT_VERSION, self.config.to_dict(), trained_on_env,
                                action_units, reads_vae)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> IDMPolicy:
        """Load a checkpoint written by `save_pretrained` (a directory or `shipped:<env>/idm`), in eval mode;
        `CheckpointError` names the file and what is wrong with it."""
        path = resolve_checkpoint(str(path))
        config = read_config(path)
        if (path / WEIGHTS_FILE).is_file():  # checked against the config before it is built (a missing one: below)
            with torch.device("meta"):
                check_weights_fit(path / WEIGHTS_FILE, cls(config))
        model = cls(config)
        _load_into(model, path / WEIGHTS_FILE)
        return model.eval()


def read_config(path: str | Path) -> IDMConfig:
    """The `IDMConfig` of a checkpoint directory, with a `CheckpointError` for anything else."""
    return read_pretrained_config(path, IDMConfig, CHECKPOINT_KIND, FORMAT_VERSION, "IDM", added_later=ADDED_LATER)


def windows(frames: torch.Tensor, steps: Any, history_frames: int) -> torch.Tensor:
    """Input windows (len(steps), history_frames + 1, H, W, 3) of one episode's frames (T, H, W, 3): for each
    t in `steps`, frames t - history_frames + 1 .. t (indices below 0 repeat frame 0), then t + 1."""
    steps = torch.as_tensor(list(steps), dtype=torch.long)
    offsets = torch.arange(-history_frames + 1, 2)
    index = (steps[:, None] + offsets[None]).clamp_min(0)
    return frames[index]
