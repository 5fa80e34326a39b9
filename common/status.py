"""The status of a trial or a training run, defined once for every layer."""
from __future__ import annotations

COMPLETED = "completed"  # ran every epoch it was given
PRUNED = "pruned"  # ASHA stopped it early; its validation score is real but from fewer epochs
DIVERGED = "diverged"  # a non-finite loss ended it; its scores mislead
ERROR = "error"  # it raised
RUNNING = "running"  # pending, running or paused
FINISHED = (COMPLETED, PRUNED)  # the trials whose validation scores may be ranked
CONFIG_ERROR = "config_error"  # the result key of a trial whose config cannot run (its message)


def trial_status(ray_status: str | None, last: dict | None, max_epochs: int) -> str:
    """A trial's status from Ray Tune's (ERROR, RUNNING, TERMINATED, ...) and its last result."""
    if ray_status == "ERROR":
        return ERROR
    if ray_status in ("PENDING", "RUNNING", "PAUSED"):
        return RUNNING
    last = last or {}
    if last.get(CONFIG_ERROR):  # it ended at once on its config (tuning.trainable): an error, not retried
        return ERROR
    if last.get("diverged"):
        return DIVERGED
    return COMPLETED if last.get("epoch", 0) >= max_epochs else PRUNED
