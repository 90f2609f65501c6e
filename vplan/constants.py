"""Names shared by the datasets, the training batches and the policies (LeRobot's feature names)."""

OBS_IMAGE_FRONT = "observation.images.front"
OBS_STATE = "observation.state"  # the robot's own state: gripper xyz + opening
OBS_ENV_STATE = "observation.environment_state"  # privileged object state: cube positions
ACTION = "action"
ACTION_APPLIED = "action.applied"  # what the env did with the action (its info["applied_action"]), if it says
SUBGOAL = "subgoal"  # per-frame language action (LeRobot's per-frame "task")
SUCCESS = "next.success"
REWARD = "next.reward"
DONE = "next.done"
EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
INDEX = "index"
TIMESTAMP = "timestamp"
TASK_INDEX = "task_index"
ROBOT_TYPE_PREFIX = "vplan_"  # a dataset's robot_type is vplan_<env> for episodes recorded in a vplan env

# The first seed of the episodes vplan run, the evals and the benches play; training data (vplan collect) uses
# 0..9999, so no evaluation scene is a training scene.
HELD_OUT_SEEDS = 10000
