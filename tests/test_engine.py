import io
import math

import pytest
import torch

import heads
from training import data, engine
from training.config import TrainConfig


def _split(fake_dir, **kw):
    ds = data.load_dataset("cifar100", fake_dir, download=False)
    return data.split_train_val(ds, 0.1, 0, **kw)


def test_same_seed_gives_identical_metrics_on_cpu(fake_dir):
    cfg = TrainConfig(arch="cnn_base", epochs=2, batch_size=64, device="cpu")
    a = engine.fit(cfg, _split(fake_dir)).history
    b = engine.fit(cfg, _split(fake_dir)).history
    keys = ("train_loss", "val_loss", "val_acc", "val_top5")
    assert [[h[k] for k in keys] for h in a] == [[h[k] for k in keys] for h in b]
    c = engine.fit(TrainConfig(arch="cnn_base", epochs=2, batch_size=64, device="cpu", seed=1), _split(fake_dir))
    assert c.history[-1]["train_loss"] != a[-1]["train_loss"]


def test_every_epoch_reports_the_metrics(fake_dir):
    seen = []
    result = engine.fit(TrainConfig(arch="cnn_base", epochs=2, batch_size=64), _split(fake_dir),
                        on_epoch=lambda m, state: seen.append((m, state())))
    assert [m["epoch"] for m, _ in seen] == [1, 2] and result.status == "completed"
    for m, state in seen:
        assert {"train_loss", "val_loss", "val_acc", "val_top5", "epoch_time_s", "images_per_s"} <= set(m)
        assert 0 <= m["val_acc"] <= m["val_top5"] <= 1 and m["epoch_time_s"] > 0
        assert state["epoch"] == m["epoch"]


@pytest.mark.parametrize("head", ["gumbel", "sampled", "hierarchical"])  # sampled, hierarchical: lazy row updates
def test_resume_from_state_matches_an_uninterrupted_run(fake_dir, head):
    cfg = TrainConfig(arch="cnn_base", head=head, epochs=3, batch_size=64, device="cpu", grad_clip=1.0)
    full = engine.fit(cfg, _split(fake_dir)).history
    saved = io.BytesIO()  # serialised at once, as a checkpoint is: state() holds live tensors
    engine.fit(cfg, _split(fake_dir), on_epoch=lambda m, state: torch.save(state(), saved) if m["epoch"] == 1 else None)
    saved.seek(0)
    resumed = engine.fit(cfg, _split(fake_dir), state=torch.load(saved, weights_only=True)).history  # no pickled code
    assert [h["epoch"] for h in resumed] == [2, 3]
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in full[1:]]
    assert [h["val_acc"] for h in resumed] == [h["val_acc"] for h in full[1:]]


def test_nan_loss_ends_the_run_with_a_reason(fake_dir):
    cfg = TrainConfig(arch="cnn_base", epochs=5, batch_size=64, lr=1e12, warmup_epochs=0, schedule="constant")
    result = engine.fit(cfg, _split(fake_dir))
    assert result.status == "diverged"
    assert "non-finite loss at epoch" in result.reason
    assert len(result.history) < 5 and result.history[-1]["diverged"]


@pytest.mark.parametrize("optimizer,schedule", [("adam", "step"), ("adamw", "cosine"), ("rmsprop", "constant")])
def test_optimizers_and_schedules_run(fake_dir, optimizer, schedule):
    cfg = TrainConfig(arch="cnn_base", epochs=1, batch_size=64, optimizer=optimizer, schedule=schedule, lr=1e-3,
                      label_smoothing=0.1)
    assert math.isfinite(engine.fit(cfg, _split(fake_dir)).last["train_loss"])


def test_lr_schedule_warmup_then_cosine_to_zero():
    cfg = TrainConfig(epochs=10, warmup_epochs=2)
    f = [engine.lr_factor(s, cfg, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[20:], f[21:])) and f[-1] < 0.01
    step = TrainConfig(epochs=30, warmup_epochs=0, schedule="step", step_epochs=10, step_gamma=0.1)
    assert [engine.lr_factor(s, step, 1) for s in (0, 10, 20)] == pytest.approx([1.0, 0.1, 0.01])


@pytest.mark.slow
def test_short_run_on_real_cifar100_learns(real_cifar100):
    """cnn_bn4 on 10k real images, 3 epochs: chance is 1%; it must clearly beat it."""
    split = data.split_train_val(real_cifar100, 0.1, 0, train_limit=10000)
    cfg = TrainConfig(arch="cnn_bn4", epochs=3, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0,
                      warmup_epochs=0, device="cpu")
    result = engine.fit(cfg, split)
    assert result.last["val_acc"] > 0.06, result.history
    assert result.last["val_top5"] > 0.18


@pytest.mark.parametrize("flat,message", [
    ({"lr_max": 1}, r"unknown config key 'lr_max'"),
    ({"batch_size": 0}, r"'batch_size'=0 is out of range: must be >= 1"),
    ({"optimizer": "lbfgs"}, r"'optimizer'='lbfgs' is out of range: must be one of"),
    ({"head": "nope"}, r"unknown head 'nope'; valid heads: adaptive, gumbel, hierarchical, sampled, softmax"),
    ({"arch": "nope"}, r"unknown model 'nope'; valid models:"),
    ({"head": "gumbel", "head_temperature": 1}, r"unknown option\(s\) \['temperature'\] for head 'gumbel'"),
])
def test_config_refuses_bad_keys_and_values(flat, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(flat)


def test_config_round_trips_through_flat_dict():
    cfg = TrainConfig.from_dict({"head": "adaptive", "head_cutoffs": [20, 60], "model_batch_norm": True})
    assert cfg.head_kwargs == {"cutoffs": [20, 60]} and cfg.model_kwargs == {"batch_norm": True}
    assert TrainConfig.from_dict(cfg.to_flat()) == cfg


@pytest.mark.parametrize("head", heads.list_heads())
def test_every_head_trains_through_the_engine(fake_dir, head):
    cfg = TrainConfig(arch="cnn_base", head=head, epochs=1, batch_size=64)
    result = engine.fit(cfg, _split(fake_dir))
    assert result.status == "completed" and math.isfinite(result.last["val_loss"])
    if head == "hierarchical":  # CIFAR-100's superclasses became the tree
        assert len(result.trained.model.head.groups) == 20


def test_label_smoothing_refused_by_heads_that_cannot_smooth(fake_dir):
    cfg = TrainConfig(arch="cnn_base", head="sampled", epochs=1, batch_size=64, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing=0.1: head SampledSoftmaxHead supports only 0"):
        engine.fit(cfg, _split(fake_dir))
