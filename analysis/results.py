"""An experiment folder as DataFrames, through Ray Tune's own `ExperimentAnalysis`
(no Ray cluster needed; works on finished, running and resumed experiments).

- `load(path)`: one row per trial: trial_id, every config key as its own column
  (arch, head, lr, head_tau, ...), status, epochs_run, best and last validation
  metrics, time.
- `history(path)`: one row per trial-epoch.
- `best(df, by=("arch", "head"), k=1)`: the top k trials of each group, by validation only.
Statuses: completed (ran every epoch), pruned (ASHA stopped it), diverged (non-finite
loss), error (raised), running (pending or in progress).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

METRICS = ("val_acc", "val_top5", "val_loss", "train_loss")


class NotAnExperimentError(ValueError):
    pass


def _analysis(path: str | Path):
    from ray.tune import ExperimentAnalysis

    path = Path(path)
    if not path.is_dir() or not list(path.glob("experiment_state-*.json")):
        raise NotAnExperimentError(
            f"{path} is not a headsweep experiment: no Ray Tune experiment_state-*.json in it "
            "(give the folder `tuning.search` printed, <storage>/<name>)")
    return ExperimentAnalysis(str(path.resolve()))  # a relative path reads as a URI without scheme


def experiment_spec(path: str | Path) -> dict:
    """spec.json of the experiment ({} for one made outside tuning.search)."""
    spec = Path(path) / "spec.json"
    return json.loads(spec.read_text()) if spec.exists() else {}


def _status(trial, epochs_run: int, max_epochs: int, last: dict) -> str:
    if trial.status == "ERROR":
        return "error"
    if trial.status in ("PENDING", "RUNNING", "PAUSED"):
        return "running"
    if last.get("diverged"):
        return "diverged"
    return "completed" if epochs_run >= max_epochs else "pruned"


def _trial_row(trial, frame: pd.DataFrame | None) -> dict:
    config = dict(trial.config)
    frame = frame if frame is not None and "val_acc" in getattr(frame, "columns", []) else None
    last = trial.last_result or {}
    epochs_run = int(frame["epoch"].max()) if frame is not None else 0
    row = {"trial_id": trial.trial_id, **config,
           "status": _status(trial, epochs_run, int(config.get("epochs", 0)), last), "epochs_run": epochs_run,
           "path": trial.path}
    if frame is not None:
        best_i = frame["val_acc"].idxmax() if frame["val_acc"].notna().any() else frame.index[-1]
        row.update({f"best_{m}": frame.loc[best_i, m] for m in METRICS if m in frame})
        row["best_epoch"] = int(frame.loc[best_i, "epoch"])
        row.update({f"last_{m}": frame[m].iloc[-1] for m in METRICS if m in frame})
        row.update(epoch_time_s=frame["epoch_time_s"].mean(), images_per_s=frame["images_per_s"].mean(),
                   time_total_s=frame["epoch_time_s"].sum())
    error_file = Path(trial.path) / "error.txt"
    row["error"] = error_file.read_text().strip().splitlines()[-1] if row["status"] == "error" and \
        error_file.exists() else None
    return row


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial."""
    analysis = _analysis(path)
    frames = analysis.trial_dataframes
    rows = [_trial_row(t, frames.get(t.trial_id)) for t in analysis.trials]
    return pd.DataFrame(rows).sort_values("trial_id", ignore_index=True) if rows else pd.DataFrame()


def history(path: str | Path) -> pd.DataFrame:
    """One row per trial-epoch: trial_id, arch, head and the metrics reported that epoch."""
    analysis = _analysis(path)
    parts = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        if frame is None or "epoch" not in getattr(frame, "columns", []):
            continue
        keep = [c for c in ("epoch", *METRICS, "epoch_time_s", "images_per_s", "lr") if c in frame]
        part = frame[keep].copy()
        part.insert(0, "head", trial.config.get("head"))
        part.insert(0, "arch", trial.config.get("arch"))
        part.insert(0, "trial_id", trial.trial_id)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def best(df: pd.DataFrame, by: Sequence[str] = ("arch", "head"), k: int = 1,
         metric: str = "best_val_acc", mode: str = "max") -> pd.DataFrame:
    """Top k trials of each `by` group by a validation metric (never the test set)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if metric not in df:
        raise ValueError(f"metric {metric!r} is not a column; validation metrics: "
                         f"{[c for c in df.columns if c.startswith(('best_', 'last_'))]}")
    ok = df[df["status"].isin(["completed", "pruned"]) & df[metric].notna()]
    ranked = ok.sort_values(metric, ascending=(mode == "min"))
    return ranked.groupby(list(by), sort=True).head(k).reset_index(drop=True)


def to_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with list-valued config columns (e.g. model_widths) stored as JSON text."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, dict, tuple))).any():
            out[col] = out[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
