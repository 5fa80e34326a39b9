"""Every flag of every command line, given an empty value, a folder and a path that does not exist: the
command either accepts it or says what is wrong in one `error:` line with exit 2, never a traceback.
The work itself (training, the search, the benchmarks' timing) is replaced by a stand-in, so a value
that passes the checks ends the case at once (no Ray, no subprocess: ~300 cases in ~20 s); the flags
are read from each command's own --help, so a new flag is covered without a new line here."""
from __future__ import annotations

import re

import pytest

from analysis import report, retrain, study
from tools import _heads_bench, _train_bench, gpu_check, heads_bench, train_bench
from training import fake_data, many_classes, train
from tuning import search

class Ran(Exception):
    """The stand-in for the work: the arguments got through every check."""


def _experiment(root):
    """What retrain and report accept as an experiment folder (no trial)."""
    import json

    exp = root / "exp"
    exp.mkdir(exist_ok=True)
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    (exp / "spec.json").write_text(json.dumps({"settings": {"cpus_per_trial": 1}}))
    return str(exp)


COMMANDS = {  # name -> (main, the arguments that make a valid call, given the tmp folder)
    "training.train": (train.main, lambda t: ["--smoke"]),
    "tuning.search": (search.main, lambda t: ["--space", "smoke", "--no-dashboard", "--storage", str(t / "s")]),
    "analysis.retrain": (retrain.main, lambda t: [_experiment(t)]),
    "analysis.report": (report.main, lambda t: [_experiment(t)]),
    "analysis.study": (study.main, lambda t: ["--scale", "tiny", "--work", str(t / "w"), "--out", str(t / "o")]),
    "tools.heads_bench": (heads_bench.main, lambda t: ["--out", str(t / "b")]),
    "tools.train_bench": (train_bench.main, lambda t: []),
    "tools.gpu_check": (gpu_check.main, lambda t: ["--out", str(t / "g.json")]),
    "training.many_classes": (many_classes.main,
                              lambda t: ["--data-dir", str(fake_data.write_cifar100(t / "d").parent), "--out",
                                         str(t / "m")]),
}


def _flags(main) -> list[str]:
    """The flags that take a value, from the command's own --help."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return sorted(set(re.findall(r"(--[a-z][a-z0-9-]*) [A-Z_\[{]", out.getvalue())))


CASES = [(name, flag, value) for name, (main, _) in COMMANDS.items() for flag in _flags(main)
         for value in ("", "FOLDER", "/nonexistent/x")]


@pytest.fixture
def no_work(monkeypatch):
    def ran(*args, **kwargs):
        raise Ran()

    import analysis.report_doc
    import analysis.runs
    import training.engine
    import tuning.runner

    for target in (training.engine.fit, tuning.runner.run, analysis.runs.run_tasks, analysis.report_doc.build_report,
                   _heads_bench.measure, _train_bench.measure, _train_bench.pack, study.run_study,
                   many_classes.write_part):
        monkeypatch.setattr(target.__module__ + "." + target.__name__, ran)


@pytest.mark.parametrize("name,flag,value", CASES, ids=[f"{n}{f}={v or 'EMPTY'}" for n, f, v in CASES])
def test_a_flag_with_an_odd_value_is_accepted_or_one_line(name, flag, value, tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    main, base = COMMANDS[name]
    argv = [*base(tmp_path), flag, str(tmp_path / "folder") if value == "FOLDER" else value]
    try:
        code = main(argv)
    except Ran:
        return  # accepted: it got to the work
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("smoke:", "headsweep:"))]
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
