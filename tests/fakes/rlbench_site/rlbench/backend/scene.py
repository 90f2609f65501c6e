"""Fake of rlbench/backend/scene.py (stepjam/RLBench 02720bb): `Scene`, the real lifecycle on the fake scene.

`load` (task.load, base to the workspace centre, state saved), `init_task` (once), `init_episode` (the task's
init_episode, random placement unless the task is static, validation, ten settling steps), `reset` (robot
back to its start, task state restored, conditions reset) and `get_observation` (RLBench's `Observation`,
RGB as uint8, passed through `task.decorate_observation`) keep the real order of calls.
"""

from typing import List

import numpy as np
from pyrep import PyRep
from pyrep.objects import Dummy
from pyrep.objects.shape import Shape
from pyrep.objects.vision_sensor import VisionSensor

from rlbench.backend.exceptions import BoundaryError, WaypointError
from rlbench.backend.observation import Observation
from rlbench.backend.robot import Robot
from rlbench.backend.task import Task
from rlbench.observation_config import ObservationConfig

STEPS_BEFORE_EPISODE_START = 10


class Scene(object):
    def __init__(self, pyrep: PyRep, robot: Robot, obs_config: ObservationConfig = ObservationConfig(),
                 robot_setup: str = "panda"):
        self.pyrep = pyrep
        self.robot = robot
        self.robot_setup = robot_setup
        self.task = None
        self._obs_config = obs_config
        self._initial_task_state = None
        self._start_arm_joint_pos = robot.arm.get_joint_positions()
        self._starting_gripper_joint_pos = robot.gripper.get_joint_positions()
        self._workspace = Shape("workspace")
        self._cameras = {name: VisionSensor(name) for name in (
            "cam_over_shoulder_left", "cam_over_shoulder_right", "cam_overhead", "cam_wrist", "cam_front")}
        self._masks = {name: VisionSensor(name + "_mask") for name in self._cameras}
        self._has_init_task = self._has_init_episode = False
        self._variation_index = 0
        self._initial_robot_state = (robot.arm.get_configuration_tree(), robot.gripper.get_configuration_tree())
        self._set_camera_properties()
        x, y, z = self._workspace.get_position()
        minx, maxx, miny, maxy, _, _ = self._workspace.get_bounding_box()
        self._workspace_minx = x - np.fabs(minx) - 0.2
        self._workspace_maxx = x + maxx + 0.2
        self._workspace_miny = y - np.fabs(miny) - 0.2
        self._workspace_maxy = y + maxy + 0.2
        self._workspace_minz = z
        self._workspace_maxz = z + 1.0
        self.target_workspace_check = Dummy.create()
        self._step_callback = None

    def _configs(self) -> dict:
        c = self._obs_config
        return {"cam_over_shoulder_left": c.left_shoulder_camera, "cam_over_shoulder_right": c.right_shoulder_camera,
                "cam_overhead": c.overhead_camera, "cam_wrist": c.wrist_camera, "cam_front": c.front_camera}

    def load(self, task: Task) -> None:
        task.load()
        task.get_base().set_position(self._workspace.get_position())
        self._initial_task_state = task.get_state()
        self.task = task
        self._initial_task_pose = task.boundary_root().get_orientation()
        self._has_init_task = self._has_init_episode = False
        self._variation_index = 0

    def unload(self) -> None:
        if self.task is not None:
            self.robot.gripper.release()
            if self._has_init_task:
                self.task.cleanup_()
            self.task.unload()
        self.task = None
        self._variation_index = 0

    def init_task(self) -> None:
        self.task.init_task()
        self._initial_task_state = self.task.get_state()
        self._has_init_task = True
        self._variation_index = 0

    def init_episode(self, index: int, randomly_place: bool = True, max_attempts: int = 5,
                     place_demo: bool = False) -> List[str]:
        self._variation_index = index
        if not self._has_init_task:
            self.init_task()
        attempts = 0
        descriptions = None
        while attempts < max_attempts:
            descriptions = self.task.init_episode(index)
            try:
                if randomly_place and not self.task.is_static_workspace():
                    raise BoundaryError("the fake scene cannot place tasks randomly; make the task static")
                self.task.validate()
                break
            except (BoundaryError, WaypointError):
                self.task.cleanup_()
                self.task.restore_state(self._initial_task_state)
                attempts += 1
                if attempts >= max_attempts:
                    raise
        [self.pyrep.step() for _ in range(STEPS_BEFORE_EPISODE_START)]
        self._has_init_episode = True
        return descriptions

    def reset(self) -> None:
        self.robot.gripper.release()
        arm, gripper = self._initial_robot_state
        self.pyrep.set_configuration_tree(arm)
        self.pyrep.set_configuration_tree(gripper)
        self.robot.arm.set_joint_positions(self._start_arm_joint_pos, disable_dynamics=True)
        self.robot.arm.set_joint_target_velocities([0] * len(self.robot.arm.joints))
        self.robot.gripper.set_joint_positions(self._starting_gripper_joint_pos, disable_dynamics=True)
        self.robot.gripper.set_joint_target_velocities([0] * len(self.robot.gripper.joints))
        if self.task is not None and self._has_init_task:
            self.task.cleanup_()
            self.task.restore_state(self._initial_task_state)
        self.task.set_initial_objects_in_scene()

    def get_observation(self) -> Observation:
        tip = self.robot.arm.get_tip()
        images = {}
        for name, config in self._configs().items():
            rgb = None
            if config.rgb and self._cameras[name].still_exists():
                self._cameras[name].handle_explicitly()
                rgb = self._cameras[name].capture_rgb()
                if config.rgb_noise is not None:
                    rgb = config.rgb_noise.apply(rgb)
                rgb = np.clip((rgb * 255.0).astype(np.uint8), 0, 255)
            images[name] = rgb
        c = self._obs_config
        obs = Observation(
            left_shoulder_rgb=images["cam_over_shoulder_left"], left_shoulder_depth=None, left_shoulder_mask=None,
            left_shoulder_point_cloud=None, right_shoulder_rgb=images["cam_over_shoulder_right"],
            right_shoulder_depth=None, right_shoulder_mask=None, right_shoulder_point_cloud=None,
            overhead_rgb=images["cam_overhead"], overhead_depth=None, overhead_mask=None, overhead_point_cloud=None,
            wrist_rgb=images["cam_wrist"], wrist_depth=None, wrist_mask=None, wrist_point_cloud=None,
            front_rgb=images["cam_front"], front_depth=None, front_mask=None, front_point_cloud=None,
            joint_velocities=np.array(self.robot.arm.get_joint_velocities()) if c.joint_velocities else None,
            joint_positions=np.array(self.robot.arm.get_joint_positions()) if c.joint_positions else None,
            joint_forces=np.array(self.robot.arm.get_joint_forces()) if c.joint_forces else None,
            gripper_open=((1.0 if self.robot.gripper.get_open_amount()[0] > 0.9 else 0.0)
                          if c.gripper_open else None),
            gripper_pose=np.array(tip.get_pose()) if c.gripper_pose else None,
            gripper_matrix=tip.get_matrix() if c.gripper_matrix else None,
            gripper_touch_forces=None,
            gripper_joint_positions=(np.array(self.robot.gripper.get_joint_positions())
                                     if c.gripper_joint_positions else None),
            task_low_dim_state=self.task.get_low_dim_state() if c.task_low_dim_state else None,
            misc=self._get_misc(),
        )
        return self.task.decorate_observation(obs)

    def step(self):
        self.pyrep.step()
        self.task.step()
        if self._step_callback is not None:
            self._step_callback()

    def register_step_callback(self, func):
        self._step_callback = func

    def get_observation_config(self) -> ObservationConfig:
        return self._obs_config

    def check_target_in_workspace(self, target_pos: np.ndarray) -> bool:
        x, y, z = target_pos
        return (self._workspace_maxx > x > self._workspace_minx and self._workspace_maxy > y > self._workspace_miny
                and self._workspace_maxz > z > self._workspace_minz)

    def _set_camera_properties(self) -> None:
        for name, config in self._configs().items():
            camera: VisionSensor = self._cameras[name]
            if not (config.rgb or config.depth or config.point_cloud):
                camera.remove()
            else:
                camera.set_explicit_handling(1)
                camera.set_resolution(config.image_size)
                camera.set_render_mode(config.render_mode)
            if not config.mask:
                self._masks[name].remove()

    def _get_misc(self) -> dict:
        misc = {}
        for name, key in (("cam_over_shoulder_left", "left_shoulder_camera"),
                          ("cam_over_shoulder_right", "right_shoulder_camera"), ("cam_overhead", "overhead_camera"),
                          ("cam_front", "front_camera"), ("cam_wrist", "wrist_camera")):
            cam = self._cameras[name]
            if cam.still_exists():
                misc.update({f"{key}_extrinsics": cam.get_matrix(), f"{key}_intrinsics": cam.get_intrinsic_matrix(),
                             f"{key}_near": cam.get_near_clipping_plane(), f"{key}_far": cam.get_far_clipping_plane()})
        misc["variation_index"] = self._variation_index
        return misc
