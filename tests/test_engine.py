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


def test_a_run_without_validation_scores_a_fixed_sample_of_its_training_images(fake_dir, monkeypatch):
    # a retrain (train+val) has no validation split: its accuracy so far is read off SEEN_SAMPLE training
    # images, in order and unaugmented; scoring them draws no randomness, so the training is unchanged
    split = data.full_train_split(data.load_dataset("cifar100", fake_dir, download=False))
    cfg = TrainConfig(arch="cnn_base", epochs=2, batch_size=64, device="cpu")
    monkeypatch.setattr(engine, "SEEN_SAMPLE", 100)
    result = engine.fit(cfg, split)
    last = result.last
    expected = engine.evaluate(result.trained, result.trained.loader(split.x_train[:100], split.y_train[:100]),
                               tta=False)["acc"]
    assert last["train_acc"] == expected and last["train_acc_images"] == 100 and math.isnan(last["val_acc"])
    monkeypatch.setattr(engine, "SEEN_SAMPLE", 10**9)  # more than the training set holds: all of it, said so
    again = engine.fit(cfg, split)
    assert again.last["train_acc_images"] == len(split.y_train)
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in result.history]
    assert "train_acc" not in engine.fit(cfg, _split(fake_dir)).last  # with a validation split: val_acc alone


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


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("caps,expected", [({"amx_bf16": True, "avx512_bf16": True}, "bf16"),
                                           ({"amx_bf16": False, "avx512_bf16": True}, "bf16"),
                                           ({"amx_bf16": False, "avx512_bf16": False}, "fp32"), ({}, "fp32")])
def test_amp_auto_picks_bf16_only_on_a_cpu_with_a_bf16_path(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    cpu = torch.device("cpu")
    assert engine.precision("auto", cpu) == expected
    assert engine.precision("fp32", cpu) == "fp32" and engine.precision("bf16", cpu) == "bf16"  # forced


def test_amp_auto_picks_bf16_on_cuda_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert engine.precision("auto", torch.device("cuda")) == expected


def test_a_bad_amp_value_is_refused():
    with pytest.raises(ValueError, match=r"config key 'amp'='fp16' is out of range: must be one of \('auto', 'bf16', "
                                         r"'fp32'\)"):
        TrainConfig.from_dict({"amp": "fp16"})


@pytest.mark.parametrize("head", heads.list_heads())
def test_every_head_trains_and_evaluates_under_bf16_with_fp32_losses(head):
    torch.manual_seed(0)
    body = torch.nn.Linear(12, 16)
    small = {"num_sampled": 8} if head == "sampled" else {}  # k < C = 40
    h = heads.create_head(head, 16, 40, hierarchy=torch.arange(40) % 5, **small)
    x, y = torch.randn(32, 12), torch.randint(0, 40, (32,))
    with engine.autocast("bf16", torch.device("cpu")):
        features = body(x)
        assert features.dtype == torch.bfloat16  # the backbone runs bf16
        loss = h.loss(features, y)
        log_p = h.log_prob(features)
        pred = h.predict(features)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in (*body.parameters(), *h.parameters()) if p.grad is not None]
    assert grads and all(torch.isfinite(g.to_dense() if g.is_sparse else g).all() for g in grads)
    assert log_p.dtype == torch.float32 and log_p.shape == (32, 40)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(32), atol=1e-4, rtol=0)
    assert pred.shape == (32,) and int(pred.max()) < 40


def test_bf16_and_fp32_losses_are_close_on_a_fixed_batch(fake_dir):
    losses = {}
    for amp in ("fp32", "bf16"):
        run = engine.build_run(TrainConfig(arch="cnn_bn4", batch_size=64, device="cpu", amp=amp), _split(fake_dir))
        x, y = next(iter(run.train_loader))
        assert run.trained.precision == amp
        losses[amp] = [float(engine.train_step(run, x, y)) for _ in range(3)]  # the same batch, three steps
    assert losses["fp32"] == pytest.approx(losses["bf16"], rel=0.02)
    assert losses["fp32"][2] < losses["fp32"][0]  # the steps learn, so the comparison covers updated weights


def test_each_epoch_and_the_summary_record_the_precision(fake_dir):
    result = engine.fit(TrainConfig(arch="cnn_base", epochs=1, batch_size=64, device="cpu", amp="fp32"),
                        _split(fake_dir))
    assert result.history[-1]["precision"] == "fp32" and result.trained.precision == "fp32"


def test_flip_tta_averages_the_two_distributions(fake_dir):
    split = _split(fake_dir)
    result = engine.fit(TrainConfig(arch="cnn_base", epochs=1, batch_size=64, device="cpu", amp="fp32"), split)
    t = result.trained
    loader = t.loader(split.x_val, split.y_val)
    both = engine.evaluate(t, loader, return_log_probs=True)
    plain = engine.evaluate(t, loader, return_log_probs=True, tta=False)
    with torch.no_grad():
        t.model.eval()
        x = torch.cat([b for b, _ in loader])
        flipped = t.model.head.log_prob(t.forward(x.flip(3))).float().numpy()
    expected = torch.logaddexp(torch.from_numpy(plain["log_probs"]), torch.from_numpy(flipped)) - math.log(2)
    torch.testing.assert_close(torch.from_numpy(both["log_probs"]), expected, atol=1e-5, rtol=0)
    assert both["acc_without_tta"] == plain["acc"] == plain["acc_without_tta"]  # read off the same pass
    cfg = TrainConfig(arch="cnn_base", epochs=1, batch_size=64, device="cpu", amp="fp32", tta_flip=False)
    off = engine.fit(cfg, split).trained
    assert not engine.tta_flip(cfg, off)
    no_flip = TrainConfig(arch="cnn_base", epochs=1, batch_size=64, device="cpu", flip=False)
    assert not engine.tta_flip(no_flip, engine.fit(no_flip, split).trained)  # trained without flips: no flip TTA


def test_airnet_whitening_filters_decorrelate_the_training_patches(fake_dir):
    import models

    net = models.create_model("airnet")
    x = torch.randn(64, 3, 16, 16) @ torch.randn(16, 16) * 3 + 1  # correlated, not unit-scale pixels
    net.data_init(x)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, net.whiten.weight[:12])  # the first half; the rest are their negations
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0)
    torch.testing.assert_close(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad  # fixed after the init, as in airbench


def test_amp_auto_keeps_a_backbone_measured_slower_in_bf16_on_the_cpu_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    cpu = torch.device("cpu")
    assert engine.precision("auto", cpu, "efficientnet_b0") == "fp32"  # its entry: cpu_bf16=False
    assert engine.precision("auto", cpu, "airnet") == "bf16"
    assert engine.precision("bf16", cpu, "efficientnet_b0") == "bf16"  # forced, it is bf16


def test_airnet_refuses_an_image_its_whitening_conv_and_pools_would_shrink_to_nothing():
    import models

    with pytest.raises(ValueError, match="3 conv groups need img_size >= 9, got 8"):
        models.create_model("airnet", img_size=8)
    assert models.create_model("airnet", img_size=9)(torch.randn(2, 3, 9, 9)).shape == (2, 256)
