"""Heads against softmax: paired over seeds, honest with one seed; chance rows off the front;
the data caveat that fits the dataset."""
import pandas as pd
import pytest

from analysis import report
from analysis.compare import at_chance, data_caveat, paired_difference, versus_softmax


def _final(acc: dict, seeds=(0, 1, 2), classes=100) -> pd.DataFrame:
    rows = [{"arch": "cnn", "head": h, "seed": s, "accuracy": a[i], "status": "completed", "num_classes": classes,
             "epoch_time_s_mean": 10.0 if h == "softmax" else 8.0, "head_time_share": 0.1 if h == "softmax" else 0.05,
             "ece": 0.05}
            for h, a in acc.items() for i, s in enumerate(seeds)]
    return pd.DataFrame(rows)


def test_paired_difference_by_hand():
    head, base = pd.Series([0.50, 0.52, 0.55], index=[0, 1, 2]), pd.Series([0.48, 0.49, 0.50], index=[0, 1, 2])
    out = paired_difference(head, base)  # differences 0.02, 0.03, 0.05: mean 0.0333, sd 0.01528, t(2) 4.303
    assert out["diff"] == pytest.approx(0.03333, abs=1e-4)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.03333 - 0.03795, 0.03333 + 0.03795), abs=1e-4)
    assert out["verdict"] == "within the seed spread" and out["seeds"] == 3


def test_one_seed_makes_no_claim():
    out = paired_difference(pd.Series([0.6], index=[0]), pd.Series([0.2], index=[0]))
    assert out["verdict"] == "one seed: no claim" and out["diff"] == pytest.approx(0.4)
    notes = report.observations(_final({"softmax": [0.3], "gumbel": [0.5]}, seeds=(0,)),
                                pd.DataFrame({"status": ["completed"], "epochs_run": [4]}), 4, None)
    assert any("with one seed there is no spread to judge it against, so no claim is made" in n for n in notes)
    assert not any("larger than the seed-to-seed" in n for n in notes)


def test_versus_softmax_ratios_and_verdicts():
    vs = versus_softmax(_final({"softmax": [0.30, 0.31, 0.32], "sampled": [0.20, 0.21, 0.215]}),
                        pd.DataFrame({"arch": ["cnn"] * 5, "head": ["softmax"] * 3 + ["sampled"] * 2}))
    row = vs.set_index("head").loc["sampled"]
    assert row.verdict == "worse than softmax" and row.ci_high < 0
    assert row.epoch_time_vs_softmax == pytest.approx(0.8) and row.head_time_vs_softmax == pytest.approx(0.4)
    assert vs.set_index("head").trials.to_dict() == {"sampled": 2, "softmax": 3}


def test_chance_rows_stay_off_the_pareto_front(tmp_path):
    final = _final({"softmax": [0.30, 0.31, 0.32], "gumbel": [0.01, 0.01, 0.012]})
    final.loc[final["head"] == "gumbel", "epoch_time_s_mean"] = 1.0  # fastest, but learned nothing
    assert at_chance(final) == {("cnn", "gumbel")}
    _, front = report.plot_pareto(final, tmp_path)
    assert list(front["head"]) == ["softmax"]


@pytest.mark.parametrize("spec,expected", [
    ({"settings": {"fake_data": True}}, "**generated data**"),
    ({"constants": {"dataset": "imagefolder:/x"}}, "your own data"),
    ({"constants": {"dataset": "cifar100"}, "dataset": {"official_split": False}}, "split is not the official"),
    ({"constants": {"dataset": "cifar100"}, "dataset": {"official_split": True}}, "official train/test split (md5"),
])
def test_the_caveat_fits_the_data(spec, expected):
    assert expected in data_caveat(spec)


def test_an_unrecorded_split_is_checked_against_the_official_md5(real_dir):
    assert "not the official" in data_caveat({"constants": {"dataset": "cifar100"}, "data_dir": str(real_dir)})


def test_the_lead_is_judged_by_the_same_paired_test():
    trials = pd.DataFrame({"status": ["completed"], "epochs_run": [4]})
    clear = report.observations(_final({"softmax": [0.30, 0.31, 0.32], "gumbel": [0.20, 0.21, 0.215]}), trials, 4, None)
    assert any("Its lead over cnn + gumbel is 0.1017, 95% CI [" in n and n.endswith(": a real lead.") for n in clear)
    close = report.observations(_final({"softmax": [0.30, 0.33, 0.31], "gumbel": [0.31, 0.30, 0.32]}), trials, 4, None)
    assert any("Its lead over cnn + gumbel" in n and n.endswith(": within the seed spread.") for n in close)


def test_adaptive_caveat_only_when_adaptive_ran_on_tied_class_counts():
    from analysis.compare import adaptive_caveat

    tied = {"dataset": {"class_counts_tie": True}}
    assert "arbitrary" in adaptive_caveat(tied, ["softmax", "adaptive"])
    assert adaptive_caveat(tied, ["softmax"]) is None
    assert adaptive_caveat({"dataset": {"class_counts_tie": False}}, ["adaptive"]) is None
