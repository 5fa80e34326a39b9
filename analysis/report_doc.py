"""The report's sections and figures for `python -m analysis.report EXPERIMENT` (analysis/report.py, the
command line, says what the report holds and imports this once its arguments are known).
"""
from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator  # no backend chosen by this import

import heads
from analysis.compare import adaptive_caveat, at_chance, data_caveat, finished, paired_difference, versus_softmax
from common.status import ERROR, FINISHED, PRUNED
from tuning.results import Results

MIN_TRIALS_FOR_IMPORTANCE = 10  # completed trials of one study below which fANOVA's ranking is noise


def _fig_path(out: Path, name: str) -> Path:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out / "figures" / f"{name}.png"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4g")


# ----------------------------------------------------------------------------- sections
def summary(final: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the headline metrics, per (arch, head)."""
    ok = final[final["status"] != ERROR]
    cols = ["accuracy", "top5_accuracy", "f1_macro", "ece", "epoch_time_s_mean", "head_time_share"]
    if "superclass_accuracy" in ok:
        cols.insert(2, "superclass_accuracy")
    grouped = ok.groupby(["arch", "head"])[cols]
    mean = grouped.mean().sort_values("accuracy", ascending=False)
    std = grouped.std().fillna(0.0).loc[mean.index]
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = [f"{m:.4f} +- {s:.4f}" for m, s in zip(mean[c], std[c])]
    out["seeds"] = grouped.size().loc[mean.index]
    return out.reset_index()


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both lower x and higher y."""
    keep = [not ((points[x] <= r[x]) & (points[y] >= r[y]) & ((points[x] < r[x]) | (points[y] > r[y]))).any()
            for _, r in points.iterrows()]
    return points[keep].sort_values(x)


def plot_pareto(final: pd.DataFrame, out: Path) -> tuple[Path, pd.DataFrame]:
    """Mean test accuracy (error bars: std over seeds) against epoch time; the front leaves out
    pairs at chance level, which are "fast" only because they learned nothing."""
    plt = _plt()
    grouped = finished(final).groupby(["arch", "head"])[["accuracy", "epoch_time_s_mean"]]
    means = grouped.mean().reset_index()
    std = grouped.std().fillna(0.0).reset_index()
    stuck = at_chance(final)
    learned = means[[(a, h) not in stuck for a, h in zip(means.arch, means["head"])]]
    front = pareto_front(learned, "epoch_time_s_mean", "accuracy")
    fig, ax = plt.subplots(figsize=(7, 5))
    for (_, r), (_, e) in zip(means.iterrows(), std.iterrows()):
        ax.errorbar(r.epoch_time_s_mean, r.accuracy, yerr=e.accuracy, xerr=e.epoch_time_s_mean, fmt="o", capsize=3)
        ax.annotate(f"{r.arch}/{r['head']}" + (" (chance)" if (r.arch, r["head"]) in stuck else ""),
                    (r.epoch_time_s_mean, r.accuracy), fontsize=8)
    ax.plot(front.epoch_time_s_mean, front.accuracy, "k--", label="Pareto front")
    ax.set(xlabel="epoch time (s)", ylabel="test accuracy (mean +- std over seeds)", title="Accuracy against cost")
    ax.legend()
    path = _fig_path(out, "pareto")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path, front


def plot_learning_curves(hist: pd.DataFrame, chosen: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    for _, r in chosen.iterrows():
        h = hist[hist.trial_id == r.trial_id]
        ax.plot(h.epoch, h.val_acc, marker="o", label=f"{r.arch}/{r['head']} ({r.trial_id})")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="Best trial per (backbone, head)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    path = _fig_path(out, "learning_curves")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def asha_rungs(trials: pd.DataFrame, settings: dict, max_epochs: int) -> pd.DataFrame:
    """Trials that reached each ASHA rung (grace * rf^k epochs, then the maximum)."""
    grace, rf = int(settings.get("grace_period", 1)), int(settings.get("reduction_factor", 2))
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= rf
    rungs.append(max_epochs)
    ran = trials[trials["status"] != ERROR]["epochs_run"]
    return pd.DataFrame({"rung_epochs": rungs, "trials_reaching": [(ran >= r).sum() for r in rungs]})


def plot_rungs(rungs: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(r) for r in rungs.rung_epochs], rungs.trials_reaching)
    ax.set(xlabel="rung (epochs)", ylabel="trials reaching it", title="ASHA: survivors per rung")
    path = _fig_path(out, "asha_rungs")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, title: str, out: Path, name: str, labels: list[str] | None = None) -> Path:
    plt = _plt()
    size = 7 if labels is None or len(labels) <= 20 else 14
    fig, ax = plt.subplots(figsize=(size, size * 6 / 7))
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # per true class
    im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if labels is not None and len(labels) == len(matrix) <= 100:  # names stay legible up to ~100 classes
        ticks = np.arange(len(labels))
        font = 8 if len(labels) <= 20 else 4
        ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
        ax.set_yticks(ticks, labels, fontsize=font)
    else:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label="share of the true class")
    path = _fig_path(out, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def importance_section(exp: Results) -> list[str]:
    """fANOVA importances of every study with enough completed trials; the others are named."""
    import optuna

    if not exp.journal.exists():
        return [f"No Optuna journal at {exp.journal}.", ""]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    md, few = [], []
    for label, name in (exp.studies() or {"study": n for n in exp.study_names()}).items():
        study = exp.load_study(name)
        n = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        if n < MIN_TRIALS_FOR_IMPORTANCE:
            few.append(f"{label} ({n})")
            continue
        scores, how = param_importance(study)
        md += [f"**{label}**: {how}.", ""] + ([_table(scores), ""] if scores is not None else [])
    if few:
        md += [f"Not computed for {', '.join(few)}: fewer than {MIN_TRIALS_FOR_IMPORTANCE} completed trials "
               "(pruned ones excluded) in the study, too few for a ranking of parameters to mean anything.", ""]
    return md


def param_importance(study) -> tuple[pd.DataFrame | None, str]:
    """optuna.importance over a study's completed trials, or the reason it cannot be computed."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return None, f"not computable from {len(complete)} completed trials: {exc}"
    df = pd.DataFrame({"parameter": list(scores), "importance": list(scores.values())})
    how = f"fANOVA (seed 0) over the {len(complete)} completed trials (pruned ones excluded)"
    if caught:
        how += f"; Optuna warned {len(caught)} time(s), e.g. \"{caught[0].message}\""
    return df, how


def head_costs(final: pd.DataFrame) -> pd.DataFrame:
    ok = finished(final)
    cols = ["head_train_madds", "head_log_prob_madds", "head_predict_madds", "head_time_share", "epoch_time_s_mean"]
    costs = ok.groupby(["arch", "head"], as_index=False)[cols].mean()
    costs["train_madds_vs_softmax"] = ok.groupby(["arch", "head"])["softmax_madds"].mean().values / \
        costs["head_train_madds"]
    return costs


def observations(final: pd.DataFrame | None, trials: pd.DataFrame, max_epochs: int,
                 front: pd.DataFrame | None) -> list[str]:
    """Statements computed from the numbers; each carries the figures it rests on."""
    notes = []
    stopped = trials[trials.status == PRUNED]
    ran = trials[trials.status.isin(FINISHED)]
    if len(ran):
        saved = 1 - ran.epochs_run.sum() / (len(ran) * max_epochs)
        notes.append(f"ASHA stopped {len(stopped)} of {len(ran)} finished trials early, saving {saved:.0%} "
                     f"of the epochs a full run of each would take.")
    if final is None or final.empty or (final.status == ERROR).all():
        return notes
    ok = finished(final)
    stats = ok.groupby(["arch", "head"])["accuracy"].agg(["mean", "std", "count"]).fillna(0.0)
    stats = stats.sort_values("mean", ascending=False)
    stuck = at_chance(final)
    if stuck:
        chance = 1.0 / ok["num_classes"].iloc[0]
        names = ", ".join(f"{a}+{h} ({stats.loc[(a, h), 'mean']:.4f})" for a, h in sorted(stuck))
        notes.append(f"At chance level (accuracy below 2/C = {2 * chance:.4f}): {names}. The best "
                     "config the search found for these never learned, so comparisons with them measure the "
                     "search budget, not the head: search more samples or a narrower lr range. They are left out "
                     "of the Pareto front and of the calibration ranking.")
    (arch, head), top = stats.index[0], stats.iloc[0]
    seeds = int(top["count"])
    notes.append(f"Best on the test set: {arch} + {head}, accuracy {top['mean']:.4f}"
                 + (f" +- {top['std']:.4f} over {seeds} seeds." if seeds > 1 else " (one seed)."))
    if len(stats) > 1:
        second = stats.index[1]

        def by_seed(pair):
            return ok[(ok["arch"] == pair[0]) & (ok["head"] == pair[1])].set_index("seed")["accuracy"]

        lead = paired_difference(by_seed((arch, head)), by_seed(second))
        if lead["seeds"] < 2:
            notes.append(f"Its lead over {second[0]} + {second[1]} is {lead['diff']:.4f}; with one seed there is no "
                         "spread to judge it against, so no claim is made about whether it is real.")
        else:
            real = "a real lead" if lead["ci_low"] > 0 else "within the seed spread"
            notes.append(f"Its lead over {second[0]} + {second[1]} is {lead['diff']:.4f}, 95% CI "
                         f"[{lead['ci_low']:+.4f}, {lead['ci_high']:+.4f}] paired over {lead['seeds']} seeds: {real}.")
    vs = versus_softmax(final)
    for _, r in vs[vs["head"] != "softmax"].iterrows() if len(vs) else []:
        ci = f", 95% CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if np.isfinite(r.ci_low) else ""
        notes.append(f"{r.arch}: {r['head']} vs softmax: accuracy {r['diff']:+.4f}{ci} over {r.seeds} seed(s): "
                     f"{r.verdict}; epoch time x{r.epoch_time_vs_softmax:.2f}.")
    share = ok.groupby("head")["head_time_share"].mean()
    notes.append(f"The head takes between {share.min():.1%} ({share.idxmin()}) and {share.max():.1%} "
                 f"({share.idxmax()}) of a training step's time.")
    learned = ok[[(a, h) not in stuck for a, h in zip(ok.arch, ok["head"])]]
    if len(learned):
        ece = learned.groupby("head")["ece"].mean()
        notes.append(f"Best calibrated head: {ece.idxmin()} (ECE {ece.min():.4f}); worst: {ece.idxmax()} "
                     f"(ECE {ece.max():.4f}); pairs at chance level left out.")
    if front is not None and len(front):
        names = ", ".join(f"{r.arch}+{r['head']}" for _, r in front.iterrows())
        notes.append(f"On the accuracy / epoch-time Pareto front: {names}.")
    return notes


def provenance(spec: dict, final: pd.DataFrame | None) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in spec.get("versions", {}).items())
    devices = sorted(set(final["device"].dropna())) if final is not None and "device" in final else []
    lines = [f"- space `{spec.get('space', '?')}`, overrides {spec.get('overrides', [])}, seed {spec.get('seed')}, "
             f"created {spec.get('created', '?')} on host `{spec.get('host', '?')}`, git {spec.get('git_sha')}",
             f"- versions: {versions or 'unknown (no spec.json)'}",
             f"- report made on {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
             f"retrains ran on {', '.join(devices) or 'n/a'}",
             f"- data: `{spec.get('constants', {}).get('dataset', '?')}` from `{spec.get('data_dir', '?')}`",
             f"- {data_caveat(spec)}"]
    return lines


# ----------------------------------------------------------------------------- the document
def build_report(path: str | Path) -> Path:
    exp = Results.open(path)  # raises NotAnExperimentError for a wrong path
    trials = exp.trials()
    spec, out = exp.spec, exp.analysis_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = exp.settings
    max_epochs = int(spec.get("max_epochs", trials.get("epochs", pd.Series([1])).max()))  # no spec: trials say
    md = [f"# headsweep report: {exp.name}", "", f"Data: {data_caveat(spec)}", ""]
    caveat = adaptive_caveat(spec, trials["head"] if "head" in trials else [])
    if caveat:
        md += [f"Head note: {caveat}", ""]
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    md += [f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    md += budget_section(spec, trials)
    if len(trials) == 0 or (trials["status"] == ERROR).all():
        md += ["## Every trial failed", "", "No trial produced a result, so there is nothing to compare. "
               "First errors:", ""]
        errors = trials.get("error", pd.Series(dtype=object)).dropna()
        md += [f"- `{e}`" for e in errors.drop_duplicates().head(5)] or ["- (no error text recorded)"]
        md += ["", "## Provenance", "", *provenance(spec, None)]
        return _write(out, md)
    final_path = out / "final.parquet"
    final = pd.read_parquet(final_path) if final_path.exists() else None
    front = None
    md += ["## Summary (test set, mean +- std over seeds)", ""]
    if final is None or (final["status"] == ERROR).all():
        md += ["No retrained models yet: run `python -m analysis.retrain EXPERIMENT` for test-set numbers. "
               "Best validation accuracy per (backbone, head) from the search:", "",
               _table(exp.best(trials)[["arch", "head", "trial_id", "best_val_acc", "epochs_run"]]), ""]
    else:
        md += [_table(summary(final)), ""]
        md += versus_softmax_section(final, trials)
        path, front = plot_pareto(final, out)
        md += ["## Accuracy against epoch time", "", f"![pareto](figures/{path.name})", "",
               "Pareto front (no other combination is both faster and more accurate; pairs at chance level left "
               "out):", "",
               _table(front), ""]
    chosen = exp.best(trials)
    path = plot_learning_curves(exp.history(), chosen, out)
    md += ["## Learning curves of the best trials", "", f"![curves](figures/{path.name})", ""]
    rungs = asha_rungs(trials, settings, max_epochs)
    path = plot_rungs(rungs, out)
    md += ["## ASHA rungs", "", f"grace period {settings.get('grace_period')}, reduction factor "
           f"{settings.get('reduction_factor')}, at most {max_epochs} epochs.", "", _table(rungs), "",
           f"![rungs](figures/{path.name})", ""]
    if final is not None and "confusion_file" in final and final["confusion_file"].notna().any():
        md += confusion_section(final, out, class_names(exp))
    md += ["## Parameter importance", "", *importance_section(exp)]
    md += ["## Cost of the heads", ""]
    if final is not None and (final["status"] != ERROR).any():
        md += ["Multiply-adds per example from `complexity()` next to the measured share of a training "
               "step spent in the head and the epoch time.", "", _table(head_costs(final)), ""]
    md += [f"- **{h}**: {heads.head_class(h).cost_note}" for h in sorted(set(trials["head"].dropna()))
           if h in heads.HEADS]
    md += ["", "## Observations", "", *[f"- {n}" for n in observations(final, trials, max_epochs, front)], "",
           "## Provenance", "", *provenance(spec, final)]
    return _write(out, md)


def budget_section(spec: dict, trials: pd.DataFrame) -> list[str]:
    budget = spec.get("budget", "joint")
    how = ("per-pair budgets: each (backbone, head) pair had its own Optuna study, its own ASHA and an equal "
           "share of the trials" if budget == "pairs" else
           "one joint budget: a single Optuna study and one ASHA over all pairs (a search for the best model "
           "overall; trial counts per pair are not equal by design)")
    counts = trials.groupby(["arch", "head"]).size().rename("trials").reset_index() if len(trials) else None
    return [f"Budget: {how}.", ""] + ([_table(counts), ""] if counts is not None else [])


def versus_softmax_section(final: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    vs = versus_softmax(final, trials)
    if vs.empty:
        return []
    cols = [c for c in ("arch", "head", "trials", "seeds", "accuracy", "accuracy_std", "diff", "ci_low", "ci_high",
                        "p_value", "verdict", "epoch_time_vs_softmax", "head_time_vs_softmax") if c in vs]
    return ["## Each head against softmax", "",
            "Test accuracy minus softmax's on the same backbone, paired by seed; `ci_low`/`ci_high` is the 95% "
            "confidence interval of the mean difference (paired t-test over seeds), and the verdict says whether "
            "it excludes zero. With one seed no claim is made. Epoch and head time are ratios to softmax's.", "",
            _table(vs[cols]), ""]


def class_names(exp: Results) -> tuple[list[str] | None, list[str] | None]:
    """(class names, group names) from spec.json; for an experiment that did not record them, from
    its dataset where that is on this machine."""
    info = exp.spec.get("dataset", {})
    if "classes" in info:
        return info["classes"], info.get("groups")
    try:
        ds = exp.load_dataset()
    except (FileNotFoundError, ValueError):
        return None, None
    return ds.classes, ds.group_names


def confusion_section(final: pd.DataFrame, out: Path, names: tuple[list[str] | None, list[str] | None]) -> list[str]:
    ok = final[(final["status"] != ERROR) & final["confusion_file"].notna()]
    best_label = ok.groupby("label")["accuracy"].mean().idxmax()
    rows = ok[ok["label"] == best_label]
    md = ["## Confusion matrices", "", f"{best_label}, summed over {len(rows)} seeds, rows normalised.", ""]
    for kind, col in (("fine", "confusion_file"), ("coarse", "confusion_coarse_file")):
        if col in rows and rows[col].notna().all():
            matrix = sum(np.load(out / f) for f in rows[col])
            labels = names[0] if kind == "fine" else names[1]
            path = plot_confusion(matrix, f"{best_label}: {kind} classes", out, f"confusion_{kind}", labels)
            md += [f"![{kind}](figures/{path.name})", ""]
    return md


def _write(out: Path, md: list[str]) -> Path:
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
