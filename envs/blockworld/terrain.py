"""Seeded voxel worlds for the blockworld: rolling grass hills, stone tops, water in the hollows, oak trees.

A world is a `(size, size, height)` uint8 array of block ids, indexed `[x, y, z]`; block `(i, j, k)` fills the
unit cube `[i, i+1] x [j, j+1] x [k, k+1]` (one block is one MuJoCo length unit). Everything is drawn from the
generator it is given, so a seed gives the same world on every machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Block(enum.IntEnum):
    """Block ids stored in the voxel array (0 is empty)."""

    AIR = 0
    GRASS = 1
    DIRT = 2
    STONE = 3
    WOOD = 4
    LEAVES = 5
    WATER = 6


SOLID = np.zeros(len(Block), bool)  # blocks the agent stands on and cannot walk through (water is neither)
SOLID[[Block.GRASS, Block.DIRT, Block.STONE, Block.WOOD, Block.LEAVES]] = True

BASE_HEIGHT = 6  # mean ground level (blocks)
RELIEF = 6  # ground levels span at most BASE_HEIGHT +- RELIEF (noise keeps most within half that)
STONE_ABOVE = 3  # columns at least this far above BASE_HEIGHT are topped with stone
DIRT_DEPTH = 2  # dirt blocks under a grass top before stone
WATER_SHARE = 10  # percent of the columns (the lowest) that end below the water level
TREE_AREA = 120  # one tree per this many grass columns, on average (leaves cost the most triangles)
TRUNK_HEIGHTS = (4, 5)  # inclusive range of trunk heights
HEADROOM = 3  # layers of air kept above the highest ground and tree top
# Every world has this many layers: the highest ground level, the tallest tree with its leaves, headroom.
MAX_HEIGHT = BASE_HEIGHT + RELIEF + max(TRUNK_HEIGHTS) + 2 + HEADROOM


@dataclass(frozen=True)
class VoxelWorld:
    """A generated world: the block array, each column's ground level and the water level."""

    blocks: np.ndarray  # (size, size, height) uint8 Block ids
    ground: np.ndarray  # (size, size) int: height of the terrain column (its top is at z = ground), trees excluded
    water_level: int  # top of the water (z); columns with ground below it hold water up to it

    @property
    def size(self) -> int:
        return self.blocks.shape[0]

    @property
    def height(self) -> int:
        return self.blocks.shape[2]


def _value_noise(rng: np.random.Generator, size: int, spacing: int) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a lattice `spacing` apart, smoothstep-interpolated."""
    lattice = rng.random((size // spacing + 2, size // spacing + 2))
    position = (np.arange(size) + 0.5) / spacing
    index = position.astype(int)
    t = position - index
    t = t * t * (3 - 2 * t)
    rows = lattice[index] * (1 - t)[:, None] + lattice[index + 1] * t[:, None]  # (size, lattice)
    return rows[:, index] * (1 - t)[None, :] + rows[:, index + 1] * t[None, :]


def _plant_tree(blocks: np.ndarray, x: int, y: int, ground: int, trunk: int) -> None:
    """An oak: a trunk of `trunk` wood blocks, two 5x5 leaf layers (corners cut), a 3x3 layer, a plus on top."""
    top = ground + trunk  # first layer above the trunk
    size = blocks.shape[0]
    for dz, radius in ((-2, 2), (-1, 2), (0, 1), (1, 1)):
        z = top + dz
        for dx in range(-radius, radius + 1):
            for dy in range(-radius, radius + 1):
                corner = abs(dx) == radius and abs(dy) == radius
                if corner and (radius == 2 or dz == 1):
                    continue
                i, j = x + dx, y + dy
                if 0 <= i < size and 0 <= j < size and blocks[i, j, z] == Block.AIR:
                    blocks[i, j, z] = Block.LEAVES
    blocks[x, y, ground:top] = Block.WOOD


def generate_world(rng: np.random.Generator, size: int) -> VoxelWorld:
    """A `size` x `size` world drawn from `rng`: two octaves of value noise for the ground, stone on the
    highest columns, water filling the lowest `WATER_SHARE` percent, and oak trees on grass."""
    relief = 0.7 * _value_noise(rng, size, 16) + 0.3 * _value_noise(rng, size, 8)
    ground = np.rint(BASE_HEIGHT + (relief - 0.5) * 2 * RELIEF).astype(int).clip(1, BASE_HEIGHT + RELIEF)
    water_level = int(np.percentile(ground, WATER_SHARE))
    height = MAX_HEIGHT

    z = np.arange(height)[None, None, :]
    column = ground[:, :, None]
    blocks = np.zeros((size, size, height), np.uint8)
    blocks[z < column] = Block.STONE
    blocks[(z >= column - 1 - DIRT_DEPTH) & (z < column)] = Block.DIRT
    top = (z == column - 1) & (column >= water_level)  # not under water: a grass top, or stone up high
    blocks[top & (column < BASE_HEIGHT + STONE_ABOVE)] = Block.GRASS
    blocks[top & (column >= BASE_HEIGHT + STONE_ABOVE)] = Block.STONE
    blocks[(z >= column) & (z < water_level)] = Block.WATER

    grass = np.argwhere(blocks[np.arange(size)[:, None], np.arange(size)[None, :], ground - 1] == Block.GRASS)
    count = rng.binomial(len(grass), 1 / TREE_AREA) if len(grass) else 0
    taken = np.zeros((size, size), bool)
    for index in rng.permutation(len(grass))[:count]:
        x, y = grass[index]
        if taken[max(0, x - 2) : x + 3, max(0, y - 2) : y + 3].any():
            continue  # keep trees apart: each canopy on its own
        trunk = int(rng.integers(TRUNK_HEIGHTS[0], TRUNK_HEIGHTS[1] + 1))
        _plant_tree(blocks, int(x), int(y), int(ground[x, y]), trunk)
        taken[x, y] = True
    return VoxelWorld(blocks=blocks, ground=ground, water_level=water_level)
