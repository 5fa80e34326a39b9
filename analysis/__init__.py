"""Results of a search as DataFrames, the retrain of the best configs, and the report.

`from analysis import load` and friends load pandas on first use, so the command lines in this
package answer `--help` without it."""
__all__ = ["Results", "load", "history", "best", "experiment_spec", "NotAnExperimentError"]


def __getattr__(name: str):
    if name in __all__:
        from analysis import results

        return getattr(results, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
