"""headsweep's Ray Tune side: the search command (`python -m tuning.search`), its trials, the experiment
folder, the per-pair Optuna bookkeeping and the console."""
