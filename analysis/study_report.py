"""The study's committed results: `results/study-<scale>/` from the experiments `analysis.study` ran.

`write_results` gathers every part (its trials, its retrained models' test metrics, its own
report), the heads' benchmark and the stages' wall times into one `report.md` whose sections
and table columns do not depend on the scale (`structure` lists them: a test checks the
committed report against what this module writes today), plus `trials.parquet`,
`final.parquet`, `history.parquet` (per trial-epoch), `spec.json`, `command.txt`, the figures, and each part's own report beside it.
"""
from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import heads
from analysis.compare import data_caveat, finished, paired_difference, versus_softmax
from analysis.report_doc import _plt, plot_confusion
from analysis.results import to_parquet
from common.status import ERROR, FINISHED, PRUNED

METRICS = {"accuracy": "accuracy", "top5_accuracy": "top-5", "precision_macro": "precision", "recall_macro": "recall",
           "f1_macro": "F1", "cohen_kappa": "kappa", "ece": "ECE"}

# Figures others reported (the seed reports): single runs, other splits (the official one), their own budgets.
# `here` names the same architecture's (dataset, arch, head) in this study, in whichever part trained it (head None = every head; a
# (low, high) figure is set beside the range of the pairs' means); every row is also set beside the best
# backbone of the part with the same head.
PUBLISHED = (
    ("a CNN, standard softmax, 50 epochs, SGD lr 0.01 momentum 0.9", 0.5709, "50 epochs, ~24 GPU-minutes",
     ("cifar100", "cnn_base", "softmax")),
    ("the same CNN with Gumbel-softmax", 0.5950, "50 epochs", ("cifar100", "cnn_base", "gumbel")),
    ("a 3-conv Keras CNN", 0.5602, "150 epochs", ("cifar100", "cnn_keras", "softmax")),
    ("a VGG-like CNN with BatchNorm and dropout", 0.61, "8 hours on a CPU", ("cifar100", "cnn_vgg", "softmax")),
    ("a small PyTorch CNN, hand-made ablations (BatchNorm, ELU, LeakyReLU, avg pooling, dropout, SGD vs RMSprop)",
     (0.384, 0.5687), "?", ("cifar100", "cnn_base", None)),
    ("EfficientNet-B0 fine-tuned from ImageNet weights", 0.7907, "pretrained", ("cifar100", "efficientnet_b0", "softmax")),
    ("ViT fine-tuned from ImageNet weights", 0.9088, "pretrained, 3 h 45 min", ("cifar100", "vit_tiny", "softmax")),
    ("ResNet-18 from scratch", (0.75, 0.78), "200 epochs, GPU", ("cifar100", "resnet18", "softmax")),
    ("ViTs from scratch", (0.66, 0.74), "100-300 epochs, GPU", ("cifar100", "vit_*", "softmax")),
    ("Fashion-MNIST with a CNN", 0.9184, "?", ("fashion_mnist", None, "softmax")),
)


FINAL_COLUMNS = ["part", "dataset", "arch", "head", "seed", "status", "epochs", "accuracy", "epoch_time_s_mean"]  # when none ran


def _pm(values: pd.Series, fmt: str = ".4f") -> str:
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():{fmt}}" + (f" +- {std:{fmt}}" if np.isfinite(std) else "")


def _table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4g") if len(df) else "(none)"


# ----------------------------------------------------------------------------- gathering
def load_parts(scale, keep: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(trials, history, final, specs) of every part, with a `part` column, from what the finished stages
    left in the committed folder (`keep`, analysis.study's stages/)."""
    trials, history, finals, specs = [], [], [], {}
    for part in scale.parts:
        kept = keep / part.name
        if not (kept / "spec.json").exists():  # its search has not ended yet
            continue
        specs[part.name] = json.loads((kept / "spec.json").read_text())
        trials.append(pd.read_parquet(kept / "trials.parquet").assign(part=part.name))
        history.append(pd.read_parquet(kept / "history.parquet").assign(part=part.name))
        rows = retrain_rows(kept / "retrain")
        if len(rows):
            finals.append(rows.assign(part=part.name, dataset=part.dataset, folder=f"{part.name}/retrain"))
        rows = retrain_rows(kept / "converge") if part.converge else ()
        if len(rows):  # the part's pairs again at the converge budget: a part of their own, <part>-e<epochs>
            finals.append(rows[rows["epochs"] == part.converge].assign(
                part=f"{part.name}-e{part.converge}", dataset=part.dataset, folder=f"{part.name}/converge"))
    final = pd.concat(finals, ignore_index=True) if finals else pd.DataFrame(columns=FINAL_COLUMNS)
    return (pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(columns=["part", "status"]),
            pd.concat(history, ignore_index=True) if history else pd.DataFrame(columns=["part"]), final, specs)


def retrain_rows(folder: Path) -> pd.DataFrame:
    """A retrain's rows: its final.parquet, or while it is still under way (or stopped) the runs that finished."""
    if (folder / "final.parquet").exists():
        return pd.read_parquet(folder / "final.parquet")
    return pd.DataFrame([json.loads(f.read_text()) for f in sorted((folder / "runs").glob("*.json"))])


def versus_by_part(final: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each part's heads against softmax (analysis.compare.versus_softmax), computed once for the report."""
    return {part: versus_softmax(group) for part, group in finished(final).groupby("part", sort=False)}


def headline(final: pd.DataFrame, versus: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per (part, arch, head): every test metric as mean +- std over seeds, cost, and the difference to
    softmax on the same backbone (paired by seed) with its verdict."""
    rows = []
    for part, group in finished(final).groupby("part", sort=False):
        vs = versus[part].set_index(["arch", "head"]) if len(versus[part]) else pd.DataFrame()
        for (arch, head), g in group.groupby(["arch", "head"]):
            row = {"data": part, "backbone": arch, "head": head, "seeds": len(g), "_m": g["accuracy"].mean()}
            row.update({label: _pm(g[col]) for col, label in METRICS.items()})
            row["epoch s"] = _pm(g["epoch_time_s_mean"], ".1f")
            row["head share"] = f"{g['head_time_share'].mean():.1%}"
            r = vs.loc[(arch, head)] if (arch, head) in vs.index else None
            row["minus softmax [95% CI]"] = "" if r is None or head == "softmax" else (
                f"{r['diff']:+.4f}" + (f" [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if np.isfinite(r.ci_low) else ""))
            row["verdict"] = "" if r is None else r["verdict"]
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):  # best first within each backbone
        df = df.sort_values(["data", "backbone", "_m"], ascending=[True, True, False]).drop(columns="_m")
    return df


def targets(scale, final: pd.DataFrame) -> pd.DataFrame:
    """Each target of the scale: the softmax test accuracy a part (a backbone, or its best) should reach."""
    ok, rows = finished(final), []
    for (part, arch), goal in scale.targets.items():
        soft = ok[(ok["part"] == part) & (ok["head"] == "softmax") & ((ok["arch"] == arch) if arch else True)]
        means = soft.groupby("arch")["accuracy"].mean()
        what = f"{part}: {'best backbone' if arch is None else arch} + softmax, mean test accuracy over seeds"
        if means.empty:
            rows.append({"target": what, "goal": f">= {goal:.2%}", "reached": "not run", "met": "no"})
            continue
        best = means.idxmax()
        rows.append({"target": what, "goal": f">= {goal:.2%}", "reached": f"{means.max():.2%} ({best})",
                     "met": "yes" if means.max() >= goal else f"no, short by {goal - means.max():.2%}"})
    return pd.DataFrame(rows)


def complexity_table(final: pd.DataFrame) -> pd.DataFrame:
    """Every head: its formula and multiply-adds per example at this study's C and d (from the
    trained instance's cost()), against softmax's d*C."""
    ok = finished(final)
    ok = ok[ok["part"] == ok["part"].iloc[0]] if len(ok) else ok  # the first part (CIFAR-100): every head
    rows = []
    for head, g in ok.groupby("head"):
        r = g.iloc[0]
        rows.append({"head": head, "formula": str(r["head_formula"]).replace("|", "\\|"),  # a bare | splits the cell
                     "C": int(r["num_classes"]), "d": int(round(r["softmax_madds"] / r["num_classes"])),
                     "train madds": g["head_train_madds"].mean(), "predict madds": g["head_predict_madds"].mean(),
                     "softmax / train madds": r["softmax_madds"] / g["head_train_madds"].mean()})
    return pd.DataFrame(rows)


def bench_table(bench: pd.DataFrame | None) -> pd.DataFrame:
    """tools.heads_bench: the measured speed-up over softmax of the whole training step and of predict at each C,
    beside the speed-up multiply-adds predict."""
    if bench is None:
        return pd.DataFrame()
    df = bench[bench["head"] != "softmax"].assign(
        train_ms=bench["train_ms"].map("{:.3g}".format),
        spread=bench["train_ms_min"].map("{:.3g}".format) + "-" + bench["train_ms_max"].map("{:.3g}".format))
    df = df[["classes", "head", "train_ms", "spread", "train_speedup", "train_speedup_madds", "predict_speedup",
             "predict_speedup_madds"]]
    return df.rename(columns={"train_ms": "train ms (median)", "spread": "train ms (min-max)",
                              "train_speedup": "train x measured", "train_speedup_madds": "train x (madds)",
                              "predict_speedup": "predict x measured", "predict_speedup_madds": "predict x (madds)"})


# Why a head can trail softmax at C = 100: what the measurements of issue #10 found.
def asha_table(trials: pd.DataFrame, specs: dict) -> pd.DataFrame:
    rows = []
    for part, t in trials.groupby("part", sort=False):
        ran = t[t["status"].isin(FINISHED)]
        full = len(ran) * int(specs[part].get("max_epochs", 1))
        rows.append({"data": part, "trials": len(t), "stopped by ASHA": int((t["status"] == PRUNED).sum()),
                     "errors": int((t["status"] == ERROR).sum()), "epochs run": int(ran["epochs_run"].sum()),
                     "epochs without ASHA": full,
                     "saved": f"{1 - ran['epochs_run'].sum() / full:.0%}" if full else "-"})
    return pd.DataFrame(rows)


def _here(sel: pd.DataFrame) -> tuple[float, str, str]:
    """The best (arch, head, config, epochs) of a selection: its mean test accuracy, `mean +- std %`, and what
    ran (`config_of`: whose searched config a run trained, its own head's unless a borrowed stage's)."""
    sel = sel.assign(config_of=sel["config_of"].fillna(sel["head"]) if "config_of" in sel else sel["head"])
    means = sel.groupby(["arch", "head", "config_of", "epochs"])["accuracy"].mean()
    arch, head, config_of, epochs = means.idxmax()
    g = sel[(sel["arch"] == arch) & (sel["head"] == head) & (sel["config_of"] == config_of) & (sel["epochs"] == epochs)]
    minutes = g["epoch_time_s_mean"].mean() * epochs / 60
    seeds = f"{len(g)} seeds" if len(g) > 1 else "1 seed (said so)"
    whose = f" with {config_of}'s config" if config_of != head else ""
    return means.max(), f"{_pm(g['accuracy'] * 100, '.2f')}%", \
        f"{arch} + {head}{whose}, {int(epochs)} epochs, {seeds}, {minutes:.0f} min a run"


def published_table(final: pd.DataFrame, *more: pd.DataFrame) -> pd.DataFrame:
    """Each figure the seed reports quote: theirs and budget, the same architecture here, and the best backbone
    here with the same head, each at its best budget and config (the retrain's, or the `more` runs of a curve
    stage's longer budget or a borrowed stage's config); `beaten` when this study's mean is above their figure
    (the top of a range)."""
    ok, rows = finished(pd.concat([final, *[m for m in more if len(m)]], ignore_index=True)), []
    for what, figure, budget, (dataset, arch, head) in PUBLISHED:
        theirs = f"{figure[0]:.2%} to {figure[1]:.2%}" if isinstance(figure, tuple) else f"{figure:.2%}"
        top = figure[1] if isinstance(figure, tuple) else figure
        in_part = ok[(ok["dataset"] == dataset) & ((ok["head"] == head) if head else True)]
        same = in_part[in_part["arch"].map(lambda a: fnmatch.fnmatch(a, arch))] if arch else in_part  # vit_*: any ViT
        row = {"reported elsewhere": what, "their test accuracy": theirs, "their budget": budget,
               "same architecture here": "not run at this scale", "best backbone here": "not run at this scale",
               "beaten": "no"}
        if len(same):
            mean, text, run = _here(same)
            row["same architecture here"] = f"{text} ({run})"
            row["beaten"] = f"yes, by {mean - top:+.2%}" if mean > top else f"no, {mean - top:+.2%}"
        if len(in_part):
            mean, text, run = _here(in_part)
            row["best backbone here"] = f"{text} ({run})"
            if not len(same):
                row["beaten"] = (f"by another backbone, {mean - top:+.2%}" if mean > top
                                 else f"no, {mean - top:+.2%}")
            elif row["beaten"].startswith("no") and mean > top:  # lost on its own architecture only
                row["beaten"] += f" on its own; by another backbone, {mean - top:+.2%}"
        rows.append(row)
    return pd.DataFrame(rows)


def search_paid(trials: pd.DataFrame) -> pd.DataFrame:
    """Within each pair's search: its first trial (the family recipe, scaled to the space's batch) against
    the best trial the search found, both on validation at the search's budget."""
    import models

    rows = []
    for (part, arch, head), t in trials.groupby(["part", "arch", "head"], sort=False):
        recipe = models.MODELS.meta(arch).get("recipe", {})
        ran = t[t["status"].isin(FINISHED)]
        match = ran
        for key in ("momentum", "weight_decay"):
            if key in recipe and key in ran:
                match = match[np.isclose(match[key].astype(float), recipe[key])]
        best = ran.loc[ran["best_val_acc"].idxmax()] if len(ran) else None
        if best is None:
            continue
        base = match.iloc[0] if len(match) else None
        rows.append({"data": part, "backbone": arch, "head": head, "trials": len(t),
                     "recipe val acc": np.nan if base is None else base["best_val_acc"],
                     "best val acc": best["best_val_acc"],
                     "search minus recipe": np.nan if base is None else best["best_val_acc"] - base["best_val_acc"],
                     "best is the recipe": base is not None and base["trial_id"] == best["trial_id"]})
    return pd.DataFrame(rows)


def load_pays(scale, keep: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The search-pays arms (analysis.study.Pays): every search's trials (in the order Ray started them, with
    `arm` and `search_seed`) and the retrain's runs of each arm's best config (with `arm`)."""
    if scale.pays is None:
        return pd.DataFrame(), pd.DataFrame()
    searches = []
    for arm, seed, _ in scale.pays.searches():
        path = keep / "pays" / f"{arm}-s{seed}" / "trials.parquet"
        if path.exists():
            searches.append(pd.read_parquet(path).assign(arm=arm, search_seed=seed))
    final = retrain_rows(keep / "pays" / "retrain")
    if len(final):
        final = final.assign(arm=final["label"].str.split("-").str[0])
    return (pd.concat(searches, ignore_index=True) if searches else pd.DataFrame()), final


def pays_searches(searches: pd.DataFrame, max_epochs: int) -> pd.DataFrame:
    """Each arm's searches: trials, trial-epochs spent, the best validation accuracy found, what ASHA saved."""
    rows = []
    for (arm, seed), t in searches.groupby(["arm", "search_seed"], sort=False) if len(searches) else ():
        ran = t[t["status"].isin(FINISHED)]
        rows.append({"arm": arm, "search seed": seed, "trials": len(t), "trial-epochs": int(t["epochs_run"].sum()),
                     "best val acc": ran["best_val_acc"].max() if len(ran) else np.nan,
                     "ASHA saved": f"{1 - t['epochs_run'].sum() / (len(t) * max_epochs):.0%}"})
    return pd.DataFrame(rows, columns=PAYS_SEARCH_COLUMNS)


# The arms' tables have their columns before their rows exist: a study that has not run them yet
# writes the same report structure as one that has (the committed report is checked against it).
PAYS_SEARCH_COLUMNS = ["arm", "search seed", "trials", "trial-epochs", "best val acc", "ASHA saved"]
PAYS_TEST_COLUMNS = ["arm", "config", "seeds", "test accuracy", "minus recipe [95% CI]", "verdict"]


def pays_test(final: pd.DataFrame) -> pd.DataFrame:
    """Each arm's best config on the test set (mean +- std over seeds) and minus the recipe's, paired by seed."""
    ok = finished(final) if len(final) else final
    if ok.empty:
        return pd.DataFrame(columns=PAYS_TEST_COLUMNS)
    recipe = ok[ok["arm"] == "recipe"].set_index("seed")["accuracy"]
    rows = []
    for arm, g in ok.groupby("arm", sort=False):
        row = {"arm": arm, "config": g["label"].iloc[0], "seeds": len(g), "test accuracy": _pm(g["accuracy"])}
        if arm != "recipe" and len(recipe):
            d = paired_difference(g.set_index("seed")["accuracy"], recipe)
            row["minus recipe [95% CI]"] = f"{d['diff']:+.4f}" + (
                f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if np.isfinite(d["ci_low"]) else "")
            row["verdict"] = d["verdict"].replace("softmax", "the recipe")
        rows.append(row)
    return pd.DataFrame(rows, columns=PAYS_TEST_COLUMNS).fillna("")


def plot_pays(searches: pd.DataFrame, out: Path) -> list[str]:
    """Best validation accuracy found against trial-epochs spent, per search (trials in the order Ray
    started them, each trial's epochs counted in full as it ends: two ran at once, so this is the budget's
    order, not wall time)."""
    if searches.empty:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (arm, seed), t in searches.groupby(["arm", "search_seed"], sort=False):
        spent = t["epochs_run"].cumsum()
        found = t["best_val_acc"].where(t["status"].isin(FINISHED)).cummax()
        ax.step(spent, found, where="post", marker="o", label=f"{arm}, search seed {seed}")
    ax.set(xlabel="trial-epochs spent", ylabel="best validation accuracy found", title="does the search pay?")
    ax.legend(fontsize=8)
    fig.savefig(out / "figures" / "search_pays.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["![search pays](figures/search_pays.png)", ""]


def stage_runs(scale, keep: Path, stage: str) -> pd.DataFrame:
    """The finished runs a part's `curve` stage (softmax's config at other budgets, seed 0), `borrowed` stage
    (a head with softmax's config), `longer` stage (both at a longer budget) or `converge` stage left, those
    of a stage still under way too."""
    rows = [retrain_rows(keep / part.name / stage).assign(part=part.name, dataset=part.dataset)
            for part in scale.parts if (keep / part.name / stage).is_dir()]
    rows = [r for r in rows if "status" in r]
    return finished(pd.concat(rows, ignore_index=True)) if rows else pd.DataFrame()


def with_converge(runs: pd.DataFrame, converge: pd.DataFrame) -> pd.DataFrame:
    """A `converge` stage's softmax runs are curve points too (every seed at its budget, seed 0 at twice it),
    beside the curve stage's `runs`; a run both stages hold (the same label and seed) counts once."""
    if converge.empty:
        return runs
    return pd.concat([runs, converge[converge["head"] == "softmax"]], ignore_index=True).drop_duplicates(
        ["part", "label", "seed"], ignore_index=True)


def with_longer(runs: pd.DataFrame, borrowed: pd.DataFrame, longer: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """A `longer` stage's runs shared out: its softmax runs are curve points (softmax's config at another
    budget, seed 0) beside the curve stage's `runs`, the others borrowed runs at a longer budget."""
    if longer.empty:
        return runs, borrowed
    softmax = longer["head"] == "softmax"
    return (pd.concat([runs, longer[softmax]], ignore_index=True),
            pd.concat([borrowed, longer[~softmax]], ignore_index=True))


def load_curve(scale, runs: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Softmax's best config at every budget: the curve stage's `runs` (seed 0) and the retrain's (every seed)
    of the same architectures."""
    if runs.empty:
        return runs
    ok = finished(final)
    same = ok[(ok["head"] == "softmax") & ok.set_index(["part", "arch"]).index.isin(
        runs.set_index(["part", "arch"]).index)]
    return pd.concat([runs, same], ignore_index=True)


def curve_table(curve: pd.DataFrame) -> pd.DataFrame:
    if curve.empty:
        return curve
    return curve.groupby(["part", "arch", "epochs"]).agg(
        seeds=("seed", "size"), test_accuracy=("accuracy", "mean"), std=("accuracy", "std"),
        minutes=("epoch_time_s_mean", lambda t: t.mean() / 60)).reset_index().assign(
        minutes=lambda d: d["minutes"] * d["epochs"])


def converged(table: pd.DataFrame, budgets: dict[str, tuple[int, ...]]) -> list[str]:
    """What the curve says of each of a part's budgets (its retrain's and its converge stage's): the gain of
    the next longer budget over it, against the seed spread at it (none with one seed: said so)."""
    lines = []
    for (part, arch), t in table.groupby(["part", "arch"]) if len(table) else ():
        t = t.set_index("epochs")
        for budget in budgets.get(part, ()):
            if budget in t.index and t.index.max() > budget:
                lines.append(_gain_line(part, arch, t, budget))
    return lines


def _gain_line(part: str, arch: str, t: pd.DataFrame, budget: int) -> str:
    """One budget (`t`: the curve by epochs) against the next longer one."""
    longer, spread = t.index[t.index > budget].min(), t.loc[budget, "std"]
    gain = t.loc[longer, "test_accuracy"] - t.loc[budget, "test_accuracy"]
    long_min, short_min = t.loc[longer, "minutes"], t.loc[budget, "minutes"]
    if not np.isfinite(spread):
        verdict = "one seed at each budget: no spread to judge it by"
    elif abs(gain) <= 2 * spread:
        verdict = "within the seed spread: converged for this schedule"
    else:
        verdict = "beyond the seed spread: not converged, the heads' ranking is at an undertrained budget"
    return (f"- {part}, {arch} + softmax: {longer} epochs against {budget}: {gain:+.2%} test accuracy"
            + (f" (seed std at {budget} epochs: {spread:.2%}), " if np.isfinite(spread) else ", ")
            + f"{verdict}; {longer} epochs took {long_min:.0f} min a run against {short_min:.0f} as "
            f"measured ({long_min / short_min:.1f}x; each run's minutes include whatever shared its cores).")


def plot_curves(history: pd.DataFrame, curve: pd.DataFrame, final: pd.DataFrame, out: Path) -> list[str]:
    """Three figures: validation accuracy vs epoch per head in the searches (mean and min-max band over the
    trials that ran every epoch), softmax's test accuracy vs budget, test accuracy vs cost per head."""
    plt, md = _plt(), []
    for part, h in history.groupby("part", sort=False):
        full = h.groupby("trial_id")["epoch"].transform("max") == h["epoch"].max()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for head, g in h[full].groupby("head"):
            stats = g.groupby("epoch")["val_acc"].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], label=f"{head} ({g['trial_id'].nunique()} trials)")
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"{part}: searches' trials that ran every epoch")
        ax.legend()
        fig.savefig(out / "figures" / f"curves_{part}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        md += [f"![{part} curves](figures/curves_{part}.png)", ""]
    table = curve_table(curve)
    if len(table):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (part, arch), t in table.groupby(["part", "arch"]):
            ax.errorbar(t["epochs"], t["test_accuracy"], yerr=t["std"].fillna(0), marker="o", capsize=3,
                        label=f"{part}: {arch} + softmax")
        ax.set(xlabel="epochs (each point its own run and schedule)", ylabel="test accuracy",
               title="softmax's best config at every budget")
        ax.legend()
        fig.savefig(out / "figures" / "budget.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        md += ["![budget](figures/budget.png)", ""]
    ok = finished(final)
    if len(ok):
        datasets = list(dict.fromkeys(ok["dataset"]))  # one panel per dataset: their accuracies differ by far more
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            for (_, arch, head), g in ok[ok["dataset"] == dataset].groupby(["part", "arch", "head"], sort=False):
                ax.errorbar(g["epoch_time_s_mean"].mean() * g["epochs"].mean() / 60, g["accuracy"].mean(),
                            yerr=g["accuracy"].std() if len(g) > 1 else 0, marker="o", capsize=3,
                            label=f"{arch} + {head}, {g['epochs'].mean():.0f} epochs")
            ax.set(xlabel="minutes per training run (mean)", ylabel="test accuracy (mean +- std over seeds)",
                   title=f"{dataset}: accuracy against cost")
            ax.legend(fontsize=7)
        fig.savefig(out / "figures" / "accuracy_vs_cost.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        md += ["![accuracy vs cost](figures/accuracy_vs_cost.png)", ""]
    return md


def _cores(n: float) -> str:
    return f"{n:g} core" + ("" if n == 1 else "s")


def answer(final: pd.DataFrame, versus: dict[str, pd.DataFrame], published: pd.DataFrame,
           paid: pd.DataFrame, table: pd.DataFrame, budgets: dict[str, tuple[int, ...]],
           cores: dict[str, float]) -> list[str]:
    """The opening paragraph: the study's answers, with numbers (`cores`: each part's CPUs per retrain run)."""
    ok, lines = finished(final), []
    for (part, arch), g in ok.groupby(["part", "arch"], sort=False):
        means = g.groupby("head")["accuracy"].agg(["mean", "std", "size"]).sort_values("mean", ascending=False)
        best = means.index[0]
        minutes = g[g["head"] == best]["epoch_time_s_mean"].mean() * g["epochs"].mean() / 60
        vs = versus.get(part)
        better = [] if vs is None or vs.empty else \
            list(vs[(vs["arch"] == arch) & (vs["verdict"] == "better than softmax")]["head"])
        worse = [] if vs is None or vs.empty else \
            list(vs[(vs["arch"] == arch) & (vs["verdict"] == "worse than softmax")]["head"])
        n = int(means.loc[best, "size"])
        spread = f"std {means.loc[best, 'std']:.2%} over {n} seeds" if n > 1 else "1 seed: no spread, said so"
        text = (f"**{part}, {arch}**: best head {best}, {means.loc[best, 'mean']:.2%} test accuracy "
                f"({spread}, ~{minutes:.0f} min a run on {_cores(cores.get(part, 1))})")
        if "softmax" in means.index and best != "softmax":
            text += f"; softmax {means.loc['softmax', 'mean']:.2%}"
        text += (f"; better than softmax beyond the seed spread: {', '.join(better) or 'none'}; worse: "
                 f"{', '.join(worse) or 'none'}.")
        lines.append(f"- {text}")
    if len(published):
        beaten = published[published["beaten"].str.contains("yes|by another")]
        same = published[published["beaten"].str.startswith("yes")]
        lost = published[published["beaten"].str.startswith("no") & published["same architecture here"].str.contains("%")]
        lines.append(f"- Seed reports' figures: {len(beaten)} of {len(published)} beaten by a model trained here "
                     f"({len(same)} on their own architecture"
                     + (f"; not on their own architecture: {'; '.join(lost['reported elsewhere'])}" if len(lost) else "")
                     + "); the rest were not run at this scale or not beaten (table below).")
    if len(paid):
        gain = paid["search minus recipe"].dropna()
        lines.append(f"- Did the search pay? Within the pairs' searches (validation, search budget) the best trial "
                     f"beat the family recipe by {gain.median():+.2%} (median over {len(gain)} pairs, range "
                     f"{gain.min():+.2%} to {gain.max():+.2%}); the recipe itself won in "
                     f"{int(paid['best is the recipe'].sum())} of {len(paid)} pairs.")
    lines += converged(table, budgets)
    return lines


def under_way(scale, keep: Path, done: dict) -> list[str]:
    """A line for each converge stage begun and not ended (it spans sessions): how many of its runs finished."""
    lines = []
    for part in scale.parts:
        folder = keep / part.name / "converge"
        if part.converge and f"{part.name}/converge" not in done and (folder / "chosen.json").is_file():
            jobs = json.loads((folder / "chosen.json").read_text())["jobs"]
            ran = len(list((folder / "runs").glob("*.json")))
            lines.append(f"- {part.name}-e{part.converge} is under way: {ran} of {len(jobs)} runs finished (its rows "
                         "have the seeds that did); `make study` trains the rest.")
    return lines


def borrowed_table(final: pd.DataFrame, borrowed: pd.DataFrame, *more: pd.DataFrame) -> pd.DataFrame:
    """Each borrowed (part, arch, head) at each budget: softmax with its searched config (the retrain's or the
    `more` runs of a curve stage), the head with its own (where trained at that budget), and the head with
    softmax's (the seed reports trained both heads with one config); test accuracy over seeds."""
    ok, rows = finished(pd.concat([final, *[m for m in more if len(m)]], ignore_index=True)), []
    groups = borrowed.groupby(["part", "arch", "head", "epochs"], sort=False) if len(borrowed) else ()
    for (part, arch, head, epochs), mine in groups:
        same = ok[(ok["part"] == part) & (ok["arch"] == arch) & (ok["epochs"] == epochs)]
        softmax = same[same["head"] == "softmax"]
        for name, config, g in (("softmax", "its own searched", softmax),
                                (head, "its own searched", same[same["head"] == head]),
                                (head, "softmax's searched", mine)):
            if g.empty:  # not trained at this budget
                continue
            rows.append({"part": part, "arch": arch, "head": name, "config": config, "epochs": int(epochs),
                         "seeds": len(g), "test accuracy": f"{_pm(g['accuracy'] * 100, '.2f')}%",
                         "minutes a run": round(float(g["epoch_time_s_mean"].mean() * epochs / 60)),
                         "minus softmax": "" if name == "softmax" or softmax.empty else
                         f"{g['accuracy'].mean() - softmax['accuracy'].mean():+.2%}"})
    return pd.DataFrame(rows, columns=["part", "arch", "head", "config", "epochs", "seeds", "test accuracy",
                                       "minutes a run", "minus softmax"])


def trailing(versus: dict[str, pd.DataFrame]) -> list[str]:
    """Each head worse than softmax beyond the seed spread, by how much, and the likely reason."""
    lines = []
    for part, vs in versus.items():
        worse = vs[vs["verdict"] == "worse than softmax"] if len(vs) else vs
        for _, r in worse.iterrows():
            lines.append(f"- {part}, {r.arch} + {r['head']}: {r['diff']:+.2%} test accuracy against softmax "
                         f"(95% CI [{r.ci_low:+.2%}, {r.ci_high:+.2%}]): {heads.head_class(r['head']).trails_because or 'no known reason'}.")
    return lines or ["- None: every head is within the seed spread of softmax on its backbone, or better."]


def stage_table(done: dict) -> pd.DataFrame:
    df = pd.DataFrame([{"stage": k, "wall time": f"{v['seconds'] / 60:.1f} min", "ended": v.get("ended", "")}
                       for k, v in done.items()])
    total = sum(v["seconds"] for v in done.values())
    return pd.concat([df, pd.DataFrame([{"stage": "total", "wall time": f"{total / 60:.1f} min", "ended": ""}])])


def confusion_figures(final: pd.DataFrame, keep: Path, out: Path) -> list[str]:
    """One figure per (part, arch, head): the fine confusion matrix summed over seeds, class names on the axes."""
    md = []
    ok = finished(final)
    for (part, arch, head), g in ok.groupby(["part", "arch", "head"], sort=False):
        if "confusion_file" not in g or g["confusion_file"].isna().any():
            continue
        matrix = sum(np.load(keep / g.iloc[0]["folder"] / f) for f in g["confusion_file"])
        names = json.loads(g.iloc[0]["class_names"])
        path = plot_confusion(matrix, f"{part}: {arch} + {head} ({len(g)} seeds)", out, f"confusion_{part}_{arch}_{head}",
                              names)
        md += [f"**{part}: {arch} + {head}**", "", f"![{part} {arch} {head}](figures/{path.name})", ""]
    return md


def provenance(specs: dict) -> list[str]:
    lines = []
    for part, spec in specs.items():
        versions = ", ".join(f"{k} {v}" for k, v in spec.get("versions", {}).items())
        lines += [f"- **{part}**: space `{spec.get('space')}`, overrides {spec.get('overrides')}, seed {spec.get('seed')}, "
                  f"created {spec.get('created', '?')} on `{spec.get('host', '?')}`, git {spec.get('git_sha')}; "
                  f"{versions}", f"  - data: {data_caveat(spec)}"]
    return lines


# ----------------------------------------------------------------------------- the document
def report_lines(scale, trials, history, final, specs, bench, done, command, out: Path, keep: Path) -> list[str]:
    caveats = sorted({data_caveat(s) for s in specs.values()})
    versus = versus_by_part(final)
    runs, borrowed = with_longer(stage_runs(scale, keep, "curve"), stage_runs(scale, keep, "borrowed"),
                                 stage_runs(scale, keep, "longer"))
    runs = with_converge(runs, stage_runs(scale, keep, "converge"))
    borrowed = borrowed.assign(config_of="softmax")  # whose config its runs trained
    published, paid = published_table(final, runs, borrowed), search_paid(trials)
    curve = load_curve(scale, runs, final)
    budgets = {p.name: tuple(b for b in (p.retrain_epochs, p.converge) if b) for p in scale.parts}
    pays = load_pays(scale, keep)
    md = [f"# headsweep study: {scale.name} scale", "",
          "## Answer", "", *answer(final, versus, published, paid, curve_table(curve), budgets,
                                   {p.name: p.cpus_per_task or scale.cpus_per_task for p in scale.parts}),
          *pays_answer(scale, pays), *under_way(scale, keep, done), "",
          f"{scale.description}", "", f"Made by `{command}`; `make study` reproduces the cpu scale.", "",
          "Data:", "", *[f"- {c}" for c in caveats], "",
          "## Headline", "",
          "Test set, each model evaluated once; mean +- std over seeds (each seed retrained from scratch on "
          "train+validation with the best config the pair's search found on validation). `minus softmax` is "
          "paired by seed on the same backbone, with the 95% CI of a paired t-test; precision, recall and F1 "
          "are macro averages. A part named `<part>-e<N>` is the part's pairs retrained again at N epochs (its "
          "converge stage; while that stage is under way, the runs it finished).", "", _table(headline(final, versus)), "",
          "## Targets", "", _table(targets(scale, final)), "",
          "## Heads that trail softmax", "", *trailing(versus), "",
          "## One config for both heads", "",
          "The seed reports trained Gumbel-softmax with their softmax run's config; here each head's search picks "
          "its own. The head trained with its backbone's searched softmax config (its own options at their "
          "defaults) beside both searched configs; `minus softmax` is not paired (softmax has its own seeds).", "",
          _table(borrowed_table(final, borrowed, runs)), "",
          "## Cost: epoch time and the head's share", "",
          "Epoch time is the mean over the retrain's epochs (train+val, with the validation pass); the head's share "
          "is the share of a training step's forward + backward spent in the head, measured side by side on the "
          "same batches (`analysis.runs.head_time_share`).", ""]
    ok = finished(final)
    cost = ok.groupby(["part", "arch", "head"], sort=False).agg(
        epoch_s=("epoch_time_s_mean", "mean"), images_per_s=("images_per_s", "mean"),
        head_share=("head_time_share", "mean"), params=("params", "first")).reset_index()
    md += [_table(cost), "",
           "## Time complexity of the heads", "",
           "Multiply-adds per example from each trained head's `cost()` at this study's C and feature size d, "
           "against softmax's d*C, then the measured speed-up over softmax of the whole training step (forward, "
           "backward, optimizer update) and of predict from `tools.heads_bench` at larger C, side by side in one run "
           "(its own d and batch; medians over interleaved rounds), beside what multiply-adds predict.", "",
           _table(complexity_table(final)), "", _table(bench_table(bench)), "",
           "![tools.heads_bench](figures/heads_bench.png)", ""]
    md += [f"- **{h}**: {heads.head_class(h).cost_note}" for h in sorted(set(ok["head"])) if h in heads.HEADS]
    md += ["", "## Curves: accuracy against epochs and against cost", "",
           "The searches' validation curves per head (trials on the search's training subset that ASHA let run "
           "every epoch: mean line, min-max band); softmax's best config retrained at several budgets, each its own "
           "run and schedule, evaluated once on the test set (seed 0 beside the retrain's seeds); and every "
           "retrained pair's test accuracy against its training time.", "",
           _table(curve_table(curve)), "", *converged(curve_table(curve), budgets), "",
           *plot_curves(history, curve, final, out),
           "## Did the search pay?", "",
           "Each pair's search started from the family recipe (its first trial); the table sets the best trial "
           "the search found against it, on validation at the search's budget.", "", _table(paid), "",
           *pays_section(scale, pays, keep, out),
           "## What ASHA saved", "", _table(asha_table(trials, specs)), "",
           "## Reported elsewhere vs here", "",
           "Their figures are single runs on the official CIFAR-100 / Fashion-MNIST split with their own budgets "
           "(epochs, augmentation, pretrained weights); ours are means over seeds on the shared copy, whose split "
           "is not the official one, at this study's budget. So the columns compare only approximately.", "",
           _table(published), "",
           "## Confusion matrices", "", "Fine classes, summed over seeds, rows normalised.", "",
           *confusion_figures(final, keep, out),
           "## Wall time per stage", "", _table(stage_table(done)), "",
           "## Each part's own report", "",
           *[f"- [{p.name}]({p.name}/report.md): search budget, learning curves, ASHA rungs, parameter importance"
             if (keep / p.name / "report" / "report.md").exists() else
             f"- {p.name}: not kept (its search's experiment folder was not on the machine that made this report)"
             if f"{p.name}/search" in done else f"- {p.name}: not run yet"
             for p in scale.parts], "",
           "## Provenance", "", *provenance(specs), ""]
    return md


def pays_answer(scale, pays: tuple[pd.DataFrame, pd.DataFrame]) -> list[str]:
    """The opening paragraph's line on the arms (`load_pays`): each arm's best on the test set against the
    recipe alone."""
    if scale.pays is None:
        return []
    test = pays_test(pays[1])
    if test.empty:
        return ["- Does the search pay against the recipe alone and random search at the same budget? Not run yet."]
    parts = [f"{r['arm']} {r['test accuracy']}" + (f" ({r['minus recipe [95% CI]']} vs the recipe: {r['verdict']})"
                                                   if r["verdict"] else "")
             for _, r in test.iterrows()]
    return ["- Does the search pay? Each arm's best config on the test set: " + "; ".join(parts) + "."]


def pays_section(scale, pays: tuple[pd.DataFrame, pd.DataFrame], keep: Path, out: Path) -> list[str]:
    """The search-pays arms (`load_pays`): the searches at equal budgets, the plot, and each arm's best on the
    test set."""
    if scale.pays is None:
        return []
    searches, final = pays
    specs = sorted((keep / "pays").glob("*/spec.json"))
    max_epochs = int(json.loads(specs[0].read_text()).get("max_epochs", 1)) if specs else 1
    return ["### The arms: the recipe alone, random search + ASHA, TPE + ASHA", "",
            "One pair. The two search arms at the same search budget (trials, epochs a trial, ASHA; the "
            "trial-epochs each spent below), each with its search seeds; the recipe arm is its one trial, no "
            "search. Each arm's best config over its seeds (by validation) is then retrained on all training "
            "images and read once on the test set, paired by seed with the recipe's: a search ranks configs at "
            "its own budget, so a gain on validation counts only where it holds on the test set at the "
            "retrain's." + ("" if len(searches) else " Not run yet: the tables are empty."),
            "", pays_searches(searches, max_epochs).to_markdown(index=False, floatfmt=".4g"), "",
            *plot_pays(searches, out), pays_test(final).to_markdown(index=False, floatfmt=".4g"), ""]


def structure(text: str) -> list[str]:
    """What must not go stale: the section headings and every table's header row, in order."""
    lines = text.splitlines()
    keep = [ln for ln in lines[1:] if ln.startswith("#")]
    keep += ["|".join(cell.strip() for cell in ln.split("|"))  # the columns, not their padding
             for ln, nxt in zip(lines, lines[1:]) if ln.startswith("|") and nxt.startswith("|") and "---" in nxt]
    return keep


def write_results(scale, out: Path, done: dict, command: str, keep: Path) -> Path:
    """The report and tables, made anew from what the finished stages left in `keep` (kept as it is)."""
    trials, history, final, specs = load_parts(scale, keep)
    for old in out.iterdir() if out.exists() else ():
        if old != keep:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    (out / "figures").mkdir(parents=True)
    bench_csv = keep / "heads_bench" / "heads_bench.csv"
    bench = pd.read_csv(bench_csv) if bench_csv.exists() else None
    if bench is not None:
        shutil.copy(bench_csv, out / "heads_bench.csv")
        shutil.copy(keep / "heads_bench" / "heads_bench.png", out / "figures" / "heads_bench.png")
    for part in scale.parts:  # each part's own report with its figures (no checkpoints, no .npy)
        src = keep / part.name / "report"
        if (src / "report.md").exists():
            shutil.copytree(src, out / part.name)
    to_parquet(trials, out / "trials.parquet")
    to_parquet(history, out / "history.parquet")
    to_parquet(final, out / "final.parquet")
    (out / "command.txt").write_text(command + "\n")
    spec = {"study": f"study-{scale.name}", "scale": scale.name, "description": scale.description, "command": command,
            "parts": {p.name: {"search": list(p.search), "seeds": p.seeds} for p in scale.parts},
            "experiments": specs, "stages": done,
            "targets": {f"{part}/{arch or 'best'}": goal for (part, arch), goal in scale.targets.items()}}
    (out / "spec.json").write_text(json.dumps(spec, indent=1, default=str))
    md = report_lines(scale, trials, history, final, specs, bench, done, command, out, keep)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def store_notebook(path: Path) -> Path:
    """Execute the notebook (it reads results/study-cpu/ by default) and store it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return path
