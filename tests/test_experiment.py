"""The Experiment object: a copied, moved or renamed experiment folder reads, reports and
retrains exactly as the original, and never touches the original."""
import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import analysis
import heads
from analysis import report, retrain
from common.status import trial_status
from tuning.experiment import Experiment
from tuning.folder import NotAnExperimentError


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> a hash of its bytes: any write, removal or addition shows."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


@pytest.mark.slow
def test_a_copied_and_a_renamed_experiment_work_like_the_original(smoke_experiment, tmp_path):
    original = tmp_path / "smoke"
    shutil.copytree(smoke_experiment[0], original, ignore=shutil.ignore_patterns("analysis"))
    copy = tmp_path / "elsewhere" / "smoke_copy"
    shutil.copytree(original, copy)
    before = _snapshot(original)
    expected = analysis.load(original).drop(columns="path")

    trials = analysis.load(copy)
    pd.testing.assert_frame_equal(trials.drop(columns="path"), expected)
    assert all(Path(p).is_relative_to(copy) for p in trials.path)
    assert Experiment.open(copy).study_names()[0] == "smoke:cnn/adaptive"  # from spec.json, not the folder's name
    assert _quiet(report.main, [str(copy)]) == 0
    text = (copy / "analysis" / "report.md").read_text()
    importance = text.split("## Parameter importance")[1].split("##")[0]
    assert "# headsweep report: smoke_copy" in text and "Not computed for cnn/adaptive (" in importance
    assert _quiet(retrain.main, [str(copy), "--seeds", "1", "--epochs", "1"]) == 0
    final = pd.read_parquet(copy / "analysis" / "final.parquet")
    assert len(final) == len(analysis.best(trials)) and (final.status == "completed").all()
    assert _snapshot(original) == before  # the original was never written to

    renamed = tmp_path / "moved" / "renamed"
    renamed.parent.mkdir()
    original.rename(renamed)
    shutil.rmtree(copy)
    pd.testing.assert_frame_equal(analysis.load(renamed).drop(columns="path"), expected)
    assert _quiet(report.main, [str(renamed)]) == 0
    text = (renamed / "analysis" / "report.md").read_text()
    assert "Record does not exist" not in text and text.split("## Parameter importance")[1].split("##")[0] == importance


@pytest.mark.slow
def test_spec_records_the_study_and_the_search_summary_goes_through_the_experiment(smoke_experiment):
    exp, _, out = smoke_experiment
    spec = json.loads((exp / "spec.json").read_text())
    assert spec["studies"] == {f"cnn/{h}": f"smoke:cnn/{h}" for h in heads.list_heads()}
    assert "journal" not in spec  # a path storage keeps its journal inside
    e = Experiment.open(exp)
    assert e.journal == exp / "optuna.log" and e.analysis_dir == exp / "analysis"
    assert sum(len(e.load_study(name).trials) for name in e.study_names()) == len(e.trials()) == 12
    best = e.best(e.trials())
    for _, row in best.iterrows():  # the printed summary is Experiment.best's table
        assert row.trial_id in out


def test_an_older_experiment_without_study_names_reads_them_from_its_journal(tmp_path):
    import optuna

    (tmp_path / "experiment_state-x.json").write_text("{}")
    (tmp_path / "spec.json").write_text(json.dumps({"space": "smoke"}))
    storage = Experiment.open(tmp_path).journal_storage()
    optuna.create_study(study_name="first-name", storage=storage)
    assert Experiment.open(tmp_path).study_names() == ["first-name"]


def test_a_uri_is_refused_by_analysis_with_what_to_do(tmp_path):
    with pytest.raises(NotAnExperimentError, match="copy it here first"):
        Experiment.open("s3://bucket/exp/name")
    assert Experiment.at("s3://bucket/exp", "name").local == Path.home() / ".headsweep" / "name"
    e = Experiment.at(str(tmp_path), "n")
    assert (e.uri, e.name, e.storage, e.local) == (str(tmp_path / "n"), "n", str(tmp_path), tmp_path / "n")


@pytest.mark.parametrize("ray_status,last,expected", [
    ("ERROR", {"epoch": 4}, "error"), ("RUNNING", {"epoch": 1}, "running"), ("PENDING", None, "running"),
    ("TERMINATED", {"epoch": 2, "diverged": True}, "diverged"), ("TERMINATED", {"epoch": 4}, "completed"),
    ("TERMINATED", {"epoch": 2}, "pruned"), ("TERMINATED", {}, "pruned"),
])
def test_trial_statuses_are_defined_once(ray_status, last, expected):
    assert trial_status(ray_status, last, max_epochs=4) == expected


@pytest.mark.slow
def test_the_sweep_removes_checkpoints_of_ended_and_of_unlisted_trial_folders(smoke_experiment, tmp_path):
    # A driver killed just after it started a trial, before Ray's next save, leaves a trial folder the saved
    # state does not list: Ray never resumes it (a new trial takes its config over), so its checkpoints go,
    # its metrics stay (CI once found its checkpoint_000000 left after a killed search had resumed and ended).
    from tuning.runner import remove_ended_checkpoints

    exp = tmp_path / "smoke"
    shutil.copytree(smoke_experiment[0], exp, ignore=shutil.ignore_patterns("analysis"))
    trials = analysis.load(exp)
    ended = Path(trials.path.iloc[0])
    orphan = exp / f"{ended.name[:-8]}0rphan00"
    shutil.copytree(ended, orphan)
    for folder in (ended, orphan):
        (folder / "checkpoint_000000").mkdir()
        (folder / "checkpoint_000000" / "state.pkl").write_bytes(b"x")
    remove_ended_checkpoints(Experiment.open(exp), keep_best=False)
    assert not list(exp.rglob("checkpoint_*"))
    assert (orphan / "progress.csv").read_bytes() == (ended / "progress.csv").read_bytes()  # its metrics stay
    assert len(analysis.load(exp)) == len(trials)  # and it is still not a trial
