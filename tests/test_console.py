"""The search's console (tuning/console.py): one line per trial event, within 120 columns."""
from __future__ import annotations

import io
from types import SimpleNamespace

from tuning import console


def _trial(trial_id: str, head: str = "softmax", status: str = "RUNNING", last: dict | None = None,
           error_file: str | None = None):
    config = {"arch": "cnn", "head": head, "lr": 0.0123456, "batch_size": 32, "epochs": 4, "dataset": "cifar100",
              "head_cutoffs": list(range(40))}  # a long value: the line is cut, not wrapped
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=last or {},
                           error_file=error_file, get_error=lambda: None)


def _console(level: int):
    out = io.StringIO()
    c = console.Console("val_acc", "max", max_epochs=4, num_samples=3, constants={"epochs", "dataset"},
                        rung_epochs=console.rungs(1, 2, 4), level=level, out=out)
    return c, out


def _run(c, tmp_path) -> None:
    """Three trials: one completes, one is stopped after epoch 1, one raises."""
    a, b = _trial("aaaa1111"), _trial("bbbb2222", head="gumbel")
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback (most recent call last):\n  File x\nValueError: lr=-1 must be > 0\n")
    e = _trial("eeee3333", head="sampled", error_file=str(error))
    for t in (a, b, e):
        c.on_trial_start(0, [a, b, e], t)
    for epoch in (1, 2, 3, 4):
        c.on_trial_result(0, [a, b], a, {"training_iteration": epoch, "val_acc": 0.1 * epoch})
    c.on_trial_result(0, [a, b], b, {"training_iteration": 1, "val_acc": 0.05})
    a.last_result, b.last_result = {"training_iteration": 4, "epoch": 4, "val_acc": 0.4}, \
        {"training_iteration": 1, "epoch": 1, "val_acc": 0.05}
    c.on_trial_complete(0, [a, b], a)
    c.on_trial_complete(0, [a, b], b)
    c.on_trial_error(0, [a, b, e], e)


def test_rungs_are_where_asha_compares():
    assert console.rungs(1, 2, 4) == {1, 2}
    assert console.rungs(2, 3, 20) == {2, 6, 18}
    assert console.rungs(5, 2, 5) == set()


def test_one_line_per_event_at_the_default_level(tmp_path):
    c, out = _console(console.NORMAL)
    _run(c, tmp_path)
    lines = out.getvalue().splitlines()
    events = [line.split()[1] for line in lines]
    assert events == ["start", "start", "start", "rung", "rung", "rung", "completed", "pruned", "failed"], lines
    assert all(len(line) <= 120 for line in lines)
    assert "cnn/softmax aaaa1111" in lines[0] and "lr=0.0123" in lines[0] and "epochs=" not in lines[0]
    assert lines[0].endswith("...")
    assert "4 epochs  val_acc=0.400 (pair's best 0.400)" in lines[6]
    assert "cnn/gumbel bbbb2222" in lines[7] and "1 epoch  val_acc=0.050" in lines[7]
    assert lines[8].split(None, 4)[2:] == ["cnn/sampled", "eeee3333", "ValueError: lr=-1 must be > 0"]


def test_quiet_says_only_failures_and_verbose_every_epoch(tmp_path):
    quiet, out = _console(console.QUIET)
    _run(quiet, tmp_path)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["failed"]
    verbose, out = _console(console.VERBOSE)
    _run(verbose, tmp_path)
    events = [line.split()[1] for line in out.getvalue().splitlines()]
    assert events.count("epoch") == 2 and events.count("rung") == 3  # epochs 3 and 4 of the first trial


def test_status_counts_each_pair(tmp_path):
    c, out = _console(console.NORMAL)
    c.on_trial_result(0, [], _trial("x"), {"training_iteration": 1, "val_acc": 0.25})
    trials = [_trial("x", status="RUNNING"), _trial("y", status="PENDING"), _trial("z", head="gumbel",
                                                                                  status="TERMINATED")]
    c.print_status(trials)
    lines = out.getvalue().splitlines()[1:]  # after the rung line
    assert lines[0].endswith("status    1 running, 1 pending, 1/3 done")
    assert lines[1].split() == ["cnn/gumbel", "0", "running", "0", "pending", "1", "done"]
    assert lines[2].split() == ["cnn/softmax", "1", "running", "1", "pending", "0", "done", "best", "val_acc=0.250"]


def test_a_diverged_trial_is_said_at_every_level():
    c, out = _console(console.QUIET)
    t = _trial("dddd4444", last={"training_iteration": 2, "epoch": 2, "diverged": True,
                                 "reason": "non-finite loss at epoch 2"})
    c.on_trial_complete(0, [t], t)
    assert out.getvalue().split()[1:] == ["diverged", "cnn/softmax", "dddd4444", "after", "2", "epochs:",
                                          "non-finite", "loss", "at", "epoch", "2"]


def test_rays_slow_operation_warnings_under_five_seconds_are_dropped(caplog):
    import logging

    from tuning.runner import quiet_ray_logs

    quiet_ray_logs()
    log = logging.getLogger("ray.tune.utils.util")
    with caplog.at_level(logging.WARNING, logger="ray.tune.utils.util"):
        log.warning("The `process_trial_result` operation took 0.633 s, which may be a performance bottleneck.")
        log.warning("Processing trial results took 0.602 s, which may be a performance bottleneck. Please ...")
        log.warning("The `on_step_end` operation took 12.500 s, which may be a performance bottleneck.")
        log.warning("Install psutil to monitor system performance.")
    assert [r.getMessage()[:22] for r in caplog.records] == ["The `on_step_end` oper", "Install psutil to moni"]


def test_a_trials_ray_actor_is_named_by_its_pair_and_trial_id():
    """Ray names an actor in its dashboard and log prefixes by the actor's __repr__ (train_trial for every
    trial before)."""
    from ray import tune
    from ray.tune.trainable.function_trainable import FunctionTrainable

    from tuning.runner import named_trials, train_trial

    cls = named_trials(tune.with_parameters(train_trial, split=None))
    assert issubclass(cls, FunctionTrainable)
    trial = cls.__new__(cls)  # as Trainable.__init__ leaves it: its config and Tune's trial info
    trial.config, trial._trial_info = {"arch": "airnet_s", "head": "gumbel"}, SimpleNamespace(trial_id="3f2a_00007")
    assert repr(trial) == "airnet_s/gumbel trial 3f2a_00007"


def test_a_lost_worker_or_node_reads_as_one_line_with_its_retry():
    c, out = _console(console.NORMAL)
    died = ("Failure # 1\nTraceback (most recent call last):\nray.exceptions.ActorDiedError: The actor died unexpectedly "
            "before finishing this task.\n\tclass_name: Trial\nThe actor is dead because its worker process has died. "
            "Worker exit type: SYSTEM_ERROR ... (1) the process was killed by the OOM killer ...")
    t = _trial("kkkk0001")
    t.get_error, t.num_failures, t.max_failures = (lambda: died), 1, 2
    t.checkpoint = SimpleNamespace(path="/x/cnn-softmax-kkkk0001/checkpoint_000003")
    c.on_trial_recover(0, [t], t)
    t.checkpoint, t.num_failures = None, 3
    c.on_trial_recover(0, [t], t)
    c.on_trial_error(0, [t], t)
    node = _trial("nnnn0002")
    node.get_error, node.max_failures = (lambda: "ray.exceptions.ActorDiedError: ... because its node has died"), 0
    node.last_result = {"epoch": 2, "node_id": "9c1f03aa77e2b1d0"}  # the node its last epoch ran on
    c.on_trial_error(0, [node], node)
    lines = [line.split(None, 4)[4] for line in out.getvalue().splitlines()]
    worker = "worker died (killed or out of memory)"
    assert lines == [f"{worker}; retry 1/2 from checkpoint_000003", f"{worker}; retry 3/2 from scratch",
                     f"{worker}; gave up after 2 retries", "node 9c1f03aa lost (machine gone or raylet died)"]
