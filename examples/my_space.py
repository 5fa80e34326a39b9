"""Your own search space, in a file: `python -m tuning.search --space examples/my_space.py:tiny_cnn`.

A space is a define-by-run function (Optuna's `trial.suggest_*` calls, and `if`s for parameters
that exist only for some choices) plus what every trial shares: the backbones and heads compared,
the constants of every trial's config, and the search settings (trials, concurrency, ASHA). The
function named after the colon takes no arguments and returns a `search_spaces.Space`; the search
checks it as it checks the built-in spaces (search_spaces/spaces.py has more examples), so a bad
range or an unknown key is one line before anything starts. `--set` works on it as on any space.
"""
from search_spaces import Space


def _suggest(trial, arch, head):
    """(trial, arch, head) -> nothing (or derived config keys): every trial's searched values."""
    trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    optimizer = trial.suggest_categorical("optimizer", ["adamw", "sgd"])
    if optimizer == "sgd":  # a parameter only some trials have
        trial.suggest_float("momentum", 0.8, 0.95)
    # Each head's own options (head_tau for gumbel, ...) and label smoothing are added by the search
    # from the head's registry entry: suggest them here only to narrow their ranges.


def tiny_cnn() -> Space:
    """A tiny CNN with softmax and Gumbel-softmax heads on generated data: ~1 minute on 2 CPUs. For real
    data drop fake_data and set a dataset, e.g. constants={"dataset": "cifar100", ...}."""
    return Space("tiny_cnn", _suggest, archs=("cnn",), heads=("softmax", "gumbel"),
                 constants={"dataset": "cifar100", "model_widths": [8, 16], "model_fc_widths": [32], "epochs": 3,
                            "batch_size": 64, "warmup_epochs": 0.0},
                 settings={"num_samples": 6, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2,
                           "fake_data": True},
                 description="examples/my_space.py: a tiny CNN, softmax vs Gumbel-softmax, generated data")
