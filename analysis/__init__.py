"""Results of a search as DataFrames, the retrain of the best configs, and the report."""
from analysis.results import NotAnExperimentError, Results, best, experiment_spec, history, load

__all__ = ["Results", "load", "history", "best", "experiment_spec", "NotAnExperimentError"]
