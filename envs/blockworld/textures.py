"""The blockworld's block textures, drawn in code (no image files): 16x16 pixel art in Minecraft's palette.

Each face material (a block type seen from a side) has one texture. They are the same in every world: the
noise comes from a generator seeded by the material's index, not from the env's seed.
"""

from __future__ import annotations

import numpy as np

TEXTURE_SIZE = 16  # pixels per block edge
# Face materials: what a block shows on a face. Grass and wood logs look different on top and on their sides.
FACE_MATERIALS = ("grass_top", "grass_side", "dirt", "stone", "log_side", "log_top", "leaves", "water")

_GRASS = (96, 158, 58)
_DIRT = (134, 96, 67)
_STONE = (126, 126, 126)
_BARK = (104, 82, 50)
_WOOD = (170, 138, 86)
_LEAVES = (58, 118, 38)
_WATER = (52, 92, 200)


def _speckle(rng: np.random.Generator, colour: tuple[int, int, int], spread: float) -> np.ndarray:
    """A flat colour with per-pixel brightness noise (the whole RGB scaled together), as float."""
    shade = 1.0 + rng.uniform(-spread, spread, (TEXTURE_SIZE, TEXTURE_SIZE, 1))
    return np.asarray(colour, float) * shade


def _grass_top(rng: np.random.Generator) -> np.ndarray:
    return _speckle(rng, _GRASS, 0.16)


def _dirt(rng: np.random.Generator) -> np.ndarray:
    image = _speckle(rng, _DIRT, 0.12)
    specks = rng.random((TEXTURE_SIZE, TEXTURE_SIZE)) < 0.12
    image[specks] *= 0.7  # darker pebbles
    return image


def _grass_side(rng: np.random.Generator) -> np.ndarray:
    """Dirt with a ragged band of grass along the top edge (row 0 is the top of the block)."""
    image = _dirt(rng)
    depth = rng.integers(2, 5, TEXTURE_SIZE)  # grass reaches 2-4 pixels down, per column
    grass = _grass_top(rng)
    rows = np.arange(TEXTURE_SIZE)[:, None]
    band = rows < depth[None, :]
    image[band] = grass[band]
    return image


def _stone(rng: np.random.Generator) -> np.ndarray:
    image = _speckle(rng, _STONE, 0.1)
    for _ in range(5):  # darker cracks: short horizontal streaks
        row, col, length = rng.integers(0, TEXTURE_SIZE), rng.integers(0, TEXTURE_SIZE), rng.integers(2, 6)
        image[row, col : col + length] *= 0.72
    return image


def _log_side(rng: np.random.Generator) -> np.ndarray:
    """Bark: vertical stripes of darker and lighter brown."""
    stripes = 1.0 + 0.22 * np.sin(np.arange(TEXTURE_SIZE) * 1.9 + rng.uniform(0, np.pi))
    return _speckle(rng, _BARK, 0.08) * stripes[None, :, None]


def _log_top(rng: np.random.Generator) -> np.ndarray:
    """Cut wood: square growth rings inside a rim of bark."""
    centre = (TEXTURE_SIZE - 1) / 2
    index = np.arange(TEXTURE_SIZE)
    ring = np.maximum(np.abs(index[:, None] - centre), np.abs(index[None, :] - centre)).astype(int)
    image = _speckle(rng, _WOOD, 0.06) * np.where(ring % 3 == 0, 0.8, 1.0)[..., None]
    rim = ring >= TEXTURE_SIZE // 2 - 1
    image[rim] = _speckle(rng, _BARK, 0.08)[rim]
    return image


def _leaves(rng: np.random.Generator) -> np.ndarray:
    image = _speckle(rng, _LEAVES, 0.25)
    holes = rng.random((TEXTURE_SIZE, TEXTURE_SIZE)) < 0.15
    image[holes] *= 0.45  # gaps between the leaves look dark
    return image


def _water(rng: np.random.Generator) -> np.ndarray:
    image = _speckle(rng, _WATER, 0.05)
    rows = np.arange(TEXTURE_SIZE)[:, None]
    cols = np.arange(TEXTURE_SIZE)[None, :]
    ripple = np.sin(cols * 0.8 + rows * 0.4 + rng.uniform(0, np.pi)) > 0.85
    image[ripple] = image[ripple] * 0.6 + 255 * 0.4  # light wave crests
    return image


_MAKERS = {
    "grass_top": _grass_top,
    "grass_side": _grass_side,
    "dirt": _dirt,
    "stone": _stone,
    "log_side": _log_side,
    "log_top": _log_top,
    "leaves": _leaves,
    "water": _water,
}


def make_texture(material: str) -> np.ndarray:
    """The (TEXTURE_SIZE, TEXTURE_SIZE, 3) uint8 texture of a face material; row 0 is the top of a side face."""
    if material not in _MAKERS:
        raise ValueError(f"material: expected one of {FACE_MATERIALS}, got {material!r}")
    rng = np.random.default_rng(FACE_MATERIALS.index(material))
    return np.clip(np.rint(_MAKERS[material](rng)), 0, 255).astype(np.uint8)
