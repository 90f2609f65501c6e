"""Fake of minerl/__init__.py (minerllabs/minerl v0.4.4): importing minerl registers its envs in (old) gym."""

import minerl.env  # noqa: F401
import minerl.herobraine  # noqa: F401
import minerl.herobraine.envs  # noqa: F401
