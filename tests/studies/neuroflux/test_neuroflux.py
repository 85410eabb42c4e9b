"""NeuroFlux (bench.studies.neuroflux, methods neuroflux and backprop): units, adaptive heads, profiler,
partitioner, activation cache, early exit, and tiny cells end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.data import DeviceLoader
from bench.errors import BudgetError
from bench.measure import MIB
from bench.methods import METHODS
from bench.models import build_model
from bench.studies.neuroflux import early_exit, partition, profiler, split, worker
from bench.train import build_run, run_cell
from tests.conftest import tiny_cell

CPU = torch.device("cpu")


def _model(name: str, width: float, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, classes, 3, {"width": width})


# ----------------------------------------------------------------------------- units and heads


@pytest.mark.parametrize("name,width,n_units", [("vgg16", 0.125, 13), ("vgg19", 0.125, 16),
                                                ("resnet18_cifar", 0.125, 9)])
def test_units_chain_to_the_model(name, width, n_units):
    model = _model(name, width).eval()
    named = split.split_named_units(model)
    assert len(named) == n_units
    units = [u for _, u in named]
    # units share the model's parameters (training a unit trains the model)
    unit_params = {id(p) for u in units for p in u.parameters()}
    head_params = {id(p) for p in split.final_head(model).parameters()}
    assert unit_params | head_params == {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = x
        for u in units:
            h = u(h)
        assert torch.equal(split.final_head(model)(h), model(x))
        assert torch.equal(h, (model.features if name.startswith("vgg") else
                               nn.Sequential(*list(model.children())[:5]))(x))


def test_vgg_units_take_the_following_max_pool():
    named = split.split_named_units(_model("vgg16", 0.125))
    assert [n for n, _ in named][:3] == ["features.0", "features.3", "features.7"]
    kinds = [type(m).__name__ for m in named[1][1]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in named[0][1]] == ["Conv2d", "BatchNorm2d", "ReLU"]
    names = [n for n, _ in split.split_named_units(_model("resnet18_cifar", 0.125))]
    assert names == ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                     "layer3.1", "layer4.0", "layer4.1"]


def test_unsupported_model_cannot_be_split_and_is_skipped():
    with pytest.raises(Exception, match="cannot cut"):
        split.split_units(_model("mobilenetv2", 0.25))
    method = METHODS.get("neuroflux")({})
    ok, why = method.supports({"model": "mobilenetv2", "budget": "64MiB"})
    assert not ok and "mobilenetv2" in why
    ok, why = method.supports({"model": "vgg16", "budget": "none"})
    assert not ok and "budget" in why
    assert method.supports({"model": "vgg16", "budget": "64MiB"}) == (True, "")
    assert METHODS.get("backprop")({}).supports({"model": "vgg16", "budget": "none"})[0]


@pytest.mark.parametrize("c,h,w,expected", [
    (512, 32, 32, 8),     # 8192 / 1024 = 8
    (512, 16, 16, 32),    # 8192 / 256
    (512, 8, 8, 128),
    (512, 4, 4, 512),     # 8192 / 16 = 512
    (256, 4, 4, 256),     # clipped to C
    (512, 2, 2, 512),     # 2048 clipped to C
    (64, 64, 64, 8),      # 2 -> at least 8
    (4, 32, 32, 4),       # C < 8: F = C
])
def test_head_filter_rule(c, h, w, expected):
    assert split.head_filters(c, h, w) == expected


def test_heads_for_vgg16_are_adaptive():
    model = _model("vgg16", 0.25)
    units = split.split_units(model)
    heads = split.build_heads(model, units, (3, 32, 32), 10)
    assert len(heads) == 13
    # VGG-16 at 32x32, width 0.25: unit outputs 16@32, 16@16 (pool), 32@16, 32@8, 64@8, 64@8,
    # 64@4, 128@4, 128@4, 128@2, 128@2, 128@1; F = clip(8192 // (H*W), 8, C)
    filters = [h.filters for h in heads[:-1]]
    assert filters == [8, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128]
    h0 = heads[0]
    assert h0.conv.in_channels == 16 and h0.conv.out_channels == 8
    assert h0.fc.in_features == 4 * 8 and h0.fc.out_features == 10
    assert heads[-1][1] is model.fc  # the last unit's head is the model's own classifier
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for u, head in zip(units, heads):
            x = u(x)
            assert head(x).shape == (2, 10)


# ----------------------------------------------------------------------------- profiler


def test_fit_linear_recovers_a_line_and_r2():
    a, c, r2 = profiler.fit_linear([(8, 180.0), (16, 260.0), (32, 420.0), (64, 740.0)])
    assert a == pytest.approx(10.0) and c == pytest.approx(100.0) and r2 == pytest.approx(1.0)
    *_, r2_bad = profiler.fit_linear([(8, 100.0), (16, 900.0), (32, 100.0), (64, 900.0)])
    assert r2_bad < 0.5


def test_profiler_on_cpu_is_linear_and_counts_activations():
    torch.manual_seed(0)
    unit = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    head = nn.Sequential(nn.Flatten(1), nn.Linear(4 * 8 * 8, 3))
    before = {k: v.clone() for k, v in unit.state_dict().items()}
    rng = torch.get_rng_state()
    (p,) = profiler.profile_units([unit], [head], [(2, 8, 8)], 3, CPU, [8, 16, 32, 64])
    assert p.r2 >= 0.99
    assert [b for b, _ in p.points] == [8, 16, 32, 64]
    for b, m in p.points:
        assert p.memory(b) == pytest.approx(m, rel=1e-6)
    # per sample at least the input (2x8x8) and conv output (4x8x8) in fp32, at most ~4x that
    lower = (2 * 64 + 4 * 64) * 4
    assert lower <= p.a_bytes_per_sample <= 4 * lower
    # the constant holds params + grads + momentum of unit and head
    n_params = sum(q.numel() for q in [*unit.parameters(), *head.parameters()])
    assert p.c_bytes >= 3 * 4 * n_params * 0.99
    # profiling does not touch the module or the RNG stream
    assert all(torch.equal(v, before[k]) for k, v in unit.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------------------- partitioner


def _profiles(pairs, times=None):
    return [profiler.UnitProfile(float(a), float(c), 1.0, times=list(t) if t else [])
            for (a, c), t in zip(pairs, times or [None] * len(pairs))]


def _blocks(blocks):
    return [(b.units, b.batch) for b in blocks]


def test_partition_first_unit_rule():
    # budget 1000 B, no slack, batches 1..512:
    # [u1] a=1 -> b* 512 (cap); +u2 a=2 -> 256 >= 512/2: join; +u3 a=6 -> 128 < 256: new block;
    # [u3] a=4 -> b* 128; +u4 a=24 -> 32 < 64: new block; [u4] a=20 -> b* 32;
    # +u5 a=21, c=100 -> 32 >= 16: join
    profiles = _profiles([(1, 0), (1, 0), (4, 0), (20, 0), (1, 100)])
    blocks = partition.partition(profiles, 1000, slack=0.0, min_batch=1, max_batch=512)
    assert _blocks(blocks) == [([0, 1], 256), ([2], 128), ([3, 4], 32)]
    assert blocks[0].memory_bytes == pytest.approx(2 * 256)
    assert blocks[2].memory_bytes == pytest.approx(21 * 32 + 100)
    assert partition.unit_batches(profiles, 1000, slack=0.0, min_batch=1, max_batch=512) == [
        512, 512, 128, 32, 512]


def test_first_unit_rule_does_not_let_the_batch_halve_again_and_again():
    # each unit alone fits at 512, but every unit added halves the block's batch: comparing
    # with the block's current batch (the first implementation) made one block at batch 16;
    # the first-unit rule keeps every block within half of its first unit's b*
    profiles = _profiles([(1, 0)] * 6)
    blocks = partition.partition(profiles, 512, slack=0.0, min_batch=1, max_batch=512)
    assert _blocks(blocks) == [([0, 1], 256), ([2, 3], 256), ([4, 5], 256)]
    bstar = partition.unit_batches(profiles, 512, slack=0.0, min_batch=1, max_batch=512)
    for b in blocks:
        assert b.batch >= bstar[b.units[0]] / 2


def test_partition_memory_halving_every_two_units():
    # activation memory per sample halves every two units (as when a CNN pools every two
    # convs): >= 3 blocks, batches non-decreasing, each at least half its first unit's b*
    a = [8, 8, 4, 4, 2, 2, 1, 1, 0.5, 0.5]
    budget = 64 * MIB
    per_sample = budget * 0.95 / 130 / 8  # unit 1 alone: b* = 128 (130 samples fit)
    profiles = _profiles([(x * per_sample, 0.0) for x in a])
    blocks = partition.partition(profiles, budget)
    batches = [b.batch for b in blocks]
    assert len(blocks) >= 3, _blocks(blocks)
    assert _blocks(blocks) == [([0, 1], 64), ([2, 3], 128), ([4, 5], 256), ([6, 7], 512),
                               ([8, 9], 1024)]
    assert batches == sorted(batches) and batches[-1] > batches[0]
    assert [i for b in blocks for i in b.units] == list(range(len(a)))
    bstar = partition.unit_batches(profiles, budget)
    for b in blocks:
        assert b.batch >= bstar[b.units[0]] / 2
        assert b.memory_bytes <= budget * 0.95
        assert b.batch <= partition.MAX_BATCH


def test_partition_flat_profile_gives_one_block():
    # the same small memory for every unit: the whole network fits within half the cap's
    # batch of its first unit, so nothing is gained by cutting it
    profiles = _profiles([(1000, 10_000)] * 8)
    blocks = partition.partition(profiles, 8 * (1000 * 600 + 10_000) / 0.95)
    assert _blocks(blocks) == [(list(range(8)), 512)]
    assert partition.unit_batches(profiles, 8 * (1000 * 600 + 10_000) / 0.95)[0] == 1024


def test_partition_cap_and_slack():
    tiny = _profiles([(0.01, 1), (0.01, 1), (0.01, 1)])
    assert _blocks(partition.partition(tiny, 10**6)) == [([0, 1, 2], 1024)]
    assert partition.partition(tiny, 10**6, max_batch=64)[0].batch == 64
    # a = 1.9: 512 * 1.9 = 972.8 fits 1000 without slack but not 950 with 5% slack
    one = _profiles([(1.9, 0)])
    assert partition.partition(one, 1000, slack=0.0)[0].batch == 512
    assert partition.partition(one, 1000)[0].batch == 256
    assert partition.largest_batch(1.9, 0, 1000) == 256
    for b in partition.partition(_profiles([(3, 7), (5, 11), (40, 3)]), 2000, min_batch=1):
        assert b.memory_bytes <= 2000 * 0.95
    with pytest.raises(Exception, match="partition must be one of"):
        partition.partition(one, 1000, rule="fastest")


def _timed_profiles(seed, n_units=7):
    import random

    rng = random.Random(seed)
    pairs, times = [], []
    for _ in range(n_units):
        pairs.append((rng.uniform(0.2, 2.0) * MIB / 64, rng.uniform(0.1, 1.0) * MIB))
        alpha, beta = rng.uniform(1e-4, 1e-3), rng.uniform(1e-3, 2e-2)
        times.append([(8, alpha * 8 + beta), (64, alpha * 64 + beta)])
    profiles = _profiles(pairs, times)
    for p in profiles:
        p.in_bytes_per_sample = rng.uniform(1e3, 1e5)
    return profiles


@pytest.mark.parametrize("seed", range(5))
def test_optimal_partition_minimises_the_modelled_epoch_time(seed):
    import itertools

    profiles = _timed_profiles(seed)
    budget, n, read = 16 * MIB, 5000, 2e-8
    kw = dict(n_samples=n, read_s_per_byte=read, min_batch=1)
    best = partition.partition(profiles, budget, rule="optimal", **kw)
    cost = partition.modelled_epoch_s(profiles, best, n, read)
    m = partition._Model(profiles, budget, 0.05, partition.MAX_BATCH, 1)
    L = len(profiles)
    brute = float("inf")
    for cuts in itertools.product([0, 1], repeat=L - 1):  # every contiguous partition
        edges = [0, *[i + 1 for i, c in enumerate(cuts) if c], L]
        blocks = [m.block(list(range(a, b))) for a, b in zip(edges, edges[1:])]
        brute = min(brute, partition.modelled_epoch_s(profiles, blocks, n, read))
    assert cost == pytest.approx(brute, rel=1e-12)
    greedy = partition.partition(profiles, budget, **kw)
    assert cost <= partition.modelled_epoch_s(profiles, greedy, n, read) + 1e-12
    assert [i for b in best for i in b.units] == list(range(L))


def test_optimal_partition_weighs_cache_reads_against_batch():
    # two units whose step time has a large fixed part (beta): free cache reads make every
    # unit its own block (the batch never drops when a block is split); costly reads merge them
    times = [(8, 0.01 + 8e-5), (64, 0.01 + 64e-5)]
    profiles = _profiles([(MIB / 256, 0.0), (MIB / 256, 0.0)], [times, times])
    for p in profiles:
        p.in_bytes_per_sample = 3 * 1024 * 2
    kw = dict(rule="optimal", n_samples=1000, min_batch=1)
    budget = 4.01 * MIB / 0.95  # one unit alone fits at 1024, both at 512
    assert _blocks(partition.partition(profiles, budget, read_s_per_byte=0.0,
                                       **kw)) == [([0], 1024), ([1], 1024)]
    assert _blocks(partition.partition(profiles, budget, read_s_per_byte=1e-6,
                                       **kw)) == [([0, 1], 512)]
    with pytest.raises(Exception, match="step times"):
        partition.partition(_profiles([(1, 0)]), 1000, rule="optimal")


def test_profile_step_time_fit():
    p = profiler.UnitProfile(1.0, 0.0, 1.0, times=[(8, 0.018), (16, 0.026), (32, 0.042)])
    assert p.step_s(64) == pytest.approx(0.074)
    assert profiler.UnitProfile.from_dict(p.to_dict()) == p
    # noise that makes the slope negative: proportional at the fastest time per sample
    noisy = profiler.UnitProfile(1.0, 0.0, 1.0, times=[(8, 0.05), (16, 0.04)])
    assert noisy.step_s(32) == pytest.approx(0.04 / 16 * 32)
    # a negative intercept: through the origin
    steep = profiler.UnitProfile(1.0, 0.0, 1.0, times=[(8, 0.01), (16, 0.03)])
    assert steep.step_s(16) > 0 and steep.step_s(8) > 0


def test_partition_budget_error_names_the_unit():
    profiles = [profiler.UnitProfile(0.01 * MIB, 0.1 * MIB, 1.0), profiler.UnitProfile(1 * MIB, 5 * MIB, 1.0)]
    with pytest.raises(BudgetError) as err:
        partition.partition(profiles, 10 * MIB, names=["stem", "layer1.0"])
    msg = str(err.value)
    assert "unit 2 (layer1.0)" in msg and "13.00 MiB" in msg and "10.0 MiB" in msg
    assert "batch 8" in msg
    # with a smaller minimum batch it fits: 4 * 1 + 5 = 9 <= 9.5 MiB
    blocks = partition.partition(profiles, 10 * MIB, min_batch=1, names=["stem", "layer1.0"])
    assert [(b.units, b.batch) for b in blocks] == [([0], 512), ([1], 4)]


# ----------------------------------------------------------------------------- activation cache


@pytest.mark.parametrize("storage", ["host", "disk"])
def test_cached_inputs_equal_the_outputs_of_earlier_blocks(storage, tmp_path):
    torch.manual_seed(0)
    model = _model("resnet18_cifar", 0.125, classes=4)
    units = split.split_units(model)
    # some training-mode steps so that BN running statistics are not the identity
    with torch.no_grad():
        for _ in range(3):
            model.train()(torch.randn(16, 3, 16, 16))
    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 4, (40,))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    src: worker.Source = worker.ImageSource(x, y, mean, std, augment=True)  # no augmentation in caching
    blocks = [[0, 1], [2, 3, 4], [5, 6, 7, 8]]
    shapes = split.unit_output_shapes(units, (3, 16, 16))
    caches = []
    for k, block in enumerate(blocks[:-1]):
        path = tmp_path / f"b{k}.f16" if storage == "disk" else None
        cache = worker.ActivationCache(40, shapes[block[-1]], path)
        assert cache.storage == storage
        worker.run_block([units[i] for i in block], None, src, 16, CPU, cache=cache)
        caches.append(cache)
        src = worker.CacheSource(cache, y, CPU)
    model.eval()
    direct = DeviceLoader(x, y, 40, mean=mean, std=std, shuffle=False, augment=False)
    inputs, _ = next(iter(direct))
    with torch.no_grad():
        h = inputs
        for k, block in enumerate(blocks[:-1]):
            for i in block:
                h = units[i](h)
            cached = caches[k].data.float()
            assert cached.shape == h.shape
            scale = h.abs().max().item()
            assert torch.allclose(cached, h, rtol=1e-2, atol=1e-2 * scale), k
    if storage == "disk":
        assert (tmp_path / "b0.f16").stat().st_size == caches[0].nbytes
    # the next block reads exactly the cache (shuffled batches carry matching labels)
    gen = torch.Generator().manual_seed(1)
    seen = 0
    for xb, yb in worker.CacheSource(caches[-1], y, CPU, gen).batches(16, shuffle=True):
        for row, label in zip(xb, yb):
            match = (caches[-1].data.float() == row).flatten(1).all(1).nonzero().flatten()
            assert y[match].eq(label).any()
        seen += xb.shape[0]
    assert seen == 40
    for c in caches:
        c.close()
    assert not list(tmp_path.glob("*.f16"))


# ----------------------------------------------------------------------------- early exit


def test_exit_is_the_shallowest_head_within_tolerance():
    assert early_exit.select_exit([0.5, 0.70, 0.704, 0.71, 0.708]) == 3  # 0.704 < 0.71 - 0.005
    assert early_exit.select_exit([0.5, 0.706, 0.71, 0.70]) == 1
    assert early_exit.select_exit([0.5, 0.705, 0.71]) == 1  # exactly at the tolerance
    assert early_exit.select_exit([0.3, 0.6, 0.6], tolerance=0.0) == 1
    assert early_exit.select_exit([0.9, 0.2]) == 0
    assert early_exit.select_exit([0.2, 0.5, 0.9], tolerance=0.5) == 1


def test_exit_model_params_and_throughput():
    model = _model("resnet18_cifar", 0.125)
    units = split.split_units(model)
    heads = split.build_heads(model, units, (3, 16, 16), 10)
    exit_model = early_exit.ExitModel(units[:3], heads[2])
    n = early_exit.count_params(exit_model)
    assert n == sum(early_exit.count_params(m) for m in [*units[:3], heads[2]])
    assert early_exit.count_params(model) / n > 1
    assert early_exit.measure_throughput(exit_model, (3, 16, 16), CPU, batch=4, warmup=1, iters=2) > 0


# ----------------------------------------------------------------------------- cells


def _study(budget: str, **nf_opts):
    return {"methods": ["backprop", "neuroflux"], "reference": "backprop", "budgets": [budget],
            "method_options": {
                "neuroflux": {"profile_batches": [8, 16, 32], "throughput_batch": 8,
                              "throughput_warmup": 1, "throughput_iters": 2, **nf_opts},
                "backprop": {"profile_batches": [8, 16, 32]}}}


def test_tiny_neuroflux_cell_stays_within_its_budget(tmp_path):
    cfg = tiny_cell(tmp_path, method="neuroflux", **_study("2MiB", cache_host_limit_mib=0))
    out = tmp_path / "result.json"
    result = run_cell(cfg, out, tracker=None)
    assert result["status"] == "ok", result["reason"]
    final = result["final"]
    n_blocks = final["n_blocks"]
    assert n_blocks >= 2  # a small budget splits the network
    hist = result["history"]
    assert len(hist) == n_blocks * cfg["epochs"]
    assert [h["epoch"] for h in hist] == list(range(len(hist)))
    assert [h["phase"] for h in hist][:2] == ["block1", "block1"]
    for h in hist:
        assert 0 < h["modelled_peak_mib"] <= 2.0
        assert h["augment"] == (h["block"] == 1)
        assert 0.0 <= h["val_acc"] <= 1.0
    batches = [int(b) for b in final["block_batch_sizes"].split(",")]
    assert len(batches) == n_blocks and [h["batch_size"] for h in hist[::2]] == batches
    assert len(final["block_memory_mib"].split(",")) == n_blocks
    for key in ("exit_unit", "exit_val_acc", "exit_params", "full_params", "param_reduction",
                "inference_throughput_gain", "profiling_s", "cache_s", "train_s",
                "train_wall_s", "method_wall_s"):
        assert final[key] is not None, key
    assert final["cache_storage"] == ",".join(["disk"] * (n_blocks - 1))
    bstar = [int(b) for b in final["unit_bstar"].split(",")]
    assert batches[0] >= bstar[0] / 2 and final["first_block_bstar"] == bstar[0]
    assert final["modelled_epoch_s_optimal"] <= final["modelled_epoch_s_greedy"] + 1e-12
    held = [final[f"head_holdout_acc_u{i}"] for i in range(1, 10)]
    assert final["exit_unit"] == early_exit.select_exit(held) + 1  # chosen on held-out images
    assert all(0.0 <= final[f"head_acc_u{i}"] <= 1.0 for i in range(1, 10))
    assert final["exit_selection_split"] == "holdout"
    assert final["holdout_images"] == 13 and final["train_images"] == 128 - 13
    assert final["val_acc"] == final["exit_val_acc"]
    assert final["param_reduction"] == pytest.approx(final["full_params"] / final["exit_params"])
    assert final["epochs"] == cfg["epochs"]
    assert result["memory"]["modelled_peak_mib"] <= 2.0
    assert not list(tmp_path.glob(".neuroflux_cache_*")), "cache files left behind"
    assert json.loads(out.read_text())["status"] == "ok"


def test_tiny_neuroflux_cell_with_the_optimal_partition(tmp_path):
    cfg = tiny_cell(tmp_path, method="neuroflux", epochs=1, **_study("2MiB", partition="optimal"))
    result = run_cell(cfg, tmp_path / "result.json", tracker=None)
    assert result["status"] == "ok", result["reason"]
    f = result["final"]
    assert f["partition"] == "optimal"
    units = [tuple(map(int, u.split("-"))) for u in f["block_units"].split(",")]
    assert units[0][0] == 1 and units[-1][1] == f["n_units"]
    assert all(b[0] == a[1] + 1 for a, b in zip(units, units[1:]))  # contiguous
    assert f["modelled_epoch_s_optimal"] <= f["modelled_epoch_s_greedy"] + 1e-12
    assert len(result["history"]) == f["n_blocks"]


def test_tiny_neuroflux_budget_too_small_names_the_unit(tmp_path):
    cfg = tiny_cell(tmp_path, method="neuroflux", **_study("1MiB"))
    with pytest.raises(BudgetError, match=r"unit \d+ \((stem|layer\d\.\d)\)"):
        run_cell(cfg, tmp_path / "result.json", tracker=None)


def _backprop_run(tmp_path: Path, budget: str):
    cfg = tiny_cell(tmp_path / budget, method="backprop", **_study(budget))
    run = build_run(cfg, tmp_path / budget, CPU)
    run.method.setup(run)
    return run


def test_backprop_picks_a_bigger_batch_for_a_bigger_budget(tmp_path):
    small, big = _backprop_run(tmp_path, "8MiB"), _backprop_run(tmp_path, "64MiB")
    assert small.method.batch < big.method.batch
    for run, mib in ((small, 8), (big, 64)):
        assert run.train_loader.batch_size == run.method.batch
        assert run.train_loader.generator is run.generator
        assert run.method.scale == run.method.batch / run.cfg["train"]["batch_size"]
        assert run.method.profile.memory(run.method.batch) <= mib * MIB * 0.95
        assert run.method.profile.memory(2 * run.method.batch) > mib * MIB * 0.95
    none = tiny_cell(tmp_path / "none", method="backprop", methods=["backprop"],
                     reference="backprop")
    run = build_run(none, tmp_path / "none", CPU)
    run.method.setup(run)
    assert run.method.batch == none["train"]["batch_size"] and run.method.scale == 1.0


def test_backprop_cell_records_batch_and_wall_time(tmp_path):
    cfg = tiny_cell(tmp_path, method="backprop", **_study("8MiB"))
    result = run_cell(cfg, tmp_path / "result.json", tracker=None)
    assert result["status"] == "ok", result["reason"]
    final = result["final"]
    assert final["batch_size"] == 32 and final["train_wall_s"] > 0
    assert final["profile_r2"] >= 0.99
    lr = cfg["train"]["lr"] * final["batch_size"] / cfg["train"]["batch_size"]
    assert result["history"][-1]["lr"] == pytest.approx(lr)
    for h in result["history"]:
        assert h["modelled_peak_mib"] <= 8.0


def test_neuroflux_restarts_cleanly_after_a_partial_checkpoint(tmp_path):
    cfg = tiny_cell(tmp_path, method="neuroflux", **_study("256MiB"))
    run = build_run(cfg, tmp_path, CPU)
    run.method.setup(run)
    init = {k: v.clone() for k, v in run.model.state_dict().items()}
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(1.0)
    run.history, run.epoch = [{"epoch": 0, "phase": "block1"}], 1
    run.timing["train_s"] = 5.0
    run.method._clean_start(run)
    assert run.epoch == 0 and run.history == [] and run.timing["train_s"] == 0.0
    assert all(torch.equal(v, init[k]) for k, v in run.model.state_dict().items())


# ----------------------------------------------------------------------------- the exit is chosen on
# held-out training images, never on the split that reports it


def test_holdout_is_a_fixed_disjoint_tenth_of_the_train_split():
    train, held = split.holdout_indices(1437, 0.1, seed=7)
    assert len(held) == 144 and len(train) == 1437 - 144
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(1437))
    again, held_again = split.holdout_indices(1437, 0.1, seed=7)
    assert torch.equal(held, held_again)
    assert not torch.equal(held, split.holdout_indices(1437, 0.1, seed=8)[1])
    with pytest.raises(Exception, match="holdout_fraction"):
        split.holdout_indices(10, 1.0, 0)


def test_no_exit_is_chosen_on_the_split_that_reports_it(tmp_path, monkeypatch):
    """Scrambling the validation labels (the reporting split) changes every reported head
    accuracy but neither the training nor the exit: it is chosen on held-out training images."""
    import bench.train

    real_load = bench.train.load_dataset
    results = {}
    for name in ("plain", "scrambled"):
        def load(*args, _name=name, **kw):
            data = real_load(*args, **kw)
            if _name == "scrambled":
                gen = torch.Generator().manual_seed(0)
                data.val_y = (data.val_y + 1 + torch.randint(
                    0, data.num_classes - 1, data.val_y.shape, generator=gen)) % data.num_classes
            return data

        monkeypatch.setattr(bench.train, "load_dataset", load)
        cfg = tiny_cell(tmp_path / name, method="neuroflux", **_study("2MiB"))
        results[name] = run_cell(cfg, tmp_path / name / "result.json", tracker=None)
        assert results[name]["status"] == "ok", results[name]["reason"]
    plain, scrambled = results["plain"]["final"], results["scrambled"]["final"]
    n = plain["n_units"]
    held = [plain[f"head_holdout_acc_u{i}"] for i in range(1, n + 1)]
    assert held == [scrambled[f"head_holdout_acc_u{i}"] for i in range(1, n + 1)]
    assert plain["exit_unit"] == scrambled["exit_unit"] == early_exit.select_exit(held) + 1
    assert plain["exit_holdout_acc"] == scrambled["exit_holdout_acc"]
    assert [plain[f"head_acc_u{i}"] for i in range(1, n + 1)] != [
        scrambled[f"head_acc_u{i}"] for i in range(1, n + 1)]
    assert plain["exit_val_acc"] != scrambled["exit_val_acc"]
    # the training never saw the reporting split either: identical training curves
    for a, b in zip(results["plain"]["history"], results["scrambled"]["history"], strict=True):
        assert a["train_loss"] == b["train_loss"]


def test_backprop_trains_on_the_same_images_as_neuroflux(tmp_path):
    run = _backprop_run(tmp_path, "8MiB")
    assert run.data.n_train == 128 - 13
    keep, _ = split.holdout_indices(128, 0.1, run.cfg["seed"])
    from bench.data import load_dataset

    full = load_dataset(run.cfg["dataset"], run.cfg["data"], tmp_path / "data")
    assert torch.equal(run.data.train_x.cpu(), full.train_x[keep])


# ----------------------------------------------------------------------------- real profiles


def _paper_study():
    import yaml

    from bench.config import ROOT

    return yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["studies"]["neuroflux"]


@pytest.mark.slow  # 5-30 s per model on a shared CPU
@pytest.mark.parametrize("model", ["vgg16", "vgg19", "resnet18_cifar"])
def test_real_profiles_at_the_paper_budgets_form_blocks(model):
    """Saved-tensor profiles on CPU (batches 1 and 2: saved bytes are exactly linear in the
    batch) of the paper's models at the paper config's budgets: backprop's batch binds (16-64),
    NeuroFlux forms >= 2 blocks whose first batch is >= half its first unit's b* and at least
    backprop's."""
    from bench.studies.neuroflux import budgets

    study = _paper_study()
    assert model in study["models"]
    width = float(study["model"]["width"])
    p = budgets.profile(model, width=width, image_size=32, in_channels=3, num_classes=10,
                        batches=(1, 2))
    for budget in study["budgets"]:
        row = budgets.evaluate(p, str(budget))
        assert row.backprop_batch is not None and 16 <= row.backprop_batch <= 64, row
        assert row.blocks is not None and len(row.blocks) >= 2, row.blocks_text()
        assert row.blocks[0].batch >= row.first_bstar / 2
        assert row.blocks[0].batch >= row.backprop_batch, row.blocks_text()
        assert min(b.batch for b in row.blocks) >= row.backprop_batch, row.blocks_text()
        assert [i for b in row.blocks for i in b.units] == list(range(len(p.units)))


# ----------------------------------------------------------------------------- resume at a block boundary


def _train_proc(cfg_path, out):
    import os
    import subprocess
    import sys

    from bench.config import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "train", "--cell", f"@{cfg_path}", "--out", str(out),
         "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _checkpoint(path):
    import time

    for _ in range(200):  # written by rename: complete once it exists
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            time.sleep(0.02)
    raise AssertionError("checkpoint unreadable")


TIMING = {"profiling_s", "cache_s", "train_s", "train_wall_s", "method_wall_s",
          "resume_rebuild_s", "exit_images_per_s", "full_images_per_s",
          "inference_throughput_gain", "modelled_epoch_s_greedy", "modelled_epoch_s_optimal",
          "cache_read_ns_per_byte"}
RECORD = ("phase", "block", "block_epoch", "batch_size", "train_loss", "train_acc", "val_loss",
          "val_acc", "lr", "activation_mib", "modelled_peak_mib")


@pytest.mark.slow
def test_sigkilled_neuroflux_cell_resumes_at_a_block_boundary(tmp_path):
    """SIGKILL inside a later block; the rerun keeps the finished blocks, discards the records
    of the unfinished one, trains only the blocks from there and ends with the same metrics."""
    import signal
    import time

    cfg = tiny_cell(tmp_path, method="neuroflux", epochs=2,
                    data_options={"synthetic": {"n_train": 256, "n_val": 64, "num_classes": 4}},
                    **_study("2MiB"))
    cfg_path = tmp_path / "cell.json"
    cfg_path.write_text(json.dumps(cfg))
    results = {}
    for name in ("straight", "killed"):
        out = tmp_path / name / "result.json"
        proc = _train_proc(cfg_path, out)
        if name == "killed":
            ckpt = out.parent / "checkpoint.pt"
            deadline, state = time.time() + 600, None
            while proc.poll() is None and time.time() < deadline:
                if ckpt.exists():
                    state = _checkpoint(ckpt)
                    b = state["method"]["boundary"]
                    if b is not None and len(state["history"]) > b["history_len"]:
                        break  # inside the block after a finished one
                time.sleep(0.05)
            assert proc.poll() is None, "the cell finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not out.exists()
            boundary = state["method"]["boundary"]
            done, at = boundary["blocks_done"], boundary["history_len"]
            assert 1 <= done < len(state["method"]["plan"]["blocks"])
            proc = _train_proc(cfg_path, out)
        log = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, log
        results[name] = json.loads(out.read_text())
        if name == "killed":
            assert f"resuming at the boundary after block {done}" in log, log
            trained = [line for line in log.splitlines() if line.startswith("epoch ")]
            # only the epochs after the boundary ran again
            assert len(trained) == len(results[name]["history"]) - at, trained
    straight, killed = results["straight"], results["killed"]
    assert killed["provenance"]["resumed_from_epoch"] > at
    assert len(straight["history"]) == len(killed["history"])
    for a, b in zip(straight["history"], killed["history"], strict=True):
        assert {k: a.get(k) for k in RECORD} == {k: b.get(k) for k in RECORD}
    same = lambda f: {k: v for k, v in f.items() if k not in TIMING}  # noqa: E731
    assert same(straight["final"]) == same(killed["final"])
    assert killed["final"]["resume_rebuild_s"] > 0
    assert not list((tmp_path / "killed").glob(".neuroflux_cache_*"))


# ----------------------------------------------------------------------------- mechanism checks


def _result(method, seed, final, history=(), device="cpu", status="ok", budget="34MiB"):
    return {"axes": {"study": "neuroflux", "method": method, "model": "vgg16",
                     "dataset": "digits", "budget": budget, "seed": seed},
            "status": status, "final": final, "history": list(history),
            "provenance": {"device": device}}


def test_mechanism_checks_rows():
    from bench.checks import checks_table, failures
    from bench.studies.neuroflux import checks  # noqa: F401  (registers)

    nf = {"block_units": "1-2,3-6,7-9,10-13", "block_batch_sizes": "64,64,128,256",
          "first_block_bstar": 128}
    bad = {"block_units": "1-13", "block_batch_sizes": "16", "first_block_bstar": 128}
    zigzag = {"block_units": "1-1,2-6,7-13", "block_batch_sizes": "512,128,512",
              "first_block_bstar": 512}
    results = [
        _result("backprop", 0, {"batch_size": 32}, [{"modelled_peak_mib": 30.0}]),
        _result("neuroflux", 0, nf, [{"modelled_peak_mib": 32.0}]),
        _result("backprop", 1, {"batch_size": 32}),
        _result("neuroflux", 1, bad),
        _result("neuroflux", 2, zigzag),
        # on an accelerator: the measured peak (less what the budget does not bound)
        _result("neuroflux", 3, nf, [{"measured_peak_mib": 33.5}], device="cuda:0"),
        _result("neuroflux", 4, nf, [{"measured_peak_mib": 40.0}], device="cuda:0"),
        _result("backprop", 3, {"batch_size": 32, "device_data_mib": 10.0},
                [{"peak_alloc_mib": 43.0}], device="cuda:0"),
        _result("neuroflux", 5, nf, status="oom"),
    ]
    df = checks_table("neuroflux", results)
    row = lambda c, m, s: df[(df.check == c) & (df.method == m) & (df.seed == s)].iloc[0]  # noqa: E731
    assert row("two_blocks", "neuroflux", 0).passed and not row("two_blocks", "neuroflux", 1).passed
    assert row("batch_non_decreasing", "neuroflux", 0).passed
    assert not row("batch_non_decreasing", "neuroflux", 2).passed
    assert row("first_block_batch", "neuroflux", 0).passed  # 64 >= 128 / 2
    assert not row("first_block_batch", "neuroflux", 1).passed  # 16 < 64
    assert row("blocks_vs_backprop", "neuroflux", 0).passed
    assert not row("blocks_vs_backprop", "neuroflux", 1).passed
    assert "blocks_vs_backprop" not in set(df[df.seed == 2].check)  # no backprop seed 2
    assert row("most_units_above_backprop", "neuroflux", 0).passed
    majority = row("most_units_above_backprop", "neuroflux", 1)  # 13 units at 16 vs 32
    assert not majority.passed and majority.value.startswith("0 of 13 units above")
    assert "most_units_above_backprop" not in set(df[df.seed == 2].check)
    cpu = row("peak_within_budget", "neuroflux", 0)
    assert cpu.passed and cpu.value == "cpu: modelled peak 32.0 MiB"
    assert "modelled, not measured" in cpu.detail
    assert row("peak_within_budget", "backprop", 0).passed  # modelled 30 <= 34
    # on CPU a cell that recorded no modelled peak cannot show it stayed within the budget
    assert not row("peak_within_budget", "neuroflux", 1).passed
    assert row("peak_within_budget", "neuroflux", 3).passed
    assert not row("peak_within_budget", "neuroflux", 4).passed
    assert row("peak_within_budget", "backprop", 3).passed  # 43 - 10 <= 34
    assert 5 not in set(df.seed)  # only cells with status ok
    assert set(checks.REQUIRED) <= set(df.check)
    failed = failures(df, checks.REQUIRED, ["neuroflux"], {"model": "vgg16"})
    assert any("two_blocks" in f and "seed 1" in f for f in failed)
    assert not any("batch_non_decreasing" in f for f in failed)
