from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from common.registry import Registry
from tuning.config import TrainConfig

SPACES = Registry("space")
register_space = SPACES.register
list_spaces = SPACES.list

# Search settings a space sets and `--set` may override; everything else in a space's
# constants is a trial-config key.
DEFAULT_SETTINGS = {
    "num_samples": 32,  # trials Optuna proposes in all
    "max_concurrent": 4,  # trials running at once
    "grace_period": 2,  # ASHA: epochs before a trial can be stopped
    "reduction_factor": 3,  # ASHA: keep 1/rf of trials at each rung
    "metric": "val_acc",
    "mode": "max",
    "cpus_per_trial": 1.0,
    "gpus_per_trial": 0.25,  # used only where GPUs exist
    "max_failures": 1,  # retries of a trial whose process died
    "fake_data": False,  # True: train on tiny generated data (smoke runs)
}


@dataclass(frozen=True)
class Space:
    name: str
    suggest: Callable[[Any], dict | None]  # define-by-run: trial -> derived keys (or None)
    constants: dict = field(default_factory=dict)  # trial-config keys fixed for every trial
    settings: dict = field(default_factory=dict)  # overrides of DEFAULT_SETTINGS
    description: str = ""

    def resolved_settings(self) -> dict:
        return {**DEFAULT_SETTINGS, **self.settings}

    @property
    def max_epochs(self) -> int:
        """Epochs of a full trial: ASHA's max_t, and what a trial must reach not to count as pruned."""
        return int(self.constants.get("epochs", TrainConfig().epochs))

    def with_overrides(self, overrides: dict) -> "Space":
        """A copy with `--set` values applied: a setting, a constant or any trial-config key."""
        settings, constants = dict(self.settings), dict(self.constants)
        fields = set(TrainConfig.__dataclass_fields__) - {"model_kwargs", "head_kwargs"}
        for key, value in overrides.items():
            if key in DEFAULT_SETTINGS:
                settings[key] = value
            elif key in constants or key in fields or key.startswith(("model_", "head_")):
                constants[key] = value
            else:
                raise ValueError(f"--set {key}={value!r}: unknown key; allowed: search settings "
                                 f"{sorted(DEFAULT_SETTINGS)} or trial-config keys {sorted(fields)} "
                                 "(plus model_<option>, head_<option>)")
        return Space(self.name, self.suggest, constants, settings, self.description)


def get_space(name: str) -> Space:
    return SPACES.get(name)()


def define_by_run(space: Space, trial) -> dict:
    """What OptunaSearch calls: the space's suggestions run, its derived keys and constants returned."""
    derived = space.suggest(trial) or {}
    return {**space.constants, **derived}


def sample_config(space: Space, trial) -> dict:
    """A whole flat trial config for one Optuna trial (suggested params + derived + constants)."""
    derived = define_by_run(space, trial)  # first: it makes the suggestions
    return {**trial.params, **derived}
