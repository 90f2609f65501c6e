"""The README's and docs/'s commands, snippets and links: every `vplan ...` in a shell block, and every one with
settings quoted in the prose, composes into its command's config (a key renamed in a dataclass left the docs wrong
without a failing test), the README's Python snippets run as pasted, and every relative link and anchor resolves."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
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


def inline_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of each `vplan ... key=value` quoted in the file's prose (outside code blocks), with its
    placeholders filled in (DIR, N, and the first of `a|b`); those without settings name commands only."""
    found, block = [], False
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if line.startswith("```"):
            block = not block
            continue
        for span in re.findall(r"`((?:[A-Z_]+=\S+ )*vplan [^`]*=[^`]*)`", line) if not block else []:
            if "<" in span or "..." in span or " --" in span:
                continue
            span = re.sub(r"=DIR\b", "=/tmp/vplan-docs-dir", span.replace("\\|", "|"))
            span = re.sub(r"=N\b", "=2", span)
            found.append((number, re.sub(r"=([^\s|]+)(?:\|\S+)+", r"=\1", span)))
    return found


COMMANDS = [(f"{path.name}:{number}", command) for path in DOCS
            for number, command in shell_commands(path) + inline_commands(path)]


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 30 and any(command == "vplan run episodes=3" for _, command in COMMANDS)


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_each_documented_command_composes_into_its_config(where: str, command: str) -> None:
    args = shlex.split(command.split("vplan ", 1)[1])
    found, overrides = _find_command(args)
    cfg, choices = compose_config(found, overrides)
    _check_task_fits_env(cfg, choices)
    build_config(cfg)


def python_snippets(path: Path) -> list[tuple[int, str]]:
    """(line, code) of each ```python block."""
    return [(path.read_text()[: m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)]


def needs_local_files(code: str) -> bool:
    """Whether the code reads a folder a command makes (data/, checkpoints/, runs/), not counting comments."""
    return bool(re.search(r"[\"'](data|checkpoints|runs)/", re.sub(r"#.*", "", code)))


# the agent loop runs in tests/test_agent.py with tiny models (with the shipped ones: minutes an episode)
SNIPPETS = [(f"README.md:{number}", code) for number, code in python_snippets(DOCS[0])
            if not needs_local_files(code) and "VideoPlanningAgent" not in code]


def test_the_readme_shows_snippets_that_need_nothing_made_first() -> None:
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_each_readme_python_snippet_runs_as_pasted(where: str, code: str, tmp_path: Path) -> None:
    """Pasted into a file and run: the consistency snippet loaded a VAE no command had made yet (a network
    error from diffusers). No key and no endpoint: the LLM planner's snippet shows its fallback."""
    script = tmp_path / "snippet.py"
    script.write_text(code)
    environment = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]


# the snippets that read a dataset `vplan collect` makes: run beside one (the agent's: see above)
DATA_SNIPPETS = [(f"README.md:{number}", code) for number, code in python_snippets(DOCS[0])
                 if needs_local_files(code) and "VideoPlanningAgent" not in code]


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/return_cubes as the README's `vplan collect ... out=data/return_cubes` makes it (one
    episode, the default 64x64 frames the shipped models read)."""
    from vplan.data.collect import CollectConfig, collect
    from vplan.envs.tabletop_v0 import TabletopConfig
    from vplan.tasks import TaskConfig

    root = tmp_path_factory.mktemp("readme")
    collect(CollectConfig(env=TabletopConfig(), task=TaskConfig.preset("return_cubes"), episodes=1,
                          out=str(root / "data" / "return_cubes")))
    return root


@pytest.mark.parametrize(("where", "code"), DATA_SNIPPETS, ids=[where for where, _ in DATA_SNIPPETS])
def test_each_readme_snippet_reading_a_dataset_runs_beside_one(where: str, code: str, collected: Path) -> None:
    """They were left out of the run above (no dataset there), so their shape comments went unchecked."""
    assert re.search(r"[\"']data/return_cubes[\"']", code), "reads another made folder: make it in `collected`"
    script = collected / "snippet.py"
    script.write_text(code + "\nprint('ran')\n")
    result = subprocess.run([sys.executable, str(script)], cwd=collected, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.endswith("ran\n"), result.stderr[-2000:]


def test_the_readme_has_snippets_that_read_a_dataset() -> None:
    assert len(DATA_SNIPPETS) >= 2


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


def test_the_readme_contents_list_every_section() -> None:
    """`## License` was missing from it."""
    text = (ROOT / "README.md").read_text()
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    sections = [heading for heading in re.findall(r"(?m)^## (.+)$", re.sub(r"(?ms)^```.*?^```", "", text))
                if heading != "Contents"]
    listed = re.findall(r"(?m)^- \[[^\]]+\]\(#([^)]+)\)", contents)
    assert listed == [github_anchor(heading) for heading in sections]


def smoke_commands() -> list[str]:
    """The README's smoke test: the `vplan` commands of the first shell block after "A smoke test"."""
    lines = (ROOT / "README.md").read_text().split("\n")
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("A smoke test"))
    begin = next(i for i, line in enumerate(lines, 1) if i > start and line.startswith("```"))
    end = next(i for i, line in enumerate(lines, 1) if i > begin and line.startswith("```"))
    return [command for number, command in shell_commands(ROOT / "README.md") if begin < number < end]


def test_the_readme_smoke_test_runs_as_pasted(tmp_path: Path) -> None:
    """Each of its commands was checked alone (its settings compose); none ran the chain, where each step reads what
    the one before wrote (a renamed folder or a frame size not followed would break the copy-pasted path). ~70 s."""
    commands = smoke_commands()
    assert [shlex.split(c)[1] for c in commands] == ["collect", "train", "train", "train", "run", "eval", "finetune"]
    for command in commands:
        result = subprocess.run([sys.executable, "-m", *shlex.split(command)], cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    for made in ("data/smoke/meta/info.json", "checkpoints/smoke_vae/final", "checkpoints/smoke_wm/final/config.json",
                 "checkpoints/smoke_idm/final/metrics.json", "runs/smoke/metrics.json", "runs/smoke_eval/metrics.json",
                 "checkpoints/smoke_ft/final/config.json"):
        assert (tmp_path / made).exists(), made
