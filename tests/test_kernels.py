"""The heads' CPU kernels (heads/speed/kernels.py, heads/speed/kernels.cpp): built here, refusing what they cannot
take, and a machine that cannot build them falls back with one warning. Their results against the
batched matmuls and the per-example reference: tests/test_sparse.py (`grouped_path`)."""
from pathlib import Path

import pytest
import torch

import heads
from heads.speed import kernels


@pytest.fixture
def fresh():
    """`kernels.compiled` as if this process had not called it yet."""
    kernels.compiled.cache_clear()
    yield
    kernels.compiled.cache_clear()


def test_the_kernels_build_here_and_refuse_what_they_cannot_take():
    """`make install` builds them; a machine without a C++ compiler sets HEADSWEEP_CPU_KERNELS=0."""
    if not kernels.enabled():
        pytest.skip(f"{kernels.SWITCH}=0 turns the CPU kernels off")
    k = kernels.compiled()
    assert k is not None, "the CPU kernels did not build: see the warning, or set HEADSWEEP_CPU_KERNELS=0"
    assert (kernels.build_directory() / f"{kernels.NAME}.so").exists()
    present, begin, order = k.plan(torch.tensor([4, 1, 4, 0, 1, 4]), 6)  # examples sorted by group, stably
    assert present.tolist() == [0, 1, 4] and begin.tolist() == [0, 1, 3, 6] and order.tolist() == [3, 1, 4, 0, 2, 5]
    with pytest.raises(RuntimeError, match=r"group id 6 is not in \[0, 6\)"):
        k.plan(torch.tensor([6]), 6)
    index = [torch.zeros(1, dtype=torch.long)] * 5
    with pytest.raises(RuntimeError, match="x: expected a contiguous 2-d CPU tensor of Float"):
        k.logits(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(3, 4), torch.zeros(3), *index, 3)


def test_a_failed_build_is_one_warning_and_the_head_still_trains(fresh, monkeypatch):
    def no_compiler(where):
        raise RuntimeError("Error building extension 'headsweep_kernels'\nc++: command not found")

    monkeypatch.setattr(kernels, "_load", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"did not build \(c\+\+: command not found\); the hierarchical head "
                                            "uses batched matmuls"):
        assert kernels.compiled() is None
    assert kernels.compiled() is None  # once per process: no second attempt, no second warning
    head = heads.create_head("hierarchical", 8, 100)
    loss = head.loss(torch.randn(16, 8), torch.randint(0, 100, (16,)))
    loss.backward()
    assert torch.isfinite(loss) and head.class_weight.grad.is_sparse


def test_the_switch_turns_them_off_without_trying(fresh, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "0")
    monkeypatch.setattr(kernels, "_load", lambda where: pytest.fail("no build with the kernels turned off"))
    assert kernels.compiled() is None
    assert kernels.main() == 0


def test_cpu_kernels_false_takes_the_batched_matmuls_with_the_same_results(monkeypatch):
    from heads.speed import grouped

    calls = []
    real = grouped._GroupedLogits.apply
    monkeypatch.setattr(grouped._GroupedLogits, "apply", lambda *a: calls.append(1) or real(*a))
    x, y = torch.randn(32, 8), torch.randint(0, 100, (32,))
    results = []
    for cpu_kernels in (True, False):
        torch.manual_seed(0)
        head = heads.create_head("hierarchical", 8, 100, cpu_kernels=cpu_kernels)
        loss = head.loss(x, y)
        loss.backward()
        results.append((loss.detach(), head.class_weight.grad.to_dense()))
    assert len(calls) == (2 if kernels.compiled() is None else 1)  # the kernels' head never called it
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


_BUILD = """import importlib.util, sys
spec = importlib.util.spec_from_file_location("kernels_copy", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
assert m.compiled() is not None
print(m.build_directory())
"""


@pytest.mark.slow  # one real build (~30 s) in a folder of its own
def test_a_second_checkout_reuses_the_first_ones_build(tmp_path):
    """Two checkouts (copies of the kernels' files in two folders) share one build: the second compiles
    nothing and leaves the library as the first built it."""
    import shutil
    import subprocess
    import sys

    env = {**__import__("os").environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    runs = []
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        for f in (kernels.SOURCE, kernels.SOURCE.with_suffix(".py")):
            shutil.copy(f, tmp_path / checkout / f.name)
        out = subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path / checkout / "kernels.py")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        where = out.stdout.strip().splitlines()[-1]
        runs.append((where, "compiling" in out.stderr, (Path(where) / f"{kernels.NAME}.so").stat().st_mtime_ns))
    (first, built, so_time), (second, rebuilt, so_time_after) = runs
    assert first == second and built and not rebuilt and so_time == so_time_after
