"""Fake of gym/__init__.py (openai/gym 0.19.0): the old gym API that MineRL 0.4.4 and shimmy's
GymV21CompatibilityV0 use (`Env` with `reset() -> obs` and a 4-tuple `step`, spaces, `make`, `register`).
"""

from gym import error
from gym.version import VERSION as __version__
from gym.core import ActionWrapper, Env, GoalEnv, ObservationWrapper, RewardWrapper, Wrapper  # noqa: E402
from gym.spaces import Space  # noqa: E402
from gym.envs import make, register, spec  # noqa: E402
from gym import logger  # noqa: E402
from gym import wrappers  # noqa: E402

__all__ = ["Env", "Space", "Wrapper", "make", "spec", "register"]
