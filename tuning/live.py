"""The live page of a search: every trial of every pair in MLflow's tracking store, for the MLflow UI.

`LiveRuns` is Ray's own MLflowLoggerCallback with what a sweep's page needs on each run: the pair,
backbone and head, the trial id and its status (running, completed, pruned, diverged, error) as tags,
so that the UI's runs table filters (`tags.pair = "cnn/gumbel"`, `tags.status = "pruned"`), groups by
pair (a per-pair leaderboard, sorted by val_acc) and charts every trial's val_acc curve coloured by
tag. A resumed search writes to the same runs (found by trial id), and the store, a SQLite file in
the experiment folder unless MLFLOW_TRACKING_URI says otherwise, outlives the search:

    mlflow ui --backend-store-uri sqlite:///<experiment>/mlflow.db --host 127.0.0.1
"""
from __future__ import annotations

import numbers
import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, DONE, SHOULD_CHECKPOINT, TRAINING_ITERATION

from common.status import ERROR, RUNNING, trial_status
from tuning.folder import mlflow_uri

RAY_KEYS = {*AUTO_RESULT_KEYS, DONE, SHOULD_CHECKPOINT}


class LiveRuns(MLflowLoggerCallback):
    def __init__(self, tracking_uri: str, experiment_name: str, max_epochs: int):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name, save_artifact=False)
        self.max_epochs = max_epochs

    def setup(self, *args, **kwargs):
        # MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ: a second search in this
        # process (a notebook, the tests) would then log to this one's store. Put it back as it was.
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            super().setup(*args, **kwargs)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self.mlflow_util.experiment_id

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            config = trial.config
            pair = f"{config.get('arch')}/{config.get('head')}"
            found = self.client.search_runs([self.experiment_id], f"tags.trial_id = '{trial.trial_id}'",
                                            max_results=1)  # a resumed trial goes on in its run
            if found:
                self._trial_runs[trial] = found[0].info.run_id
                self.client.update_run(found[0].info.run_id, status="RUNNING")
            else:
                run = self.mlflow_util.start_run(run_name=f"{pair} {trial.trial_id}", tags={
                    "trial_id": trial.trial_id, "pair": pair, "arch": str(config.get("arch")),
                    "head": str(config.get("head")), "status": RUNNING})
                self._trial_runs[trial] = run.info.run_id
        self._set_status(trial, RUNNING)
        if not self.log_params_on_trial_end:
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=trial.config)

    def log_trial_result(self, iteration: int, trial, result: dict):
        # Ray's callback logs every number of the result: Ray's bookkeeping (pid, timestamp, done, ...) and
        # the trial's config (`config/lr`, ...) too, 30 charts that bury val_acc in the UI's chart view, and
        # any string that parses as a number (a trial id of digits). The trial's own numbers only, one point
        # per epoch; the config is in the params.
        metrics = {k: v for k, v in result.items()
                   if k not in RAY_KEYS and isinstance(v, numbers.Real) and not isinstance(v, bool)}
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics,
                                     step=result[TRAINING_ITERATION])

    def log_trial_end(self, trial, failed: bool = False):
        super().log_trial_end(trial, failed)
        self._set_status(trial, ERROR if failed else trial_status("TERMINATED", trial.last_result, self.max_epochs))

    def _set_status(self, trial, status: str) -> None:
        self.client.set_tag(self._trial_runs[trial], "status", status)


def live_runs(exp, max_epochs: int) -> LiveRuns:
    return LiveRuns(mlflow_uri(exp), exp.name, max_epochs)


def runs_page(exp, port: int = 5000) -> str:
    """The address of the search's runs table in the MLflow UI (`mlflow ui` serves on port 5000): MLflow 3
    opens an experiment on its GenAI overview, where no trial is shown. The experiment is made here if
    it is new (the callback then finds it by name), so the address is right before the first trial."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(exp))
    found = client.get_experiment_by_name(exp.name)
    experiment_id = found.experiment_id if found else client.create_experiment(exp.name)
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
