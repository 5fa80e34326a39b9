"""What a finished search left, read as the search tests check it: every trial's reported results and every
Optuna trial (tests/test_search.py, tests/test_crashes.py)."""
from __future__ import annotations

import json
from pathlib import Path


def optuna_trials(experiment: Path) -> list:
    """Every Optuna trial of the experiment, over all its studies (one per pair)."""
    from tuning.experiment import Experiment

    exp = Experiment.open(experiment)
    return [t for name in exp.study_names() for t in exp.load_study(name).trials]


def results(experiment: Path) -> dict[str, list[dict]]:
    """trial folder name -> the results it reported, from Tune's own result.json files (over every restart:
    Ray appends to it)."""
    out = {}
    for folder in (f for f in experiment.iterdir() if (f / "params.json").exists()):  # Ray writes it at start
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").exists() else []
        out[folder.name] = []
        for line in lines:
            try:
                out[folder.name].append(json.loads(line))
            except json.JSONDecodeError:  # the last line, which Ray is writing now
                break
    return out
