from pathlib import Path

import pytest

from tuning import fake_data

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    from tuning import data

    return data.load_dataset("cifar100", real_dir, download=False)


@pytest.fixture(scope="session")
def smoke_experiment(tmp_path_factory):
    """One real `--space smoke` search (Ray + Optuna, ~25 s on 2 CPUs), shared by the tests.

    Returns (experiment folder, exit code, what it printed).
    """
    import contextlib
    import io

    from tuning import search

    storage = tmp_path_factory.mktemp("experiments")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = search.main(["--space", "smoke", "--storage", str(storage), "--name", "smoke", "--no-dashboard"])
    return storage / "smoke", code, out.getvalue()
