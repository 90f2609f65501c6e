"""Fakes of simulators that cannot be installed on vplan's machines, for testing the adapters against them.

`rlbench_site/` holds fake `pyrep` and `rlbench` packages; `minerl_site/` holds fake `gym` (0.19) and
`minerl` (0.4.4) packages. Each module's docstring names the real file whose public signatures it mirrors
(stepjam/PyRep 8f420be, stepjam/RLBench 02720bb, openai/gym 0.19.0, minerllabs/minerl v0.4.4). Their
behaviour is a small stand-in (an in-memory scene instead of CoppeliaSim, a flat world instead of
Minecraft), enough to run the adapters' code paths; it says nothing about the real simulators.

`with fake_site("rlbench_site"):` makes a site's packages importable (the first entry of `sys.path`) and,
on the way out, removes every module imported from it, and the modules that cached those imports.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAKES = Path(__file__).parent
SITE_PACKAGES = {
    "rlbench_site": ("pyrep", "rlbench"),
    "minerl_site": ("gym", "minerl"),
}
# Modules that keep what they imported from a site: shimmy looks for gym once, when it is imported.
DEPENDENTS = ("shimmy", "vplan.envs.rlbench_return_cubes")


def _drop(prefixes: tuple[str, ...]) -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


@contextmanager
def fake_site(site: str) -> Iterator[Path]:
    """Import `site`'s fake packages (and nothing installed under the same names) inside the block."""
    from vplan.utils.import_utils import is_package_available

    prefixes = SITE_PACKAGES[site] + DEPENDENTS
    path = str(FAKES / site)
    _drop(prefixes)
    is_package_available.cache_clear()
    sys.path.insert(0, path)
    try:
        yield FAKES / site
    finally:
        sys.path.remove(path)
        _drop(prefixes)
        is_package_available.cache_clear()
