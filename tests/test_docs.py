"""The README's and docs/'s commands and links: every `vplan ...` in a shell block composes into its command's
config (a key renamed in a dataclass left the docs wrong without a failing test), and every relative link and
anchor resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vplan.cli import _check_task_fits_env, _find_command, build_config, compose_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("bash", "sh", "shell", "console")


def shell_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of each `vplan ...` in the file's shell blocks, continuation lines joined, comments cut."""
    found, block, pending = [], None, None
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block not in SHELL_BLOCKS:
            continue
        text = re.split(r"\s+#", line, maxsplit=1)[0].rstrip()
        if pending is None:
            start = re.search(r"(?:^|[\s;&|(])(vplan\s.*)$", text)
            if start is None:
                continue
            pending, text = (number, ""), start.group(1)
        pending = (pending[0], f"{pending[1]} {text.rstrip(chr(92)).strip()}".strip())
        if not text.endswith("\\"):
            found.append(pending)
            pending = None
    return found


COMMANDS = [(f"{path.name}:{number}", command) for path in DOCS for number, command in shell_commands(path)]


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 30 and any(command == "vplan run episodes=3" for _, command in COMMANDS)


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_each_documented_command_composes_into_its_config(where: str, command: str) -> None:
    args = shlex.split(command)[1:]
    found, overrides = _find_command(args)
    cfg, choices = compose_config(found, overrides)
    _check_task_fits_env(cfg, choices)
    build_config(cfg)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text().split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#+\s+(.*)", line)
        if heading:
            anchor = github_anchor(heading[1])
            seen[anchor] = seen.get(anchor, -1) + 1
    return {f"{anchor}-{n}" if n else anchor for anchor, count in seen.items() for n in range(count + 1)}


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    broken = []
    for number, line in enumerate(path.read_text().split("\n"), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
                broken.append(f"{path.name}:{number}: {target}")
    assert not broken
