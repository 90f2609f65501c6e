"""What the simulator adapters (RLBench, MineRL) share: the missing-simulator error and image resizing.

The adapters wrap simulators that cannot be pip-installed with the rest of vplan (CoppeliaSim, Minecraft);
each adapter module imports its simulator only inside the env, so `import vplan.envs` works without them.
"""

from __future__ import annotations

import numpy as np

from vplan.errors import UsageError
from vplan.utils.import_utils import MissingExtraError


class SimulatorNotInstalledError(MissingExtraError, UsageError):
    """An adapter's simulator is missing or cannot be imported; the message names the install steps.

    An `ImportError` for library users, and a `UsageError` for the CLI (one line, exit code 2).
    """


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """A (H, W, 3) uint8 image as (size, size, 3) uint8: box-filtered when shrinking, bilinear when growing."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    from PIL import Image  # pillow comes with imageio (a core dependency)

    shrink = image.shape[0] >= size and image.shape[1] >= size
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), resample=resample))
