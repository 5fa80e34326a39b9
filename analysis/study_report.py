"""The study's committed results: `results/study-<scale>/` from the experiments `analysis.study` ran.

`write_results` gathers every part (its trials, its retrained models' test metrics, its own
report), the heads' benchmark and the stages' wall times into one `report.md` whose sections
and table columns do not depend on the scale (`structure` lists them: a test checks the
committed report against what this module writes today), plus `trials.parquet`,
`final.parquet`, `history.parquet` (per trial-epoch), `spec.json`, `command.txt`, the figures, and each part's own report beside it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import heads
from analysis.compare import data_caveat, finished, versus_softmax
from analysis.report import plot_confusion
from analysis.results import to_parquet
from common.status import ERROR, FINISHED, PRUNED

METRICS = {"accuracy": "accuracy", "top5_accuracy": "top-5", "precision_macro": "precision", "recall_macro": "recall",
           "f1_macro": "F1", "cohen_kappa": "kappa", "ece": "ECE"}

# Figures others reported: single runs, other splits (the official one), other budgets. `here` says
# which of this study's (part, arch, head) to set beside each: arch None = the best CNN of the part,
# head None = every head; a (low, high) figure is set beside the range of the pairs' means.
PUBLISHED = (
    ("a CNN, standard softmax, 50 epochs, SGD lr 0.01 momentum 0.9", 0.5709, ("cifar100", None, "softmax")),
    ("the same CNN with Gumbel-softmax", 0.5950, ("cifar100", None, "gumbel")),
    ("a 3-conv Keras CNN, 150 epochs", 0.5602, ("cifar100", "cnn_base", "softmax")),
    ("a VGG-like CNN with BatchNorm and dropout (8 hours on a CPU)", 0.61, ("cifar100", "cnn_bn4", "softmax")),
    ("a small PyTorch CNN, hand-made ablations (BatchNorm, ELU, LeakyReLU, avg pooling, dropout, SGD vs RMSprop)",
     (0.384, 0.5687), ("cifar100", None, None)),
    ("EfficientNet-B0 fine-tuned from ImageNet weights", 0.7907, ("cifar100", "efficientnet_b0", "softmax")),
    ("ViT fine-tuned from ImageNet weights (3 h 45 min)", 0.9088, ("cifar100", "vit_tiny", "softmax")),
    ("ResNet-18 from scratch, 200 epochs", (0.75, 0.78), ("cifar100", "resnet18", "softmax")),
    ("ViTs from scratch", (0.66, 0.74), ("cifar100", "vit_tiny", "softmax")),
    ("Fashion-MNIST with a CNN", 0.9184, ("fashion_mnist", None, "softmax")),
)


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
        path = kept / "retrain" / "final.parquet"
        if path.exists():
            finals.append(pd.read_parquet(path).assign(part=part.name))
    final = pd.concat(finals, ignore_index=True) if finals else pd.DataFrame(columns=["part", "status"])
    return (pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(columns=["part", "status"]),
            pd.concat(history, ignore_index=True) if history else pd.DataFrame(columns=["part"]), final, specs)


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
        what = f"{part}: {'best CNN' if arch is None else arch} + softmax, mean test accuracy over seeds"
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


def published_table(final: pd.DataFrame) -> pd.DataFrame:
    ok, rows = finished(final), []
    for what, figure, (part, arch, head) in PUBLISHED:
        sel = ok[(ok["part"] == part) & ((ok["arch"] == arch) if arch else ok["arch"].str.startswith("cnn"))
                 & ((ok["head"] == head) if head else True)]
        theirs = f"{figure[0]:.2%} to {figure[1]:.2%}" if isinstance(figure, tuple) else f"{figure:.2%}"
        if sel.empty:
            rows.append({"reported elsewhere": what, "their test accuracy": theirs, "here": "not run at this scale",
                         "here: run": ""})
            continue
        means = sel.groupby(["arch", "head"])["accuracy"].mean()
        if head is None:  # a range of hand-made variants: the range of this study's pairs
            here = f"{means.min():.2%} to {means.max():.2%}"
            setting = f"the {len(means)} (CNN, head) pairs' means, best config each"
        else:
            best = means.idxmax()
            g = sel[(sel["arch"] == best[0]) & (sel["head"] == best[1])]
            cfg = json.loads(g.iloc[0]["config"])
            here = f"{_pm(g['accuracy'] * 100, '.2f')}%"
            setting = (f"{best[0]} + {best[1]}, {cfg.get('epochs')} epochs, {cfg.get('optimizer')} lr "
                       f"{cfg.get('lr'):.3g}, {len(g)} seeds, from scratch")
        rows.append({"reported elsewhere": what, "their test accuracy": theirs, "here": here, "here: run": setting})
    return pd.DataFrame(rows)


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
        matrix = sum(np.load(keep / part / "retrain" / f) for f in g["confusion_file"])
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
def report_lines(scale, trials, final, specs, bench, done, command, out: Path, keep: Path) -> list[str]:
    caveats = sorted({data_caveat(s) for s in specs.values()})
    versus = versus_by_part(final)
    md = [f"# headsweep study: {scale.name} scale", "",
          f"{scale.description}", "", f"Made by `{command}`; `make study` reproduces the cpu scale.", "",
          "Data:", "", *[f"- {c}" for c in caveats], "",
          "## Headline", "",
          "Test set, each model evaluated once; mean +- std over seeds (each seed retrained from scratch on "
          "train+validation with the best config the pair's search found on validation). `minus softmax` is "
          "paired by seed on the same backbone, with the 95% CI of a paired t-test; precision, recall and F1 "
          "are macro averages.", "", _table(headline(final, versus)), "",
          "## Targets", "", _table(targets(scale, final)), "",
          "## Heads that trail softmax", "", *trailing(versus), "",
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
    md += ["", "## What ASHA saved", "", _table(asha_table(trials, specs)), "",
           "## Reported elsewhere vs here", "",
           "Their figures are single runs on the official CIFAR-100 / Fashion-MNIST split with their own budgets "
           "(epochs, augmentation, pretrained weights); ours are means over seeds on the shared copy, whose split "
           "is not the official one, at this study's budget. So the columns compare only approximately.", "",
           _table(published_table(final)), "",
           "## Confusion matrices", "", "Fine classes, summed over seeds, rows normalised.", "",
           *confusion_figures(final, keep, out),
           "## Wall time per stage", "", _table(stage_table(done)), "",
           "## Each part's own report", "",
           *[f"- [{p.name}]({p.name}/report.md): search budget, learning curves, ASHA rungs, parameter importance"
             for p in scale.parts], "",
           "## Provenance", "", *provenance(specs), ""]
    return md


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
    md = report_lines(scale, trials, final, specs, bench, done, command, out, keep)
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
