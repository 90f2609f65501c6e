"""Fake of pyrep/pyrep.py (stepjam/PyRep 8f420be): `PyRep` launches the in-memory scene of pyrep.backend.sim.

Like the real class it refuses to start without COPPELIASIM_ROOT, and only one instance may be launched.
"""

from __future__ import annotations

import os
from typing import Any

from pyrep.backend import sim
from pyrep.const import Verbosity
from pyrep.errors import PyRepError
from pyrep.objects.object import Object


class PyRep(object):
    def __init__(self):
        self.running = False
        self._process = None
        self._robot_to_count: dict = {}
        self.connected = False
        self._ui_thread = None
        self._responsive_ui_thread = None
        self._init_thread_id = None
        self._shutting_down = False
        self._handles_to_objects: dict = {}
        if "COPPELIASIM_ROOT" not in os.environ:
            raise PyRepError("COPPELIASIM_ROOT not defined. See installation instructions.")
        self._vrep_root = os.environ["COPPELIASIM_ROOT"]
        if not os.path.exists(self._vrep_root):
            raise PyRepError("COPPELIASIM_ROOT was not a correct path. See installation instructions")

    def launch(self, scene_file: str = "", headless: bool = False, responsive_ui: bool = False,
               blocking: bool = False, verbosity: Verbosity = Verbosity.NONE) -> None:
        if sim.SCENE is not None:
            raise PyRepError("CoppeliaSim is already running in this process")
        sim.load_scene(scene_file)
        self.connected = True

    def script_call(self, function_name_at_script_name: str, script_handle_or_type: int, ints=(), floats=(),
                    strings=(), bytes="") -> Any:
        raise PyRepError("the fake CoppeliaSim runs no scripts")

    def shutdown(self) -> None:
        if not self.connected:
            raise PyRepError("PyRep is not running.")
        sim.unload_scene()
        self.connected = False
        self.running = False

    def start(self) -> None:
        if not self.connected:
            raise PyRepError("PyRep is not running.")
        sim.scene().running = True
        self.running = True

    def stop(self) -> None:
        if not self.connected:
            raise PyRepError("CoppeliaSim has not been launched. Call launch first.")
        if self.running:
            sim.scene().running = False
            self.running = False

    def step(self) -> None:
        sim.scene().step()

    def step_ui(self) -> None:
        pass

    def set_simulation_timestep(self, dt: float) -> None:
        sim.DT = dt

    def get_simulation_timestep(self) -> float:
        return sim.DT

    def set_configuration_tree(self, config_tree: Any) -> None:
        sim.scene().set_configuration_tree(config_tree)

    def import_model(self, filename: str) -> Object:
        raise PyRepError(f"the fake CoppeliaSim cannot import models: {filename}")

    def get_objects_in_tree(self, root_object=None, *args, **kwargs) -> list[Object]:
        return Object._get_objects_in_tree(root_object, *args, **kwargs)
