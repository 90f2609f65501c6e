"""The embedded blockworld (vplan/Blockworld-v0): a Minecraft stand-in on MuJoCo, with the `retrace` task.

One module per idea: `terrain` (seeded voxel worlds), `textures` (block textures drawn in code), `meshing`
(voxels to merged per-material meshes), `rendering` (the MuJoCo scene and its offscreen renderer), `motion`
(the agent's kinematic moves and collisions), `retrace` (the task: paths, instructions, metrics) and
`blockworld_v0` (the gymnasium env).
"""

# MuJoCo reads MUJOCO_GL once, when it is imported; the tabletop module picks a headless backend (EGL, else
# OSMesa) before importing it, so it goes first.
import vplan.envs.tabletop_v0  # noqa: F401  # isort: skip
from vplan.envs.blockworld.blockworld_v0 import TASKS, BlockworldConfig, BlockworldEnv
from vplan.envs.blockworld.retrace import INSTRUCTIONS, RETURN_INSTRUCTION

__all__ = ["INSTRUCTIONS", "RETURN_INSTRUCTION", "TASKS", "BlockworldConfig", "BlockworldEnv"]
