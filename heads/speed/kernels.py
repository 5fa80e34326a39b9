"""The heads' CPU kernels (heads/speed/kernels.cpp), compiled on first use and cached on disk.
`make install` builds them ahead (`main`: build or find them, say where).

`compiled()` returns the compiled module, or None where it cannot be built (no C++ compiler)
or `HEADSWEEP_CPU_KERNELS=0` turns it off. What uses it, and what runs without it:
- the hierarchical head, for fp32 tensors on the CPU (`plan`, `logits`, `backward`); elsewhere
  (CUDA, bf16) and without it, PyTorch's batched matmuls (the same results, several times
  slower on CPU; heads/hierarchical.py);
- the lazy optimizer's update of many runs of rows (`over_runs`: one parallel region, each
  thread running PyTorch's own kernels on its share of the runs; heads/speed/sparse.py); without it,
  one kernel per run, each waking the other threads.

PyTorch's `torch.utils.cpp_extension` does the build with ninja: about 30 s once per machine (a
folder named by a hash of the source, the flags and the versions, under TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions), then well under a second per process. Concurrent first uses (trials
starting together) wait on PyTorch's build lock, which the OS releases if a builder dies.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.cpp")
NAME = "headsweep_kernels"
# -fopenmp: at::parallel_for's OpenMP region and the `omp simd` loops; the symbols resolve to
# PyTorch's own libgomp, already loaded (no second OpenMP runtime in the process).
FLAGS = ["-O3", "-fopenmp"]
SWITCH = "HEADSWEEP_CPU_KERNELS"  # "0" turns the kernels off (the batched-matmul path)


def build_directory() -> Path:
    """Where this source, these flags and this PyTorch are built. The key holds everything the build's
    command line holds (the source's content, the flags, torch's version and install folder, whose headers
    it includes) and nothing that differs between checkouts of one machine: the source is compiled from a
    copy inside the folder, so a second checkout finds the same build and ninja sees the same commands."""
    key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, torch.__version__, sys.version_info[:2],
                                                     str(Path(torch.__file__).resolve().parent))).encode())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / f"{NAME}_{key.hexdigest()[:12]}"


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


@functools.cache
def compiled():
    """The compiled kernels (`plan`, `logits`, `backward`, `over_runs`), or None (module docstring):
    built once per machine, loaded once per process. A failed build is one warning, then the fallback."""
    if not enabled():
        return None
    where = build_directory()
    if not (where / f"{NAME}.so").exists():
        print(f"headsweep: compiling the heads' CPU kernels into {where} (once per machine, ~30 s)",
              file=sys.stderr, flush=True)
    try:
        return _load(where)
    except Exception as exc:  # no compiler, no ninja, a failed build: the batched matmuls still work
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"headsweep's CPU kernels did not build ({reason}); the hierarchical head uses batched "
                      f"matmuls instead (slower on CPU). Set {SWITCH}=0 to skip the attempt.", RuntimeWarning,
                      stacklevel=2)
        return None


def _load(where: Path):
    # The import logs a warning about CUDA_HOME on machines without CUDA; nothing here uses CUDA.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        if shutil.which("ninja") is None:  # the pip package's binary, outside PATH when the venv is not activated
            import ninja
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        from torch.utils.cpp_extension import load
        where.mkdir(parents=True, exist_ok=True)
        source = where / SOURCE.name  # the same path for every checkout (the folder's key holds its content)
        if not source.exists() or source.read_bytes() != SOURCE.read_bytes():
            tmp = source.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(SOURCE, tmp)
            os.replace(tmp, source)  # whole or absent for a concurrent first use
        return load(NAME, [str(source)], extra_cflags=FLAGS, build_directory=str(where), verbose=False)
    finally:
        log.setLevel(level)


def main() -> int:
    if not enabled():
        print(f"{SWITCH}=0: the CPU kernels are turned off")
        return 0
    start = time.perf_counter()
    module = compiled()
    if module is None:
        print("the CPU kernels are not available (the warning above says why)")
        return 1
    print(f"CPU kernels ready in {time.perf_counter() - start:.1f} s: {build_directory()}")
    return 0
