"""tuning/live.py: the live page's MLflow callback leaves the process's MLFLOW_TRACKING_URI as it found it
(MLflow's set_tracking_uri writes it into os.environ, and a second search in the same process, a notebook
or the tests, then logged to the first one's store)."""
import os

from tuning.live import LiveRuns


def test_setting_up_the_live_page_leaves_the_tracking_uri_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    callback = LiveRuns(f"sqlite:///{tmp_path / 'a.db'}", "a", max_epochs=2)
    callback.setup()
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert callback.client.get_experiment_by_name("a") is not None  # it did set up its own store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    LiveRuns(f"sqlite:///{tmp_path / 'b.db'}", "b", max_epochs=2).setup()
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'user.db'}"
