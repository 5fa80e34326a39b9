"""Measuring tools that sit above the library: `tools.train_bench` (training speed), `tools.heads_bench`
(the heads' cost at large C) and `tools.learnability` (every head on a synthetic task)."""
