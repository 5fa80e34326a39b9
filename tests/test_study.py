"""analysis.study: the headline study's command at its tiny scale, the committed report's format,
the notebook on the study, and what a stopped or failed study keeps."""
import json
from pathlib import Path

import pandas as pd
import pytest

import heads
from analysis import study
from analysis.study_report import structure

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "study-cpu"


def _figures(report: str) -> list[str]:
    """The figure paths a report shows (![...](path))."""
    return [ln.split("](")[1].rstrip(")") for ln in report.splitlines() if ln.startswith("![")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    code = study.main(["--scale", "tiny", "--work", str(root / "work"), "--out", str(root / "results")])
    return root, code


@pytest.mark.slow
def test_tiny_study_writes_every_result(tiny):
    root, code = tiny
    out = root / "results" / "study-tiny"
    assert code == 0
    trials, final = pd.read_parquet(out / "trials.parquet"), pd.read_parquet(out / "final.parquet")
    assert sorted(trials.part.unique()) == ["cifar100", "fashion_mnist"] and len(trials) == 6  # 5 pairs + 1
    # the 6 pairs' 3 seeds, and cifar100's 5 pairs again at the converge stage's 3 epochs: part cifar100-e3
    assert final.groupby("part").size().to_dict() == {"cifar100": 15, "cifar100-e3": 15, "fashion_mnist": 3}
    assert set(final.seed) == {0, 1, 2} and (final.status != "error").all()
    assert set(final[final.part == "cifar100-e3"]["epochs"]) == {3}
    assert len(pd.read_parquet(out / "history.parquet")) == 6 * 2  # 2 epochs, no trial stopped early
    spec = json.loads((out / "spec.json").read_text())
    assert list(spec["stages"]) == ["cifar100/search", "cifar100/retrain", "cifar100/curve", "cifar100/converge",
                                    "cifar100/borrowed",
                                    "cifar100/longer", "cifar100/report",
                                    "fashion_mnist/search",
                                    "fashion_mnist/retrain", "fashion_mnist/report", "pays/recipe-s0/search",
                                    "pays/random-s0/search", "pays/tpe-s0/search", "pays/retrain", "heads_bench"]
    pays = pd.read_parquet(out / "stages" / "pays" / "retrain" / "final.parquet")  # each arm's best, 2 seeds
    assert sorted(pays["label"].str.split("-").str[0].unique()) == ["random", "recipe", "tpe"] and len(pays) == 6
    assert "figures/search_pays.png" in _figures((out / "report.md").read_text())
    assert spec["experiments"]["cifar100"]["space"] == "smoke"
    assert (out / "command.txt").read_text().startswith("python -m analysis.study --scale tiny")
    text = (out / "report.md").read_text()
    for figure in _figures(text):
        assert (out / figure).is_file(), figure  # every figure the report shows is there
    assert text.count("![cifar100 cnn") == 5 and "(cifar100/report.md)" in (text)
    assert (out / "cifar100" / "report.md").is_file()
    assert not [p for p in out.rglob("*.npy") if "stages" not in p.parts]  # matrices only beside their runs
    runs = sorted(p.name for p in (out / "stages" / "cifar100" / "retrain" / "runs").iterdir())
    assert len(runs) == 15 and runs[0].endswith("-seed0.json")  # one file per (config, seed)
    stages = json.loads((out / "stages" / "stages.json").read_text())
    assert list(stages) == list(spec["stages"])
    # every retrain stage (the curve's and borrowed runs' too) logs its runs' progress lines, which the study
    # shows every 30 s while a run of an hour or more trains
    retrains = [s["command"].split() for s in stages.values() if "analysis.retrain" in s["command"]]
    assert len(retrains) == 7 and not [argv for argv in retrains if "-q" in argv]
    curve = pd.read_parquet(out / "stages" / "cifar100" / "curve" / "final.parquet")  # softmax at other budgets
    assert sorted(curve["epochs"]) == [1, 3] and set(curve["head"]) == {"softmax"} and set(curve["seed"]) == {0}
    converge = pd.read_parquet(out / "stages" / "cifar100" / "converge" / "final.parquet")
    assert converge.groupby("epochs").size().to_dict() == {3: 15, 6: 1}  # softmax alone at twice the budget
    assert "- cifar100, cnn + softmax: 6 epochs against 3: " in text  # what the curve says of the budget
    headline_rows = text.split("## Headline")[1].split("##")[0]
    assert headline_rows.count("| cifar100-e3 ") == 5  # the pairs again at the converge budget, paired with softmax
    borrowed = pd.read_parquet(out / "stages" / "cifar100" / "borrowed" / "final.parquet")  # gumbel, softmax's config
    assert list(borrowed["head"]) == ["gumbel"] and borrowed["label"][0].startswith("cnn-gumbel-with-softmax-")
    assert "| cifar100 | cnn    | gumbel  | softmax's searched |" in text
    longer = pd.read_parquet(out / "stages" / "cifar100" / "longer" / "final.parquet")  # both heads at 3 epochs
    assert list(longer["head"]) == ["gumbel", "softmax"] and set(longer["epochs"]) == {3}
    assert all(longer["label"].str.endswith("-e3")) and set(longer["seed"]) == {0}
    borrowed_rows = [ln.split("|")[3:6] for ln in text.split("## One config for both heads")[1].split("##")[0]
                     .splitlines() if ln.startswith("| cifar100")]
    assert [[c.strip() for c in r] for r in borrowed_rows if r[2].strip() == "3"] == [
        ["softmax", "its own searched", "3"], ["gumbel", "softmax's searched", "3"]]  # the longer budget's rows
    assert "figures/budget.png" in _figures(text) and "figures/accuracy_vs_cost.png" in _figures(text)
    answer = text.split("## Answer")[1].split("##")[0]  # the opening answers with numbers
    assert "best head" in answer and "%" in answer and "Did the search pay?" in answer


@pytest.mark.slow
def test_committed_report_has_the_format_the_generator_writes_today(tiny):
    """The committed study report must not go stale: same sections, same table columns, in order."""
    root, _ = tiny
    today = structure((root / "results" / "study-tiny" / "report.md").read_text())
    assert any(line.startswith("|data|backbone|head|seeds|accuracy|") for line in today) and "## Headline" in today
    assert structure((COMMITTED / "report.md").read_text()) == today


def test_committed_study_has_its_files():
    for name in ("report.md", "trials.parquet", "final.parquet", "history.parquet", "spec.json", "command.txt"):
        assert (COMMITTED / name).is_file(), name
    final = pd.read_parquet(COMMITTED / "final.parquet")
    parts = {p.name: p.seeds for p in study.SCALES["cpu"].parts}
    under_way = {f"{p.name}-e{p.converge}": p.seeds for p in study.SCALES["cpu"].parts if p.converge}
    sizes = final.groupby(["part", "arch", "head"]).size()
    assert all(n == parts[part] for (part, _, _), n in sizes.items() if part in parts), sizes  # every seed
    # a converge stage spans sessions: its pairs have at most the part's seeds until it is done, then all
    done = json.loads((COMMITTED / "stages" / "stages.json").read_text())
    assert all(n == under_way[part] if f"{part.rsplit('-', 1)[0]}/converge" in done else 1 <= n <= under_way[part]
               for (part, _, _), n in sizes.items() if part not in parts), sizes
    assert set(final[final.part == "cifar100"]["head"]) == set(heads.list_heads())
    text = (COMMITTED / "report.md").read_text()
    assert "not the official" in text  # the split caveat stands next to the numbers
    for figure in _figures(text):
        assert (COMMITTED / figure).is_file(), figure
    assert not [p for p in COMMITTED.rglob("*") if p.suffix in (".pt", ".pkl")]  # no checkpoints
    assert not [p for p in COMMITTED.rglob("*.npy") if "stages" not in p.parts]  # matrices only beside their runs


@pytest.mark.slow
def test_rerun_skips_finished_stages(tiny, capsys):
    root, _ = tiny
    capsys.readouterr()
    assert study.main(["--scale", "tiny", "--work", str(root / "work"), "--out", str(root / "results")]) == 0
    out = capsys.readouterr().out
    # 2 parts x (search, retrain, report), the curve, converge, the borrowed runs and the longer ones, the 3
    # arms' searches and their retrain, the bench
    assert out.count("skipped") == 15 and "wrote" in out


@pytest.mark.slow
def test_a_fresh_clone_goes_on_from_the_committed_stages_and_a_cut_retrain_runs_only_what_is_missing(tiny, capsys):
    """A retrain stopped after some runs, on a machine without the work folder: the search and the other
    stages are skipped, the retrain trains only the (config, seed) runs without a file."""
    root, _ = tiny
    out = root / "results" / "study-tiny"
    keep = out / "stages"
    stages = json.loads((keep / "stages.json").read_text())
    del stages["cifar100/retrain"]  # as if stopped in the middle of the retrain ...
    (keep / "stages.json").write_text(json.dumps(stages))
    runs = sorted((keep / "cifar100" / "retrain" / "runs").glob("*-seed2.json"))
    kept = {p.name: p.read_text() for p in sorted((keep / "cifar100" / "retrain" / "runs").iterdir())}
    for p in runs[:2]:  # ... after all but two runs had finished
        p.unlink()
    capsys.readouterr()
    code = study.main(["--scale", "tiny", "--work", str(root / "fresh-work"), "--out", str(root / "results")])
    printed = capsys.readouterr().out
    assert code == 0 and "cifar100/search: done before" in printed and "not on this machine" in printed
    assert "13 of 15 runs finished before" in (root / "fresh-work" / "study-tiny" / "logs" /
                                                "cifar100-retrain.log").read_text()
    after = {p.name: p.read_text() for p in (keep / "cifar100" / "retrain" / "runs").iterdir()}
    assert set(after) == set(kept) and all(after[n] == kept[n] for n in kept if n not in {p.name for p in runs[:2]})
    assert len(pd.read_parquet(out / "final.parquet")) == 33


@pytest.mark.slow
def test_example_notebook_runs_on_the_study(tiny, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HEADSWEEP_STUDY", str(tiny[0] / "results" / "study-tiny"))
    nb = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2


def test_committed_notebook_is_stored_with_its_outputs():
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code)  # tables and plots visible when browsing the repository
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) == 2


@pytest.mark.slow  # the stage is a subprocess (the search's command line)
def test_a_failed_stage_keeps_what_ran_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    bad = study.Scale("bad", "a search that refuses its input", (study.Part("p", ("--space", "smoke", "--set",
                                                                            "nonsense=1")),), (), fake_data=True)
    monkeypatch.setitem(study.SCALES, "bad", bad)
    keep = tmp_path / "results" / "study-bad" / "stages"
    keep.mkdir(parents=True)
    (keep / "stages.json").write_text(json.dumps({"earlier": {"seconds": 5.0}}))
    code = study.main(["--scale", "bad", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 1
    assert "p/search exited 2" in err and "unknown key" in err and "run the same command again" in err
    assert json.loads((keep / "stages.json").read_text()) == {"earlier": {"seconds": 5.0}}


@pytest.mark.parametrize("argv, message", [
    (["--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    (["--data-dir", "/no/such/dir"], "--data-dir=/no/such/dir: no such folder"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    assert study.main([*argv, "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "study-cpu").exists()


def test_structure_sees_sections_and_columns_not_padding():
    report = "# title A\n\n## Headline\n\n| data | acc |\n|:---|---:|\n| x | 1 |\n"
    assert structure(report) == ["## Headline", "|data|acc|"]
    assert structure(report.replace("| data | acc |", "|   data   |  acc |")) == structure(report)
    assert structure(report.replace("acc |\n|:", "accuracy |\n|:")) != structure(report)  # a renamed column
    assert structure(report.replace("## Headline", "## Summary")) != structure(report)  # a renamed section


_CHILD = """import pathlib, signal, sys, time
mark = pathlib.Path(sys.argv[1])
def stop(*_):
    time.sleep(0.5)  # its clean stop takes a while: the study must wait for it
    mark.write_text(mark.read_text() + "stopped cleanly\\n")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
mark.write_text("started\\n")
while True:
    print("epoch", flush=True)
    time.sleep(0.05)
"""

_DRIVER = """import signal, sys
from pathlib import Path
from analysis import study
study.PROGRESS_S = 0.2
signal.signal(signal.SIGTERM, signal.default_int_handler)  # as study.main
log = Path(sys.argv[2])
try:
    with log.open("a") as out:
        study.run_to_the_end([sys.executable, "-c", sys.argv[1], sys.argv[3]], out,
                             lambda: print("progress:", study.last_line(log), flush=True))
except KeyboardInterrupt:
    print("driver stopped", flush=True)
"""


@pytest.mark.slow  # two processes and a signal between them
def test_a_stopped_study_lets_its_stage_stop_cleanly_and_says_how_it_goes_meanwhile(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    mark, log = tmp_path / "mark", tmp_path / "stage.log"
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, _CHILD, str(log), str(mark)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (mark.exists() and log.exists() and "epoch" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # at least one progress line
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=60)
    assert mark.read_text() == "started\nstopped cleanly\n"  # one SIGINT, and its handler ran to the end
    assert "progress: epoch" in out and out.strip().endswith("driver stopped")


def test_last_line_is_the_logs_last_non_empty_unindented_line_shortened(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("a\n" * 10_000 + "b" * 500 + "\n\n")
    assert study.last_line(log) == "b" * 157 + "..."
    log.write_text("0:31 status    1 running, 0 pending, 3/4 done\n               x/softmax  1 running  best 0.4\n")
    assert study.last_line(log) == "0:31 status    1 running, 0 pending, 3/4 done"  # not its continuation
    log.write_text("   only indented\n")
    assert study.last_line(log) == "only indented"
    log.write_text("")
    assert study.last_line(log) == "(nothing logged yet)"


def test_the_search_pays_retrain_takes_each_arms_best_over_its_seeds_from_the_kept_tables(tmp_path):
    """Validation picks each arm's config (over its search seeds); the config comes from the kept trials table
    when the search's folder is gone (a fresh machine), its lists read back from their JSON text."""
    pays = study.Pays(("--space", "smoke"), search_seeds=(0, 1), seeds=2)
    vals = {("recipe", 0): [0.30], ("random", 0): [0.20, 0.35], ("random", 1): [0.40, 0.10],
            ("tpe", 0): [0.50, 0.45], ("tpe", 1): [0.42, float("nan")]}
    for (arm, seed), accs in vals.items():
        kept = tmp_path / f"{arm}-s{seed}"
        kept.mkdir()
        pd.DataFrame({"trial_id": [f"{arm}{seed}{i}" for i in range(len(accs))], "arch": "cnn", "head": "softmax",
                      "status": ["completed"] * len(accs), "best_val_acc": accs, "epochs_run": 2,
                      "path": [str(tmp_path / "gone" / str(i)) for i in range(len(accs))], "lr": [0.01] * len(accs),
                      "model_widths": ["[8, 16]"] * len(accs)}).to_parquet(kept / "trials.parquet")
        (kept / "spec.json").write_text(json.dumps({"constants": {"epochs": 2}, "data_dir": None,
                                                    "settings": {"fake_data": True}}))
    chosen = study.pays_jobs(pays, tmp_path)
    assert [(j["label"], j["seed"]) for j in chosen["jobs"]] == [
        ("recipe-recipe00", 0), ("random-random10", 0), ("tpe-tpe00", 0),
        ("recipe-recipe00", 1), ("random-random10", 1), ("tpe-tpe00", 1)]
    assert chosen["jobs"][0]["config"] == {"arch": "cnn", "head": "softmax", "lr": 0.01, "model_widths": [8, 16]}
    assert chosen["fake_data"] is True and chosen["constants"] == {"epochs": 2}


@pytest.mark.parametrize("verbosity, expected", [
    (0, []),
    (1, ["0.0 min, a", "0.0 min, c"]),  # the last unindented line at each beat
    (2, ["a", "  b", "c"]),  # every line logged since the last beat, once
])
def test_a_stages_progress_lines_follow_q_and_v(tmp_path, monkeypatch, capsys, verbosity, expected):
    def stage(argv, out, progress):  # a stage that logs, with two progress beats (no clock: deterministic)
        out.write("a\n")
        out.flush()
        progress()
        out.write("  b\nc\n")
        out.flush()
        progress()
        return 0

    monkeypatch.setattr(study, "run_to_the_end", stage)
    assert study.Stages(tmp_path / "work", tmp_path / "keep", verbosity).run("x/y", ["true"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  x/y: true" and lines[-1].startswith("  x/y: ") and lines[-1].endswith("s")
    assert [line.removeprefix("  x/y: ") for line in lines[1:-1]] == expected
    assert json.loads((tmp_path / "keep" / "stages.json").read_text())["x/y"]["log_tail"] == ["a", "  b", "c"]


def test_the_curve_trains_the_named_archs_softmax_config_and_says_when_there_is_none(tmp_path):
    """`curve_arch` picks whose softmax config the curve stage trains at other budgets (the longest first);
    without it, the first retrained softmax config; a named arch with no softmax run stops the stage in one line."""
    (tmp_path / "retrain").mkdir()
    job = lambda arch, head: {"config": {"arch": arch, "head": head, "epochs": 50}, "seed": 0,  # noqa: E731
                              "label": f"{arch}-{head}"}
    (tmp_path / "retrain" / "chosen.json").write_text(json.dumps({"jobs": [
        job("cnn_base", "softmax"), job("cnn_keras", "gumbel"), job("cnn_keras", "softmax")]}))
    jobs = json.loads(study.curve_jobs(tmp_path, (80, 150), "cnn_keras").read_text())["jobs"]
    assert [(j["label"], j["config"]["arch"], j["config"]["epochs"], j["seed"]) for j in jobs] == [
        ("cnn_keras-softmax-e150", "cnn_keras", 150, 0), ("cnn_keras-softmax-e80", "cnn_keras", 80, 0)]
    (tmp_path / "curve" / "chosen.json").unlink()
    assert json.loads(study.curve_jobs(tmp_path, (5,)).read_text())["jobs"][0]["label"] == "cnn_base-softmax-e5"
    (tmp_path / "curve" / "chosen.json").unlink()
    with pytest.raises(study.StageFailed, match="the retrain has no softmax run of vit_cpu to train at other budgets"):
        study.curve_jobs(tmp_path, (5,), "vit_cpu")


def test_a_curve_runs_longer_budget_counts_for_the_seed_reports_and_one_seed_is_said(tmp_path):
    """The seed reports' table takes each architecture at its best budget, a curve stage's run included, and
    says which; the convergence line says when one seed leaves no spread to judge by."""
    from analysis.study_report import converged, curve_table, load_curve, published_table

    run = lambda arch, epochs, acc, seed=0: {"part": "cnns", "dataset": "cifar100", "arch": arch,  # noqa: E731
                                             "head": "softmax", "seed": seed, "status": "completed",
                                             "epochs": epochs, "accuracy": acc, "epoch_time_s_mean": 30.0}
    final = pd.DataFrame([run("cnn_keras", 50, 0.5541), run("cnn_base", 50, 0.5952)])
    longer = pd.DataFrame([run("cnn_keras", 150, 0.5700)])
    keras = published_table(final, longer).set_index("reported elsewhere").loc["a 3-conv Keras CNN"]
    assert keras["same architecture here"] == "57.00% (cnn_keras + softmax, 150 epochs, 1 seed (said so), 75 min a run)"
    assert keras["beaten"] == "yes, by +0.98%"
    assert published_table(final).set_index("reported elsewhere").loc["a 3-conv Keras CNN", "beaten"].startswith(
        "no, -0.61% on its own")
    table = curve_table(load_curve(None, longer, final))
    assert list(table["arch"]) == ["cnn_keras", "cnn_keras"] and list(table["epochs"]) == [50, 150]
    assert converged(table, {"cnns": (50,)}) == [
        "- cnns, cnn_keras + softmax: 150 epochs against 50: +1.59% test accuracy, one seed at each budget: no spread "
        "to judge it by; 150 epochs took 75 min a run against 25 as measured (3.0x; each run's minutes include "
        "whatever shared its cores)."]


def test_converge_trains_every_retrained_run_at_its_budget_and_softmax_at_twice_it_reusing_the_curves(tmp_path):
    """The converge stage: softmax's seed-0 config at 2x the budget first (it trains beside the others), then
    every retrained (config, seed) at the budget, seed-major; a run the curve stage finished with the same label
    and seed is copied with its confusion matrices, not trained again."""
    from types import SimpleNamespace

    from analysis.study_report import under_way

    (tmp_path / "retrain").mkdir()
    job = lambda head, seed: {"config": {"arch": "a", "head": head, "epochs": 10}, "seed": seed,  # noqa: E731
                              "label": f"a-{head}"}
    (tmp_path / "retrain" / "chosen.json").write_text(json.dumps({"jobs": [
        job(h, s) for s in (0, 1) for h in ("gumbel", "softmax")]}))
    runs = tmp_path / "curve" / "runs"
    runs.mkdir(parents=True)
    (runs / "a-softmax-e20-seed0.json").write_text(json.dumps({"accuracy": 0.6, "confusion_file": "c.npy",
                                                               "confusion_coarse_file": None}))
    (tmp_path / "curve" / "c.npy").write_bytes(b"matrix")
    (runs / "a-softmax-e5-seed0.json").write_text("{}")  # another budget: not this stage's
    jobs = json.loads(study.converge_jobs(tmp_path, 20).read_text())["jobs"]
    assert [(j["label"], j["seed"], j["config"]["epochs"]) for j in jobs] == [
        ("a-softmax-e40", 0, 40), ("a-gumbel-e20", 0, 20), ("a-softmax-e20", 0, 20), ("a-gumbel-e20", 1, 20),
        ("a-softmax-e20", 1, 20)]
    kept = tmp_path / "converge"
    assert sorted(p.name for p in (kept / "runs").iterdir()) == ["a-softmax-e20-seed0.json"]
    assert json.loads((kept / "runs" / "a-softmax-e20-seed0.json").read_text())["accuracy"] == 0.6
    assert (kept / "c.npy").read_bytes() == b"matrix"
    # the report's line while it is under way, none once it ended
    scale = SimpleNamespace(parts=(study.Part(tmp_path.name, (), converge=20), study.Part("other", ())))
    assert under_way(scale, tmp_path.parent, {}) == [
        f"- {tmp_path.name}-e20 is under way: 1 of 5 runs finished (its rows have the seeds that did); `make study` "
        "trains the rest."]
    assert under_way(scale, tmp_path.parent, {f"{tmp_path.name}/converge": {"seconds": 1.0}}) == []  # ended


def test_converge_runs_are_curve_points_once_and_each_budget_is_judged_against_the_next(tmp_path):
    """The converge stage's softmax runs join the curve (the run the curve stage also holds counts once); the
    retrain's budget and the converge budget are each judged against the next longer one, by its seed spread."""
    from analysis.study_report import converged, curve_table, load_curve, with_converge

    run = lambda epochs, acc, seed=0, head="softmax": {  # noqa: E731
        "part": "c", "dataset": "cifar100", "arch": "a", "head": head, "seed": seed, "status": "completed",
        "epochs": epochs, "accuracy": acc, "epoch_time_s_mean": 60.0, "label": f"a-{head}-e{epochs}"}
    final = pd.DataFrame([run(10, 0.660, 0), run(10, 0.665, 1), run(10, 0.670, 2)])
    curve = pd.DataFrame([run(5, 0.61), run(20, 0.690)])
    converge = pd.DataFrame([run(40, 0.695), run(20, 0.690), run(20, 0.686, 1), run(20, 0.692, 2),
                             run(20, 0.700, 0, "gumbel")])
    table = curve_table(load_curve(None, with_converge(curve, converge), final))
    assert table[["epochs", "seeds"]].values.tolist() == [[5, 1], [10, 3], [20, 3], [40, 1]]
    lines = converged(table, {"c": (10, 20)})
    assert [ln.split(": ", 1)[1].split(" (")[0] for ln in lines] == [
        "20 epochs against 10: +2.43% test accuracy", "40 epochs against 20: +0.57% test accuracy"]
    assert "beyond the seed spread: not converged" in lines[0]  # seed std at 10: 0.50%
    assert "within the seed spread: converged for this schedule" in lines[1]  # seed std at 20: 0.31%
    assert with_converge(curve, pd.DataFrame()) is curve


def test_a_borrowed_stage_trains_the_head_with_the_archs_softmax_config_and_says_when_there_is_none(tmp_path):
    """`borrow` trains a head with its arch's retrained softmax config (its own options dropped: their defaults)
    at the retrain's budget, once per seed; an arch with no softmax run stops the stage in one line."""
    (tmp_path / "retrain").mkdir()
    softmax = {"arch": "cnn_base", "head": "softmax", "lr": 0.004, "weight_decay": 0.09, "epochs": 8}
    (tmp_path / "retrain" / "chosen.json").write_text(json.dumps({"jobs": [
        {"config": {"arch": "cnn_base", "head": "gumbel", "head_tau": 3.0, "lr": 0.002, "epochs": 8}, "seed": 0,
         "label": "cnn_base-gumbel-b"},
        {"config": softmax, "seed": 0, "label": "cnn_base-softmax-a"}]}))
    jobs = json.loads(study.borrow_jobs(tmp_path, {("cnn_base", "gumbel"): 2}, 50).read_text())["jobs"]
    assert jobs == [{"config": {**softmax, "head": "gumbel", "epochs": 50}, "seed": s,
                     "label": "cnn_base-gumbel-with-softmax-a"} for s in (0, 1)]
    (tmp_path / "borrowed" / "chosen.json").unlink()
    with pytest.raises(study.StageFailed, match="the retrain has no softmax run of cnn_keras whose config gumbel"):
        study.borrow_jobs(tmp_path, {("cnn_keras", "gumbel"): 1}, 50)


def test_a_borrowed_config_counts_for_the_seed_reports_and_is_set_beside_both_searched_ones(tmp_path):
    """The seed reports' table may take a head trained with softmax's config, and says so; the borrowed table
    sets it beside softmax and the head's own searched config."""
    from analysis.study_report import borrowed_table, published_table

    run = lambda head, acc, seed=0: {"part": "cnns", "dataset": "cifar100", "arch": "cnn_base",  # noqa: E731
                                     "head": head, "seed": seed, "status": "completed", "epochs": 50,
                                     "accuracy": acc, "epoch_time_s_mean": 60.0}
    final = pd.DataFrame([run("softmax", 0.5952), run("gumbel", 0.5446)])
    borrowed = pd.DataFrame([run("gumbel", 0.5980), run("gumbel", 0.5960, 1)]).assign(config_of="softmax")
    row = published_table(final, borrowed).set_index("reported elsewhere").loc["the same CNN with Gumbel-softmax"]
    assert row["same architecture here"] == ("59.70 +- 0.14% (cnn_base + gumbel with softmax's config, 50 epochs, "
                                             "2 seeds, 50 min a run)")
    assert row["beaten"] == "yes, by +0.20%"
    assert published_table(final).set_index("reported elsewhere").loc[
        "the same CNN with Gumbel-softmax", "beaten"] == "no, -5.04%"  # its own searched config alone
    table = borrowed_table(final, borrowed)
    assert table[["head", "config", "seeds", "test accuracy", "minus softmax"]].values.tolist() == [
        ["softmax", "its own searched", 1, "59.52%", ""], ["gumbel", "its own searched", 1, "54.46%", "-5.06%"],
        ["gumbel", "softmax's searched", 2, "59.70 +- 0.14%", "+0.18%"]]
    assert borrowed_table(final, pd.DataFrame()).empty


def test_a_longer_stage_trains_the_borrowed_runs_and_softmaxs_config_at_each_budget(tmp_path):
    """`longer` takes the borrowed chosen.json's runs (every seed) to each budget, then the arch's softmax config
    (seed 0) at the same budget, labels ending in -e<epochs>."""
    (tmp_path / "retrain").mkdir()
    softmax = {"arch": "cnn_base", "head": "softmax", "lr": 0.004, "epochs": 8}
    (tmp_path / "retrain" / "chosen.json").write_text(json.dumps({"jobs": [
        {"config": softmax, "seed": 0, "label": "cnn_base-softmax-a"}]}))
    borrowed = study.borrow_jobs(tmp_path, {("cnn_base", "gumbel"): 2}, 50)
    jobs = json.loads(study.longer_jobs(tmp_path, borrowed, (80, 120)).read_text())["jobs"]
    assert [(j["label"], j["config"]["head"], j["config"]["epochs"], j["seed"]) for j in jobs] == [
        ("cnn_base-gumbel-with-softmax-a-e80", "gumbel", 80, 0),
        ("cnn_base-gumbel-with-softmax-a-e80", "gumbel", 80, 1),
        ("cnn_base-softmax-a-e80", "softmax", 80, 0),
        ("cnn_base-gumbel-with-softmax-a-e120", "gumbel", 120, 0),
        ("cnn_base-gumbel-with-softmax-a-e120", "gumbel", 120, 1), ("cnn_base-softmax-a-e120", "softmax", 120, 0)]
    assert all(j["config"]["lr"] == 0.004 for j in jobs)  # softmax's config for both heads


def test_a_longer_stages_runs_go_to_the_curve_and_the_borrowed_table_at_their_own_budget():
    """A longer stage's softmax run is a curve point; its borrowed runs are compared with softmax at the same
    budget in the borrowed table, and the seed reports' table takes the better budget."""
    from analysis.study_report import borrowed_table, converged, curve_table, load_curve, published_table, with_longer

    run = lambda head, acc, epochs=50, seed=0: {"part": "cnns", "dataset": "cifar100", "arch": "cnn_base",  # noqa: E731
                                                "head": head, "seed": seed, "status": "completed", "epochs": epochs,
                                                "accuracy": acc, "epoch_time_s_mean": 15.0}
    final = pd.DataFrame([run("softmax", 0.5952), run("gumbel", 0.5446)])
    borrowed = pd.DataFrame([run("gumbel", 0.5880), run("gumbel", 0.5870, seed=1)])
    longer = pd.DataFrame([run("gumbel", 0.5990, 80), run("gumbel", 0.5970, 80, 1), run("softmax", 0.6010, 80)])
    runs, borrowed = with_longer(pd.DataFrame(), borrowed, longer)
    borrowed = borrowed.assign(config_of="softmax")
    assert list(runs["head"]) == ["softmax"] and sorted(borrowed["epochs"]) == [50, 50, 80, 80]
    table = borrowed_table(final, borrowed, runs)
    columns = ["head", "config", "epochs", "seeds", "test accuracy", "minutes a run", "minus softmax"]
    assert table[columns].values.tolist() == [
        ["softmax", "its own searched", 50, 1, "59.52%", 12, ""],
        ["gumbel", "its own searched", 50, 1, "54.46%", 12, "-5.06%"],
        ["gumbel", "softmax's searched", 50, 2, "58.75 +- 0.07%", 12, "-0.77%"],
        ["softmax", "its own searched", 80, 1, "60.10%", 20, ""],
        ["gumbel", "softmax's searched", 80, 2, "59.80 +- 0.14%", 20, "-0.30%"]]  # no own-searched run at 80
    row = published_table(final, runs, borrowed).set_index("reported elsewhere").loc["the same CNN with Gumbel-softmax"]
    assert row["same architecture here"] == ("59.80 +- 0.14% (cnn_base + gumbel with softmax's config, 80 epochs, "
                                             "2 seeds, 20 min a run)") and row["beaten"] == "yes, by +0.30%"
    assert converged(curve_table(load_curve(None, runs, final)), {"cnns": (50,)})[0].startswith(
        "- cnns, cnn_base + softmax: 80 epochs against 50: +0.58% test accuracy, one seed at each budget")
    same = with_longer(runs, borrowed, pd.DataFrame())  # no longer stage (yet): both as they were
    assert same[0] is runs and same[1] is borrowed
