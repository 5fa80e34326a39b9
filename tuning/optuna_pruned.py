"""OptunaSearch that tells Optuna the truth about trials ASHA stopped early.

Ray's OptunaSearch tells every trial that reported the metric as COMPLETE, so a trial
that ASHA stopped after its grace period reaches TPE as a finished trial with a
low-fidelity score. Here a trial that ends before `max_epochs` without an error is told
as PRUNED (Optuna keeps its last intermediate value), and a diverged one as FAIL.
"""
from __future__ import annotations

import warnings

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from common.status import DIVERGED, PRUNED, trial_status

_OPTUNA_STATE = {PRUNED: TrialState.PRUNED, DIVERGED: TrialState.FAIL}  # completed: Ray's own tell


class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        state = self._early_state(result, error)
        if state is None or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        trial = self._ot_trials[trial_id]
        if state == TrialState.PRUNED and self.metric in result:
            # Ray skips on_trial_result for the result on which ASHA stops a trial, so the
            # trial may have no intermediate value yet; Optuna takes the last one as its value.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already reported at this step: Optuna ignores it
                trial.report(result[self.metric], step=result.get("training_iteration", result["epoch"]))
        self._ot_study.tell(trial, state=state)
        self._completed_trials.add(trial_id)

    def _early_state(self, result: dict | None, error: bool) -> TrialState | None:
        if error or not result:
            return None
        return _OPTUNA_STATE.get(trial_status("TERMINATED", result, self._max_epochs))
