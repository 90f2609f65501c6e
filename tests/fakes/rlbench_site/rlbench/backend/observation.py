"""Fake of rlbench/backend/observation.py (stepjam/RLBench 02720bb): `Observation` with the real fields."""

import numpy as np


class Observation(object):
    """Storage for both visual and low-dimensional observations."""

    def __init__(self, left_shoulder_rgb, left_shoulder_depth, left_shoulder_mask, left_shoulder_point_cloud,
                 right_shoulder_rgb, right_shoulder_depth, right_shoulder_mask, right_shoulder_point_cloud,
                 overhead_rgb, overhead_depth, overhead_mask, overhead_point_cloud, wrist_rgb, wrist_depth,
                 wrist_mask, wrist_point_cloud, front_rgb, front_depth, front_mask, front_point_cloud,
                 joint_velocities, joint_positions, joint_forces, gripper_open, gripper_pose, gripper_matrix,
                 gripper_joint_positions, gripper_touch_forces, task_low_dim_state, misc: dict):
        self.left_shoulder_rgb = left_shoulder_rgb
        self.left_shoulder_depth = left_shoulder_depth
        self.left_shoulder_mask = left_shoulder_mask
        self.left_shoulder_point_cloud = left_shoulder_point_cloud
        self.right_shoulder_rgb = right_shoulder_rgb
        self.right_shoulder_depth = right_shoulder_depth
        self.right_shoulder_mask = right_shoulder_mask
        self.right_shoulder_point_cloud = right_shoulder_point_cloud
        self.overhead_rgb = overhead_rgb
        self.overhead_depth = overhead_depth
        self.overhead_mask = overhead_mask
        self.overhead_point_cloud = overhead_point_cloud
        self.wrist_rgb = wrist_rgb
        self.wrist_depth = wrist_depth
        self.wrist_mask = wrist_mask
        self.wrist_point_cloud = wrist_point_cloud
        self.front_rgb = front_rgb
        self.front_depth = front_depth
        self.front_mask = front_mask
        self.front_point_cloud = front_point_cloud
        self.joint_velocities = joint_velocities
        self.joint_positions = joint_positions
        self.joint_forces = joint_forces
        self.gripper_open = gripper_open
        self.gripper_pose = gripper_pose
        self.gripper_matrix = gripper_matrix
        self.gripper_joint_positions = gripper_joint_positions
        self.gripper_touch_forces = gripper_touch_forces
        self.task_low_dim_state = task_low_dim_state
        self.misc = misc

    def get_low_dim_data(self) -> np.ndarray:
        low_dim_data = [] if self.gripper_open is None else [[self.gripper_open]]
        for data in [self.joint_velocities, self.joint_positions, self.joint_forces, self.gripper_pose,
                     self.gripper_joint_positions, self.gripper_touch_forces, self.task_low_dim_state]:
            if data is not None:
                low_dim_data.append(data)
        return np.concatenate(low_dim_data) if len(low_dim_data) > 0 else np.array([])
