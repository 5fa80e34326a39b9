"""Each head against softmax on the same backbone, with the spread over seeds; chance level;
which caveat fits the data.

The difference of test accuracy is paired by seed (head and softmax retrained with the same
seed, hence the same data order and backbone initialisation), and judged by a paired t-test
over seeds: its 95% confidence interval of the mean difference, and whether that interval
excludes zero. With one seed there is no spread, and no claim is made.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from common.status import ERROR
from training import data

BASELINE_HEAD = "softmax"


def finished(final: pd.DataFrame) -> pd.DataFrame:
    return final[final["status"] != ERROR]


def at_chance(final: pd.DataFrame) -> set[tuple[str, str]]:
    """(arch, head) pairs whose mean test accuracy is below twice chance (2/C): they never learned."""
    ok = finished(final)
    if ok.empty or "num_classes" not in ok:
        return set()
    mean = ok.groupby(["arch", "head"])["accuracy"].mean()
    return {pair for pair, m in mean.items() if m < 2.0 / ok["num_classes"].iloc[0]}


def paired_difference(head: pd.Series, base: pd.Series) -> dict:
    """Mean of head - base over the seeds both have, its 95% CI (paired t) and the verdict."""
    seeds = sorted(set(head.index) & set(base.index))
    d = (head.loc[seeds] - base.loc[seeds]).to_numpy(dtype=float)
    out = {"seeds": len(seeds), "diff": float(d.mean()) if len(d) else float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    if len(d) < 2:
        out["verdict"] = "one seed: no claim" if len(d) == 1 else "no common seed"
        return out
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half,
               p_value=float(stats.ttest_rel(head.loc[seeds], base.loc[seeds]).pvalue) if d.std() > 0 else 0.0)
    if out["ci_low"] > 0:
        out["verdict"] = "better than softmax"
    elif out["ci_high"] < 0:
        out["verdict"] = "worse than softmax"
    else:
        out["verdict"] = "within the seed spread"
    return out


def versus_softmax(final: pd.DataFrame, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per backbone, every head against softmax: accuracy difference (paired over seeds), epoch time
    and head time relative to softmax, and the trials the search gave the pair."""
    ok, rows = finished(final), []
    for arch, group in ok.groupby("arch"):
        by_head = {h: g.set_index("seed") for h, g in group.groupby("head")}
        if BASELINE_HEAD not in by_head:
            continue
        base = by_head[BASELINE_HEAD]
        for head, g in sorted(by_head.items()):
            row = {"arch": arch, "head": head, "accuracy": g["accuracy"].mean(),
                   "accuracy_std": g["accuracy"].std(ddof=1) if len(g) > 1 else float("nan")}
            if head != BASELINE_HEAD:
                row.update(paired_difference(g["accuracy"], base["accuracy"]))
            else:
                row.update(seeds=len(g), verdict="the baseline")
            row["epoch_time_vs_softmax"] = g["epoch_time_s_mean"].mean() / base["epoch_time_s_mean"].mean()
            head_s = g["epoch_time_s_mean"] * g["head_time_share"]
            base_head_s = base["epoch_time_s_mean"] * base["head_time_share"]
            row["head_time_vs_softmax"] = head_s.mean() / base_head_s.mean()
            if trials is not None and len(trials):
                row["trials"] = int(((trials["arch"] == arch) & (trials["head"] == head)).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def adaptive_caveat(spec: dict, heads_used) -> str | None:
    """Adaptive softmax puts its most frequent classes in the cheap head cluster; with equal class
    counts (CIFAR-100) there is no such order, and which classes land there is arbitrary (ties
    follow the hierarchy's groups, or class ids)."""
    if "adaptive" in set(heads_used) and spec.get("dataset", {}).get("class_counts_tie"):
        return ("adaptive: every class has the same number of training images, so frequency ranks nothing: ties "
                "fall superclass by superclass where the dataset has a hierarchy (ties=hierarchy, the default), "
                "in class-id order otherwise, and which classes share its full-rank head cluster is arbitrary; "
                "its saving comes from the low-rank tail clusters alone.")
    return None


def data_caveat(spec: dict) -> str:
    """The caveat that fits the dataset the experiment used."""
    info, name = spec.get("dataset", {}), spec.get("constants", {}).get("dataset", "?")
    if spec.get("settings", {}).get("fake_data"):
        return "**generated data** (smoke): these numbers check the pipeline, not the models."
    if name.startswith("imagefolder:"):
        return f"your own data (`{name}`): there are no published numbers on it to compare with."
    official = info.get("official_split")
    if "official_split" not in info and spec.get("data_dir"):  # not recorded: check the files if they are here
        official = data.official_split(name, spec["data_dir"]) if Path(spec["data_dir"]).is_dir() else None
    if official is False:
        return (f"the `{name}` files are not the official ones (their md5 sums differ): this copy's train/test "
                "split is not the official split (the shared copy in `../shared/data` has a class-balanced test "
                "set drawn with a fixed seed), so test accuracies compare with published ones only approximately.")
    if official:
        return f"`{name}` with its official train/test split (md5 checked)."
    return (f"`{name}`: whether its files hold the official train/test split was not recorded; published "
            "numbers compare only if they do.")
