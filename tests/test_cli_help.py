"""Every command line names itself in `usage:` and answers `--help` at once: the fast ones import
neither torch nor Ray to do it (deterministic, whatever the machine's load), within a generous bound."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The commands users run; their --help must not wait for torch (seconds on a busy 2-core machine).
FAST = ["tuning.search", "analysis.retrain", "analysis.study", "analysis.report", "training.train",
        "training.fake_data", "training.many_classes", "tools.gpu_check", "tools.heads_bench", "tools.learnability",
        "tools.train_bench"]

_PROBE = """import runpy, sys
sys.argv = [{module!r}, "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("HEAVY:", sorted(m for m in ("torch", "ray", "optuna", "pandas") if m in sys.modules))
"""


@pytest.mark.slow  # a subprocess each (a fresh interpreter is the only place to see what --help imports)
@pytest.mark.parametrize("module", FAST)
def test_help_answers_without_torch_or_ray(module):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"usage: python -m {module}" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY: []"  # nothing heavy imported to answer
    assert seconds < 5.0, f"{module} --help took {seconds:.1f} s"  # generous: ~0.2 s on a quiet machine


@pytest.mark.parametrize("module", FAST)
def test_help_shows_every_default(module, monkeypatch):
    """Each option with a default says it in --help (the parser's own text, whatever the wording)."""
    from common.cli import ArgumentParser

    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([])
    silent = [a.option_strings[0] for a in parsers[0]._actions
              if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.help != argparse.SUPPRESS
              and "default" not in (a.help or "")]
    assert silent == [], f"{module}: {silent} do not show their default"
