"""Episode datasets on disk, in the LeRobot v3.0 layout: `EpisodeWriter` appends, `EpisodeDataset` reads.

The reader (a torch Dataset) is imported on first use, so writing episodes does not import torch.
"""

from typing import Any

from vplan.data.lerobot_format import CODEBASE_VERSION, DatasetError, EpisodeWriter

__all__ = ["CODEBASE_VERSION", "EPISODE_META", "DatasetError", "EpisodeDataset", "EpisodeWriter"]


def __getattr__(name: str) -> Any:
    if name in ("EpisodeDataset", "EPISODE_META"):
        from vplan.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
