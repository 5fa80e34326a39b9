from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import heads
import models
from common.cli import is_space_file
from common.registry import Registry
from training.config import TrainConfig

SPACES = Registry("space")
register_space = SPACES.register
list_spaces = SPACES.list

# Search settings a space sets and `--set` may override; everything else in a space's
# constants is a trial-config key.
DEFAULT_SETTINGS = {
    "num_samples": 32,  # trials in all; with per-pair budgets each pair gets an equal share (+-1)
    "max_concurrent": 4,  # trials running at once
    "grace_period": 2,  # ASHA: epochs before a trial can be stopped
    "reduction_factor": 3,  # ASHA: keep 1/rf of trials at each rung
    "metric": "val_acc",
    "mode": "max",
    "cpus_per_trial": 1.0,
    "gpus_per_trial": 0.25,  # used only where GPUs exist
    "max_failures": 1,  # retries of a trial whose process died
    "fake_data": False,  # True: train on tiny generated data (smoke runs)
    "sampler": "tpe",  # each pair's Optuna sampler: tpe (TPE after a random start-up) or random
}
SAMPLERS = ("tpe", "random")
Pair = tuple[str, str]  # (arch, head)


@dataclass(frozen=True)
class DataInfo:
    """What a space needs to know of the dataset to propose valid head options."""

    num_classes: int = 100
    has_hierarchy: bool = True

    @classmethod
    def of(cls, dataset) -> "DataInfo":
        return cls(dataset.num_classes, dataset.class_to_group is not None)


@dataclass(frozen=True)
class Space:
    name: str
    suggest: Callable[..., dict | None]  # define-by-run: (trial, arch, head) -> derived keys; the pair is given
    archs: tuple[str, ...]  # the backbones compared
    heads: tuple[str, ...] = ()  # the heads compared; () = every registered head
    constants: dict = field(default_factory=dict)  # trial-config keys fixed for every trial
    settings: dict = field(default_factory=dict)  # overrides of DEFAULT_SETTINGS
    description: str = ""

    def resolved_settings(self) -> dict:
        return {**DEFAULT_SETTINGS, **self.settings}

    def pairs(self) -> list[Pair]:
        """Every (arch, head) the space compares, in a fixed order."""
        return [(a, h) for a in self.archs for h in (self.heads or tuple(heads.list_heads()))]

    @property
    def max_epochs(self) -> int:
        """Epochs of a full trial: ASHA's max_t, and what a trial must reach not to count as pruned."""
        return int(self.constants.get("epochs", TrainConfig().epochs))

    def with_overrides(self, overrides: dict) -> "Space":
        """A copy with `--set` values applied: a setting, a constant or any trial-config key.

        `arch` and `head` (a name or a list of names) restrict the pairs; any other key fixes
        that parameter for every trial, and a searched parameter so fixed is no longer searched.
        """
        settings, constants, pairs = dict(self.settings), dict(self.constants), {}
        fields = set(TrainConfig.__dataclass_fields__) - {"model_kwargs", "head_kwargs"}
        for key, value in overrides.items():
            if key in ("arch", "head"):
                pairs[key] = _restrict(key, value, self.archs if key == "arch" else self.heads or heads.list_heads())
            elif key in DEFAULT_SETTINGS:
                settings[key] = value
            elif key in constants or key in fields or key.startswith(("model_", "head_")):
                constants[key] = value
            else:
                raise ValueError(f"--set {key}={value!r}: unknown key; allowed: search settings "
                                 f"{sorted(DEFAULT_SETTINGS)} or trial-config keys {sorted(fields)} "
                                 "(plus model_<option>, head_<option>)")
        return replace(self, constants=constants, settings=settings,
                       archs=pairs.get("arch", self.archs), heads=pairs.get("head", self.heads))


def _restrict(key: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"--set {key}={value!r}: expected a name or a list of names, e.g. {key}=[{allowed[0]}]")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"--set {key}={value!r}: {unknown} not in this space; its {key}s: {list(allowed)}")
    return tuple(dict.fromkeys(names))


def get_space(name: str) -> Space:
    """A registered space by name, or a user's: `path/to/file.py:function` (`load_space_file`)."""
    return load_space_file(name) if is_space_file(name) else SPACES.get(name)()


def load_space_file(ref: str) -> Space:
    """`path/to/file.py:function`: run the file as a module of its own and call `function()`, which must take
    no arguments and return a `Space` (as a registered space's function does). Every way this can go wrong
    is one line naming the file; the space is then checked like a built-in one."""
    path, fn_name = ref.rsplit(":", 1)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--space {ref}: {'is a folder' if file.is_dir() else 'no such file'} ({file}); expected "
                         "path/to/file.py:function")
    # A module name of its own, the same in every process (Ray Tune pickles the searcher, and with it the
    # define-by-run function, by reference: a resume loads this file again under this name first).
    name = "headsweep_space_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ValueError(f"--space {ref}: {file}:{exc.lineno}: SyntaxError: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it loads
        sys.modules.pop(name, None)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise ValueError(f"--space {ref}: loading {file} raised {type(exc).__name__}: {exc} (line {where.lineno})") \
            from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__)
        raise ValueError(f"--space {ref}: {file} has no function {fn_name!r}; it defines {defined or 'none'}")
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise ValueError(f"--space {ref}: {fn_name}() must take no arguments and return a search_spaces.Space; "
                         f"it takes {[p.name for p in required]}")
    try:
        space = fn()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"--space {ref}: {fn_name}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(space, Space):
        raise ValueError(f"--space {ref}: {fn_name}() returned {type(space).__name__}; it must return a "
                         "search_spaces.Space (see examples/my_space.py)")
    if not callable(space.suggest) or len(inspect.signature(space.suggest).parameters) != 3:
        raise ValueError(f"--space {ref}: the Space's suggest must be a define-by-run function "
                         "(trial, arch, head)")
    for arch in space.archs:
        models.MODELS.get(arch)  # an unknown backbone or head: the registries' one-line errors
    for head in space.heads:
        heads.head_class(head)
    return space


class FixedParams:
    """An Optuna trial whose parameters named in `fixed` are given, not suggested: the space's
    constants and `--set` values win over its ranges, and the study records only what it searched."""

    def __init__(self, trial, fixed: dict):
        self._trial, self._fixed = trial, fixed

    def __getattr__(self, name: str):
        method = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return method

        def suggest(param: str, *args, **kwargs):
            return self._fixed[param] if param in self._fixed else method(param, *args, **kwargs)

        return suggest


def define_by_run(space: Space, data: DataInfo, pair: Pair | None, trial) -> dict:
    """What OptunaSearch calls: the keys derived from the suggestions, and the constants.

    `pair` given: that (arch, head) pair's study (per-pair budgets). None: one joint study,
    in which arch and head are suggested too.
    """
    t = FixedParams(trial, space.constants)
    if pair is None:
        archs, head_names = space.archs, space.heads or tuple(heads.list_heads())
        pair = (t.suggest_categorical("arch", list(archs)) if len(archs) > 1 else archs[0],
                t.suggest_categorical("head", list(head_names)) if len(head_names) > 1 else head_names[0])
    arch, head = pair
    derived = space.suggest(t, arch, head) or {}
    cls = heads.head_class(head)
    if cls.supports_label_smoothing:
        t.suggest_float("label_smoothing", 0.0, 0.2)
    head_derived = cls.suggest(t, data.num_classes, data.has_hierarchy)
    # The more specific wins: the space over the head's defaults, the constants (--set) over both.
    return {"arch": arch, "head": head, **head_derived, **derived, **space.constants}


def sample_config(space: Space, data: DataInfo, pair: Pair | None, trial) -> dict:
    """A whole flat trial config for one Optuna trial (suggested params + derived + constants)."""
    derived = define_by_run(space, data, pair, trial)  # first: it makes the suggestions
    return {**trial.params, **derived}
