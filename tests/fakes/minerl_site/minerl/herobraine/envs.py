"""Fake of minerl/herobraine/envs.py (minerllabs/minerl v0.4.4): the four navigate specs, registered."""

from minerl.herobraine.env_specs.navigate_specs import Navigate

MINERL_NAVIGATE_V0 = Navigate(dense=False, extreme=False)
MINERL_NAVIGATE_EXTREME_V0 = Navigate(dense=False, extreme=True)
MINERL_NAVIGATE_DENSE_V0 = Navigate(dense=True, extreme=False)
MINERL_NAVIGATE_DENSE_EXTREME_V0 = Navigate(dense=True, extreme=True)

ENVS = [MINERL_NAVIGATE_V0, MINERL_NAVIGATE_EXTREME_V0, MINERL_NAVIGATE_DENSE_V0, MINERL_NAVIGATE_DENSE_EXTREME_V0]

for env in ENVS:
    env.register()
