"""The read-only view of an experiment: its trials, their epochs and the best per (arch, head).

`Results.open(folder)` is what analysis reads; it has no method that writes (the search's own
operations are tuning.experiment's). Ray Tune's state is read as JSON only: its pickled fields
are never decoded, so a crafted experiment folder cannot run code here (README, "Trust").
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from common.status import CONFIG_ERROR, ERROR, FINISHED, trial_status
from training import data
from tuning.folder import PARAMS_FILE, ExperimentFolder, NotAnExperimentError

METRICS = ("val_acc", "val_top5", "val_loss", "train_loss")
# The columns of a trials table that are not config keys (besides best_* and last_* metrics).
RESULT_COLUMNS = ("trial_id", "status", "epochs_run", "path", "best_epoch", "epoch_time_s", "images_per_s",
                  "time_total_s", "node_id", "precision", "error")


@dataclass(frozen=True)
class RayTrial:
    """One trial as Ray Tune's experiment state lists it: plain JSON fields only."""
    trial_id: str
    status: str  # Ray's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    config: dict
    last_result: dict
    relative: str  # its folder, relative to the experiment
    exp: "Results"

    @classmethod
    def of(cls, trial: dict, meta: dict, exp: "Results") -> "RayTrial":
        def plain(v):  # a field Ray could not write as JSON is a {"_type": "CLOUDPICKLE_FALLBACK"} blob
            return {} if not isinstance(v, dict) or "_type" in v else v

        return cls(str(trial["trial_id"]), str(trial["status"]), plain(trial["config"]), plain(meta.get("last_result")),
                   str(trial["relative_logdir"]), exp)

    @property
    def path(self) -> str:
        return f"{self.exp.uri}/{self.relative}"

    @cached_property
    def frame(self):
        """Its progress.csv (one row per reported epoch), or None before the first report; read once
        (the report asks for trials and history)."""
        import pandas as pd

        try:
            frame = pd.read_csv(io.BytesIO(self.exp._read(f"{self.relative}/progress.csv")))
        except (OSError, ValueError):
            return None
        return frame if "val_acc" in frame else None

    def error(self) -> str | None:
        """The last line of the error Ray wrote (error.txt; its error.pkl is never read)."""
        try:
            lines = self.exp._read(f"{self.relative}/error.txt").decode(errors="replace").strip().splitlines()
        except (FileNotFoundError, OSError):
            return None
        return lines[-1] if lines else None


@dataclass(frozen=True)
class Results(ExperimentFolder):
    """An experiment's trials and history, read-only."""

    def study_names(self) -> list[str]:
        """From spec.json; for an older experiment without them, the studies its journal holds."""
        if self.studies():
            return list(self.studies().values())
        import optuna

        return [s.study_name for s in optuna.get_all_study_summaries(self.journal_storage())]

    def journal_storage(self):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(self.journal)))

    def load_study(self, name: str | None = None):
        import optuna

        names = self.study_names()
        if not names:
            raise NotAnExperimentError(f"{self.uri}: its Optuna journal {self.journal} holds no study")
        return optuna.load_study(study_name=name or names[0], storage=self.journal_storage())

    def load_dataset(self, data_dir: str | Path | None = None) -> data.Dataset:
        """The search's dataset, from `data_dir` (default: the one spec.json recorded)."""
        return data.load_for(self.spec.get("constants", {}), data_dir or self.spec.get("data_dir", "data"),
                             self.settings.get("fake_data", False))

    def _read(self, relative: str) -> bytes:
        fs, path = self._fs()
        with fs.open_input_stream(f"{path}/{relative}") as f:
            return f.read()

    @cached_property
    def _ray_trials(self) -> list[RayTrial]:
        """Ray Tune's trials, read once per Experiment object from the newest experiment_state-*.json
        as JSON only, and each trial's progress.csv. The state file's pickled fields (cloudpickle
        blobs) are never decoded, so a crafted experiment folder cannot run code here (README,
        "Trust"). Trial folders the state does not list (started after Ray's last snapshot, then
        killed) are not trials."""
        return self.read_ray_trials()

    def refresh(self) -> None:
        """Forget the trials read so far: the next `trials()` reads the files anew (a search writes them)."""
        self.__dict__.pop("_ray_trials", None)

    def read_ray_trials(self) -> list[RayTrial]:
        """`_ray_trials`, read anew."""
        name = newest_state(*self._fs())
        if name is None:
            return []
        try:
            return [RayTrial.of(trial, meta, self) for trial, meta in state_entries(self._read(name))]
        except (ValueError, KeyError, TypeError) as exc:
            raise NotAnExperimentError(f"{self.uri}/{name}: not a Ray Tune experiment state ({exc!r})") from None

    def ended_trial_ids(self) -> set[str]:
        """The trials Ray's saved state lists as ended (completed, pruned, diverged or failed), read now."""
        return {t.trial_id for t in self.read_ray_trials() if t.status in ("TERMINATED", "ERROR")}

    def trials(self):
        """One row per trial: trial_id, every config key as a column, status, epochs_run, the best
        epoch's validation metrics (by the search's metric), the last epoch's, time."""
        import pandas as pd

        rows = [self._trial_row(t, t.frame) for t in self._ray_trials]
        return pd.DataFrame(rows).sort_values("trial_id", ignore_index=True) if rows else pd.DataFrame()

    def _trial_row(self, trial, frame) -> dict:
        config = dict(trial.config)
        max_epochs = int(config.get("epochs", self.spec.get("max_epochs", 0)))
        row = {"trial_id": trial.trial_id, **config,
               "status": trial_status(trial.status, trial.last_result, max_epochs),
               "epochs_run": int(frame["epoch"].max()) if frame is not None else 0, "path": trial.path}
        if frame is not None:
            best_i = self._best_epoch(frame)
            row.update({f"best_{m}": frame.loc[best_i, m] for m in METRICS if m in frame})
            row["best_epoch"] = int(frame.loc[best_i, "epoch"])
            row.update({f"last_{m}": frame[m].iloc[-1] for m in METRICS if m in frame})
            if "epoch_time_s" in frame:  # (a trial that ended on its config trained no epoch)
                row.update(epoch_time_s=frame["epoch_time_s"].mean(), images_per_s=frame["images_per_s"].mean(),
                           time_total_s=frame["epoch_time_s"].sum())
            if "node_id" in frame:  # the Ray node of its last epoch
                row["node_id"] = frame["node_id"].iloc[-1]
            if "precision" in frame:  # bf16 or fp32: what amp resolved to where it trained
                row["precision"] = frame["precision"].iloc[-1]
        row["error"] = (trial.error() or trial.last_result.get(CONFIG_ERROR)) if row["status"] == ERROR else None
        return row

    def _best_epoch(self, frame):
        metric = self.settings.get("metric", "val_acc")
        values = frame[metric] if metric in frame else frame["val_acc"]
        if not values.notna().any():
            return frame.index[-1]
        return values.idxmin() if self.settings.get("mode", "max") == "min" else values.idxmax()

    def history(self):
        """One row per trial-epoch: trial_id, arch, head and the metrics reported that epoch."""
        import pandas as pd

        parts = []
        for trial in self._ray_trials:
            frame = trial.frame
            if frame is None or "epoch" not in frame:
                continue
            keep = [c for c in ("epoch", *METRICS, "epoch_time_s", "images_per_s", "lr") if c in frame]
            part = frame[keep].copy()
            part.insert(0, "head", trial.config.get("head"))
            part.insert(0, "arch", trial.config.get("arch"))
            part.insert(0, "trial_id", trial.trial_id)
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def best(self, trials, by: Sequence[str] = ("arch", "head"), k: int = 1):
        """The top k finished trials of each group by the search's own metric and mode."""
        metric = f"best_{self.settings.get('metric', 'val_acc')}"
        return best(trials, by, k, metric if metric in trials else "best_val_acc", self.settings.get("mode", "max"))

    @staticmethod
    def trial_config(trial_path: str | Path) -> dict:
        """The flat config a trial ran with (its params.json)."""
        return json.loads((Path(trial_path) / PARAMS_FILE).read_text())




def newest_state(fs, path: str) -> str | None:
    """The name of the newest experiment_state-*.json in the experiment folder `path` on the
    pyarrow filesystem `fs` (the names end in the run's start time: the last is the newest run,
    a resume), or None."""
    import pyarrow.fs

    names = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(path))
                   if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
    return names[-1] if names else None


def state_entries(raw: bytes) -> list[tuple[dict, dict]]:
    """A Ray Tune experiment state's (trial, run metadata) pairs, as JSON only: its pickled fields
    (cloudpickle blobs) are never decoded. Raises ValueError, KeyError or TypeError on other content."""
    state = json.loads(raw)
    return [tuple(json.loads(part) if isinstance(part, str) else part for part in entry)
            for entry in state["trial_data"]]


def config_columns(trials) -> list[str]:
    """The columns of a trials table that hold config keys (arch, head, lr, head_tau, ...)."""
    return [c for c in trials.columns if c not in RESULT_COLUMNS and not c.startswith(("best_", "last_"))]


def best(trials, by: Sequence[str] = ("arch", "head"), k: int = 1, metric: str = "best_val_acc",
         mode: str = "max"):
    """Top k trials of each `by` group by a validation metric (never the test set); only finished
    trials (completed or pruned) count, so diverged and failed ones are never "best"."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if metric not in trials:
        raise ValueError(f"metric {metric!r} is not a column; validation metrics: "
                         f"{[c for c in trials.columns if c.startswith(('best_', 'last_'))]}")
    ok = trials[trials["status"].isin(FINISHED) & trials[metric].notna()]
    ranked = ok.sort_values(metric, ascending=(mode == "min"))
    return ranked.groupby(list(by), sort=True).head(k).reset_index(drop=True)
