"""Per-pair budgets: equal trials per (arch, head), one study per pair, ASHA within each pair,
a search the user can steer, and data-driven head options."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from clitest import assert_one_line
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

import heads
import models
import search_spaces
from search_spaces._registry import DataInfo
from search_spaces.spaces import baseline
from tuning import search
from training.config import TrainConfig
from tuning.pairs import PairedSearch, PerPairASHA


def _trial(trial_id: str, arch: str, head: str):
    return SimpleNamespace(trial_id=trial_id, config={"arch": arch, "head": head})


def _asha():
    return ASHAScheduler(time_attr="training_iteration", metric="val_acc", mode="max", max_t=8, grace_period=1,
                         reduction_factor=2)


def _run(scheduler, results):
    """Feed (trial, val_acc at the first rung) in order; return each trial's decision."""
    decisions = {}
    for trial, acc in results:
        scheduler.on_trial_add(None, trial)
        decisions[trial.trial_id] = scheduler.on_trial_result(None, trial, {"training_iteration": 1,
                                                                             "val_acc": acc})
    return decisions


def test_asha_per_pair_never_stops_a_trial_for_another_pairs_results():
    strong = [(_trial(f"s{i}", "cnn", "softmax"), 0.6 + 0.1 * i) for i in range(3)]
    weak = [(_trial(f"w{i}", "cnn", "sampled"), 0.05 + 0.01 * i) for i in range(3)]  # a slow starter
    joint = _run(_asha(), strong + weak)
    assert [joint[t.trial_id] for t, _ in weak] == [TrialScheduler.STOP] * 3  # judged against softmax
    per_pair = _run(PerPairASHA(_asha), strong + weak)
    assert per_pair["w0"] == per_pair["w1"] == per_pair["w2"] == TrialScheduler.CONTINUE  # each best so far
    assert set(per_pair) == set(joint)
    # Within a pair ASHA still stops: a trial below its own pair's rung is stopped.
    assert _run(PerPairASHA(_asha), strong + [(_trial("s9", "cnn", "softmax"), 0.1)])["s9"] == TrialScheduler.STOP


class _Counting(Searcher):
    def __init__(self, pair):
        super().__init__(metric="val_acc", mode="max")
        self.pair, self.completed = pair, []

    def suggest(self, trial_id):
        return {"arch": self.pair[0], "head": self.pair[1]}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def test_paired_search_gives_every_pair_an_equal_share_and_routes_results():
    pairs = [("cnn", h) for h in ("softmax", "sampled", "gumbel")]
    subs = {p: _Counting(p) for p in pairs}
    searcher = PairedSearch(subs, "val_acc", "max")
    for n in range(1, 12):
        searcher.suggest(f"t{n}")
        assert max(searcher.counts.values()) - min(searcher.counts.values()) <= 1, (n, searcher.counts)
    assert searcher.counts == {("cnn", "softmax"): 4, ("cnn", "sampled"): 4, ("cnn", "gumbel"): 3}
    searcher.on_trial_complete("t2", {"val_acc": 0.1})
    assert subs[("cnn", "sampled")].completed == ["t2"] and not subs[("cnn", "softmax")].completed


# ----------------------------------------------------------------------------- priors and recipes
@pytest.mark.parametrize("name", search_spaces.list_spaces())
def test_every_pair_starts_from_a_valid_recipe(name):
    space = search_spaces.get_space(name)
    for pair in space.pairs():
        params = baseline(space, DataInfo(100, True), pair)
        config = {**TrainConfig().to_flat(), **search_spaces.sample_config(space, DataInfo(100, True), pair,
                                                                           _Replay(params))}
        TrainConfig.from_dict(config)
        recipe = models.MODELS.meta(pair[0])["recipe"]
        keys = ("optimizer", "batch_size", "momentum") if name.endswith("_heads") else ("momentum",)  # offered
        for key in keys:
            if key in params:
                assert params[key] == recipe[key], (pair, key)


class _Replay:
    """A trial that answers from recorded params (as Optuna answers an enqueued trial)."""

    def __init__(self, params):
        self.params = params

    def suggest_float(self, name, *a, **k):
        return self.params[name]

    suggest_int = suggest_categorical = suggest_float


def test_lr_ranges_fit_the_optimizer_and_the_batch_size():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_spaces.get_space("cnn_heads")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(200):
        trial = study.ask()
        config = search_spaces.sample_config(space, DataInfo(), ("cnn_base", "softmax"), trial)
        seen.setdefault(config["optimizer"], []).append((config["lr"] * 128 / config["batch_size"],
                                                         config["weight_decay"]))
        study.tell(trial, 0.0)
    sgd, adamw = np.array(seen["sgd"]), np.array(seen["adamw"])
    assert sgd[:, 0].max() > 0.05 and adamw[:, 0].max() <= 1e-2 * 1.0001  # lr per 128 images
    assert adamw[:, 1].max() > 1e-2 and sgd[:, 1].max() <= 1e-3  # decoupled decay reaches larger values


# ----------------------------------------------------------------------------- steering and data
def _dry_run(capsys, tmp_path, *argv) -> dict[str, list[dict]]:
    assert search.main(["--space", "smoke", "--storage", str(tmp_path), "--no-dashboard", *argv]) == 0
    out, studies, current = capsys.readouterr().out, {}, None
    for line in out.splitlines():
        if line.startswith("study "):
            current = studies.setdefault(line.split()[1], [])
        elif line.startswith("  config "):
            current.append(json.loads(line.split(": ", 1)[1]))
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
    return studies


@pytest.mark.parametrize("dataset,classes,chans,size", [("cifar10", 10, 3, 32), ("fashion_mnist", 10, 1, 28)])
def test_head_options_come_from_the_dataset(capsys, tmp_path, dataset, classes, chans, size):
    studies = _dry_run(capsys, tmp_path, "--dataset", dataset, "--dry-run", "12")
    assert len(studies) == len(heads.list_heads())
    for configs in studies.values():
        for config in configs:
            cfg = TrainConfig.from_dict(config)
            assert cfg.dataset == dataset
            head = heads.create_head(cfg.head, 16, classes, **cfg.head_kwargs)  # valid for 10 classes
            assert cfg.head_kwargs.get("tree") != "dataset"  # no hierarchy in this data
            if cfg.head == "sampled":
                assert cfg.head_kwargs["num_sampled"] < classes
            models.create_model(cfg.arch, in_chans=chans, img_size=size, **cfg.model_kwargs)
            assert head.num_classes == classes


def test_set_fixes_a_searched_parameter_and_restricts_the_pairs(capsys, tmp_path):
    studies = _dry_run(capsys, tmp_path, "--set", "lr=0.01", "--set", "head=[softmax,gumbel]", "--dry-run", "4",
                       "--set", "fake_data=True")
    assert sorted(s.split(":")[-1] for s in studies) == ["cnn/gumbel", "cnn/softmax"]
    assert all(c["lr"] == 0.01 for configs in studies.values() for c in configs)


@pytest.mark.parametrize("argv,message", [
    (["--set", "head=nope"], "--set head='nope': ['nope'] not in this space; its heads: ['adaptive'"),
    (["--set", "arch=resnet18"], "--set arch='resnet18': ['resnet18'] not in this space; its archs: ['cnn']"),
    (["--set", "num_samples=3"], "num_samples=3 leaves some of the 5 (arch, head) pairs without a trial"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: cifar10, cifar100, fashion_mnist"),
    (["--budget", "equal"], "argument --budget: invalid choice: 'equal'"),
])
def test_bad_steering_is_refused_before_anything_starts(capsys, tmp_path, argv, message):
    code = search.main(["--space", "smoke", "--storage", str(tmp_path), "--no-dashboard"] + argv)
    assert_one_line(code, capsys.readouterr().err, message)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- end to end on Ray
@pytest.mark.slow
def test_smoke_gives_each_pair_its_share_its_study_and_its_recipe_first(smoke_experiment):
    from tuning.experiment import Experiment

    exp = Experiment.open(smoke_experiment[0])
    trials = exp.trials()
    counts = trials.groupby(["arch", "head"]).size()
    assert len(counts) == len(heads.list_heads()) and counts.max() - counts.min() <= 1
    space = search_spaces.get_space("smoke")
    info = DataInfo(100, True)
    for (arch, head), name in ((tuple(label.split("/")), name) for label, name in exp.studies().items()):
        study = exp.load_study(name)
        assert len(study.trials) == counts[(arch, head)]  # one study per pair holds that pair's trials
        assert study.trials[0].params == baseline(space, info, (arch, head))  # the recipe ran first


def _search(tmp_path, name, *argv):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = search.main(["--space", "smoke", "--storage", str(tmp_path), "--name", name, "--no-dashboard",
                            "--set", "epochs=1", *argv])
    from tuning.experiment import Experiment

    return code, Experiment.open(tmp_path / name), out.getvalue()


@pytest.mark.slow
def test_set_lr_and_head_train_exactly_that_and_the_study_records_no_phantom(tmp_path):
    code, exp, _ = _search(tmp_path, "fixed", "--set", "lr=0.01", "--set", "head=softmax", "--set", "num_samples=3")
    assert code == 0
    trials = exp.trials()
    assert len(trials) == 3 and set(trials["head"]) == {"softmax"} and set(trials["lr"]) == {0.01}
    assert list(exp.studies()) == ["cnn/softmax"]
    assert all("lr" not in t.params for t in exp.load_study(exp.study_names()[0]).trials)


@pytest.mark.slow
def test_joint_budget_keeps_one_study_over_all_pairs(tmp_path):
    code, exp, out = _search(tmp_path, "joint", "--budget", "joint", "--set", "num_samples=6")
    assert code == 0 and exp.spec["budget"] == "joint" and list(exp.studies()) == ["joint"]
    study = exp.load_study()
    assert len(study.trials) == len(exp.trials()) == 6 and "(joint budget)" in out
    assert {t.params["head"] for t in study.trials[:5]} == set(heads.list_heads())  # every pair's recipe first


@pytest.mark.slow
def test_a_grayscale_search_trains_every_head(tmp_path):
    code, exp, _ = _search(tmp_path, "gray", "--dataset", "fashion_mnist", "--set", "num_samples=5")
    trials = exp.trials()
    assert code == 0 and {k: exp.spec["dataset"][k] for k in ("name", "num_classes", "in_chans", "img_size",
                                                               "hierarchy", "official_split")} == {
        "name": "fashion_mnist", "num_classes": 10, "in_chans": 1, "img_size": 28, "hierarchy": False,
        "official_split": None}  # generated data has no official split
    assert exp.spec["dataset"]["classes"][:2] == ["t-shirt/top", "trouser"]
    assert set(trials["head"]) == set(heads.list_heads()) and set(trials["status"]) <= {"completed", "pruned"}


def test_a_set_value_wins_over_what_a_head_derives(capsys, tmp_path):
    studies = _dry_run(capsys, tmp_path, "--set", "head=adaptive", "--set", "head_cutoffs=[10,50]", "--dry-run", "3",
                       "--set", "fake_data=True")
    assert [c["head_cutoffs"] for configs in studies.values() for c in configs] == [[10, 50]] * 3
