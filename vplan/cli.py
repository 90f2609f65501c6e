"""`vplan <command> key=value ...`: pop the command, compose its Hydra config, build typed configs, run.

Every command has one YAML in configs/ that extends its config dataclass (registered with Hydra's ConfigStore
as `<command>_schema`); config groups (env/, task/, ...) fill the nested configs the same way, so Hydra checks
keys and types and the dataclasses hold the only defaults. Bad input never shows a traceback: one line naming what is valid, exit 2.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import re
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from vplan.configs import preset_names
from vplan.errors import (
    DatasetError, PlannerFallbackWarning, RunError, UsageError, VLMRewardWarning, VplanWarning, first_line,
)
from vplan.utils.interrupts import Terminated, handle_stop_signals
from vplan.utils.locks import holding_folder
from vplan.utils.openmp import choose_wait_policy
from vplan.utils.settings import (
    CONFIG_FILE, FINETUNE_FILE, PROGRESS_FILE, RESULTS_FILE, check_config_is_ours, refuse_other_records,
)

USAGE_ERROR = 2
RUN_ERROR = 1
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process the signal killed
# Storage failures a write or fsync raises without a path (a full disk, a quota, a read-only or failing disk).
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
_FREE_SPACE = "free some space (or write to another out=DIR) and run it again"

choose_wait_policy()  # before torch loads: passive OpenMP waiting unless the user chose (vplan/utils/openmp.py)


@dataclass(frozen=True)
class Command:
    """One CLI command: the words that name it, its config file and the function that runs it."""

    words: tuple[str, ...]
    summary: str
    config_name: str  # configs/<config_name>.yaml
    entry: str  # "module:function", called with the built config dataclass
    fixed: tuple[str, ...] = ()  # config groups whose one choice the command takes (its help lists no others)
    # world-model settings the command drives by the subgoal text alone: an action-conditioned model is refused
    text_only: tuple[str, ...] = ()
    record: str = CONFIG_FILE  # what it keeps in out=, which marks a folder as its kind's (`OUT_RECORDS`)

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def load(self) -> Callable[[Any], Any]:
        return _resolve(self.entry)


def _resolve(target: str) -> Any:
    """The object a "module:name" string names (importing the module)."""
    module_name, name = target.split(":")
    return getattr(importlib.import_module(module_name), name)


COMMANDS: tuple[Command, ...] = (
    Command(
        ("run",),
        "the agent plans, imagines and acts on held-out seeds: success, Dist, wall time per stage, videos",
        "run",
        "vplan.run:run",
        text_only=("worldmodel",),
    ),
    Command(
        ("collect",),
        "roll out the scripted expert and write a LeRobot v3.0 episode dataset",
        "collect",
        "vplan.data.collect:collect",
    ),
    Command(
        ("train",),
        "slow learning of one component (component=vae|worldmodel|idm) on an episode dataset",
        "train",
        "vplan.loop.train:train_component",
    ),
    Command(
        ("finetune",),
        "the slow-fast loop: Temp-LoRA over each episode's chunks, then the slow weights on the stored triples",
        "finetune",
        "vplan.loop.finetune:finetune",
        record=FINETUNE_FILE,
        text_only=("worldmodel",),
        fixed=("memory",),
    ),
    Command(
        ("rl",),
        "RL finetuning of planner and executor: G plans x K continuations per seed, rewards, RWR or DPO on a "
        "LoRA; success and Dist before and after",
        "rl",
        "vplan.rl.loop:run_rl",
        text_only=("worldmodel",),
    ),
    Command(
        ("eval", "worldmodel"),
        "PSNR/SSIM of generated chunks vs copy-last-frame, and text sensitivity, on fresh held-out episodes",
        "eval_worldmodel",
        "vplan.eval.worldmodel:evaluate_worldmodel",
        record=PROGRESS_FILE,
    ),
    Command(
        ("eval", "consistency"),
        "SCuts, SRC and PSNR drift of long rollouts of a revisit scenario with none / anchor / temp_lora memory",
        "eval_consistency",
        "vplan.eval.consistency:evaluate_consistency",
        record=PROGRESS_FILE,
        text_only=("checkpoint",),
    ),
    Command(
        ("bench", "env"),
        "steps+renders per second of an env and the expert's episode time",
        "bench_env",
        "vplan.eval.bench_env:bench_env",
        record=RESULTS_FILE,
    ),
    Command(
        ("bench", "worldmodel"),
        "seconds per generated 8-frame chunk by sampler and step count, and peak RSS",
        "bench_worldmodel",
        "vplan.eval.bench_worldmodel:bench_worldmodel",
        record=RESULTS_FILE,
        text_only=("checkpoint",),
    ),
    Command(
        ("bench", "planning"),
        "the paper's Table 2: Dist, success and generation PSNR of no memory / anchor / ours w/o Temp-LoRA / "
        "ours w/o loop / ours on the same held-out seeds",
        "bench_planning",
        "vplan.eval.bench_planning:bench_planning",
        record=RESULTS_FILE,
        text_only=("worldmodel",),
        fixed=("memory",),
    ),
    Command(
        ("bench", "executor"),
        "the executor's ceiling: success and Dist of the agent given the expert's own future as its imagined "
        "chunks, next to the expert and the world model, on the same held-out seeds",
        "bench_executor",
        "vplan.eval.bench_executor:bench_executor",
        record=RESULTS_FILE,
        text_only=("worldmodel",),
        fixed=("env", "task"),
    ),
    Command(
        ("bench", "memory"),
        "wall time and peak RSS per episode of none vs temp_lora memory, with and without overlap",
        "bench_memory",
        "vplan.eval.bench_memory:bench_memory",
        record=RESULTS_FILE,
        text_only=("checkpoint",),
    ),
)


# Config dataclasses registered as Hydra schemas: (group, schema name) -> "module:Class".
SCHEMAS: dict[tuple[str | None, str], str] = {
    (None, "run_schema"): "vplan.config:RunConfig",
    (None, "collect_schema"): "vplan.data.collect:CollectConfig",
    (None, "bench_env_schema"): "vplan.eval.bench_env:BenchEnvConfig",
    (None, "bench_worldmodel_schema"): "vplan.eval.config:BenchWorldModelConfig",
    (None, "bench_memory_schema"): "vplan.eval.config:BenchMemoryConfig",
    (None, "bench_planning_schema"): "vplan.eval.config:BenchPlanningConfig",
    (None, "bench_executor_schema"): "vplan.eval.config:BenchExecutorConfig",
    (None, "eval_worldmodel_schema"): "vplan.eval.config:EvalWorldModelConfig",
    (None, "eval_consistency_schema"): "vplan.eval.config:EvalConsistencyConfig",
    (None, "train_schema"): "vplan.loop.config:TrainConfig",
    (None, "finetune_schema"): "vplan.loop.config:FinetuneConfig",
    (None, "rl_schema"): "vplan.rl.config:RLConfig",
    ("component", "vae_schema"): "vplan.loop.config:VAETrainConfig",
    ("component", "worldmodel_schema"): "vplan.loop.config:WorldModelTrainConfig",
    ("component", "idm_schema"): "vplan.loop.config:IDMTrainConfig",
    ("model", "worldmodel_model_schema"): "vplan.worldmodel.config:WorldModelConfig",
    ("env", "tabletop_schema"): "vplan.envs.tabletop_v0:TabletopConfig",
    ("env", "blockworld_schema"): "vplan.envs.blockworld:BlockworldConfig",
    ("env", "rlbench_schema"): "vplan.envs.rlbench_adapter:RLBenchConfig",
    ("env", "minerl_schema"): "vplan.envs.minerl_adapter:MineRLConfig",
    ("task", "task_schema"): "vplan.tasks:TaskConfig",
    ("planner", "planner_schema"): "vplan.planner.config:PlannerConfig",
    ("memory", "memory_schema"): "vplan.memory.config:MemoryConfig",
}


def _fail(prog: str, message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Say `message` as one `<prog>: error: ...` line (after any progress bar left open) and exit with `code`."""
    _end_progress_bars()
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _interrupted(prog: str, stop: KeyboardInterrupt) -> NoReturn:
    _end_progress_bars()
    if isinstance(stop, Terminated):
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        raise SystemExit(TERMINATED)
    print(f"{prog}: interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED)


def _progress_bars() -> list[Any]:
    """The tqdm bars open in this process (none where tqdm was never imported)."""
    if "tqdm" not in sys.modules:
        return []
    from tqdm import tqdm

    return list(getattr(tqdm, "_instances", ()))


def _end_progress_bars() -> None:
    """Close the progress bars an error left open, so the error starts a line of its own rather than
    continuing a bar's."""
    for bar in _progress_bars():
        bar.close()


def _print_help(to_stderr: bool = False) -> None:
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        "usage: vplan <command> [key=value ...]",
        "       vplan <command> --help    show the command's config and choices (also: vplan help <command>)",
        "       vplan --version",
        "",
        "commands:",
        *(f"  {c.name.ljust(width)}  {c.summary}" for c in COMMANDS),
    ]
    print("\n".join(lines), file=sys.stderr if to_stderr else sys.stdout)


def _find_command(args: list[str]) -> tuple[Command, list[str]]:
    """Match the longest command whose words start `args`; the rest are overrides."""
    words = []
    for arg in args:
        if "=" in arg or arg.startswith("-"):
            break
        words.append(arg)
    for command in sorted(COMMANDS, key=lambda c: -len(c.words)):
        if tuple(words[: len(command.words)]) == command.words:
            return command, args[len(command.words) :]
    following = sorted({c.words[len(words)] for c in COMMANDS
                        if words and len(c.words) > len(words) and c.words[: len(words)] == tuple(words)})
    if following:  # `vplan bench`: a group of commands
        raise UsageError(f"{' '.join(words)!r} needs one more word, one of: {', '.join(following)} (e.g. vplan "
                         f"{' '.join(words)} {following[0]} --help)")
    valid = ", ".join(c.name for c in COMMANDS)
    close = difflib.get_close_matches(" ".join(words), [c.name for c in COMMANDS], n=1)
    if close:
        valid = f"did you mean {close[0]!r}? valid commands: {valid}"
    else:
        valid = f"valid commands: {valid}"
    if not words and args:  # `vplan episodes=3`, `vplan -v`
        raise UsageError(f"expected a command before {args[0]!r}, e.g. vplan run episodes=3; {valid}")
    raise UsageError(f"unknown command {' '.join(words)!r}; {valid}")


def _register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), target in SCHEMAS.items():
        store.store(group=group, name=name, node=_resolve(target))


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in cfg.keys():
        value = cfg._get_node(key)
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(_flat_keys(value, prefix=f"{full}."))
    return keys


# a value starting with `~`: quoted (a comma is part of it), or bare (where a comma would make a sweep)
_HOME_VALUE = re.compile(r"^(?P<key>[^=]+=)(?:(?P<quote>['\"])(?P<quoted>~[^'\"]*)(?P=quote)|(?P<bare>~[^'\",]*))$")


def _home_expanded(override: str) -> str:
    """`out=~/runs` with the home folder written out, as bash does where dash and zsh leave `~` to the program
    (Hydra cannot read it unquoted, and quoted it named a folder `~` in the current one); for path settings only,
    and one path (a comma makes a sweep, refused as such)."""
    from vplan.utils.settings import PATH_SETTINGS

    match = _HOME_VALUE.match(override)
    if match is None or match["key"][:-1].lstrip("+").split(".")[-1] not in PATH_SETTINGS:
        return override
    given = match["quoted"] or match["bare"]
    path = os.path.expanduser(given)
    if path == given or "'" in path:  # an unknown user's ~name: left to say itself
        return override
    return f"{match['key']}'{path}'"


def _unknown_key_message(base: Any, key: str, known: set[str], chosen: Any) -> str:
    """Name the valid keys next to the bad one: the children of its deepest existing parent, the close match
    among them, or the other choice of a config group that has it (`component.idm.*` needs `component=idm`;
    `chosen`: each group's choice)."""
    from omegaconf import DictConfig, OmegaConf

    parent = key
    while parent and parent not in known:
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
    hint = _other_choices_with(key, chosen)
    if parent and not isinstance(OmegaConf.select(base, parent), DictConfig):
        if hint:  # `component.vae.image_size=16` without component=vae: the world model's vae is a path
            return f"unknown key {key!r}{hint}"
        return f"unknown key {key!r}: {parent} is one setting, not a group of them; give {parent}=VALUE"
    depth = parent.count(".") + 1 if parent else 0
    children = [k for k in (_flat_keys(OmegaConf.select(base, parent), f"{parent}.") if parent else _flat_keys(base))
                if k.count(".") == depth]
    if not hint:  # a group's setting given at the top (finetune's `steps=` for optim.steps), else a close match
        leaf, prefix = key.rsplit(".", 1)[-1], f"{parent}." if parent else ""
        close = sorted(k for k in known if k.startswith(prefix) and k.count(".") > depth
                       and k.rsplit(".", 1)[-1] == leaf)
        close = close or difflib.get_close_matches(".".join(key.split(".")[: depth + 1]), children, n=1)
        hint = f" (did you mean {' or '.join(close[:2])}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys{f' of {parent}' if parent else ''}: {', '.join(children)}"


def _other_choices_with(key: str, chosen: Any) -> str:
    """`: a setting of component=idm (chosen: worldmodel)` where a config group's other choices have `key`."""
    from omegaconf import OmegaConf

    group, _, rest = key.partition(".")
    if not rest or group not in chosen:
        return ""
    having = []
    for (schema_group, name), target in SCHEMAS.items():
        option = name.removesuffix("_schema")
        if schema_group != group or option == chosen[group] or option not in preset_names(group):
            continue
        schema = OmegaConf.structured(_resolve(target))
        if rest in _flat_keys(schema):
            having.append(f"{group}={option}")
    return f": a setting of {' or '.join(having)} (chosen: {chosen[group]})" if having else ""


def _misplaced_group_message(error: Exception, groups: Any, group_overrides: list[str]) -> str:
    """For a group override that the default config has but another chosen option does not (`component=idm
    model@component.model=tiny`): which choice it comes with."""
    import re

    match = re.search(r"override '([^']+)'", str(error))
    if match and "@" in match.group(1):
        key = match.group(1)
        parent = key.split("@", 1)[1].split(".")[0]  # model@component.model -> component
        if parent in groups:
            chosen = [o for o in group_overrides if o.split("=")[0] == parent]
            return (f"{key} applies only with {parent}={groups[parent]}, not with "
                    f"{chosen[0] if chosen else 'this ' + parent}")
    return first_line(error)


def _env_default_task(parsed: list[Any], groups: Any) -> str | None:
    """For `env=NAME` without `task=...`: the task NAME's config dataclass defaults to (e.g. `retrace` for
    blockworld), so `vplan collect env=blockworld` needs no `task=retrace`; None if there is nothing to add."""
    keys = {override.key_or_group for override in parsed}
    # the last env= given, as Hydra takes the last
    env = next((o.value() for o in reversed(parsed) if o.key_or_group == "env" and not o.package), None)
    if "task" in keys or "task" not in groups or not isinstance(env, str):
        return None
    target = SCHEMAS.get(("env", f"{env}_schema"))
    if target is None:
        return None  # an unknown env: compose names the valid ones
    default = getattr(_resolve(target), "task", None)
    return default if isinstance(default, str) else None


def compose_config(command: Command, overrides: list[str]) -> tuple[Any, dict[str, str]]:
    """Compose the command's config with Hydra; return it and the chosen config-group options."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import open_dict

    from vplan.planner.config import redact_secrets

    overrides = [_home_expanded(override) for override in overrides]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as error:
        for override in overrides:  # name the one that does not parse
            try:
                parser.parse_overrides([override])
            except HydraException as its_error:
                key = override.split("=")[0]
                shown = f"{key}=<redacted>" if _is_secret(key) else redact_secrets(override)
                reason = first_line(its_error) if shown == override else "the value does not parse"
                raise UsageError(f"cannot read {shown!r} ({reason}); check its quotes and brackets, "
                                 "e.g. 'out=\"my runs\"' for a value with spaces") from None
        raise UsageError(first_line(error)) from None
    for override in parsed:
        if override.is_sweep_override():  # a comma makes a Hydra sweep: one run per value, which vplan does not do
            key = override.key_or_group
            shown = f"{key}=<redacted>" if _is_secret(key) else override.input_line
            raise UsageError(f"{shown!r} gives several values (a Hydra sweep), and a command runs with one; quote a "
                             f"text with a comma in it ('{key}=\"a, b\"'), or, for a setting that takes a list, "
                             f"write it in brackets ({key}=[a,b])")
    _register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vplan.configs", version_base="1.3"):
        groups = compose(command.config_name, return_hydra_config=True).hydra.runtime.choices
        default_task = _env_default_task(parsed, groups)
        if default_task is not None:
            overrides = [*overrides, f"task={default_task}"]
            parsed = OverridesParser.create().parse_overrides(overrides)
        group_overrides = []
        for override in parsed:
            key = override.key_or_group + (f"@{override.package}" if override.package else "")
            if key in groups and not key.startswith("hydra"):
                options = preset_names(key)
                if override.value() not in options:
                    close = difflib.get_close_matches(str(override.value()), options, n=1)
                    raise UsageError(f"unknown {key} {override.value()!r}" + (f" (did you mean {close[0]}?)" if close
                                     else "") + f"; valid choices: {', '.join(options)}" + (
                                     "; a task of your own runs from Python (README: 'Your own env, task or data')"
                                     if key == "task" else ""))
                group_overrides.append(override.input_line)
        try:
            base = compose(command.config_name, overrides=group_overrides)
        except HydraException as error:  # a group another choice brings in, e.g. model@component.model
            raise UsageError(_misplaced_group_message(error, groups, group_overrides)) from None
        known = set(_flat_keys(base))
        for override in parsed:
            key = override.key_or_group + (f"@{override.package}" if override.package else "")
            if key not in groups and key not in known:
                chosen = compose(command.config_name, overrides=group_overrides,
                                 return_hydra_config=True).hydra.runtime.choices  # each group's choice, given or not
                raise UsageError(_unknown_key_message(base, key, known, chosen))
            if key in known:
                _check_bool_value(base, override)
        try:
            cfg = compose(command.config_name, overrides=overrides, return_hydra_config=True)
        except HydraException as error:
            cause = error.__cause__
            key = getattr(cause, "full_key", None)
            message = first_line(cause or error) if not (key and _is_secret(key)) else "expected a string"
            if key and "is not a ListConfig" in message:  # modes=none for modes=[none]
                message = f"expected a list, in brackets: {key}=[...]"
            elif key and "NoneType is not a subclass of" in message:  # modes=[none,null]
                wanted = re.search(r"is not a subclass of (\w+)", message)[1]
                message = f"expected {'an' if wanted[0] in 'aeiou' else 'a'} {wanted}, got null"
            elif key and "Invalid type assigned" in message and "is not a subclass of" in message:  # agent=3
                chosen = compose(command.config_name, overrides=group_overrides,
                                 return_hydra_config=True).hydra.runtime.choices
                # a preset group placed there (component.model=tiny for model@component.model=tiny)
                group = next((g for g in chosen if g.endswith(f"@{key}")), None)
                presets = f"; or a preset: {group}={'|'.join(preset_names(group))}" if group else ""
                raise UsageError(f"{key} is a group of settings, not one; give {key}.KEY=VALUE (`vplan "
                                 f"{command.name} --help` lists them){presets}") from None
            raise UsageError(f"bad value for {key!r}: {message}" if key else message) from None
    choices = {g: v for g, v in cfg.hydra.runtime.choices.items() if not g.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def _check_bool_value(base: Any, override: Any) -> None:
    """A UsageError for a number other than 0 or 1 given to a bool setting, which OmegaConf would read as true
    (`record=2`)."""
    from omegaconf import BooleanNode, OmegaConf

    parent, _, leaf = override.key_or_group.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    value = override.value()
    if (isinstance(node._get_node(leaf), BooleanNode) and isinstance(value, (int, float))
            and not isinstance(value, bool) and value not in (0, 1)):
        raise UsageError(f"bad value for {override.key_or_group!r}: expected true or false, got {value!r}")


def _is_secret(key: str) -> bool:
    """Whether an override's key names a secret (`SECRET_FIELDS`), whose value no message may quote."""
    from vplan.planner.config import SECRET_FIELDS

    return key.lstrip("+~").split(".")[-1] in SECRET_FIELDS


def build_config(cfg: Any) -> Any:
    """The command's typed config: every node becomes its schema dataclass (running `__post_init__` checks)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        key, message = getattr(error, "full_key", None), first_line(error)
        field = re.match(r"([A-Za-z_]\w*): ", message)
        path = _failing_node(cfg) if not key else None
        if path:  # a nested config's check names its field alone ("seed: ..."), itself ("rewards: ...") or none:
            # put its path first
            named = (*path, field[1]) if field and field[1] != path[-1] else path
            key, message = ".".join(named), message[field.end():] if field else message
        raise UsageError(f"{key}: {message}" if key and key not in message else message) from None


def _failing_node(cfg: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The key path of the deepest node of a composed config whose dataclass refuses its values, or None."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found = _failing_node(child, (*path, str(key)))
            if found is not None:
                return found
    if not path:
        return None
    try:
        OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, TypeError, ValueError):
        return path
    return None


def _field_help(cfg: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """The `help` metadata of every field of a composed config's dataclasses, by key path."""
    from dataclasses import fields, is_dataclass

    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(cfg)
    helps = {}
    if is_dataclass(schema):
        helps = {prefix + (f.name,): f.metadata["help"] for f in fields(schema) if "help" in f.metadata}
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            helps |= _field_help(child, prefix + (str(key),))
    return helps


def _commented_yaml(cfg: Any) -> str:
    """The config as YAML (secrets redacted), each field with a documented meaning preceded by it as a comment."""
    import re

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from vplan.planner.config import redact_secrets

    helps = _field_help(cfg)
    lines, stack = [], []  # stack: (indent, key) of the mappings the current line is inside
    try:  # the values these overrides give (`out: checkpoints/vae`), not `${component.name}`
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation that cannot resolve (a typed `${...}`): shown as written
        container = OmegaConf.to_container(cfg)
    shown = OmegaConf.create(redact_secrets(container))
    for line in OmegaConf.to_yaml(shown).rstrip().splitlines():
        match = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if match:
            indent = len(match.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
            text = helps.get(tuple(k for _, k in stack))
            if text:
                lines.append(f"{match.group(1)}# {text}")
        lines.append(line)
    return "\n".join(lines)


def _print_command_help(command: Command, overrides: list[str]) -> None:
    cfg, choices = compose_config(command, overrides)
    print(f"usage: vplan {command.name} [key=value ...]\n\n{command.summary}\n")
    for group, chosen in choices.items():
        others = f"choices: {', '.join(preset_names(group))}" if group not in command.fixed else \
            f"the only one this command takes; set {group}.* keys"
        print(f"{group}: {chosen}  ({others})")
    print("\nconfig (with these overrides; each setting's meaning above it):")
    print(_commented_yaml(cfg))


_python_format_warning = warnings.formatwarning


def _format_warning(message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """vplan's own warnings as one line, `warning: ...`; any other as Python prints it. Progress bars are cleared
    first (they redraw at their next update), so the warning starts a line of its own rather than continuing a
    bar's (Python writes what this returns; a `showwarning` of our own would bypass `catch_warnings(record=True)`)."""
    for bar in _progress_bars():
        bar.clear()
    if issubclass(category, VplanWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> None:
    """The `vplan` command. Without `argv` it is the process's command line (`sys.argv`): a SIGTERM stops it as a
    Ctrl-C does (exit 143), and once it is over the process ignores both while Python shuts down."""
    own = argv is None and threading.current_thread() is threading.main_thread()
    if own:
        handle_stop_signals()
    try:
        _main(argv)
    except BrokenPipeError:  # the reader went away (`vplan run --help | head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush does not raise again
        raise SystemExit(RUN_ERROR) from None
    except OSError as error:  # the help or version could not be written (`vplan --help >/dev/full`); a command's
        if error.errno not in _STORAGE_ERRORS or error.filename is not None:  # own writes are said in _main
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _fail("vplan", f"cannot write to the standard output: {error.strerror}", RUN_ERROR)
    finally:
        if own:  # over: a Ctrl-C in Python's shutdown (logging's and torch's exit hooks) printed their traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _main(argv: list[str] | None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # no command: the usage, as an error, so a script that lost its arguments fails
        _print_help(to_stderr=True)
        _fail("vplan", "expected a command, one of those above")
    if args[0] in ("-h", "--help", "help"):
        if all(a in ("-h", "--help") for a in args[1:]):
            _print_help()
            return
        args = [*args[1:], "--help"]  # `vplan help run`: that command's help (an unknown one: the usual error)
    if args[0] == "--version":
        from vplan import __version__

        print(f"vplan {__version__}")
        return
    prog = "vplan"
    warnings.formatwarning = _format_warning
    for repeated in (PlannerFallbackWarning, VLMRewardWarning):  # each episode's or chunk's, not only the first
        warnings.simplefilter("always", repeated)  # (a text repeated in an episode made one warning of several)
    try:
        command, overrides = _find_command(args)
        prog = f"vplan {command.name}"
        extra = [a for a in overrides if "=" not in a and not a.startswith("-")]
        if extra:
            raise UsageError(f"unexpected argument {extra[0]!r} after '{command.name}'; overrides are key=value")
        unknown_flags = [a for a in overrides if a.startswith("-") and a not in ("-h", "--help")]
        if unknown_flags:
            raise UsageError(f"unknown option {unknown_flags[0]!r}; only --help, then key=value overrides")
        if any(a in ("-h", "--help") for a in overrides):
            _print_command_help(command, [a for a in overrides if a not in ("-h", "--help")])
            return
        if command.name != "train":  # under a launcher each process would do all of it, into one out=
            from vplan.utils.resources import launched_processes

            launched = launched_processes()
            if launched > 1:
                raise UsageError(f"{launched} processes (accelerate launch or torchrun): only `vplan train` shares "
                                 f"its work between processes; run `vplan {command.name}` without a launcher")
        cfg, choices = compose_config(command, overrides)
        _check_task_fits_env(cfg, choices)  # before the env config's own check of its task, which names no env
        config = build_config(cfg)
        # an empty path is the current directory (or, for a checkpoint, would read as unset): never what was meant
        for name in ("out", "data", "worldmodel", "idm", "checkpoint", "compare", "finetuned"):
            if getattr(config, name, None) == "":
                raise UsageError(f"{name}: expected a directory, got ''")
        if "env" in choices:
            from vplan.envs import require_simulator

            require_simulator(config.env)  # an adapter's simulator missing: its install steps
        _check_paths(config, command)  # before the command's module loads torch and the models (seconds)
        _check_endpoint_keys(config)
        if isinstance(getattr(config, "out", None), str):  # another command's folder, a checkpoint's (the commands
            folder = Path(config.out)                     # check it again for callers from Python)
            _check_writable(folder)
            refuse_other_records(folder, command.record, command.name)
            if command.record == CONFIG_FILE:  # another command's settings
                check_config_is_ours(folder, config)
            elif command.record == PROGRESS_FILE:  # another evaluation's
                from vplan.eval.progress import check_progress_is_ours

                check_progress_is_ours(folder, config)
    except UsageError as error:
        _fail(prog, str(error))
    except RunError as error:  # a damaged record in out=
        _fail(prog, str(error), RUN_ERROR)
    except OSError as error:  # a data= or checkpoint folder that cannot be read; without a path: the help could not
        if error.filename is None:  # be written, which main() says
            raise
        _fail_on_os_error(prog, error)
    except KeyboardInterrupt as stop:  # while the settings are read (mujoco loads for the envs' own)
        _interrupted(prog, stop)
    except Exception as error:  # a Ctrl-C in mujoco's import arrives as an ImportError raised from it
        _interrupted(prog, _interrupt_behind(error))
    # under a launcher (train only) the first process holds out= for them all
    out = getattr(config, "out", None) if os.environ.get("RANK", "0") == "0" else None
    try:
        with holding_folder(out if isinstance(out, str) else None):
            command.load()(config)
    except UsageError as error:
        _fail(prog, str(error))
    except (RunError, DatasetError) as error:  # DatasetError here: a file found damaged while the command runs
        _fail(prog, str(error), RUN_ERROR)
    except OSError as error:  # on a path: an unwritable out=DIR, a full disk, a file where a directory should be
        _fail_on_os_error(prog, error)
    except KeyboardInterrupt as stop:
        _interrupted(prog, stop)
    except Exception as error:  # safetensors' writes say a full disk in their own error type
        code = _storage_error_of_safetensors(error)
        if code is None:
            _interrupted(prog, _interrupt_behind(error))
        _fail(prog, f"{os.strerror(code)}; {_FREE_SPACE}", RUN_ERROR)


# Settings naming a checkpoint that every command checks at once; not bench planning's `finetuned=`, which may be made
# while the slow model's rows run.
CHECKPOINT_SETTINGS = ("worldmodel", "idm", "checkpoint", "compare")


def _check_paths(config: Any, command: Command) -> None:
    """A UsageError where `data=` holds no dataset or a checkpoint setting names none (or another kind of model,
    a world model needing actions where the command has only text, or checkpoints the env cannot drive), said
    before the command's module loads; the commands check the same again for callers from Python."""
    from vplan.shipped import check_checkpoints_exist, recorded_config
    from vplan.worldmodel.config import ADDED_LATER, WorldModelConfig, require_text_conditioned

    if isinstance(getattr(config, "data", None), str):  # train's and finetune's: each says how to make one
        from vplan.data.lerobot_format import recorded_episodes, require_dataset
        from vplan.loop.config import check_holdout

        require_dataset(config.data, config.how_to_make_data())
        episodes = recorded_episodes(config.data)  # what it holds against what is held out (found after ~12 s)
        if episodes is not None and isinstance(getattr(config, "holdout_episodes", None), int):
            check_holdout(config.data, episodes, config.holdout_episodes)
    check_checkpoints_exist({name: getattr(config, name) for name in CHECKPOINT_SETTINGS
                             if isinstance(getattr(config, name, None), str)})
    _check_training_checkpoints(config)
    for name in command.text_only:
        spec = getattr(config, name, None)
        settings = recorded_config(spec, WorldModelConfig, ADDED_LATER) if isinstance(spec, str) else None
        if settings is not None:
            require_text_conditioned(settings.conditioning, f"{name}={spec}", f"vplan {command.name}")
    _check_env_fits(config)


def _check_writable(out: Path) -> None:
    """A PermissionError (exit 1, naming the folder) where `out`, or the nearest folder above it that exists, cannot
    be written, and a NotADirectoryError where that is a file: both were met at the first write, after the models
    loaded (~9 s)."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(existing))


def _check_training_checkpoints(config: Any) -> None:
    """`vplan train`'s component.vae= and (for a run not yet begun: a resume takes its own weights)
    component.init=, checked as the top-level checkpoint settings are (they were found after torch loaded and the
    dataset was read, ~16 s)."""
    from vplan.loop.checkpoint import list_checkpoints
    from vplan.loop.config import IDMTrainConfig, TrainConfig, VAETrainConfig
    from vplan.shipped import check_checkpoints_exist, vae_folder, vae_hint

    if not isinstance(config, TrainConfig):
        return
    component = config.component
    if not isinstance(component, VAETrainConfig) and isinstance(component.vae, str):  # (the VAE's own settings)
        from vplan.data.lerobot_format import DatasetError, load_info, recorded_env

        try:
            env = recorded_env(load_info(config.data))
        except DatasetError:  # an old or damaged info.json: the command refuses the dataset first, saying what to do
            return
        vae_folder(component.vae, vae_hint(isinstance(component, IDMTrainConfig), env))
    if isinstance(getattr(component, "init", None), str) and not list_checkpoints(Path(config.out)):
        check_checkpoints_exist({"component.init": component.init})


def _check_endpoint_keys(config: Any) -> None:
    """A UsageError where the LLM planner's or the VLM reward's endpoint has no key it needs (or one an HTTP header
    cannot hold), said before the models load as every other setting is (`vplan.chat.endpoint_key`)."""
    from vplan.chat import endpoint_key
    from vplan.planner.config import LLM_ENDPOINT, PlannerConfig
    from vplan.rl.config import VLM_ENDPOINT, VLMRewardConfig

    planner, vlm = getattr(config, "planner", None), getattr(config, "vlm_reward", None)
    if isinstance(planner, PlannerConfig) and planner.kind == "llm":
        endpoint_key(planner.llm, *LLM_ENDPOINT)
    if isinstance(vlm, VLMRewardConfig) and vlm.enabled:
        endpoint_key(vlm, *VLM_ENDPOINT)


def _check_env_fits(config: Any) -> None:
    """For a command that runs the agent, the env's contract with it (its camera, actions, frame size), and for
    eval worldmodel's `idm=` the actions it reads, from the checkpoints' recorded settings (`vplan.env_contract`)."""
    from vplan.config import AgentConfig
    from vplan.env_contract import check_checkpoints_fit_env
    from vplan.eval.config import EvalWorldModelConfig

    agent = getattr(config, "agent", None)
    if isinstance(agent, AgentConfig):  # run and rl name their checkpoints' defaults by property, the benches not
        check_checkpoints_fit_env(config.env, getattr(config, "worldmodel_checkpoint", config.worldmodel),
                                  getattr(config, "idm_checkpoint", config.idm), agent)
    elif isinstance(config, EvalWorldModelConfig):  # the actions its IDM reads and its action models take
        check_checkpoints_fit_env(config.env, config.checkpoint, config.idm, None,
                                  {"checkpoint": config.checkpoint, "compare": config.compare})


def _fail_on_os_error(prog: str, error: OSError) -> NoReturn:
    """An OSError as one line naming its path (exit 1); one without a path but a storage fault's, raised again."""
    if error.errno in _STORAGE_ERRORS and error.filename is None:  # a write or fsync: no path to name
        _fail(prog, f"{error.strerror}; {_FREE_SPACE}", RUN_ERROR)
    if error.filename is None:  # a socket, a simulator's connection: the traceback says where
        raise error
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    a_file = isinstance(error, FileExistsError) and not os.path.isdir(error.filename)
    if isinstance(error, NotADirectoryError):  # out=FILE, met at out/inner: name the file, as for out itself
        a_file, paths = True, next((str(p) for p in Path(error.filename).parents if p.is_file()), paths)
    _fail(prog, f"{paths}: {'exists and is not a directory' if a_file else error.strerror}", RUN_ERROR)


def _interrupt_behind(error: Exception) -> KeyboardInterrupt:
    """The Ctrl-C (or SIGTERM) that `error` was raised from, as an extension's import reraises it (mujoco's:
    `ImportError: initialization failed`); `error` itself, raised again, when there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    raise error


def _storage_error_of_safetensors(error: Exception) -> int | None:
    """The errno of a storage fault in a safetensors write ("I/O error: No space left on device (os error 28)"),
    or None for any other error."""
    from safetensors import SafetensorError

    found = re.search(r"\(os error (\d+)\)", str(error)) if isinstance(error, SafetensorError) else None
    return int(found[1]) if found and int(found[1]) in _STORAGE_ERRORS else None


def _check_task_fits_env(cfg: Any, choices: dict[str, str]) -> None:
    """A UsageError naming the env a composed config's task runs on, when it is not the chosen env; and one for
    `task.name=`/`task.env=`, which name the task's preset and its env rather than set them (`task=`, `env=` do)."""
    env = choices.get("env")
    if env is None or "task" not in cfg:
        return
    from vplan.configs import load_preset
    from vplan.envs import task_envs

    task = cfg.task
    preset = load_preset("task", choices["task"])
    for key in ("name", "env"):
        if task[key] != preset[key]:
            tasks = ", ".join(preset_names("task"))
            raise UsageError(f"task.{key}={task[key]}: task.{key} names the task preset's {key} and cannot be set; "
                             f"choose the task with task=NAME ({tasks}) and the env with env=NAME")
    if task.env not in task_envs(env):
        raise UsageError(f"task {task.name!r} runs on env {task.env!r}, not {env!r}; use env={task.env}")


if __name__ == "__main__":
    main()
