"""An experiment folder's layout and spec: where its files are and what the search was asked.

    <storage>/<name>/              Ray Tune's files: trial folders, checkpoints, experiment state
    <storage>/<name>/spec.json     what was asked, resolved; the Optuna study names
    <storage>/<name>/optuna.log    the Optuna journal (optuna-dashboard reads it)
    <storage>/<name>/analysis/     final.parquet, confusion *.npy, report.md, figures/

For a URI storage (s3://..., file://...) Ray writes the trials and spec.json there, but the
Optuna journal needs file locks, so it lives on the driver in ~/.headsweep/<name>/ while the
search runs (spec.json records where) and is copied into the experiment when it ends.

Nothing here depends on the folder's name: the study names come from spec.json and every
path from the folder itself, so a copied, moved or renamed experiment reads as the original.
Its subclasses add the read-only results (tuning.results, what analysis reads) and the search's
own writes (tuning.experiment). No heavy import at the top: the search's command line reads it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
import os

# --callback NAME: (the package it needs, Ray's logger callback); `tuning.search --help` lists them
TRACKERS = {"wandb": ("wandb", "ray.air.integrations.wandb.WandbLoggerCallback"),
            "mlflow": ("mlflow", "ray.air.integrations.mlflow.MLflowLoggerCallback")}

SPEC_FILE = "spec.json"
JOURNAL_FILE = "optuna.log"
ANALYSIS_DIR = "analysis"
PARAMS_FILE = "params.json"  # Ray Tune's copy of a trial's config, in its folder


class NotAnExperimentError(ValueError):
    pass


@dataclass(frozen=True)
class ExperimentFolder:
    uri: str  # where Ray Tune writes it: a local path, or a URI such as s3://bucket/exp/name
    local: Path  # on this machine: the same folder for a path; ~/.headsweep/<name> for a URI

    @classmethod
    def at(cls, storage: str, name: str) -> "ExperimentFolder":
        """The experiment `name` under `storage` (a path or a URI), existing or not (the search)."""
        if "://" in storage:
            return cls(f"{storage.rstrip('/')}/{name}", Path.home() / ".headsweep" / name)
        folder = Path(storage).resolve() / name
        return cls(str(folder), folder)

    @classmethod
    def open(cls, path: str | Path) -> "ExperimentFolder":
        """An existing experiment folder on this machine (analysis)."""
        if "://" in str(path):
            raise NotAnExperimentError(f"{path}: analysis reads an experiment folder on this machine; copy it "
                                       "here first (e.g. `aws s3 sync`, or a shared mount)")
        folder = Path(path).resolve()  # a relative path would read as a URI without scheme
        if not folder.is_dir() or not list(folder.glob("experiment_state-*.json")):
            raise NotAnExperimentError(
                f"{path} is not a headsweep experiment: no Ray Tune experiment_state-*.json in it "
                "(give the folder `tuning.search` printed, <storage>/<name>)")
        return cls(str(folder), folder)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage(self) -> str:
        """Ray Tune's storage_path: the folder (or URI) that holds this experiment."""
        return self.uri.rstrip("/").rsplit("/", 1)[0]

    @property
    def is_uri(self) -> bool:
        return "://" in self.uri

    @property
    def analysis_dir(self) -> Path:
        return self.local / ANALYSIS_DIR

    @property
    def journal(self) -> Path:
        """The Optuna journal: in the folder, else where spec.json says the search kept it."""
        here = self.local / JOURNAL_FILE
        if here.exists() or "journal" not in self.spec:
            return here
        return Path(self.spec["journal"])

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.uri if self.is_uri else f"file://{self.uri}")

    def exists(self) -> bool:
        import pyarrow.fs

        fs, path = self._fs()
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def study_name(self, label: str) -> str:
        """The Optuna study of one (arch, head) pair, or of the joint search: named once, at creation."""
        return self.name if label == "joint" else f"{self.name}:{label}"

    @cached_property
    def spec(self) -> dict:
        """spec.json ({} for an experiment made outside tuning.search)."""
        fs, path = self._fs()
        try:
            with fs.open_input_stream(f"{path}/{SPEC_FILE}") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return {}

    @property
    def settings(self) -> dict:
        return self.spec.get("settings", {})

    def studies(self) -> dict[str, str]:
        """Label ("arch/head", or "joint") -> Optuna study name, from spec.json."""
        studies = self.spec.get("studies") or {}
        return studies if isinstance(studies, dict) else {"joint": name for name in studies}


def mlflow_uri(exp: ExperimentFolder) -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the experiment folder (MLflow 3 refuses a bare
    ./mlruns folder store unless MLFLOW_ALLOW_FILE_STORE=true)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{exp.local / 'mlflow.db'}"
