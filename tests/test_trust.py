"""What is safe to open from a stranger (README, "Trust"), and the disk a search keeps."""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
import torch

import analysis
from analysis import report
from tuning import manifest, trainable
from tuning.callbacks import EndedTrialCheckpoints, fresh_trial_states


class Crafted:
    """Writes a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def _blob(marker: Path) -> dict:
    """A field as Ray writes what JSON cannot hold: cloudpickle bytes, hex-encoded."""
    return {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(Crafted(marker)).hex()}


def _crafted_experiment(root: Path) -> tuple[Path, Path]:
    exp, marker = root / "exp", root / "marker"
    (exp / "t1").mkdir(parents=True)
    (exp / "t1" / "progress.csv").write_text("epoch,val_acc,val_loss,train_loss,epoch_time_s,images_per_s\n"
                                             "1,0.25,3.0,3.5,1.0,100\n2,0.5,2.0,2.5,1.0,100\n")
    (exp / "t1" / "error.pkl").write_bytes(pickle.dumps(Crafted(marker)))
    trial = {"trial_id": "aaaa0001", "status": "TERMINATED", "relative_logdir": "t1", "stub": False,
             "config": {"arch": "cnn", "head": "softmax", "lr": 0.01, "epochs": 2},
             "storage": _blob(marker), "placement_group_factory": _blob(marker)}
    meta = {"last_result": {"epoch": 2, "val_acc": 0.5}, "checkpoint_manager": _blob(marker)}
    state = {"trial_data": [[json.dumps(trial), json.dumps(meta)]], "runner_data": _blob(marker)}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (exp / "spec.json").write_text(json.dumps({"settings": {"metric": "val_acc", "mode": "max"}, "max_epochs": 2}))
    return exp, marker


def test_the_crafted_blob_is_live_code(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(bytes.fromhex(_blob(marker)["value"]))  # what unpickling the field would do
    assert marker.read_text() == "ran"


def test_opening_and_reporting_a_crafted_experiment_runs_none_of_its_pickles(tmp_path, capsys):
    exp, marker = _crafted_experiment(tmp_path)
    trials = analysis.load(exp)
    assert trials[["trial_id", "status", "best_val_acc", "epochs_run"]].to_dict("records") == [
        {"trial_id": "aaaa0001", "status": "completed", "best_val_acc": 0.5, "epochs_run": 2}]
    assert len(analysis.history(exp)) == 2
    assert report.main([str(exp)]) == 0
    assert not marker.exists()


def test_an_experiment_state_that_is_not_json_is_refused_by_name(tmp_path):
    exp, _ = _crafted_experiment(tmp_path)
    state = next(exp.glob("experiment_state-*.json"))
    state.write_text("{not json")
    try:
        analysis.load(exp)
    except ValueError as exc:
        assert f"{state.name}: not a Ray Tune experiment state" in str(exc)
    else:
        raise AssertionError("a broken experiment state was read")


def test_a_crafted_or_truncated_checkpoint_is_refused_and_the_trial_starts_afresh(tmp_path, monkeypatch, capsys):
    from ray import tune

    marker = tmp_path / "marker"
    for name, write in (("crafted", lambda f: torch.save({"model": Crafted(marker)}, f)),
                        ("truncated", lambda f: f.write_bytes(b"PK\x03\x04 cut short"))):
        folder = tmp_path / name
        folder.mkdir()
        write(folder / trainable.STATE_FILE)
        monkeypatch.setattr(tune, "get_checkpoint", lambda folder=folder: tune.Checkpoint.from_directory(folder))
        assert trainable._restore_state() is None
        err = capsys.readouterr().err
        assert f"refused checkpoint {folder}/{trainable.STATE_FILE}" in err and "starts from scratch" in err
    assert not marker.exists()


def _trial(root: Path, trial_id: str, head: str, checkpoints: int):
    path = root / trial_id
    for i in range(checkpoints):
        (path / f"checkpoint_{i:06d}").mkdir(parents=True)
        (path / f"checkpoint_{i:06d}" / "state.pt").write_bytes(b"x" * 10)
    (path / "result.json").write_text("{}")
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(root))
    return SimpleNamespace(trial_id=trial_id, config={"arch": "cnn", "head": head}, path=str(path), storage=storage)


def _left(root: Path) -> dict[str, list[str]]:
    return {t.name: sorted(c.name for c in t.glob("checkpoint_*")) for t in sorted(root.iterdir()) if t.is_dir()}


def test_an_ended_trial_loses_its_checkpoints_once_rays_state_knows_it_ended(tmp_path, monkeypatch):
    monkeypatch.setattr("tuning.callbacks.CHECK_EVERY_S", 0.0)
    cb = EndedTrialCheckpoints("val_acc", "max")
    a = _trial(tmp_path, "a", "softmax", 2)
    _trial(tmp_path, "b", "softmax", 2)
    state = tmp_path / "experiment_state-x.json"

    def save(status_a: str) -> None:  # Ray's saved state, as the experiment folder has it
        entries = [[json.dumps({"trial_id": t, "status": s}),
                    json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000001"}})]
                   for t, s in (("a", status_a), ("b", "RUNNING"))]
        state.write_text(json.dumps({"trial_data": entries}))
        os.utime(state, (time.time() + 60, time.time() + 60))  # a new mtime says nothing: a copy of an old save

    save("RUNNING")
    cb.on_trial_result(0, [], a, {"val_acc": 0.4})
    cb.on_trial_complete(0, [], a)
    cb.on_step_end(0, [])
    # A driver killed now resumes a as running, from its checkpoint: it must still be there.
    assert _left(tmp_path) == {"a": ["checkpoint_000000", "checkpoint_000001"],
                               "b": ["checkpoint_000000", "checkpoint_000001"]}
    save("TERMINATED")  # Ray saved its state since a ended
    cb.on_step_end(0, [])
    assert _left(tmp_path) == {"a": [], "b": ["checkpoint_000000", "checkpoint_000001"]}  # b still runs
    assert (tmp_path / "a" / "result.json").exists()


def test_a_running_trial_keeps_the_checkpoint_rays_saved_state_names(tmp_path, monkeypatch):
    """Ray's saved state may lag a few epochs behind: the checkpoint it names must outlive newer ones."""
    monkeypatch.setattr("tuning.callbacks.CHECK_EVERY_S", 0.0)
    cb = EndedTrialCheckpoints("val_acc", "max")
    a = _trial(tmp_path, "a", "softmax", 5)
    cb.on_trial_result(0, [], a, {"val_acc": 0.4})
    cb.on_step_end(0, [])  # no saved state yet: nothing removed on a guess
    assert len(_left(tmp_path)["a"]) == 5
    entry = [json.dumps({"trial_id": "a", "status": "RUNNING"}), json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000002"}})]
    (tmp_path / "experiment_state-x.json").write_text(json.dumps({"trial_data": [entry]}))
    cb.on_step_end(0, [])
    # the one it names and the one before it (a restore may still read that one; issue #31)
    assert _left(tmp_path)["a"] == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003",
                                    "checkpoint_000004"]
    (tmp_path / "experiment_state-x.json").write_text('{"trial_da')  # being written: skipped
    cb.on_step_end(0, [])
    assert len(_left(tmp_path)["a"]) == 4


def test_keep_best_keeps_the_last_checkpoint_of_the_best_trial_of_each_pair(tmp_path):
    cb = EndedTrialCheckpoints("val_loss", "min", keep_best=True)
    runs = [("a", "softmax", [2.0, 1.5]), ("b", "softmax", [1.0]), ("c", "softmax", [3.0]),
            ("d", "gumbel", [2.5]), ("e", "gumbel", [0.1])]
    for trial_id, head, losses in runs:
        trial = _trial(tmp_path, trial_id, head, 2)
        for loss in losses:
            cb.on_trial_result(0, [], trial, {"val_loss": loss})
        if trial_id == "e":
            cb.on_trial_result(0, [], trial, {"val_loss": float("nan"), "diverged": True})
        cb.on_trial_complete(0, [], trial)
        if trial_id == "a":
            cb.on_experiment_end([])  # a settled (kept) before b beat it
    cb.on_experiment_end([])
    # softmax: b (1.0) beat a (1.5) and then c (3.0) did not beat b; gumbel: e diverged, so d stays.
    assert _left(tmp_path) == {"a": [], "b": ["checkpoint_000001"], "c": [], "d": ["checkpoint_000001"], "e": []}


# ----------------------------------------------------------------------------- the resume manifest
def _state_folder(root: Path) -> Path:
    folder = root / "exp"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"tuner")
    (folder / "experiment_state-1.json").write_text("{}")
    (folder / "searcher-state-1.pkl").write_bytes(b"searcher")
    (folder / "spec.json").write_text("{}")  # headsweep's own, read as JSON only: not listed
    return folder


def _verify(folder: Path) -> int:
    return manifest.verify(pyarrow.fs.LocalFileSystem(), str(folder))


def _record(folder: Path, staging: Path | None = None) -> None:
    manifest.record(pyarrow.fs.LocalFileSystem(), str(folder), staging)


def _save(staging: Path, exp: Path, n: int) -> None:
    """One Ray save: state files written into staging, recorded (StateManifest.get_state), copied."""
    (staging / "experiment_state-1.json").write_text(json.dumps({"save": n}))
    (staging / "searcher-state-1.pkl").write_bytes(b"searcher %d" % n)
    _record(exp, staging)
    for p in staging.iterdir():
        (exp / p.name).write_bytes(p.read_bytes())


def test_publish_moves_the_staged_state_whole_and_out_of_rays_copy(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    staging.mkdir(), exp.mkdir()
    (staging / "experiment_state-1.json").write_text("{}")
    (staging / "searcher-state-1.pkl").write_bytes(b"searcher")
    (staging / "notes.txt").write_text("not state: left to Ray's copy")
    fs = pyarrow.fs.LocalFileSystem()
    staged = manifest.record(fs, str(exp), staging)
    assert manifest.publish(fs, str(exp), staging, staged) == ["experiment_state-1.json", "searcher-state-1.pkl"]
    assert [p.name for p in staging.iterdir()] == ["notes.txt"]
    assert (exp / "searcher-state-1.pkl").read_bytes() == b"searcher" and _verify(exp) == 2
    assert not list(exp.glob(".*.tmp"))  # the temporary files were moved into place


def test_a_trial_ray_staged_with_an_old_status_is_saved_with_its_own(tmp_path):
    """Ray 2.60 can stage a trial that failed without a live worker as still RUNNING (its cached JSON):
    the save then carries the trial's current state, the others' entries as Ray wrote them."""
    def trial(trial_id, status):
        return SimpleNamespace(trial_id=trial_id, status=status, get_json_state=lambda: (
            json.dumps({"trial_id": trial_id, "status": status, "fresh": True}), json.dumps({"num_failures": 2})))

    entry = lambda trial_id, status: [json.dumps({"trial_id": trial_id, "status": status}), "{}"]  # noqa: E731
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("not this run's")  # an older run's
    path = tmp_path / "experiment_state-2026-12-07_21-34-32.json"
    path.write_text(json.dumps({"trial_data": [entry("a", "ERROR"), entry("b", "RUNNING")], "runner_data": {}}))
    assert fresh_trial_states(tmp_path, [trial("a", "ERROR"), trial("b", "ERROR")]) == ["b"]
    state = json.loads(path.read_text())
    assert state["trial_data"][0] == entry("a", "ERROR")  # as Ray wrote it
    assert json.loads(state["trial_data"][1][0]) == {"trial_id": "b", "status": "ERROR", "fresh": True}
    assert json.loads(state["trial_data"][1][1]) == {"num_failures": 2} and state["runner_data"] == {}
    before = path.read_bytes()
    assert fresh_trial_states(tmp_path, [trial("a", "ERROR"), trial("b", "ERROR")]) == []
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))  # nothing to mend: left alone
    assert fresh_trial_states(tmp_path / "empty", [trial("a", "ERROR")]) == []  # nothing staged


def test_a_copy_cut_short_by_a_kill_is_put_back_from_the_last_whole_save(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    staging.mkdir(), exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"tuner")  # Ray writes it into the experiment, not staging
    for n in range(6):
        _save(staging, exp, n)
    assert manifest.repair(pyarrow.fs.LocalFileSystem(), str(exp)) == [] and _verify(exp) == 3
    kept = exp / manifest.BACKUP_DIR
    assert (kept / "searcher-state-1.pkl").read_bytes() == b"searcher 4"  # the save before the last
    # The seventh save is recorded; the driver dies while Ray copies it: one file new, one cut short.
    (staging / "experiment_state-1.json").write_text(json.dumps({"save": 6}))
    (staging / "searcher-state-1.pkl").write_bytes(b"searcher 6")
    _record(exp, staging)
    (exp / "experiment_state-1.json").write_text(json.dumps({"save": 6}))
    (exp / "searcher-state-1.pkl").write_bytes(b"searc")
    with pytest.raises(manifest.UntrustedStateError, match="searcher-state-1.pkl differs"):
        _verify(exp)
    assert manifest.repair(pyarrow.fs.LocalFileSystem(), str(exp)) == ["searcher-state-1.pkl"]
    assert (exp / "searcher-state-1.pkl").read_bytes() == b"searcher 5" and _verify(exp) == 3
    # A file that vanished is put back too; a crafted backup is not (the manifest never listed it).
    (exp / "searcher-state-1.pkl").unlink()
    (kept / "experiment_state-1.json").write_text("crafted")
    (exp / "experiment_state-1.json").write_text("crafted too")
    assert manifest.repair(pyarrow.fs.LocalFileSystem(), str(exp)) == ["searcher-state-1.pkl"]
    with pytest.raises(manifest.UntrustedStateError, match="experiment_state-1.json differs"):
        _verify(exp)
    # Nothing is put back under a manifest signed with another key.
    (exp / "searcher-state-1.pkl").write_bytes(b"searc")
    (exp / manifest.MANIFEST_FILE).write_text(json.dumps({"files": {}, "signature": "0" * 64}))
    assert manifest.repair(pyarrow.fs.LocalFileSystem(), str(exp)) == []


def test_the_manifest_accepts_what_it_recorded_and_names_what_it_did_not(tmp_path):
    folder = _state_folder(tmp_path)
    _record(folder)
    assert _verify(folder) == 3
    (folder / "searcher-state-1.pkl").write_bytes(b"searcher, next save")  # a later save: recorded again
    _record(folder)
    (folder / "searcher-state-1.pkl").write_bytes(b"searcher")  # one save back (a copy cut short): still ours
    assert _verify(folder) == 3
    (folder / "searcher-state-1.pkl").write_bytes(b"searc")  # truncated
    with pytest.raises(manifest.UntrustedStateError, match=r"searcher-state-1.pkl differs from what headsweep"):
        _verify(folder)
    (folder / "searcher-state-1.pkl").write_bytes(b"searcher")
    (folder / "experiment_state-2.json").write_text("{}")  # newer, so the one Ray would restore
    with pytest.raises(manifest.UntrustedStateError, match=r"experiment_state-2.json is not in the experiment's"):
        _verify(folder)
    (folder / "experiment_state-2.json").unlink()
    (folder / "tuner.pkl").unlink()
    with pytest.raises(manifest.UntrustedStateError, match=r"tuner.pkl is missing \(the manifest lists it\)"):
        _verify(folder)


def test_a_manifest_signed_elsewhere_or_edited_is_refused(tmp_path, monkeypatch):
    folder = _state_folder(tmp_path)
    with pytest.raises(manifest.UntrustedStateError, match="headsweep-manifest.json is missing"):
        _verify(folder)
    monkeypatch.setenv("HEADSWEEP_KEY_FILE", str(tmp_path / "theirs.key"))
    _record(folder)  # the sender's machine
    monkeypatch.setenv("HEADSWEEP_KEY_FILE", str(tmp_path / "mine.key"))
    manifest.load_key(create=True)
    with pytest.raises(manifest.UntrustedStateError, match="not signed with this machine's key"):
        _verify(folder)
    monkeypatch.setenv("HEADSWEEP_KEY_FILE", str(tmp_path / "theirs.key"))
    assert _verify(folder) == 3
    data = json.loads((folder / manifest.MANIFEST_FILE).read_text())
    data["files"]["searcher-state-1.pkl"] = [manifest.digest(b"crafted")]  # a hash changed, the signature not
    (folder / manifest.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(manifest.UntrustedStateError, match="not signed with this machine's key"):
        _verify(folder)
    assert oct((tmp_path / "mine.key").stat().st_mode & 0o777) == "0o600"


def _resume(storage: Path, name: str, *extra: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tuning.search", "--storage", str(storage), "--name", name,
                           "--no-dashboard", "--resume", *extra], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_refuses_crafted_or_truncated_state_and_runs_none_of_it(smoke_experiment, tmp_path):
    import shutil

    source, code, _ = smoke_experiment
    assert code == 0 and (source / manifest.MANIFEST_FILE).exists()
    marker = tmp_path / "marker"
    searcher = next(source.glob("searcher-state-*.pkl")).name
    state = next(source.glob("experiment_state-*.json")).name
    crafted = {  # the file changed -> what resume must say
        "tuner.pkl": lambda p: p.write_bytes(pickle.dumps(Crafted(marker))),
        searcher: lambda p: p.write_bytes(pickle.dumps(Crafted(marker))),
        state: lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "runner_data": _blob(marker)})),
        "truncated": lambda p: None,
    }
    for i, (name, craft) in enumerate(crafted.items()):
        exp = tmp_path / f"c{i}"
        # without the kept copy of the last whole save, which would be put back (below)
        shutil.copytree(source, exp, ignore=shutil.ignore_patterns(manifest.BACKUP_DIR))
        target = exp / (searcher if name == "truncated" else name)
        if name == "truncated":
            target.write_bytes(target.read_bytes()[:100])
        else:
            craft(target)
        done = _resume(tmp_path, f"c{i}")
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{exp}/{target.name}" in lines[0] and "Traceback" not in done.stderr, lines
        assert not marker.exists()
    # With the kept copy of the last whole save, a crafted (whole but changed) file is still refused: it
    # was not cut short, and putting an older save back would roll the experiment back (issue #31) ...
    exp = tmp_path / "kept"
    shutil.copytree(source, exp)
    (exp / searcher).write_bytes(pickle.dumps(Crafted(marker)))
    done = _resume(tmp_path, "kept")
    assert done.returncode == 2 and f"{exp}/{searcher} differs" in done.stderr, done.stderr[-2000:]
    # ... a changed experiment state (valid JSON) too ...
    shutil.rmtree(exp)
    shutil.copytree(source, exp)
    (exp / state).write_text(json.dumps({**json.loads((exp / state).read_text()), "changed": True}))
    done = _resume(tmp_path, "kept")
    assert done.returncode == 2 and f"{exp}/{state} differs" in done.stderr, done.stderr[-2000:]
    # ... while a file cut short is replaced by the last whole save: the resume says so and goes on.
    shutil.rmtree(exp)
    shutil.copytree(source, exp)
    (exp / searcher).write_bytes((exp / searcher).read_bytes()[:100])
    done = _resume(tmp_path, "kept")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"headsweep: {searcher} was cut short when the search stopped" in done.stdout and not marker.exists()
    # A copy of the finished experiment, unchanged, resumes (the manifest follows the folder) and
    # keeps its 12 trials.
    shutil.copytree(source, tmp_path / "same")
    done = _resume(tmp_path, "same")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(analysis.load(tmp_path / "same")) == 12


@pytest.mark.slow
def test_reporting_and_retraining_a_crafted_real_experiment_run_none_of_its_pickles(smoke_experiment, tmp_path):
    import shutil

    from analysis import retrain

    exp, marker = tmp_path / "smoke", tmp_path / "marker"
    shutil.copytree(smoke_experiment[0], exp, ignore=shutil.ignore_patterns("analysis"))
    for pkl in [exp / "tuner.pkl", *exp.glob("searcher-state-*.pkl"), *exp.glob("*/params.pkl")]:
        pkl.write_bytes(pickle.dumps(Crafted(marker)))
    for trial in exp.glob("*/params.json"):
        (trial.parent / "error.pkl").write_bytes(pickle.dumps(Crafted(marker)))
    state = next(exp.glob("experiment_state-*.json"))
    state.write_text(json.dumps({**json.loads(state.read_text()), "runner_data": _blob(marker)}))
    assert len(analysis.load(exp)) == 12
    assert report.main([str(exp)]) == 0
    assert retrain.main([str(exp), "--seeds", "1", "--epochs", "1"]) == 0
    assert not marker.exists()


def test_only_a_file_that_does_not_parse_whole_counts_as_cut_short(tmp_path):
    """`repair` puts back a save only for a torn write; a whole file that differs was changed (refused)."""
    whole = pickle.dumps({"searcher": [1, 2, 3]})
    assert not manifest.torn("searcher-state-1.pkl", whole)
    assert manifest.torn("searcher-state-1.pkl", whole[:-3]) and manifest.torn("searcher-state-1.pkl", b"")
    assert not manifest.torn("searcher-state-1.pkl", pickle.dumps(Crafted(tmp_path / "m")))  # crafted, but whole
    assert not (tmp_path / "m").exists()  # reading the opcodes ran nothing
    assert not manifest.torn("experiment_state-1.json", b'{"trial_data": []}')
    assert manifest.torn("experiment_state-1.json", b'{"trial_da') and manifest.torn("x.json", b"\xff{")
