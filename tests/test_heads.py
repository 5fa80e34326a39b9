import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import heads
from heads.hierarchical import HierarchicalHead
from training.config import TrainConfig
from training.optim import make_optimizer


def _make(name, d, c, **hp):
    torch.manual_seed(0)
    hierarchy = np.arange(c) * 10 // c if name == "hierarchical" else None  # 10 groups
    if name == "sampled":
        hp.setdefault("num_sampled", min(32, c - 1))
    return heads.create_head(name, d, c, hierarchy=hierarchy, **hp)


@pytest.mark.parametrize("name", heads.list_heads())
@pytest.mark.parametrize("c", [10, 100, 1000])
def test_log_prob_normalised_and_gradients_reach_features(name, c):
    head = _make(name, 16, c)
    x = torch.randn(32, 16, requires_grad=True)
    y = torch.randint(0, c, (32,))
    head.train()
    head.loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    head.eval()
    with torch.no_grad():
        lp = head.log_prob(x)
    assert lp.shape == (32, c)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(32), atol=1e-5, rtol=0)
    assert head.predict(x).shape == (32,)


@pytest.mark.parametrize("name", heads.list_heads())
def test_no_nan_under_bf16_autocast(name):
    head = _make(name, 16, 100)
    x = torch.randn(32, 16, requires_grad=True)
    y = torch.randint(0, 100, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head.loss(x.bfloat16(), y)
        lp = head.log_prob(x.bfloat16())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(lp.float().exp().sum(1), torch.ones(32), atol=1e-3, rtol=0)


def test_hierarchical_log_prob_equals_brute_force_and_loss_equals_nll():
    c, groups = 12, [[0, 5, 7], [1, 2], [3, 4, 6, 8, 9, 10, 11]]  # unequal group sizes
    head = heads.create_head("hierarchical", 8, c, hierarchy=groups)
    x, y = torch.randn(6, 8), torch.tensor([0, 2, 11, 5, 4, 1])
    lp = head.log_prob(x)
    group_lp = F.log_softmax(head.group_fc(x), 1)
    logits = (x @ head.class_weight.t() + head.class_bias)[:, head.rank]  # rows are stored group by group
    for b in range(6):
        for gi, g in enumerate(groups):
            within = F.log_softmax(logits[b, g], 0)
            for j, cls in enumerate(g):
                assert lp[b, cls].item() == pytest.approx((group_lp[b, gi] + within[j]).item(), abs=1e-5)
    torch.testing.assert_close(head.loss(x, y), -lp[torch.arange(6), y].mean())


def test_hierarchical_greedy_and_exact_predict():
    head = heads.create_head("hierarchical", 8, 100, hierarchy=np.arange(100) // 5)
    x = torch.randn(64, 8)
    exact = head.predict(x, exact=True)
    assert torch.equal(exact, head.log_prob(x).argmax(1))
    greedy = head.predict(x)
    assert torch.equal(head.group_of[greedy], head.group_fc(x).argmax(1))  # greedy stays in the best group


def test_hierarchical_balanced_tree_without_dataset_hierarchy():
    head = heads.create_head("hierarchical", 8, 1000)
    assert len(head.groups) == 32 and sorted(c for g in head.groups for c in g) == list(range(1000))


@pytest.mark.parametrize("hierarchy,message", [
    ([[0, 1], [2]], r"missing \[3\]"),
    ([[0, 1], [1, 2, 3]], r"repeated \[1\]"),
    ([0, 0, 1], r"hierarchy maps 3 classes; num_classes=4"),
])
def test_hierarchy_that_misses_or_repeats_a_class(hierarchy, message):
    with pytest.raises(ValueError, match=message):
        heads.create_head("hierarchical", 8, 4, hierarchy=hierarchy)


def test_adaptive_matches_pytorch_module_with_copied_weights():
    torch.manual_seed(0)
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 100, [20, 60], div_value=2.0)
    head = heads.create_head("adaptive", 16, 100, cutoffs=[20, 60], div_value=2.0)
    head.asm.load_state_dict(ref.state_dict())
    x = torch.randn(16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 70])  # cluster 2 gets exactly one target
    torch.testing.assert_close(head.loss(x, y), ref(x, y).loss, rtol=0, atol=0)
    torch.testing.assert_close(head.log_prob(x), ref.log_prob(x), rtol=0, atol=0)
    assert torch.equal(head.predict(x), ref.predict(x))
    one = head.loss(x[15:], y[15:])  # a batch of a single tail target
    torch.testing.assert_close(one, ref(x[15:], y[15:]).loss)


def test_adaptive_orders_classes_by_frequency():
    counts = np.arange(10)  # class 9 most frequent
    head = heads.create_head("adaptive", 8, 10, cutoffs=[2], class_counts=counts)
    assert head.order.tolist() == list(range(9, -1, -1))
    x = torch.randn(4, 8)
    lp_internal = head.asm.log_prob(x)
    torch.testing.assert_close(head.log_prob(x)[:, 9], lp_internal[:, 0])  # class 9 sits in the head


def test_adaptive_breaks_frequency_ties_by_the_hierarchy():
    groups = np.array([1, 0, 1, 0, 2, 2, 0, 1, 2, 0])  # class -> group
    tied = heads.create_head("adaptive", 8, 10, cutoffs=[4], class_counts=[5] * 10, hierarchy=groups)
    assert tied.order.tolist() == [1, 3, 6, 9, 0, 2, 7, 4, 5, 8]  # group 0's classes form the head cluster
    assert tied.hparams()["ties"] == "hierarchy"
    # frequency still comes first: class 8 (count 6) leads, the rest tie
    counts = [5] * 8 + [6, 5]
    assert heads.create_head("adaptive", 8, 10, cutoffs=[4], class_counts=counts,
                             hierarchy=groups).order.tolist() == [8, 1, 3, 6, 9, 0, 2, 7, 4, 5]
    by_id = heads.create_head("adaptive", 8, 10, cutoffs=[4], class_counts=[5] * 10, hierarchy=groups, ties="id")
    assert by_id.order.tolist() == list(range(10))
    # a list of groups is read as the hierarchical head reads it
    as_lists = heads.create_head("adaptive", 8, 10, cutoffs=[4], hierarchy=[[1, 3, 6, 9], [0, 2, 7], [4, 5, 8]])
    assert as_lists.order.tolist() == [1, 3, 6, 9, 0, 2, 7, 4, 5, 8]
    with pytest.raises(ValueError, match=r"ties='size' is not one of \('hierarchy', 'id'\)"):
        heads.create_head("adaptive", 8, 10, ties="size")
    with pytest.raises(ValueError, match="hierarchy maps 3 classes; num_classes=10"):
        heads.create_head("adaptive", 8, 10, hierarchy=[0, 1, 2])


@pytest.mark.parametrize("cutoffs,message", [
    ([60, 20], r"cutoffs=\[60, 20\] must be a non-empty list of strictly increasing integers"),
    ([20, 20], r"strictly increasing"),
    ([20, 100], r"cutoffs=\[20, 100\] must satisfy 0 < c < num_classes=100"),
    ([0, 50], r"0 < c < num_classes"),
    ([10.5], r"integers"),
])
def test_adaptive_cutoffs_validated(cutoffs, message):
    with pytest.raises(ValueError, match=message):
        heads.create_head("adaptive", 8, 100, cutoffs=cutoffs)


def test_sampled_loss_approaches_full_softmax_as_k_grows():
    torch.manual_seed(0)
    c = 100
    head = heads.create_head("sampled", 16, c, num_sampled=10, batch_negatives=False)  # the plain k-sample loss
    x, y = torch.randn(64, 16) * 3, torch.randint(0, c, (64,))
    full = F.cross_entropy(head.fc(x), y).item()
    errors = {}
    for k in (5, 30, c - 1):
        head.num_sampled = k
        head.train()
        errors[k] = abs(np.mean([head.loss(x, y).item() for _ in range(200)]) - full)
    assert errors[5] > errors[30] > errors[c - 1]
    assert errors[c - 1] < 0.03 * full, errors
    head.eval()
    assert head.loss(x, y).item() == pytest.approx(full)  # eval is the full softmax


def test_sampled_removes_accidental_hits():
    head = heads.create_head("sampled", 4, 3, num_sampled=2, batch_negatives=False)
    head.sample = lambda device: torch.tensor([1, 1])  # every sample equals the target
    x = torch.randn(5, 4)
    assert head.loss(x, torch.full((5,), 1)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dense", [False, True])
def test_sampled_with_batch_negatives_is_the_written_loss_on_a_hand_built_case(dense):
    torch.manual_seed(0)
    c, k, d = 10, 3, 4
    head = heads.create_head("sampled", d, c, num_sampled=k, batch_negatives=True, dense=dense)
    head.sample = lambda device: torch.tensor([2, 7, 2])  # 2 is also a target: an accidental hit for it
    x, y = torch.randn(4, d), torch.tensor([2, 5, 5, 9])  # 5 twice: each copy is not the other's negative
    candidates = torch.cat([y, torch.tensor([2, 7, 2])])
    correction = math.log(k / c + len(y) / c)  # expected count of a class among the candidates, uniform Q
    expected = []
    for i in range(len(y)):
        keep = [j for j in range(len(candidates)) if j == i or candidates[j] != y[i]]
        logits = torch.stack([x[i] @ head.fc.weight[candidates[j]] + head.fc.bias[candidates[j]] - correction
                              for j in keep])
        expected.append(-torch.log_softmax(logits, 0)[keep.index(i)])
    assert head.loss(x, y).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert len([j for j in range(7) if j == 1 or candidates[j] != 5]) == 6  # example 1 drops the other 5 only


def test_sampled_batch_negatives_give_row_sparse_gradients_of_the_batch_and_sample_rows():
    head = heads.create_head("sampled", 4, 50, num_sampled=3, batch_negatives=True)
    head.sample = lambda device: torch.tensor([40, 41, 42])
    head.loss(torch.randn(4, 4), torch.tensor([1, 2, 2, 3])).backward()
    grad = head.fc.weight.grad.coalesce()
    assert grad.is_sparse and grad.indices()[0].tolist() == [1, 2, 3, 40, 41, 42]


def test_gumbel_hard_one_hot_soft_sharpens_with_low_tau():
    head = heads.create_head("gumbel", 8, 50)
    x = torch.randn(64, 8)
    hard = head.sample(x, hard=True)
    assert torch.equal(hard.detach().sum(1), torch.ones(64)) and set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    peaks = [head.sample(x, tau=tau, hard=False).max(1).values.mean().item() for tau in (5.0, 1.0, 0.01)]
    assert peaks[0] < peaks[1] < peaks[2] and peaks[2] > 0.99


def test_gumbel_tau_anneals_per_step_to_floor():
    head = heads.create_head("gumbel", 8, 10, tau=2.0, anneal_rate=0.5, tau_min=0.3)
    x, y = torch.randn(4, 8), torch.randint(0, 10, (4,))
    head.train()
    for _ in range(3):
        head.loss(x, y)
    assert head.current_tau().item() == pytest.approx(2.0 * math.exp(-1.5), rel=1e-5)
    for _ in range(10):
        head.loss(x, y)
    assert head.current_tau().item() == pytest.approx(0.3)
    head.eval()  # evaluation: softmax without noise, deterministic
    assert head.loss(x, y).item() == head.loss(x, y).item()


@pytest.mark.parametrize("name", heads.list_heads())
def test_every_head_trains_a_linear_classifier_on_separable_data(name):
    torch.manual_seed(0)
    c, d = 20, 16
    centers = torch.randn(c, d) * 4
    y = torch.randint(0, c, (2000,))
    x = centers[y] + torch.randn(2000, d)
    # At d=16 the default div_value=4 leaves the second tail a 1-dim projection; 2 keeps it rank 4.
    hp = {"sampled": {"num_sampled": 5}, "adaptive": {"div_value": 2.0}}.get(name, {})
    head = _make(name, d, c, **hp)
    opt = make_optimizer(TrainConfig(optimizer="adam", lr=0.05, weight_decay=0.0), head)  # lazy rows where sparse
    head.train()
    for _ in range(300):
        idx = torch.randint(0, 2000, (128,))
        loss = head.loss(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        assert (head.predict(x) == y).float().mean() > 0.95
        assert (head.log_prob(x).argmax(1) == y).float().mean() > 0.95


@pytest.mark.parametrize("name,hp,message", [
    ("gumbel", {"tau": 0.0}, r"tau=0.0 and tau_min=0.1 must be > 0"),
    ("gumbel", {"tau": -1.0}, r"tau=-1.0"),
    ("sampled", {"num_sampled": 100}, r"num_sampled \(k\)=100 must be in \[1, num_classes=100\)"),
    ("sampled", {"proposal": "zipf"}, r"proposal='zipf' is not one of"),
    ("adaptive", {"div_value": 0}, r"div_value=0 must be > 0"),
    ("adaptive", {"label_smoothing": 0.1}, r"label_smoothing=0.1: head AdaptiveHead supports only 0"),
    ("hierarchical", {"tree": "deep"}, r"tree='deep' is not one of"),
    ("softmax", {"tau": 1.0}, r"unknown option\(s\) \['tau'\] for head 'softmax'"),
])
def test_bad_head_options_name_the_value(name, hp, message):
    with pytest.raises(ValueError, match=message):
        heads.create_head(name, 8, 100, **hp)


def test_complexity_formulas():
    d = 512
    assert heads.head_complexity("softmax", d, 1000)["train_madds"] == d * 1000
    hier = heads.head_complexity("hierarchical", d, 10000)  # balanced: 100 groups of 100
    assert hier["train_madds"] == d * (100 + 100) and hier["log_prob_madds"] == d * (100 + 10000)
    assert heads.head_complexity("sampled", d, 1000, num_sampled=63, batch_negatives=False)["train_madds"] == d * 64
    assert heads.head_complexity("sampled", d, 1000, num_sampled=64, batch=256)["train_madds"] == d * (64 + 256)
    ada = heads.head_complexity("adaptive", d, 100, cutoffs=[20, 60], div_value=4.0)
    head_cost = d * (20 + 2)
    tails = [(0.4, d * 128 + 128 * 40), (0.4, d * 32 + 32 * 40)]
    assert ada["log_prob_madds"] == head_cost + sum(cost for _, cost in tails)
    assert ada["train_madds"] == pytest.approx(head_cost + sum(s * cost for s, cost in tails))
    assert HierarchicalHead(8, 100, hierarchy=np.arange(100) // 5).cost()["train_madds"] == 8 * (20 + 5)


def test_fastest_group_count_lies_between_the_multiply_add_and_the_memory_optimum():
    from heads.hierarchical import fastest_num_groups

    # compute-bound (bytes free): sqrt(C), the multiply-add optimum, up to the search grid's 7% steps
    assert fastest_num_groups(10000, 512, 256, madds_per_byte=1e-6) == pytest.approx(100, rel=0.07)
    # memory-bound (multiply-adds free): about sqrt(B*C), the fewest rows touched (1600 for B=256)
    assert fastest_num_groups(10000, 512, 256, madds_per_byte=1e6) == pytest.approx(1600, rel=0.1)
    # the dev machine's ratio: the K the README's measurements found fastest at 1e5 and 1e6
    fast = [fastest_num_groups(c, 512, 256) for c in (10 ** 5, 10 ** 6)]
    assert fast == [2196, 7233]
    cost = lambda k: heads.head_complexity("hierarchical", 512, 10 ** 5, tree="balanced", num_groups=k)  # noqa: E731
    assert cost(316)["train_bytes"] > 3 * cost(fast[0])["train_bytes"]


def test_bench_writes_csv_plot_and_ratios(tmp_path, capsys):
    from tools import heads_bench as bench
    from heads.speed import kernels

    import pandas as pd

    assert bench.main(["--classes", "10,50", "--dim", "8", "--batch", "4", "--min-time", "0.01", "--repeats", "2",
                       "--num-sampled", "5", "--with-dense", "--out", str(tmp_path)]) == 0
    on_kernels = kernels.compiled() is not None
    timed = "the CPU kernels of heads/speed/kernels.cpp" if on_kernels else "batched matmuls"
    assert f"\nhierarchical: {timed}" in capsys.readouterr().out  # which implementation the run timed
    assert (tmp_path / "heads_bench.csv").stat().st_size > 0 and (tmp_path / "heads_bench.png").stat().st_size > 0
    df = pd.read_csv(tmp_path / "heads_bench.csv")
    # + k only, fast K, 2 dense, and the batched matmuls beside the kernels
    assert sorted(df.family.unique()) == heads.list_heads() and len(df) == 2 * (9 + on_kernels)
    assert {"sampled[k only]", "sampled[dense]", "hierarchical[dense]", "hierarchical[fast K]"} <= set(df["head"])
    assert ("hierarchical[matmuls]" in set(df["head"])) == on_kernels
    plain = df[(df["head"] == "sampled[k only]") & (df.classes == 50)].iloc[0]
    assert plain.train_madds == 8 * (5 + 1)  # --num-sampled 5: the k-sample loss, d*(k+1)
    assert (df.train_ms_min <= df.train_ms).all() and (df.train_ms <= df.train_ms_max).all()
    soft = df[df["head"] == "softmax"]
    assert (soft.train_speedup == 1.0).all() and (soft.train_speedup_madds == 1.0).all()
    assert (soft.train_speedup_roofline == 1.0).all()
    hier = df[(df["head"] == "hierarchical") & (df.classes == 50)].iloc[0]
    assert hier.train_speedup_madds == pytest.approx(50 / (7 + 50 / 7), rel=0.05)


def test_bench_reruns_itself_with_the_cpu_settings_it_lacks(monkeypatch):
    from tools import _heads_bench as bench

    calls = []
    monkeypatch.setattr(bench.os, "execv", lambda exe, argv: calls.append(argv))
    for key in bench.CPU_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")  # the user's own setting is kept
    bench.passive_openmp(["--classes", "10"], "cpu")  # called with argv (a test, a notebook): never replaced
    bench.passive_openmp(None, "cuda")
    assert calls == []
    bench.passive_openmp(None, "cpu")
    assert len(calls) == 1 and calls[0][1:3] == ["-m", "tools.heads_bench"]
    assert bench.cpu_settings() == ("OMP_WAIT_POLICY=PASSIVE, MALLOC_MMAP_MAX_=65536, "
                                    "MALLOC_TRIM_THRESHOLD_=1099511627776")
    bench.passive_openmp(None, "cpu")  # everything set now: no second re-run
    assert len(calls) == 1
