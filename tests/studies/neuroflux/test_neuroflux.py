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


def _profiles(pairs):
    return [profiler.UnitProfile(float(a), float(c), 1.0) for a, c in pairs]


def test_partition_greedy_with_the_2x_drop_rule():
    # budget 1000 B, no slack, batches 1..512:
    # [u1] a=1 -> 512 (cap); +u2 a=2 -> 256 (2x drop: join); +u3 a=6 -> 128 (2x: join);
    # +u4 a=26 -> 32 (4x drop: new block); [u4] a=20 -> 32; +u5 a=21,c=100 -> 32 (join)
    profiles = _profiles([(1, 0), (1, 0), (4, 0), (20, 0), (1, 100)])
    blocks = partition.partition(profiles, 1000, slack=0.0, min_batch=1)
    assert [(b.units, b.batch) for b in blocks] == [([0, 1, 2], 128), ([3, 4], 32)]
    assert blocks[0].memory_bytes == pytest.approx(6 * 128)
    assert blocks[1].memory_bytes == pytest.approx(21 * 32 + 100)
    # a stricter drop rule (1x: any drop splits)
    blocks = partition.partition(profiles, 1000, slack=0.0, min_batch=1, max_drop=1.0)
    assert [(b.units, b.batch) for b in blocks] == [([0], 512), ([1], 512), ([2], 128),
                                                    ([3, 4], 32)]


def test_partition_cap_and_slack():
    tiny = _profiles([(0.01, 1), (0.01, 1), (0.01, 1)])
    assert [(b.units, b.batch) for b in partition.partition(tiny, 10**6)] == [([0, 1, 2], 512)]
    assert partition.partition(tiny, 10**6, max_batch=64)[0].batch == 64
    # a = 1.9: 512 * 1.9 = 972.8 fits 1000 without slack but not 950 with 5% slack
    one = _profiles([(1.9, 0)])
    assert partition.partition(one, 1000, slack=0.0)[0].batch == 512
    assert partition.partition(one, 1000)[0].batch == 256
    assert partition.largest_batch(1.9, 0, 1000) == 256
    for b in partition.partition(_profiles([(3, 7), (5, 11), (40, 3)]), 2000, min_batch=1):
        assert b.memory_bytes <= 2000 * 0.95


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
    accs = [final[f"head_acc_u{i}"] for i in range(1, 10)]
    assert final["exit_unit"] == early_exit.select_exit(accs) + 1
    assert final["val_acc"] == final["exit_val_acc"]
    assert final["param_reduction"] == pytest.approx(final["full_params"] / final["exit_params"])
    assert final["epochs"] == cfg["epochs"]
    assert result["memory"]["modelled_peak_mib"] <= 2.0
    assert not list(tmp_path.glob(".neuroflux_cache_*")), "cache files left behind"
    assert json.loads(out.read_text())["status"] == "ok"


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
