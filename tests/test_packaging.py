"""What a wheel would hold: the tests run against the editable install, which maps the source folders whole, so a
package missing from pyproject.toml's list, or a data file no package-data glob matches, passed CI and was left
out of every built wheel."""

from __future__ import annotations

import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
SHIPPED_FILE_LIMIT = 25 * 10**6  # bytes, per checkpoint file


def source_dir(package: str) -> Path:
    """The folder a package is built from (`package-dir`, else its parent's folder and its own name)."""
    mapped = SETUPTOOLS["package-dir"]
    parent, _, name = package.rpartition(".")
    return ROOT / mapped[package] if package in mapped else source_dir(parent) / name


def tracked(folder: Path) -> list[Path]:
    """The files git tracks under `folder` (what a clean clone, and a wheel built from it, hold)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(["git", "ls-files", "-z", str(folder)], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in listed.stdout.decode().split("\0") if name]


def test_every_python_folder_is_a_listed_package() -> None:
    packages = set(SETUPTOOLS["packages"])
    found = set()
    for package in [p for p in packages if "." not in p or p in SETUPTOOLS["package-dir"]]:
        top = source_dir(package)
        for init in top.rglob("__init__.py"):
            relative = init.parent.relative_to(top).parts
            found.add(".".join((package, *relative)))
    assert found == packages


def test_every_data_file_matches_a_package_data_glob() -> None:
    missed = []
    for package in SETUPTOOLS["packages"]:
        folder = source_dir(package)
        globs = SETUPTOOLS["package-data"].get(package, [])
        for path in tracked(folder):
            relative = path.relative_to(folder)
            owned_by_subpackage = len(relative.parts) > 1 and (folder / relative.parts[0] / "__init__.py").is_file()
            if path.suffix == ".py" or owned_by_subpackage:
                continue
            if not any(fnmatch(relative.as_posix(), glob) and len(relative.parts) == len(Path(glob).parts)
                       for glob in globs):
                missed.append(str(path.relative_to(ROOT)))
    assert not missed, f"files a wheel would leave out: {missed}"


def test_shipped_checkpoint_files_stay_under_the_size_limit() -> None:
    files = [path for path in tracked(source_dir("vplan") / "checkpoints") if path.is_file()]
    assert len(files) >= 10
    assert all(path.stat().st_size <= SHIPPED_FILE_LIMIT for path in files), max(f.stat().st_size for f in files)
