"""Every command line names itself in `usage:` and answers `--help` at once: the fast ones import
neither torch nor Ray to do it (deterministic, whatever the machine's load), within a generous bound."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The commands users run; their --help must not wait for torch (seconds on a busy 2-core machine).
FAST = ["tuning.search", "analysis.retrain", "analysis.study", "analysis.report", "training.train",
        "training.fake_data", "training.many_classes", "tools.gpu_check"]
# The benchmarks, which import torch at their top (seconds): named in `usage:` all the same.
ALL = [*FAST, "tools.heads_bench", "tools.learnability", "tools.train_bench"]

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


@pytest.mark.slow
@pytest.mark.parametrize("module", ALL[len(FAST):])
def test_every_command_names_itself_in_usage(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m {module}"), out.stdout[:300]
