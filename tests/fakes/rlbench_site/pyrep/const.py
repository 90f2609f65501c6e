"""Fake of pyrep/const.py (stepjam/PyRep 8f420be): the enums RLBench and vplan use, same names and members."""

from enum import Enum

from pyrep.backend import sim


class Verbosity(Enum):
    NONE = "none"
    ERRORS = "errors"
    WARNINGS = "warnings"
    LOAD_INFOS = "loadinfos"
    SCRIPT_ERRORS = "scripterrors"
    SCRIPT_WARNINGS = "scriptwarnings"
    SCRIPT_INFOS = "scriptinfos"
    INFOS = "infos"
    DEBUG = "debug"
    TRACE = "trace"
    TRACE_LUA = "tracelua"
    TYRACE_ALL = "traceall"  # sic, as in PyRep


class PrimitiveShape(Enum):
    CUBOID = 0
    SPHERE = 1
    CYLINDER = 2
    CONE = 3


class ObjectType(Enum):
    ALL = sim.sim_handle_all
    SHAPE = sim.sim_object_shape_type
    JOINT = sim.sim_object_joint_type
    DUMMY = sim.sim_object_dummy_type
    PROXIMITY_SENSOR = sim.sim_object_proximitysensor_type
    GRAPH = sim.sim_object_graph_type
    CAMERA = sim.sim_object_camera_type
    PATH = sim.sim_object_path_type
    VISION_SENSOR = sim.sim_object_visionsensor_type
    VOLUME = sim.sim_object_volume_type
    MILl = sim.sim_object_mill_type
    FORCE_SENSOR = sim.sim_object_forcesensor_type
    LIGHT = sim.sim_object_light_type
    MIRROR = sim.sim_object_mirror_type
    OCTREE = sim.sim_object_octree_type


class JointType(Enum):
    REVOLUTE = 10
    PRISMATIC = 11
    SPHERICAL = 12


class JointMode(Enum):
    PASSIVE = 0
    IK = 1
    IK_DEPENDENT = 2
    DEPENDENT = 3
    FORCE = 5


class ConfigurationPathAlgorithms(Enum):
    BiTRRT = "BiTRRT"
    BITstar = "BITstar"
    RRT = "RRT"
    RRTConnect = "RRTConnect"
    RRTstar = "RRTstar"
    SBL = "SBL"


class RenderMode(Enum):
    OPENGL = sim.sim_rendermode_opengl
    OPENGL_AUXILIARY = sim.sim_rendermode_auxchannels
    OPENGL_COLOR_CODED = sim.sim_rendermode_colorcoded
    POV_RAY = sim.sim_rendermode_povray
    EXTERNAL = sim.sim_rendermode_extrenderer
    EXTERNAL_WINDOWED = sim.sim_rendermode_extrendererwindowed
    OPENGL3 = sim.sim_rendermode_opengl3
    OPENGL3_WINDOWED = sim.sim_rendermode_opengl3windowed
