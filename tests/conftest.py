import os
import subprocess
import sys
from pathlib import Path

import pytest

# OpenMP threads that spin while they wait take the cores from whatever else runs (another test's
# subprocess, a Ray worker, a training beside the suite): on 2 busy cores that made the fast tier 5x
# slower. Set before torch is first imported, for this process and every subprocess a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training import fake_data  # noqa: E402 - after the OpenMP setting

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _own_ray_token() -> None:
    """Every Ray this test session starts (in-process or in a subprocess) uses a token of the
    session's own, in its own file: Ray's default would write ~/.ray/auth_token, and two sessions
    starting at once would race on it. (tests/cluster.py gives each cluster its own the same way.)"""
    import secrets
    import tempfile

    if os.environ.get("RAY_AUTH_TOKEN_PATH") or os.environ.get("RAY_AUTH_TOKEN"):
        return
    folder = Path(tempfile.mkdtemp(prefix="hs-token-"))
    (folder / "auth_token").write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(folder / "auth_token"))


_own_ray_token()


def _own_manifest_key() -> None:
    """The searches the tests run sign their resume state with a key of the session's own, not the
    user's ~/.config/headsweep/manifest.key (tuning/manifest.py)."""
    import tempfile

    os.environ.setdefault("HEADSWEEP_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="hs-key-")) / "manifest.key"))


_own_manifest_key()


@pytest.fixture(autouse=True)
def _fast_tier_stays_fast(request, monkeypatch):
    """Under `make test-fast`, a test that starts Ray or a Python subprocess fails: mark it slow."""
    if not os.environ.get("HEADSWEEP_FAST_TIER") or "slow" in request.keywords:
        return
    import ray

    def refuse(what):
        def call(*args, **kwargs):
            raise RuntimeError(f"{request.node.nodeid} {what} in the fast tier: mark it @pytest.mark.slow")
        return call

    real_popen = subprocess.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        if (args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]) == sys.executable:
            refuse("runs a Python subprocess")()
        real_popen(self, args, *rest, **kwargs)

    monkeypatch.setattr(ray, "init", refuse("starts Ray"))
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)


@pytest.fixture(scope="session")
def fake_dir(tmp_path_factory) -> Path:
    """Tiny CIFAR-100, CIFAR-10 and Fashion-MNIST in their official formats."""
    return fake_data.write_all(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not (REAL_DATA / "cifar-100-python" / "train").is_file():
        pytest.skip(f"the real datasets are not at {REAL_DATA} (they sit beside the checkout in CI)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_cifar100(real_dir):
    from training import data

    return data.load_dataset("cifar100", real_dir, download=False)


@pytest.fixture(scope="session")
def smoke_experiment(tmp_path_factory):
    """One real `--space smoke` search (Ray + Optuna, ~25 s on 2 CPUs), shared by the tests, run as
    a user runs it (a subprocess; stdout and stderr together, as a terminal shows them), with
    MLflow logging on.

    Returns (experiment folder, exit code, what it printed).
    """
    storage = tmp_path_factory.mktemp("experiments")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "tuning.search", "--space", "smoke", "--storage", str(storage),
                           "--name", "smoke", "--no-dashboard", "--callback", "mlflow"],
                          cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return storage / "smoke", done.returncode, done.stdout
