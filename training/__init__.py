"""headsweep's training core, without Ray or Optuna: datasets, the device loader, the trial config,
the optimizer table, the engine (`fit` / `evaluate`) and the one-run command (`python -m training.train`)."""
