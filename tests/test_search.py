"""The search on CPU with real Ray and Optuna, small."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import searched
from clitest import assert_one_line

import heads
import search_spaces
from tuning import search

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_search_end_to_end(smoke_experiment):
    exp, code, out = smoke_experiment
    assert code == 0
    spec = json.loads((exp / "spec.json").read_text())
    assert spec["space"] == "smoke" and spec["versions"]["ray"] and spec["settings"]["num_samples"] == 12
    assert spec["max_epochs"] == 4
    assert (exp / "optuna.log").stat().st_size > 0 and list(exp.glob("experiment_state-*.json"))
    results = searched.results(exp)
    assert len(results) == 12
    epochs = [r[-1]["epoch"] for r in results.values()]
    assert max(epochs) == 4 and min(epochs) < 4  # some ran to the end, ASHA stopped some
    trials = searched.optuna_trials(exp)
    states = Counter(t.state.name for t in trials)
    assert states["PRUNED"] == sum(e < 4 for e in epochs) and states["COMPLETE"] == sum(e == 4 for e in epochs)
    assert all(t.value is not None for t in trials if t.state.name == "PRUNED")
    assert list(exp.rglob("events.out.tfevents*"))  # TensorBoard
    # Every trial checkpointed each epoch (Ray's record of it is in the results), and every trial
    # ended, so none keeps a checkpoint: disk stays bounded.
    assert all(r[-1]["should_checkpoint"] for r in results.values() if r) and not list(exp.rglob("checkpoint_*"))
    assert "KB per trial" in out
    n_pruned = sum(e < 4 for e in epochs)
    assert f"12 trials: {12 - n_pruned} completed, {n_pruned} pruned, 0 diverged, 0 error" in out
    assert "best trial per (backbone, head)" in out
    # Ray's 245-character auth warning (which ends by telling users to turn it off) is one line of ours
    assert "Token authentication is enabled" not in out
    assert "Ray: token authentication on" in out or os.environ.get("RAY_AUTH_MODE")


def _ended_in_rays_state(experiment: Path) -> set[str]:
    """The trials Ray's saved state records as ended: what a resume must keep as they are."""
    from tuning.experiment import Experiment

    return Experiment.open(experiment).ended_trial_ids() if list(experiment.glob("experiment_state-*")) else set()


def _kill_moment(moment: str, results: dict[str, list[dict]], n: int) -> bool:
    finished = sum(bool(r) and r[-1]["epoch"] == 16 for r in results.values())
    if moment == "early":  # the first trials are training, none has finished
        return any(results.values()) and finished == 0
    if moment == "mid":
        return 2 <= finished < n // 2
    return len(results) == n and finished < n  # "late": the last trial has started


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["early", "mid", "late"])
def test_killed_search_resumes_without_redoing_or_losing_trials(tmp_path, moment):
    n = 10
    argv = [sys.executable, "-m", "tuning.search", "--space", "smoke", "--storage", str(tmp_path), "--name", "r",
            "--no-dashboard", "--set", f"num_samples={n}", "--set", "epochs=16", "--set", "grace_period=16"]
    exp = tmp_path / "r"
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (exp.exists() and _kill_moment(moment, searched.results(exp), n)):
        if time.time() > deadline or proc.poll() is not None:
            pytest.fail(f"the {moment} moment did not come (exit {proc.poll()})")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # no warning: mid-write, mid-save, wherever it is
    proc.wait()
    ended = _ended_in_rays_state(exp)
    lines_before = {k: len(v) for k, v in searched.results(exp).items() if k.rsplit("-", 1)[-1] in ended}
    # The name alone resumes it: the space and the --set values come from spec.json.
    done = subprocess.run([sys.executable, "-m", "tuning.search", "--storage", str(tmp_path), "--name", "r",
                           "--no-dashboard", "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import analysis

    trials = analysis.load(exp)  # the experiment's own trial list, as a notebook sees it
    # None lost: all n trials ended; the ones Ray had recorded as ended were not run again.
    assert len(trials) == n and set(trials.status) <= {"completed", "diverged"}, trials[["trial_id", "status"]]
    after = searched.results(exp)
    assert {k: len(after[k]) for k in lines_before} == lines_before
    # No config trained twice: a config the killed driver had started after Ray's last save is
    # taken over by a new Ray trial as the same Optuna trial, not proposed again.
    params = [c for c in ("lr", "weight_decay", "momentum", "batch_size") if c in trials]
    assert not trials.duplicated(["arch", "head", *params]).any(), trials[["arch", "head", *params]]
    # The studies agree with Ray trial by trial: one Optuna trial per Ray trial, in the same state;
    # any other was orphaned and is FAIL with its reason; none RUNNING or WAITING.
    optuna_trials = searched.optuna_trials(exp)
    by_ray = Counter(t.user_attrs.get("ray_trial_id") for t in optuna_trials)
    assert all(by_ray[t] == 1 for t in trials.trial_id), by_ray
    state_of = {t.user_attrs.get("ray_trial_id"): t.state.name for t in optuna_trials}
    assert all(state_of[row.trial_id] == ("COMPLETE" if row.status == "completed" else "FAIL")
               for row in trials.itertuples())
    others = [t for t in optuna_trials if t.user_attrs.get("ray_trial_id") not in set(trials.trial_id)]
    assert all(t.state.name == "FAIL" and "orphaned" in t.system_attrs.get("fail_reason", "") for t in others)
    # Disk bounded after the kill: every trial ended, so no checkpoint folder is left (issue #31)
    assert not list(exp.rglob("checkpoint_*")), sorted(str(p.relative_to(exp)) for p in exp.rglob("checkpoint_*"))
    assert "checkpoints of ended trials removed" in done.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path):
    argv = [sys.executable, "-m", "tuning.search", "--space", "smoke", "--storage", str(tmp_path), "--name", "i",
            "--no-dashboard", "--set", "num_samples=6", "--set", "epochs=30", "--set", "grace_period=30"]  # ~5 s a trial
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    while not (list(tmp_path.glob("i/*/progress.csv")) and list(tmp_path.glob("i/experiment_state-*.json"))):
        assert time.time() < deadline and proc.poll() is None, "no trial reported within 180 s"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "Tuner.restore" not in err + out  # Ray's own hint is for its API users
    command = shlex.split(err.split("interrupted; continue with: ")[1].splitlines()[0])
    assert command[1:] == ["-m", "tuning.search", "--name", "i", "--storage", str(tmp_path), "--resume"]
    # Resume a copy (moved to another machine, say): it must write its own journal, not the original's.
    journal = (tmp_path / "i" / "optuna.log").read_bytes()
    shutil.copytree(tmp_path / "i", tmp_path / "copy" / "i")
    command[command.index("--storage") + 1] = str(tmp_path / "copy")
    done = subprocess.run([sys.executable, *command[1:], "--no-dashboard"], cwd=ROOT, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 trials: 6 completed, 0 pruned, 0 diverged, 0 error" in done.stdout
    states = Counter(t.state.name for t in searched.optuna_trials(tmp_path / "copy" / "i"))
    assert states == {"COMPLETE": 6}, states  # the stopped trials went on; nothing orphaned, nothing redone
    assert (tmp_path / "i" / "optuna.log").read_bytes() == journal


@pytest.mark.slow
def test_searches_started_together_keep_their_own_ports_and_token(tmp_path):
    """Two local searches at once (as under pytest -n, or two users): each its own Ray, its own
    dashboard port, the session's token; the home folder's ~/.ray is never written."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_WAIT_POLICY": "PASSIVE"}
    procs = [subprocess.Popen([sys.executable, "-m", "tuning.search", "--space", "smoke", "--storage", str(tmp_path),
                               "--name", f"p{i}", "--set", "num_samples=5", "--set", "epochs=2"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    ports = [re.search(r"Ray dashboard   http://127.0.0.1:(\d+)", out).group(1) for out in outs]
    assert ports[0] != ports[1] and all("5 trials: 5 completed" in out for out in outs)
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()


def _faulty(trial, arch, head):
    """A space whose adaptive trials carry impossible cutoffs: those trials must fail alone."""
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    return {"head_cutoffs": [500]} if head == "adaptive" else None


@pytest.mark.slow
def test_a_failing_trial_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    smoke = search_spaces.get_space("smoke")
    faulty = search_spaces.Space("faulty", _faulty, ("cnn",), ("softmax", "adaptive"), smoke.constants,
                                 {**smoke.settings, "num_samples": 6, "max_failures": 2})
    monkeypatch.setattr(search_spaces, "get_space", lambda name: faulty)
    code = search.main(["--space", "faulty", "--storage", str(tmp_path), "--name", "f", "--no-dashboard",
                        "--seed", "1"])
    results = searched.results(tmp_path / "f")
    failed = [k for k, v in results.items() if v and v[-1].get("config_error")]
    assert code == 0 and 0 < len(failed) < 6, results
    assert all(k.startswith("cnn-adaptive-") for k in failed)  # trial folders: pair and Ray trial id
    # Tried once although max_failures=2 (it would fail the same way): one result, no error.txt.
    assert all(len(results[k]) == 1 and not (tmp_path / "f" / k / "error.txt").exists() for k in failed)
    assert all("cutoffs=[500] must satisfy 0 < c < num_classes=100" in results[k][0]["config_error"] for k in failed)
    import analysis

    trials = analysis.load(tmp_path / "f")
    bad = trials[trials["head"] == "adaptive"]
    assert set(bad.status) == {"error"} and bad.error.str.contains("cutoffs=\\[500\\] must satisfy").all()
    from tuning.experiment import Experiment

    exp = Experiment.open(tmp_path / "f")
    assert [t.state.name for t in exp.load_study(exp.studies()["cnn/adaptive"]).trials] == ["FAIL"] * len(bad)
    # The console said so, in one line naming the trial and the error.
    out = capsys.readouterr().out
    failed_lines = [line for line in out.splitlines() if " failed " in line]
    assert len(failed_lines) == len(failed) and all("cutoffs=[500] must satisfy" in line for line in failed_lines)


@pytest.mark.parametrize("name", search_spaces.list_spaces())
def test_sampled_configs_satisfy_the_constraints(name):
    from search_spaces._registry import DataInfo
    from training.config import TrainConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_spaces.get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # explores every branch
    conditional = {"gumbel": {"head_tau", "head_hard", "head_anneal_rate"},
                   "adaptive": {"head_cutoffs", "head_div_value"}, "sampled": {"head_num_sampled"},
                   "hierarchical": {"head_tree"}}
    seen_heads = set()
    for i in range(300):
        trial = study.ask()
        config = search_spaces.sample_config(space, DataInfo(100, True), None, trial)  # a joint study
        TrainConfig.from_dict(config)  # every sample is a valid trial config
        head = config.get("head", "softmax")
        seen_heads.add(head)
        present = {k for k in config if k.startswith("head_")}
        assert present == conditional.get(head, set()), (head, present)
        if head == "adaptive":
            cut = config["head_cutoffs"]
            assert cut == sorted(set(cut)) and 0 < cut[0] and cut[-1] < 100
        if head == "sampled":
            assert 1 <= config["head_num_sampled"] < 100
        study.tell(trial, 0.0)
    assert seen_heads == set(space.heads or heads.list_heads())


@pytest.mark.parametrize("name", search_spaces.list_spaces())
def test_every_space_pickles_as_ray_saves_the_searcher(name):
    import functools
    import pickle

    from search_spaces._registry import define_by_run

    from search_spaces._registry import DataInfo

    space = search_spaces.get_space(name)
    restored = pickle.loads(pickle.dumps(functools.partial(define_by_run, space, DataInfo(), space.pairs()[0])))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert restored(study.ask())["dataset"] == "cifar100"


def _two_params(trial):  # module level: Ray pickles the searcher with its space
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_categorical("batch_size", [32, 64, 128, 256])


def test_pruning_aware_searcher_tells_pruned_fail_and_complete(tmp_path):
    from optuna.trial import TrialState

    from tuning.optuna_pruned import PruningAwareOptunaSearch

    searcher = PruningAwareOptunaSearch(space=_two_params, metric="val_acc", mode="max", max_epochs=4)
    for trial_id, result in (("a", {"epoch": 2, "training_iteration": 2, "val_acc": 0.3}),
                             ("b", {"epoch": 4, "training_iteration": 4, "val_acc": 0.5}),
                             ("c", {"epoch": 1, "training_iteration": 1, "val_acc": 0.0, "diverged": True})):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    # Told when Ray saves its state (which records them as ended), not before.
    assert {t.state for t in searcher._ot_study.trials} == {TrialState.RUNNING}
    searcher.save(str(tmp_path / "searcher.pkl"))
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].value == 0.3 and trials[1].value == 0.5


def test_a_resumed_searcher_gives_a_killed_drivers_orphan_to_its_next_trial(tmp_path):
    """The driver saved the searcher after trials a and b, then asked for c, c ended, and the driver
    was killed before its next save: c is RUNNING in the journal and unknown to the restored searcher. The next Ray trial takes c over
    (same Optuna trial, same config); the one after gets a new config, not c's again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from tuning.optuna_pruned import PruningAwareOptunaSearch

    journal = str(tmp_path / "optuna.log")
    searcher = PruningAwareOptunaSearch(
        space=_two_params, metric="val_acc", mode="max", max_epochs=4, study_name="s",
        sampler=optuna.samplers.TPESampler(seed=0), storage=JournalStorage(JournalFileBackend(journal)))
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b")}
    searcher.on_trial_complete("a", {"epoch": 4, "training_iteration": 4, "val_acc": 0.5})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's last save before the kill
    configs["c"] = searcher.suggest("c")
    searcher.on_trial_complete("c", {"epoch": 4, "training_iteration": 4, "val_acc": 0.6})  # before Ray's next save
    # then the driver dies: c is not told, so it is RUNNING in Optuna as it is unknown to Ray

    restored = PruningAwareOptunaSearch(space=_two_params, metric="val_acc", mode="max", max_epochs=4)
    restored.journal = journal  # as search.restore_tuner sets it
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("d") == configs["c"]
    e = restored.suggest("e")
    assert e not in configs.values()
    trials = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(journal))).trials
    assert len(trials) == 4  # a, b, c taken over by d, e: no duplicate Optuna trial
    assert trials[2].user_attrs["ray_trial_id"] == "d" and trials[2].user_attrs["orphaned_ray_trial_id"] == "c"
    restored.on_trial_complete("d", {"epoch": 4, "training_iteration": 4, "val_acc": 0.4})
    restored.save(str(tmp_path / "searcher.pkl"))
    assert optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(journal))).trials[2].state \
        == TrialState.COMPLETE


def test_dry_run_prints_spec_and_configs(capsys, tmp_path):
    assert search.main(["--space", "vit_heads", "--dry-run", "3", "--storage", str(tmp_path),
                        "--set", "epochs=10", "--set", "fake_data=True"]) == 0  # generated CIFAR-100
    out = capsys.readouterr().out
    studies = out.count("\nstudy ")  # one per (arch, head) pair: 2 ViTs x 5 heads
    assert studies == 10 and out.count("  config ") == 3 * studies  # 3 configs of each
    assert '"epochs": 10' in out and '"space": "vit_heads"' in out
    assert not any(tmp_path.iterdir())  # nothing written, nothing trained


@pytest.mark.parametrize("argv,message", [
    (["--space", "nope"], "unknown space 'nope'; valid spaces: airnet_heads, all_heads, cnn_heads"),
    (["--space", "smoke", "--gpus-per-trial", "0"], "--gpus-per-trial=0.0 must be > 0"),
    (["--space", "smoke", "--gpus-per-trial", "-1"], "gpus_per_trial=-1.0 must be a finite number >= 0"),
    (["--space", "smoke", "--gpus-per-trial", "1000"], "--gpus-per-trial=1000.0 is more than there are (0 GPUs)"),
    (["--space", "smoke", "--set", "epochs"], "malformed assignment 'epochs': expected KEY=VALUE"),
    (["--space", "smoke", "--set", "colour=red"], "--set colour='red': unknown key; allowed: search settings"),
    (["--space", "smoke", "--set", "epochs=0"], "'epochs'=0 is out of range: must be >= 1"),
    (["--space", "smoke", "--set", "reduction_factor=1"], "reduction_factor=1 must be >= 2"),
    (["--space", "smoke", "--name", "missing", "--resume"], "--resume: no experiment at"),
])
def test_bad_input_exits_2_before_ray_starts(capsys, tmp_path, argv, message):
    assert_one_line(search.main(argv + ["--storage", str(tmp_path), "--no-dashboard"]), capsys.readouterr().err,
                    message)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_storage_uri(tmp_path):
    """A URI storage: Ray writes trials and spec.json there; the Optuna journal stays local."""
    import shutil
    import uuid

    name = f"uri-test-{uuid.uuid4().hex[:8]}"  # the journal goes to ~/.headsweep/<name>; removed below
    journal_dir = Path.home() / ".headsweep" / name
    try:
        code = search.main(["--space", "smoke", "--storage", f"file://{tmp_path}/remote", "--name", name,
                            "--no-dashboard", "--set", "num_samples=2", "--set", "epochs=1",
                            "--set", "head=[softmax,gumbel]"])
        assert code == 0
        assert json.loads((tmp_path / "remote" / name / "spec.json").read_text())["space"] == "smoke"
        assert len(searched.results(tmp_path / "remote" / name)) == 2
        assert (journal_dir / "optuna.log").stat().st_size > 0
        spec = json.loads((tmp_path / "remote" / name / "spec.json").read_text())
        assert spec["journal"] == str(journal_dir / "optuna.log")
        assert spec["studies"] == {"cnn/softmax": f"{name}:cnn/softmax", "cnn/gumbel": f"{name}:cnn/gumbel"}
        # The journal is copied into the experiment at the end, so a copy of it carries its study along.
        shutil.rmtree(journal_dir)
        from tuning.experiment import Experiment

        exp = Experiment.open(tmp_path / "remote" / name)
        assert [len(exp.load_study(s).trials) for s in exp.study_names()] == [1, 1]
        again = search.main(["--space", "smoke", "--storage", f"file://{tmp_path}/remote", "--name", name])
        assert again == 2  # exists: refuses to overwrite without --resume
    finally:
        shutil.rmtree(journal_dir, ignore_errors=True)


def test_summary_leaves_out_diverged_trials(capsys):
    import pandas as pd

    from tuning.experiment import Experiment

    class Exp(Experiment):  # the trial table of three trials, one diverged, without a folder
        spec = {"settings": {"metric": "val_acc", "mode": "max"}}

        def trials(self):
            return pd.DataFrame({"trial_id": ["a", "b", "c"], "best_val_acc": [0.5, 0.3, 0.1],
                                 "status": ["diverged", "completed", "completed"], "epochs_run": [2, 2, 2],
                                 "arch": ["cnn"] * 3, "head": ["softmax", "softmax", "gumbel"]})

    from tuning import console

    assert console.summarize(Exp("x", Path("x"))) == 0
    out = capsys.readouterr().out
    best = out.split("best trial per (backbone, head), by validation val_acc:\n")[1].splitlines()
    assert best == ["  cnn/softmax              0.3000  2 ep  b", "  cnn/gumbel               0.1000  2 ep  c"]
    assert max(len(line) for line in out.splitlines()) <= 120


@pytest.mark.slow
def test_a_space_from_a_file_runs_a_search(tmp_path):
    """examples/my_space.py, as the README shows it: a define-by-run function and its settings in a file."""
    done = subprocess.run([sys.executable, "-m", "tuning.search", "--space", "examples/my_space.py:tiny_cnn",
                           "--storage", str(tmp_path), "--name", "mine", "--no-dashboard", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    spec = json.loads((tmp_path / "mine" / "spec.json").read_text())
    assert spec["space"] == "tiny_cnn" and spec["settings"]["num_samples"] == 6
    assert str(ROOT / "examples" / "my_space.py") + ":tiny_cnn" in spec["argv"]  # absolute: --resume finds it
    assert "6 trials: " in done.stdout and ", 0 error" in done.stdout
