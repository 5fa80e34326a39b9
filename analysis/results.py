"""An experiment folder as DataFrames, through the read-only `Results` view (tuning/results.py),
which reads Ray Tune's own files (no Ray cluster needed; works on finished, running and
resumed experiments, and on copied, moved or renamed ones).

- `load(path)`: one row per trial: trial_id, every config key as its own column
  (arch, head, lr, head_tau, ...), status, epochs_run, best and last validation
  metrics, time.
- `history(path)`: one row per trial-epoch.
- `best(df, by=("arch", "head"), k=1)`: the top k trials of each group, by validation only.
Statuses (common/status.py): completed (ran every epoch), pruned (ASHA stopped it),
diverged (non-finite loss), error (raised), running (pending or in progress).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tuning.folder import NotAnExperimentError  # noqa: F401  (re-exported)
from tuning.results import Results, best  # noqa: F401  (re-exported)


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial."""
    return Results.open(path).trials()


def history(path: str | Path) -> pd.DataFrame:
    """One row per trial-epoch: trial_id, arch, head and the metrics reported that epoch."""
    return Results.open(path).history()


def experiment_spec(path: str | Path) -> dict:
    """spec.json of the experiment ({} for one made outside tuning.search)."""
    return Results.open(path).spec


def to_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with list-valued config columns (e.g. model_widths) stored as JSON text."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, dict, tuple))).any():
            out[col] = out[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)


def config_value(cell):
    """A config cell of a table `to_parquet` wrote, as the config held it: a list's or a dict's JSON text back
    to the value, numpy scalars to Python."""
    if isinstance(cell, str) and cell[:1] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell.tolist() if hasattr(cell, "tolist") else cell
