"""OptunaSearch that tells Optuna the truth about trials ASHA stopped early.

Ray's OptunaSearch tells every trial that reported the metric as COMPLETE, so a trial
that ASHA stopped after its grace period reaches TPE as a finished trial with a
low-fidelity score. Here a trial that ends before `max_epochs` without an error is told
as PRUNED (Optuna keeps its last intermediate value), and a diverged one as FAIL.

The study names its objective (optuna-dashboard shows "val_acc", not "Objective 0"), and each
Optuna trial carries its Ray trial id and folder as user attributes (`ray_trial_id`,
`ray_trial_dir`), so a point in optuna-dashboard leads to the trial's files.
"""
from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from common.status import DIVERGED, ERROR, PRUNED, trial_status
from tuning.pairs import trial_folder

_OPTUNA_STATE = {PRUNED: TrialState.PRUNED, DIVERGED: TrialState.FAIL, ERROR: TrialState.FAIL}  # completed: Ray's own tell


class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, experiment: str = "", **kwargs):
        self._max_epochs, self._experiment = max_epochs, experiment  # before super(): it sets the study up
        super().__init__(*args, **kwargs)

    def restore(self, checkpoint_path: str) -> None:
        journal = self.__dict__.get("journal")  # set by this run (search.restore_tuner), not the pickled one
        super().restore(checkpoint_path)
        if journal:
            self.use_journal(journal)

    def use_journal(self, journal: str) -> None:
        """Point the restored study (and its trials in flight) at `journal`, this experiment's own: the
        pickled state names the journal of the folder it was saved in, which a copied experiment
        must not append to."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self._storage = JournalStorage(JournalFileBackend(journal))
        old = self._ot_study
        self._ot_study = optuna.load_study(study_name=old.study_name, storage=self._storage, sampler=old.sampler,
                                           pruner=old.pruner)
        self._ot_trials = {tid: optuna.Trial(self._ot_study, t._trial_id) for tid, t in self._ot_trials.items()}
        self.journal = journal
        self.adopt_orphans()

    def adopt_orphans(self) -> None:
        """After a killed driver: the Optuna trials it asked for after Ray's last saved state are
        RUNNING in the journal and unknown to Ray. The next Ray trials take them over (`suggest`),
        so each such config is the same Optuna trial, trained once, not proposed again. The
        sampler's random state is the saved one, which drew those very configs: it is reseeded,
        or the next proposals would repeat them."""
        known = {t._trial_id for t in self._ot_trials.values()}
        self._orphans = [t._trial_id for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if t._trial_id not in known]
        self._ot_study.sampler.reseed_rng()

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2
            self._ot_study.set_metric_names([self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        orphans = self.__dict__.setdefault("_orphans", [])
        adopted = bool(orphans) and trial_id not in self._ot_trials
        if adopted:  # its parameters are set: the define-by-run space returns them as they were
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphans.pop(0))
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if config is not None and trial is not None and (adopted or "ray_trial_id" not in trial.user_attrs):
            if adopted:
                trial.set_user_attr("orphaned_ray_trial_id", trial.user_attrs.get("ray_trial_id"))
            trial.set_user_attr("ray_trial_id", trial_id)
            trial.set_user_attr("ray_trial_dir", f"{self._experiment}/{trial_folder(config, trial_id)}")
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """Told to Optuna at Ray's next save of its state (`save`), not now: Ray writes the trial
        as ended in that same save, so a driver killed before it leaves the Optuna trial RUNNING
        (a resume takes it over, `adopt_orphans`) rather than finished in Optuna and unknown to Ray."""
        self.__dict__.setdefault("_untold", []).append((trial_id, result, error))

    def tell_ended(self) -> None:
        untold, self._untold = self.__dict__.get("_untold", []), []
        for trial_id, result, error in untold:
            self._tell(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self.tell_ended()  # Ray calls this right after writing its experiment state (TuneController.save_to_dir)
        super().save(checkpoint_path)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        state = self._early_state(result, error)
        if state is None or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)  # COMPLETE or FAIL: Ray's tell
        trial = self._ot_trials[trial_id]
        if state == TrialState.PRUNED and self.metric in result:
            # Ray skips on_trial_result for the result on which ASHA stops a trial, so the
            # trial may have no intermediate value yet; Optuna takes the last one as its value.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already reported at this step: Optuna ignores it
                trial.report(result[self.metric], step=result.get("training_iteration", result["epoch"]))
        # skip_if_finished: a trial that ended after Ray's last saved state was told then; Ray
        # resumed it from that state and ends it again.
        self._ot_study.tell(trial, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)

    def _early_state(self, result: dict | None, error: bool) -> TrialState | None:
        if error or not result:
            return None
        return _OPTUNA_STATE.get(trial_status("TERMINATED", result, self._max_epochs))
