"""The blockworld's MuJoCo scene and its offscreen renderer.

MuJoCo only renders here (the agent moves kinematically, envs/blockworld/motion.py). The scene is compiled
once per env: the static part from assets/blockworld.xml, plus one textured mesh geom per face material
(envs/blockworld/textures.py), each with room for a fixed number of quads. At every reset the new world's
quads are written into those meshes in place and uploaded to the GL context (`mjr_uploadMesh`), which costs a
few milliseconds, where compiling a model and making a new GL context would cost ~0.2 s. Unused room holds
zero-area quads, which rasterise to nothing. A world with more quads than there is room for rebuilds the
scene with more room (room is the first world's count plus half, and only grows: a few rebuilds an env's life).
"""

from __future__ import annotations

import math
from importlib import resources

import mujoco
import numpy as np

from vplan.envs.blockworld.meshing import MaterialMesh
from vplan.envs.blockworld.textures import FACE_MATERIALS, TEXTURE_SIZE, make_texture
from vplan.envs.settings import make_gl_context

EYE_HEIGHT = 1.62  # camera above the agent's feet (blocks), as in Minecraft
CAMERA_PITCH = -10.0  # degrees; slightly down, so more of the 64x64 view shows the ground
FOG_START, FOG_END = 12.0, 28.0  # blocks from the eye
NEAR_PLANE = 0.08  # blocks from the eye: nearer than a wall the agent can stand at (0.3 blocks)
MIN_ROOM = 64  # quads of room per material at least


def heading_quat(heading: float, pitch: float = CAMERA_PITCH) -> np.ndarray:
    """wxyz orientation of a camera looking along `heading` (degrees clockwise from +x seen from above) and
    `pitch` (degrees, up positive): MuJoCo cameras look along their -z axis with +y up."""
    yaw, tilt = math.radians(-heading), math.radians(pitch)
    forward = np.array([math.cos(tilt) * math.cos(yaw), math.cos(tilt) * math.sin(yaw), math.sin(tilt)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    up = np.cross(right, forward)
    matrix = np.stack([right, up, -forward], axis=1)  # columns: the camera's axes in the world
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, matrix.ravel())
    return quat


def _quad_faces(quads: int) -> np.ndarray:
    first = 4 * np.arange(quads)
    return np.concatenate(
        [np.stack([first, first + 1, first + 2], 1), np.stack([first, first + 2, first + 3], 1)]
    ).reshape(2, quads, 3).transpose(1, 0, 2).reshape(-1, 3)  # quad q -> faces 2q, 2q + 1


def build_scene(room: dict[str, int], world_size: int, image_size: int) -> mujoco.MjModel:
    """Compile the scene with `room[material]` quads of room in each material's mesh (all zero-area)."""
    xml = resources.files("vplan.envs").joinpath("assets", "blockworld.xml").read_text()
    spec = mujoco.MjSpec.from_string(xml)
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, image_size)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, image_size)
    spec.stat.extent = float(world_size)
    spec.stat.center = [world_size / 2, world_size / 2, 0.0]
    spec.visual.map.fogstart = FOG_START / world_size
    spec.visual.map.fogend = FOG_END / world_size
    spec.visual.map.znear = NEAR_PLANE / world_size  # MuJoCo scales these by the extent, as the fog's
    for name in FACE_MATERIALS:
        texture = spec.add_texture(
            name=name, type=mujoco.mjtTexture.mjTEXTURE_2D, width=TEXTURE_SIZE, height=TEXTURE_SIZE, nchannel=3
        )
        texture.data = make_texture(name).tobytes()
        material = spec.add_material(name=name, specular=0.0, shininess=0.0, reflectance=0.0)
        material.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = name
        quads = room[name]
        # One real unit quad far below the world keeps the compiler's area and inertia checks happy; the rest
        # is zero-area. All of it is overwritten at the first upload.
        vertices = np.zeros((4 * quads, 3))
        vertices[:4] = [[0, 0, -100], [1, 0, -100], [1, 1, -100], [0, 1, -100]]
        mesh = spec.add_mesh(name=name)
        mesh.uservert = vertices.ravel().tolist()
        mesh.usernormal = np.tile([0.0, 0.0, 1.0], 4 * quads).tolist()
        mesh.usertexcoord = np.zeros(8 * quads).tolist()
        mesh.userface = _quad_faces(quads).ravel().tolist()
        mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
        spec.worldbody.add_geom(
            name=name, type=mujoco.mjtGeom.mjGEOM_MESH, meshname=name, material=name, contype=0, conaffinity=0
        )
    model = spec.compile()
    for name in FACE_MATERIALS:  # the compiler moved each mesh to its centroid: put the frames back
        geom = model.geom(name).id
        model.geom_pos[geom] = 0.0
        model.geom_quat[geom] = (1.0, 0.0, 0.0, 0.0)
        mesh = model.mesh(name).id
        faces = model.mesh_face[model.mesh_faceadr[mesh] : model.mesh_faceadr[mesh] + model.mesh_facenum[mesh]]
        if not np.array_equal(faces, _quad_faces(room[name])):
            raise RuntimeError(f"mujoco {mujoco.__version__} reordered the faces of mesh {name!r}; cannot update it")
    return model


def write_meshes(model: mujoco.MjModel, meshes: dict[str, MaterialMesh]) -> None:
    """Overwrite each material mesh's vertices, normals and texture coordinates with the world's quads."""
    for name in FACE_MATERIALS:
        mesh, quads = model.mesh(name).id, meshes[name]
        n = 4 * quads.quads
        vert = slice(model.mesh_vertadr[mesh], model.mesh_vertadr[mesh] + model.mesh_vertnum[mesh])
        normal = slice(model.mesh_normaladr[mesh], model.mesh_normaladr[mesh] + model.mesh_normalnum[mesh])
        texcoord = slice(model.mesh_texcoordadr[mesh], model.mesh_texcoordadr[mesh] + model.mesh_texcoordnum[mesh])
        if n > model.mesh_vertnum[mesh]:
            raise ValueError(f"mesh {name!r}: room for {model.mesh_vertnum[mesh] // 4} quads, got {quads.quads}")
        model.mesh_vert[vert] = 0.0
        model.mesh_vert[vert][:n] = quads.vertices
        model.mesh_normal[normal] = (0.0, 0.0, 1.0)
        model.mesh_normal[normal][:n] = quads.normals
        model.mesh_texcoord[texcoord] = 0.0
        # MuJoCo samples textures with v growing from the image's last row up; rows are stored top first
        model.mesh_texcoord[texcoord][:n] = quads.texcoords
        model.mesh_texcoord[texcoord][:n, 1] *= -1.0


def room_for(meshes: dict[str, MaterialMesh], model: mujoco.MjModel | None = None) -> dict[str, int]:
    """Quads of room per material for a scene that must hold `meshes`: their count plus half, at least MIN_ROOM,
    and never less than `model` (the scene being replaced) has, so a rebuild only grows the room: sized to one
    world alone, it shrank the other materials' and worlds that fitted before rebuilt again (1 reset in 5)."""
    room = {name: max(MIN_ROOM, mesh.quads + mesh.quads // 2) for name, mesh in meshes.items()}
    if model is not None:
        room = {name: max(quads, int(model.mesh_vertnum[model.mesh(name).id]) // 4) for name, quads in room.items()}
    return room


def fits(model: mujoco.MjModel, meshes: dict[str, MaterialMesh]) -> bool:
    return all(4 * meshes[name].quads <= model.mesh_vertnum[model.mesh(name).id] for name in FACE_MATERIALS)


def _current(context: mujoco.GLContext) -> mujoco.GLContext:
    context.make_current()
    return context


class SceneRenderer:
    """An offscreen GL context rendering the agent's camera, whose meshes can be re-uploaded in place."""

    def __init__(self, model: mujoco.MjModel, size: int) -> None:
        self.size = size
        self._viewport = mujoco.MjrRect(0, 0, size, size)
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._pixels = np.empty((size, size, 3), np.uint8)
        self._context: mujoco.MjrContext | None = None

        def open_gl() -> mujoco.GLContext:
            self._gl = _current(mujoco.GLContext(size, size))
            try:
                self.set_model(model)  # a backend without its GL library (glfw headless) fails here, not above
            except BaseException:
                self._gl.free()
                raise
            return self._gl

        make_gl_context(open_gl)

    def set_model(self, model: mujoco.MjModel) -> None:
        """Use a (re)built scene: a new GL-side context for it (its textures and meshes uploaded)."""
        self._gl.make_current()
        if self._context is not None:
            self._context.free()
        self.model = model
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(model, maxgeom=model.ngeom + 4)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_FOG] = True
        self._camera.fixedcamid = model.camera("eye").id

    def upload_meshes(self) -> None:
        """Send the model's (rewritten) material meshes to the GL context."""
        self._gl.make_current()
        for name in FACE_MATERIALS:
            mujoco.mjr_uploadMesh(self.model, self._context, self.model.mesh(name).id)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The eye camera's (size, size, 3) uint8 image of `data` (positions already computed)."""
        self._gl.make_current()
        mujoco.mjv_updateScene(
            self.model, data, self._option, self._perturb, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._viewport, self._scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._viewport, self._context)
        return self._pixels[::-1].copy()

    def close(self) -> None:
        if self._context is not None:
            self._gl.make_current()
            self._context.free()
            self._context = None
            self._gl.free()
