"""analysis: DataFrames, metrics, retrain and report, on a real smoke experiment."""
import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

import analysis
from analysis import report, retrain, runs
from analysis.metrics import classification_metrics, expected_calibration_error


def _known_inputs():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    logits = rng.normal(size=(40, 4)) + 2.0 * np.eye(4)[y]
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return y, log_p


def test_every_metric_equals_scikit_learn():
    y, log_p = _known_inputs()
    p = np.exp(log_p)
    pred = p.argmax(1)
    m = classification_metrics(y, log_p, class_to_group=np.array([0, 0, 1, 1]))
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["top5_accuracy"] == skm.top_k_accuracy_score(y, p, k=3)  # k is capped below C=4
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    for avg in ("macro", "weighted"):
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(y, pred, average=avg))
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(y, pred, average=avg, zero_division=0))
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(y, pred, average=avg))
    assert (m["confusion"] == skm.confusion_matrix(y, pred)).all()
    groups = np.array([0, 0, 1, 1])
    assert m["superclass_accuracy"] == skm.accuracy_score(groups[y], groups[pred])
    assert m["confusion_coarse"].shape == (2, 2)


def test_expected_calibration_error_by_hand():
    # Two bins used: confidence 0.9 (2 right of 2) and 0.6 (1 right of 2): |1-0.9|/2 + |0.5-0.6|/2 = 0.1
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    assert expected_calibration_error(probs, np.array([0, 1, 0, 0]), n_bins=10) == pytest.approx(0.1)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_roc_auc_is_nan_when_a_class_has_no_test_example():
    y, log_p = _known_inputs()
    keep = y != 3
    assert np.isnan(classification_metrics(y[keep], log_p[keep])["roc_auc_ovr_macro"])


@pytest.mark.slow
def test_load_and_history(smoke_experiment):
    exp, _, _ = smoke_experiment
    trials, hist = analysis.load(exp), analysis.history(exp)
    assert len(trials) == 12 and trials.trial_id.is_unique
    assert {"arch", "head", "lr", "batch_size", "status", "epochs_run", "best_val_acc", "last_val_acc",
            "time_total_s"} <= set(trials.columns)
    assert set(trials.status) <= {"completed", "pruned"} and (trials.status == "pruned").any()
    assert (trials.loc[trials.status == "completed", "epochs_run"] == 4).all()
    assert len(hist) == trials.epochs_run.sum()
    per_trial = hist.groupby("trial_id").val_acc.max()
    assert np.allclose(per_trial[trials.trial_id].values, trials.best_val_acc.values)
    assert not [c for c in trials.columns if "test" in c]  # the search never saw the test set


@pytest.mark.slow
def test_load_takes_a_relative_path(smoke_experiment, monkeypatch):
    exp = smoke_experiment[0]
    monkeypatch.chdir(exp.parent)
    assert len(analysis.load(exp.name)) == 12


@pytest.mark.slow
def test_best_picks_top_validation_per_group(smoke_experiment):
    trials = analysis.load(smoke_experiment[0])
    chosen = analysis.best(trials)
    expected = trials[trials.status != "error"].groupby(["arch", "head"]).best_val_acc.max()
    assert dict(zip(zip(chosen.arch, chosen["head"]), chosen.best_val_acc)) == expected.to_dict()
    assert len(analysis.best(trials, k=2)) <= 2 * len(chosen)
    with pytest.raises(ValueError, match="k=0 must be >= 1"):
        analysis.best(trials, k=0)


@pytest.fixture(scope="module")
def retrained(smoke_experiment):
    exp = smoke_experiment[0]
    with contextlib.redirect_stdout(io.StringIO()):
        code = retrain.main([str(exp), "--seeds", "2", "--epochs", "2"])
        report_code = report.main([str(exp)])
    return exp, code, report_code


@pytest.mark.slow
def test_retrain_writes_final_table(retrained):
    exp, code, _ = retrained
    assert code == 0
    final = pd.read_parquet(exp / "analysis" / "final.parquet")
    groups = len(analysis.best(analysis.load(exp)))
    assert len(final) == 2 * groups and sorted(set(final.seed)) == [0, 1]
    for col in ("accuracy", "top5_accuracy", "precision_macro", "recall_weighted", "f1_macro", "cohen_kappa",
                "roc_auc_ovr_macro", "log_loss", "ece", "superclass_accuracy", "epoch_time_s_mean",
                "epoch_time_s_std", "images_per_s", "head_time_share", "params", "head_train_madds"):
        assert final[col].notna().all(), col
    assert (final.status == "completed").all() and (final.epochs == 2).all()
    # a timing: measured, finite and positive; how large it is is a benchmark's claim, not a test's
    assert (final.head_time_share > 0).all() and np.isfinite(final.head_time_share).all()
    fine = np.load(exp / "analysis" / final.confusion_file.iloc[0])
    assert fine.shape == (100, 100) and fine.sum() == 400  # every test image once
    assert np.load(exp / "analysis" / final.confusion_coarse_file.iloc[0]).shape == (20, 20)


@pytest.mark.slow
def test_report_has_every_section_and_figure(retrained):
    exp, _, report_code = retrained
    assert report_code == 0
    text = (exp / "analysis" / "report.md").read_text()
    for section in ("## Summary (test set, mean +- std over seeds)", "## Accuracy against epoch time",
                    "## Learning curves of the best trials", "## ASHA rungs", "## Confusion matrices",
                    "## Parameter importance", "## Cost of the heads", "## Observations", "## Provenance"):
        assert section in text, section
    for fig in ("pareto", "learning_curves", "asha_rungs", "confusion_fine", "confusion_coarse"):
        assert (exp / "analysis" / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in text
    assert " +- " in text and "ASHA stopped" in text and "generated data" in text


def test_observations_flag_combinations_at_chance():
    trials = pd.DataFrame({"status": ["completed", "pruned"], "epochs_run": [4, 1]})
    final = pd.DataFrame({"arch": ["cnn"] * 4, "head": ["softmax", "softmax", "hierarchical", "hierarchical"],
                          "status": ["completed"] * 4, "accuracy": [0.011, 0.009, 0.30, 0.32],
                          "head_time_share": [0.01] * 4, "ece": [0.02] * 4, "epoch_time_s_mean": [1.0, 1.0, 1.2, 1.2],
                          "num_classes": [100] * 4, "seed": [0, 1, 0, 1]})
    notes = report.observations(final, trials, 4, None)
    assert any(n.startswith("At chance level (accuracy below 2/C = 0.0200): cnn+softmax (0.0100)") for n in notes)
    assert "ASHA stopped 1 of 2 finished trials early, saving 38% of the epochs" in notes[0]
    # paired by seed: differences 0.289 and 0.311, so the 95% CI is 0.300 +- 12.71 * 0.011
    assert any("hierarchical vs softmax: accuracy +0.3000, 95% CI [+0.1602, +0.4398] over 2 seed(s): better than "
               "softmax; epoch time x1.20" in n for n in notes), notes
    calibrated = next(n for n in notes if n.startswith("Best calibrated"))
    assert "softmax" not in calibrated  # at chance: left out of the calibration ranking


def test_test_set_is_evaluated_once_per_retrained_model(fake_dir, tmp_path, monkeypatch):
    from training import data, engine

    calls, real = [], engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda trained, loader, **kw: calls.append(loader.num_images)
                        or real(trained, loader, **kw))
    ds = data.load_dataset("cifar100", fake_dir, download=False)
    config = {"arch": "cnn", "model_widths": [8], "model_fc_widths": [16], "epochs": 2, "batch_size": 64,
              "val_fraction": 0.1}
    split = data.full_train_split(ds)
    row = runs.retrain_one(config, 0, split, tmp_path, "x")
    seen = min(engine.SEEN_SAMPLE, len(split.y_train))  # each epoch's accuracy so far, on training images
    assert calls == [seen, seen, len(ds.y_test)]  # no validation pass, one test pass
    assert row["epochs"] == 2 and 0 <= row["accuracy"] <= 1


@pytest.mark.parametrize("cli", [report.main, retrain.main])
def test_a_folder_that_is_not_an_experiment(tmp_path, capsys, cli):
    with pytest.raises(analysis.NotAnExperimentError, match="is not a headsweep experiment"):
        analysis.load(tmp_path)
    assert cli([str(tmp_path)]) == 2
    assert "is not a headsweep experiment" in capsys.readouterr().err


def _always_fails(trial, arch, head):
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    return {"head_cutoffs": [500]}


@pytest.mark.slow
def test_report_says_when_every_trial_failed(tmp_path, monkeypatch):
    import search_spaces
    from tuning import search

    smoke = search_spaces.get_space("smoke")
    failing = search_spaces.Space("failing", _always_fails, ("cnn",), ("adaptive",), smoke.constants,
                                  {**smoke.settings, "num_samples": 2, "max_failures": 0})
    monkeypatch.setattr(search_spaces, "get_space", lambda name: failing)
    with contextlib.redirect_stdout(io.StringIO()):
        code = search.main(["--space", "failing", "--storage", str(tmp_path), "--name", "f", "--no-dashboard"])
    assert code == 1  # every trial failed
    assert report.main([str(tmp_path / "f")]) == 0
    text = (tmp_path / "f" / "analysis" / "report.md").read_text()
    assert "## Every trial failed" in text and "cutoffs=[500] must satisfy" in text
    assert retrain.main([str(tmp_path / "f")]) == 2


def test_a_runs_progress_lines_come_every_25_s_and_at_each_epoch_with_v(monkeypatch, capsys):
    """No silent minute: a line at least every 25 s of training (epoch, step, time in, time left by the pace
    so far); -v adds one at the end of every epoch."""
    from analysis import runs

    clock = [0.0]
    monkeypatch.setattr(runs.time, "perf_counter", lambda: clock[0])

    def train(verbose: bool) -> list[str]:
        clock[0] = 0.0
        progress = runs.Progress("airnet_s-softmax-x", 0, epochs=2, verbose=verbose)
        for epoch in (1, 2):  # 2 epochs of 10 steps, 6 s a step; the engine's on_epoch after the last step
            for step in range(1, 11):
                clock[0] += 6.0
                progress.step(step, 10)
            progress.epoch_done({"epoch": epoch, "train_loss": 4.5 / epoch, "train_acc": 0.125 * epoch,
                                 "train_acc_images": 1500})
        return capsys.readouterr().out.splitlines()

    quiet = train(verbose=False)
    # a line at the first step past 25 s since the last one: 30, 60, 90, 120 s
    assert [line.split(", ")[-2] for line in quiet] == ["0m30s in", "1m00s in", "1m30s in", "2m00s in"]
    assert quiet[0] == "  airnet_s-softmax-x seed 0: epoch 1/2, step 5/10, 0m30s in, ~1m30s left"
    assert quiet[1] == "  airnet_s-softmax-x seed 0: epoch 1/2 done, 1m00s in, ~1m00s left"
    assert quiet[2] == ("  airnet_s-softmax-x seed 0: epoch 2/2, step 5/10, epoch 1 train loss 4.500 acc 0.125 "
                        "(1500 training images), 1m30s in, ~0m30s left")  # a retrain has no validation split
    verbose = train(verbose=True)
    assert sum(" done, " in line for line in verbose) == 2
    assert verbose[-1].endswith("epoch 2/2 done, epoch 1 train loss 4.500 acc 0.125 (1500 training images), 2m00s "
                                "in, ~0m00s left")
