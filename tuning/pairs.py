"""Per-pair budgets inside one Ray Tune experiment: a fair comparison of (backbone, head) pairs.

A single TPE study over `head` spends its budget on whichever head looked best early, and
one ASHA ranks every trial against every other, so a head that starts slowly is stopped by
another head's trials. Here, within one Tuner (one resume, one progress table, trials of
all pairs running concurrently):
- `PairedSearch` keeps one searcher (its own Optuna study) per pair and hands the next trial
  to the pair with the fewest so far, so every pair gets the same number of trials (+-1);
  TPE learns within the pair.
- `PerPairASHA` keeps one ASHA per pair: a trial is compared only with its own pair's trials.
"""
from __future__ import annotations

import pickle
from typing import Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from search_spaces._registry import Pair


def pair_of(config: dict) -> Pair:
    return config["arch"], config["head"]


def trial_folder(config: dict, trial_id: str) -> str:
    """A trial's folder name: its pair and Ray trial id (`cnn-softmax-c850ebc2`), not Ray's
    150-character config dump. The searcher names it too, for the Optuna trial's attributes."""
    return f"{config.get('arch', 'trial')}-{config.get('head', 'trial')}-{trial_id}"


def trial_dirname(trial) -> str:
    """Ray Tune's `trial_dirname_creator`."""
    return trial_folder(trial.config, trial.trial_id)


class PairedSearch(Searcher):
    def __init__(self, searchers: dict[Pair, Searcher], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers  # in the order the pairs take turns
        self.counts = {pair: 0 for pair in searchers}
        self.pair_of_trial: dict[str, Pair] = {}

    def suggest(self, trial_id: str) -> dict | None:
        pair = min(self.counts, key=self.counts.get)  # fewest trials so far; ties in the pairs' order
        config = self.searchers[pair].suggest(trial_id)
        if config is not None and config is not Searcher.FINISHED:
            self.counts[pair] += 1
            self.pair_of_trial[trial_id] = pair
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.pair_of_trial:
            self.searchers[self.pair_of_trial[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.pair_of_trial:
            self.searchers[self.pair_of_trial[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        for searcher in self.searchers.values():
            if hasattr(searcher, "tell_ended"):  # its ended trials, told as Ray saves them ended
                searcher.tell_ended()
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        journal = self.__dict__.get("journal")  # this run's journal (see PruningAwareOptunaSearch.use_journal)
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        if journal:
            self.journal = journal
            for searcher in self.searchers.values():
                searcher.use_journal(journal)


class PerPairASHA(FIFOScheduler):
    """One ASHAScheduler per pair, made on the pair's first trial by `make()`."""

    def __init__(self, make: Callable[[], ASHAScheduler], key: Callable[[dict], Pair] = pair_of):
        super().__init__()
        self.make, self.key = make, key
        self.ashas: dict[Pair, ASHAScheduler] = {}
        self._properties = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._properties = {"metric": metric, "mode": mode, **spec}
        return all(a.set_search_properties(metric, mode, **spec) for a in self.ashas.values())

    def _asha(self, trial) -> ASHAScheduler:
        pair = self.key(trial.config)
        if pair not in self.ashas:
            self.ashas[pair] = self.make()
            if self._properties:
                self.ashas[pair].set_search_properties(**self._properties)
        return self.ashas[pair]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per (arch, head) pair: " + ", ".join(
            f"{a}/{h} stopped {s._num_stopped}" for (a, h), s in self.ashas.items())
