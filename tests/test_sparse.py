"""Row-sparse heads: the lazy optimizer's rule, sparse vs dense updates, grouped hierarchical softmax."""
import io
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import heads
from heads.speed.sparse import RULES, SMALL, Chained, LazyRows, on_one_thread, rows, sparse_grad
from training.config import TrainConfig
from training.optim import OPTIMIZERS, make_optimizer

STOCK = {"sgd": lambda p, **h: torch.optim.SGD(p, lr=h["lr"], momentum=h["momentum"], nesterov=h["nesterov"],
                                               weight_decay=h["weight_decay"]),
         "adam": lambda p, **h: torch.optim.Adam(p, lr=h["lr"], betas=(h["momentum"], 0.999),
                                                 weight_decay=h["weight_decay"]),
         "adamw": lambda p, **h: torch.optim.AdamW(p, lr=h["lr"], betas=(h["momentum"], 0.999),
                                                   weight_decay=h["weight_decay"]),
         "rmsprop": lambda p, **h: torch.optim.RMSprop(p, lr=h["lr"], momentum=h["momentum"],
                                                       weight_decay=h["weight_decay"])}


def test_every_optimizer_of_the_table_has_a_lazy_rule():
    assert set(OPTIMIZERS.list()) == set(RULES)
    with pytest.raises(ValueError, match=r"rule='lion' is not one of"):
        LazyRows([torch.nn.Parameter(torch.zeros(2, 2))], rule="lion", lr=0.1)


def test_lazy_sgd_matches_a_hand_computed_case():
    """Momentum 0.5, weight decay 0.1, lr 0.1; rows touched at steps 1, 2, 1 (module docstring's rule)."""
    w = torch.nn.Parameter(torch.tensor([[1.0], [2.0]]))
    opt = LazyRows([w], rule="sgd", lr=0.1, momentum=0.5, weight_decay=0.1)
    for row, g in ((0, 1.0), (1, 2.0), (0, 1.0)):
        w.grad = sparse_grad(torch.tensor([row]), torch.tensor([[g]]), w.shape)
        opt.step()
    # row 0: g=1.1, buf=1.1, w=0.89; untouched at step 2; then g=1.089, buf=0.55+1.089=1.639, w=0.89-0.1639
    # row 1: g=2.2, buf=2.2, w=2-0.22
    torch.testing.assert_close(w.detach(), torch.tensor([[0.7261], [1.78]]))
    dense = torch.nn.Parameter(torch.tensor([[1.0], [2.0]]))  # the dense rule moves row 0 at step 2 too
    stock = torch.optim.SGD([dense], lr=0.1, momentum=0.5, weight_decay=0.1)
    for row, g in ((0, 1.0), (1, 2.0), (0, 1.0)):
        dense.grad = torch.zeros(2, 1).index_fill_(0, torch.tensor([row]), g)
        stock.step()
    # step 2: buf=0.55+0.089, w=0.8261; step 3: g=1.08261, buf=0.3195+1.08261, w=0.8261-0.140211
    assert dense[0].item() == pytest.approx(0.685889, abs=1e-5)


@pytest.mark.parametrize("rule,nesterov", [("sgd", False), ("sgd", True), ("rmsprop", False)])
def test_lazy_rule_is_the_stock_rule_over_the_steps_that_touch_a_row(rule, nesterov):
    hp = dict(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    torch.manual_seed(0)
    start = torch.randn(3, 4)
    touches = [[0, 2], [1], [0], [0, 1, 2], [2]]  # rows touched at each step
    grads = [torch.randn(len(r), 4) for r in touches]
    w = torch.nn.Parameter(start.clone())
    opt = LazyRows([w], rule=rule, **hp)
    for r, g in zip(touches, grads):
        w.grad = sparse_grad(torch.tensor(r), g.clone(), w.shape)  # the step adds L2 into it in place
        opt.step()
    for row in range(3):  # each row alone, through the stock optimizer, with only its own gradients
        alone = torch.nn.Parameter(start[row].clone())
        stock = STOCK[rule]([alone], **hp)
        for r, g in zip(touches, grads):
            if row in r:
                alone.grad = g[r.index(row)].clone()
                stock.step()
        torch.testing.assert_close(w[row].detach(), alone.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule,weight_decay", [("adam", 0.0), ("adamw", 0.1)])
@pytest.mark.parametrize("layout", ["scattered", "runs"])
def test_lazy_adam_is_dense_adam_on_every_row_a_step_touches(rule, weight_decay, layout):
    """The missed steps' updates (zero gradient: decayed moments, AdamW's decay) are caught up
    when a row is touched again, so it lands where dense Adam puts it."""
    torch.manual_seed(0)
    size = 1 if layout == "scattered" else 20  # 20-row groups: updated in place as runs
    start = torch.randn(4 * size, 3)
    touches = [[0, 2], [1], [0], [0, 1, 2], [2], [3], [1]] + [[1]] * 40 + [[0, 2, 3], [1, 3]]
    lazy, dense = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    hp = dict(lr=0.05, weight_decay=weight_decay)
    opt = LazyRows([lazy], rule=rule, momentum=0.9, **hp)
    stock = STOCK[rule]([dense], momentum=0.9, **hp)
    for groups in touches:
        rows = torch.cat([torch.arange(g * size, (g + 1) * size) for g in groups])
        g = torch.randn(len(rows), 3)
        lazy.grad = sparse_grad(rows, g.clone(), lazy.shape)
        dense.grad = torch.zeros_like(start).index_copy_(0, rows, g)
        opt.step(), stock.step()
        # (exact up to Adam's eps against sqrt(v): without the catch-up rows differ by ~0.1)
        torch.testing.assert_close(lazy[rows].detach(), dense[rows].detach(), rtol=1e-4, atol=1e-5)
    assert not torch.equal(lazy[0], dense[0])  # row 0 last touched a step ago: its catch-up is pending


def _pair(name, c=50, d=8, **hp):
    """The same head twice (same init): row-sparse (default) and dense=True."""
    made = []
    for dense in (False, True):
        torch.manual_seed(0)
        made.append(heads.create_head(name, d, c, dense=dense, **hp))
    return made


@pytest.mark.parametrize("name,hp", [("sampled", {"num_sampled": 8}), ("hierarchical", {})])
def test_sparse_and_dense_updates_agree_after_one_plain_sgd_step(name, hp):
    sparse, dense = _pair(name, **hp)
    x, y = torch.randn(16, 8), torch.randint(0, 50, (16,))
    cfg = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0)
    losses, after = [], []
    for head in (sparse, dense):
        opt = make_optimizer(cfg, head)
        assert isinstance(opt, Chained) == (head is sparse)
        torch.manual_seed(1)  # the same negative samples
        loss = head.loss(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        after.append({k: v.detach().clone() for k, v in head.state_dict().items()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    torch.manual_seed(0)
    before = heads.create_head(name, 8, 50, **hp).state_dict()
    for k in before:
        torch.testing.assert_close(after[0][k], after[1][k], rtol=1e-5, atol=1e-6)
        touched = (after[0][k] != before[k]).reshape(len(before[k]), -1).any(1)
        assert touched.equal((after[1][k] != before[k]).reshape(len(before[k]), -1).any(1))
    weight = "fc.weight" if name == "sampled" else "class_weight"
    assert 0 < ((after[0][weight] != before[weight]).any(1)).sum() < 50  # a few rows moved, the others kept


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_work_runs_forward_and_backward_on_one_thread_and_gives_autograd_s_gradients(two_threads):
    weight, x, index = torch.randn(50, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True), torch.tensor(
        [3, 7, 3, 40])
    seen = []

    def fn(x, index, weight):
        out = (x * rows(index, weight)).sum(1).pow(2)
        seen.append(torch.get_num_threads())
        out.register_hook(lambda g: seen.append(torch.get_num_threads()))  # runs in the backward
        return out.sum()

    loss = on_one_thread(fn, 100, x, index, weight)
    assert torch.get_num_threads() == 2
    loss.backward()
    assert seen == [1, 1] and torch.get_num_threads() == 2
    gx, gw = x.grad, weight.grad
    assert gw.is_sparse and gw._indices()[0].tolist() == [3, 7, 40]
    x.grad = weight.grad = None
    fn(x, index, weight).backward()  # the same function on autograd's own graph
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw.to_dense(), weight.grad.to_dense())
    assert seen[2:] == [2, 2]


def test_large_work_keeps_every_thread_and_a_failure_restores_the_thread_count(two_threads):
    seen = []
    on_one_thread(lambda x: seen.append(torch.get_num_threads()) or x.sum(), SMALL + 1, torch.ones(3))
    assert seen == [2]

    def fails(x):
        raise ValueError("inside the step")
    with pytest.raises(ValueError, match="inside the step"):
        on_one_thread(fails, 10, torch.ones(3))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("rows_touched, threads", [(list(range(32)) + list(range(64, 96)), 1),
                                                     (list(range(2 ** 17)), 2)])
def test_runs_of_rows_are_updated_on_one_thread_when_each_run_is_small(two_threads, monkeypatch, rows_touched,
                                                                        threads):
    # One kernel per run: on two threads each run pays a wake-up of the other thread (README).
    seen, stock = [], heads.speed.sparse.sgd
    monkeypatch.setattr(heads.speed.sparse, "sgd", lambda *a, **k: seen.append(torch.get_num_threads()) or stock(*a, **k))
    weight = torch.nn.Parameter(torch.zeros(2 ** 17, 8))
    index = torch.tensor(rows_touched)
    weight.grad = sparse_grad(index, torch.ones(len(index), 8), weight.shape, coalesced=True)
    LazyRows([weight], "sgd", lr=0.5, momentum=0.9).step()
    assert seen == [threads] and torch.get_num_threads() == 2
    touched = torch.zeros(2 ** 17, dtype=torch.bool)
    touched[index] = True
    assert (weight[touched] == -0.5).all() and (weight[~touched] == 0).all()


def test_runs_are_cut_into_shares_of_about_equal_rows():
    from heads.speed.sparse import _shares

    assert _shares([10, 1, 1, 1, 1, 10], 2) == [0, 3, 6]  # 12 rows each
    assert _shares([100, 1, 1], 2) == [0, 1, 3] and _shares([3, 3, 3, 3], 4) == [0, 1, 2, 3, 4]
    assert _shares([5], 2) == [0, 1] and _shares([1, 100], 2) == [0, 2]  # never an empty share


@pytest.mark.parametrize("rule, hp", [("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
                                      ("adam", {"momentum": 0.9, "weight_decay": 1e-2}),
                                      ("adamw", {"momentum": 0.9, "weight_decay": 1e-2}),
                                      ("rmsprop", {"momentum": 0.5, "weight_decay": 1e-2})])
def test_many_runs_are_shared_between_the_threads_with_the_same_result(two_threads, monkeypatch, rule, hp):
    """Over SMALL values in many runs, the lazy update runs in one parallel region (heads.speed.kernels
    over_runs), each thread on its share; every rule gives exactly what one kernel per run gives."""
    from heads.speed import kernels

    if not kernels.enabled():
        pytest.skip(f"{kernels.SWITCH}=0 turns the CPU kernels off")
    runs = [torch.arange(start, start + 32) for start in range(0, 4096 - 32, 48)]  # 85 runs of 32 rows, 16 apart
    steps = [torch.cat(runs), torch.cat(runs[::2]), torch.cat(runs[1::3])]  # a row missed, then touched: catch-up
    assert 32 * len(runs) * 256 > SMALL
    results, threads_seen, apply = [], set(), LazyRows._apply
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(kernels, "compiled", lambda: None)  # one kernel per run
        monkeypatch.setattr(LazyRows, "_apply", lambda self, *a: threads_seen.add((shared, threading.get_native_id()))
                            or apply(self, *a))
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4096, 256))
        opt = LazyRows([weight], rule, lr=0.01, **hp)
        for index in steps:
            weight.grad = sparse_grad(index, torch.randn(len(index), 256), weight.shape, coalesced=True)
            opt.step()
        results.append((weight.detach().clone(), {k: v.clone() for k, v in opt.state[weight].items()}))
        assert torch.get_num_threads() == 2
    assert len({t for s, t in threads_seen if s}) == 2 and len({t for s, t in threads_seen if not s}) == 1
    assert torch.equal(results[0][0], results[1][0])
    for k in results[1][1]:
        assert torch.equal(results[0][1][k], results[1][1][k]), k


def test_sparse_update_leaves_untouched_rows_as_they_were_under_momentum_and_decay():
    head = heads.create_head("sampled", 8, 1000, num_sampled=4)
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.1), head)
    before = head.fc.weight.detach().clone()
    y = torch.tensor([3, 3, 7])
    for _ in range(3):
        x = torch.randn(3, 8)
        torch.manual_seed(2)  # the same samples each step
        sampled = head.sample("cpu")
        torch.manual_seed(2)
        opt.zero_grad()
        head.loss(x, y).backward()
        opt.step()
    touched = torch.zeros(1000, dtype=torch.bool)
    touched[torch.cat([y, sampled])] = True
    assert torch.equal(head.fc.weight[~touched], before[~touched])
    assert (head.fc.weight[touched] != before[touched]).all(1).all()


@pytest.fixture(params=["kernels", "matmuls"])
def grouped_path(request, monkeypatch):
    """The hierarchical head's two implementations: the CPU kernels (heads/speed/kernels.cpp, what fp32 on
    the CPU takes) and PyTorch's batched matmuls (what CUDA and bf16 take, and CPU without a compiler)."""
    from heads.speed import grouped, kernels

    if request.param == "matmuls":
        monkeypatch.setattr(kernels, "compiled", lambda: None)
    elif not kernels.enabled():
        pytest.skip(f"{kernels.SWITCH}=0 turns the CPU kernels off")
    else:
        def refuse(*args):
            raise AssertionError("fp32 on the CPU must take the kernels, not the batched matmuls")
        monkeypatch.setattr(grouped._GroupedLogits, "apply", refuse)
        monkeypatch.setattr(grouped, "_logits_every_group", refuse)
    return request.param


def _per_example_within_group(head, x, group):
    """The former implementation: a (B, M, d) gather of each example's group rows."""
    idx = head.members[group]
    logits = torch.einsum("bmd,bd->bm", head.class_weight[idx], x) + head.class_bias[idx]
    return F.log_softmax(logits.masked_fill(~head.valid[group], float("-inf")), dim=1)


def _per_example_loss(head, x, y):
    group = head.group_of[y]
    lp_class = _per_example_within_group(head, x, group)
    pos = head.rank[y] - head.offset[group]
    return -(F.log_softmax(head.group_fc(x), 1).gather(1, group[:, None]).squeeze(1)
             + lp_class.gather(1, pos[:, None]).squeeze(1)).mean()


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch", [40, 1])
def test_grouped_hierarchical_loss_and_gradients_equal_the_per_example_version(dense, batch, grouped_path):
    groups = [[0, 5, 7], [1, 2], [3, 4, 6, 8, 9, 10, 11], [12]]  # unequal, not contiguous
    torch.manual_seed(0)
    head = heads.create_head("hierarchical", 8, 13, hierarchy=groups, dense=dense)
    x = torch.randn(batch, 8, requires_grad=True)
    y = torch.randint(0, 13, (batch,))
    grads = []
    for loss_fn in (head.loss, lambda a, b: _per_example_loss(head, a, b)):
        head.zero_grad(set_to_none=True)
        x.grad = None
        loss = loss_fn(x, y)
        loss.backward()
        grads.append([loss.detach(), x.grad.clone()] + [p.grad.to_dense() if p.grad.is_sparse else p.grad
                                                         for p in head.parameters()])
        if loss_fn == head.loss:
            assert head.class_weight.grad.is_sparse != dense
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,every_group", [(256, True), (3, False)])
def test_grouped_greedy_predict_equals_the_per_example_greedy_predict(batch, every_group, grouped_path):
    """The kernels, and both of the batched matmuls' paths: every group's block (most groups
    present) and the gathered blocks."""
    from heads.speed.grouped import EVERY_GROUP_SHARE

    head = heads.create_head("hierarchical", 16, 1000, hierarchy=np.random.default_rng(0).integers(0, 30, 1000))
    x = torch.randn(batch, 16)
    with torch.no_grad():
        group = head.group_fc(x).argmax(1)
        assert (len(group.unique()) >= EVERY_GROUP_SHARE * 30) == every_group
        pos = _per_example_within_group(head, x, group).argmax(1)
        assert torch.equal(head.predict(x), head.order[head.members[group, pos]])


def test_hierarchical_checkpoint_of_the_class_order_layout_still_loads():
    """Version 1 stored class rows in class-id order; loading permutes them into groups."""
    groups = [[0, 3], [1, 2, 4]]
    head = heads.create_head("hierarchical", 4, 5, hierarchy=groups)
    x = torch.randn(6, 4)
    expected = head.log_prob(x)
    old = head.state_dict()
    old["class_weight"], old["class_bias"] = old["class_weight"][head.rank], old["class_bias"][head.rank]
    old._metadata[""]["version"] = 1
    fresh = heads.create_head("hierarchical", 4, 5, hierarchy=groups)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.log_prob(x), expected)


def test_chained_optimizer_state_round_trips_and_the_scheduler_reaches_every_child():
    head = heads.create_head("hierarchical", 8, 100)
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.1, momentum=0.9, weight_decay=0.01), head)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    head.loss(torch.randn(4, 8), torch.tensor([1, 2, 50, 99])).backward()
    opt.step()
    sched.step()
    assert {g["lr"] for o in opt.optimizers for g in o.param_groups} == {0.05}
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    twin = make_optimizer(TrainConfig(optimizer="adamw", lr=0.1), head)
    twin.load_state_dict(torch.load(saved))
    torch.optim.lr_scheduler.LambdaLR(twin, lambda s: 0.25)  # after a load the scheduler still reaches the children
    assert {g["lr"] for o in twin.optimizers for g in o.param_groups} == {0.025}
    lazy = twin.optimizers[1].state[head.class_weight]
    assert lazy["step"].item() == 1  # targets 1, 2, 50, 99: 3 groups of 10 rows updated at step 1
    assert lazy["row_last"].sum().item() == 3 * 10 and lazy["row_last"].dtype == torch.float32


def test_learnability_cli_trains_every_named_head_and_writes_the_table(tmp_path):
    import pandas as pd

    from tools import learnability

    assert learnability.main(["--classes", "20", "--dim", "8", "--per-class", "30", "--epochs", "10", "--batch", "32",
                              "--lr", "0.05", "--heads", "softmax,sampled", "--num-sampled", "5", "--with-dense",
                              "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "learnability.csv").set_index("head")
    assert list(df.index) == ["softmax", "sampled", "sampled[dense]"]
    assert df.loc["softmax", "predict_acc"] > 0.8 and (df.steps == 10 * (600 // 32)).all()


def test_groups_of_equal_size_side_by_side_form_one_block():
    from heads.speed.grouped import segments_of
    # (first group, groups, size, first row): a balanced tree of 10 classes in 4 groups is 3,3,2,2
    assert segments_of(torch.tensor([3, 3, 2, 2])) == [(0, 2, 3, 0), (2, 2, 2, 6)]
    assert segments_of(torch.tensor([2, 5, 2])) == [(0, 1, 2, 0), (1, 1, 5, 2), (2, 1, 2, 7)]
    head = heads.create_head("hierarchical", 4, 10, tree="balanced", num_groups=4)
    assert head.segments == [(0, 2, 3, 0), (2, 2, 2, 6)]
