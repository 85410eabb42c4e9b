"""The grid-cost estimate (bench.estimate): families from class attributes, nominal shapes,
the scheduler, and a whole estimate of a tiny configuration."""

from __future__ import annotations

import json

import pytest

from bench import estimate as est
from bench.errors import ConfigError
from bench.methods.base import Method
from tests.conftest import tiny_config


def test_a_family_comes_from_class_attributes_never_from_the_name():
    class Plain(Method):
        name = "sgd"

    class OwnLoop(Method):
        name = "plain_looking_name"
        owns_loop = True
        sizes_to_budget = True

    assert est.method_family(Plain) == "backprop"
    assert est.method_family(Plain, wants_grad_norms=True) == "grad_norms"
    assert est.method_family(OwnLoop) == "owns_loop+sizes_to_budget"


def test_nominal_shapes_follow_the_data_options():
    full = est.nominal_shape("cifar10", {})
    assert (full.n_train, full.n_val, full.channels, full.size, full.num_classes) == (
        50_000, 10_000, 3, 32, 10)
    half = est.nominal_shape("cifar100", {"classes": list(range(50)), "image_size": 128,
                                          "train_subset": 1000})
    assert (half.n_train, half.n_val, half.size, half.num_classes) == (1000, 5000, 128, 50)
    assert half.nominal and half.bytes == (1000 + 5000) * 3 * 128 * 128
    with pytest.raises(ConfigError, match="no nominal shape"):
        est.nominal_shape("imagenet", {})


def _job(name, seconds, deps=(), **kw):
    return est.Job(name, "s", "cell", seconds, seconds, deps=list(deps), **kw)


def test_the_schedule_respects_dependencies_and_slots():
    jobs = [_job("a", 10), _job("b", 5, ["a"]), _job("c", 5, ["a"]), _job("d", 5, ["a"]),
            _job("z", 1, ["b", "c", "d"])]
    wall, critical = est.schedule(jobs, cores=2, gpus=0, slots_per_gpu=1)
    assert critical == 16  # a, one of b/c/d, z
    assert wall == 10 + 5 + 5 + 1  # three 5-s jobs on two cores take two rounds
    wall1, _ = est.schedule(jobs, cores=1, gpus=0, slots_per_gpu=1)
    assert wall1 == sum(j.seconds for j in jobs)
    # threads: a 2-thread job takes both cores
    wide = [_job("x", 4, threads=2), _job("y", 4, threads=2)]
    assert est.schedule(wide, cores=2, gpus=0, slots_per_gpu=1)[0] == 8


def test_gpu_slots_share_a_device_and_exclusive_cells_take_it_whole():
    cells = [_job(f"c{i}", 10, gpu=True) for i in range(4)]
    # one GPU, one slot: one after another
    assert est.schedule(cells, cores=8, gpus=1, slots_per_gpu=1)[0] == 40
    # two GPUs: two at once
    assert est.schedule(cells, cores=8, gpus=2, slots_per_gpu=1)[0] == 20
    # one GPU shared by 2: both run at half speed, no gain assumed
    assert est.schedule(cells, cores=8, gpus=1, slots_per_gpu=2)[0] == 40
    exclusive = [_job(f"e{i}", 10, gpu=True, exclusive=True) for i in range(2)]
    assert est.schedule(exclusive, cores=8, gpus=1, slots_per_gpu=2)[0] == 20


def test_an_estimate_of_a_tiny_grid(tmp_path):
    cfg = tiny_config(tmp_path, seeds=2, epochs=3)
    cfg["tracking"]["enabled"] = False
    lines = []
    e = est.estimate(cfg, cores=2, steps=2, progress=lines.append)
    assert len(e.profiles) == 1  # both seeds share one (model, input, batch, family) profile
    p = e.profiles[0]
    assert p.family == "backprop" and p.batch == 32 and p.shape == [3, 16, 16]
    assert p.train_s_per_image > 0 and p.eval_s_per_image > 0
    cells = [j for j in e.jobs if j.kind == "cell"]
    assert len(cells) == 2 and all(j.seconds > e.startup_s for j in cells)
    kinds = sorted(j.kind for j in e.jobs)
    assert kinds == ["aggregate", "cell", "cell", "prepare", "report"]
    assert e.cells_at_once == 2
    # the wall time: data check, both cells side by side, aggregation, report
    by = {j.kind: j.seconds for j in e.jobs}
    assert e.wall_s == pytest.approx(by["prepare"] + max(j.seconds for j in cells)
                                     + by["aggregate"] + by["report"])
    study = e.per_study()["t"]
    assert study["cells"] == 2 and study["modelled_peak_mib"] > 0
    text = est.render(e, "tiny.yaml")
    assert "projected wall time" in text and "backprop" in text and "t " in text
    assert json.loads(est.dumps(e))["per_study"]["t"]["cells"] == 2
    # the projection scales with what the config asks for: epochs, images
    shape = est.DataShape(128, 64, 3, 16, 4)
    three, _ = est._project(p, 3, shape, e.startup_s, e.startup_s, {}, 0, 0)
    thirty, _ = est._project(p, 30, shape, e.startup_s, e.startup_s, {}, 0, 0)
    per_epoch = p.epoch_s + 128 * p.train_s_per_image + 64 * p.eval_s_per_image
    assert thirty - three == pytest.approx(27 * per_epoch)
    assert three == pytest.approx(cells[0].seconds)


# ----------------------------------------------------------------------------- its own speed
# `plan --estimate` on config/paper.yaml gave nothing within 15 minutes on 2 cores and said
# nothing meanwhile: 29 cell groups, each run twice at full width, batch 128, 10 steps.


def _paper_groups() -> set[str]:
    from bench.config import ROOT, CellResolver, check_config, load_config, plan
    from bench.methods import METHODS

    cfg = check_config(load_config([ROOT / "config" / "paper.yaml"]))
    resolver = CellResolver(cfg)
    keys = set()
    for cell in plan(cfg):
        r = resolver.resolve(cell)
        cls = METHODS.get(r["method_impl"])
        family = est.method_family(
            cls, cls.needs_grad_norms or "grad_variance" in r["evaluation"]["metrics"])
        keys.add(est._key(r, est.data_shape(cell.dataset, r["data"], "data"), family))
    return keys


def test_each_distinct_shape_is_profiled_once_not_per_classes_or_budget():
    """CIFAR-10 and -100 (a classifier of another width), 320 and 384 MiB (a method sized to
    its budget): the same work per image, one group."""
    assert len(_paper_groups()) == 11  # 29 before (cells; plus pretrain and ranking)


def test_a_large_model_is_profiled_at_a_reduced_width_on_a_cpu_and_scaled_by_flops():
    shape = est.DataShape(50_000, 10_000, 3, 32, 10)
    options, scale = est.probe_options("vgg16", {"width": 1.0}, shape, gpu=False)
    assert options["width"] < 0.25 and 20 < scale < 30
    small = est.forward_flops("vgg16", options, 3, 32, 10)
    assert small == pytest.approx(est.CPU_PROBE_FORWARD_FLOPS, rel=0.2)
    assert est.probe_options("vgg16", {"width": 1.0}, shape, gpu=True) == ({"width": 1.0}, 1.0)
    # the default config's models stay whole (its estimate was checked against real runs)
    for model, opts, size in (("vgg16", {"width": 0.25}, 32), ("resnet18", {"width": 0.25}, 32),
                              ("wrn28_4", {"norm": "rms", "width": 0.125}, 8)):
        assert est.probe_options(model, opts, est.DataShape(1437, 360, 1, size, 10),
                                 gpu=False)[1] == 1.0


def test_an_estimate_says_what_it_profiles_and_runs_each_group_once(tmp_path, monkeypatch):
    from bench import train

    calls = []
    real = train.run_cell
    monkeypatch.setattr(train, "run_cell", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    monkeypatch.setattr(est, "CPU_MAX_FORWARD_FLOPS", 1e5)  # the tiny model counts as large
    monkeypatch.setattr(est, "CPU_PROBE_FORWARD_FLOPS", 5e4)
    cfg = tiny_config(tmp_path, seeds=2, epochs=3, methods=["sgd", "plain"],
                      variants={"plain": {"method": "sgd"}})
    cfg["tracking"]["enabled"] = False
    lines = []
    e = est.estimate(cfg, cores=2, steps=2, progress=lines.append)
    assert len(calls) == 1 and calls[0]["epochs"] == 2  # one group, one run of two epochs
    assert calls[0]["model_options"]["width"] < 0.125  # profiled narrower ...
    p, = e.profiles
    assert "profiled at width" in p.note and p.modelled_peak_mib is None  # ... and says so
    text = "\n".join(lines)
    assert "4 cells: profiling 1 job groups" in text, text
    assert "[1/1] profiling backprop resnet18_cifar 3x16x16 batch 32" in text, text
    assert "job start-up" in text and e.estimate_wall_s > 0
    assert "(profiled at width" in est.render(e)
