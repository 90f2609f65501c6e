"""Voxel world -> one triangle mesh per face material, with coplanar neighbouring faces merged into rectangles.

Rendering cost on a software rasteriser grows with the triangle count, so the visible block faces of each
material are merged: faces that touch along a row become one strip, and strips of the same extent in
consecutive rows become one rectangle (a fast greedy meshing; not always the fewest rectangles). Texture
coordinates are in block units, so a merged rectangle repeats its material's texture once per block.

Only faces the agent can see are made: faces of solid blocks next to air, and the tops of water. Faces
against water are hidden (water is drawn opaque), and so are the outer walls and the floor of the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vplan.envs.blockworld.terrain import Block, VoxelWorld
from vplan.envs.blockworld.textures import FACE_MATERIALS

# Face directions (outward normals): +x, -x, +y, -y, +z, -z.
NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)


def _face_table() -> np.ndarray:
    """(len(Block), 6) material index of each block's face in each direction, -1 where it shows none."""
    m = {name: i for i, name in enumerate(FACE_MATERIALS)}
    table = np.full((len(Block), 6), -1)
    table[Block.GRASS] = [m["grass_side"]] * 4 + [m["grass_top"], m["dirt"]]
    table[Block.DIRT] = m["dirt"]
    table[Block.STONE] = m["stone"]
    table[Block.WOOD] = [m["log_side"]] * 4 + [m["log_top"]] * 2
    table[Block.LEAVES] = m["leaves"]
    table[Block.WATER, 4] = m["water"]
    return table


FACE_TABLE = _face_table()


@dataclass(frozen=True)
class MaterialMesh:
    """The quads of one face material: 4 vertices each (counter-clockwise seen from outside)."""

    vertices: np.ndarray  # (4 * quads, 3) float
    normals: np.ndarray  # (4 * quads, 3) float
    texcoords: np.ndarray  # (4 * quads, 2) float, in blocks

    @property
    def quads(self) -> int:
        return len(self.vertices) // 4


def exposed_faces(world: VoxelWorld) -> list[np.ndarray]:
    """Per direction, an int array shaped like the world: 1 + the material of each visible face, 0 for none."""
    blocks = world.blocks
    # Outside the world counts as solid stone (no outer walls, no floor), except above it: air.
    padded = np.pad(blocks, 1, constant_values=Block.STONE)
    padded[:, :, -1] = Block.AIR
    faces = []
    for direction, normal in enumerate(NORMALS.astype(int)):
        neighbour = padded[tuple(slice(1 + n, padded.shape[a] - 1 + n) for a, n in enumerate(normal))]
        material = FACE_TABLE[blocks, direction]
        visible = (material >= 0) & (neighbour == Block.AIR)
        faces.append(np.where(visible, material + 1, 0))
    return faces


def _strips(grid: np.ndarray) -> np.ndarray:
    """Runs of equal non-zero values along the last axis of a (S, A, B) grid: rows (s, a, b0, b1, value)."""
    nonzero = grid != 0
    first = nonzero.copy()
    first[..., 1:] &= grid[..., 1:] != grid[..., :-1]
    last = nonzero.copy()
    last[..., :-1] &= grid[..., :-1] != grid[..., 1:]
    s, a, b0 = np.nonzero(first)
    b1 = np.nonzero(last)[2] + 1  # C order: the i-th run's end follows its start
    return np.stack([s, a, b0, b1, grid[s, a, b0]], axis=1)


def merge_rectangles(grid: np.ndarray) -> np.ndarray:
    """Rectangles covering the non-zero cells of a (S, A, B) grid, one value each: rows (s, a0, a1, b0, b1, value).

    Strips along B of the same extent and value in consecutive rows A of a slice S are merged.
    """
    strips = _strips(grid)
    if len(strips) == 0:
        return np.zeros((0, 6), int)
    s, a, b0, b1, value = strips.T
    order = np.lexsort((a, value, b1, b0, s))
    s, a, b0, b1, value = (column[order] for column in (s, a, b0, b1, value))
    same = (s[1:] == s[:-1]) & (b0[1:] == b0[:-1]) & (b1[1:] == b1[:-1]) & (value[1:] == value[:-1])
    starts = np.concatenate([[True], ~(same & (a[1:] == a[:-1] + 1))])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    a1 = np.zeros(len(first), int)
    np.maximum.at(a1, group, a + 1)
    return np.stack([s[first], a[first], a1, b0[first], b1[first], value[first]], axis=1)


def _quads(direction: int, rects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World corners (R, 4, 3) and texture coordinates (R, 4, 2) of the rectangles of one direction.

    The grids are laid out so that A is vertical (z) for the sides and x for the top and bottom; B is the other
    horizontal axis. Side textures run u along B and v along z; tops and bottoms u = x, v = y.
    """
    s, a0, a1, b0, b1 = (rects[:, i].astype(float) for i in range(5))
    positive = direction % 2 == 0
    plane = s + 1 if positive else s
    axis = direction // 2
    if axis == 2:  # +z / -z: (x, y) = (a, b)
        corners = [(a0, b0), (a1, b0), (a1, b1), (a0, b1)]
        points = [np.stack([x, y, plane], -1) for x, y in corners]
        uv = [np.stack([x, y], -1) for x, y in corners]
    elif axis == 0:  # +x / -x: (y, z) = (b, a)
        corners = [(b0, a0), (b1, a0), (b1, a1), (b0, a1)]
        points = [np.stack([plane, y, z], -1) for y, z in corners]
        uv = [np.stack([y, z], -1) for y, z in corners]
    else:  # +y / -y: (x, z) = (b, a)
        corners = [(b0, a0), (b0, a1), (b1, a1), (b1, a0)]
        points = [np.stack([x, plane, z], -1) for x, z in corners]
        uv = [np.stack([x, z], -1) for x, z in corners]
    points, uv = np.stack(points, 1), np.stack(uv, 1)
    if direction in (1, 3, 5):  # the negative sides face the other way: reverse the winding
        points, uv = points[:, ::-1], uv[:, ::-1]
    return points, uv


def build_meshes(world: VoxelWorld) -> dict[str, MaterialMesh]:
    """One mesh per face material (every material present, possibly with no quads)."""
    points: dict[int, list[np.ndarray]] = {m: [] for m in range(len(FACE_MATERIALS))}
    uvs: dict[int, list[np.ndarray]] = {m: [] for m in range(len(FACE_MATERIALS))}
    normals: dict[int, list[np.ndarray]] = {m: [] for m in range(len(FACE_MATERIALS))}
    for direction, faces in enumerate(exposed_faces(world)):
        axis = direction // 2
        # (S, A, B): slices along the normal; A is z for the sides, x for the top/bottom; B the remaining axis
        grid = {0: faces.transpose(0, 2, 1), 1: faces.transpose(1, 2, 0), 2: faces.transpose(2, 0, 1)}[axis]
        rects = merge_rectangles(grid)
        quad_points, quad_uv = _quads(direction, rects)
        for material in np.unique(rects[:, 5]):
            chosen = rects[:, 5] == material
            points[material - 1].append(quad_points[chosen])
            uvs[material - 1].append(quad_uv[chosen])
            normals[material - 1].append(np.broadcast_to(NORMALS[direction], (int(chosen.sum()), 4, 3)))
    meshes = {}
    for index, name in enumerate(FACE_MATERIALS):
        if points[index]:
            vertices = np.concatenate(points[index]).reshape(-1, 3)
            texcoords = np.concatenate(uvs[index]).reshape(-1, 2)
            vertex_normals = np.concatenate(normals[index]).reshape(-1, 3)
        else:
            vertices, texcoords, vertex_normals = np.zeros((0, 3)), np.zeros((0, 2)), np.zeros((0, 3))
        meshes[name] = MaterialMesh(vertices, vertex_normals, texcoords)
    return meshes
