"""Rest-Wake (study `restwake`): REST epochs, the snapshot buffer, BatchNorm re-estimation,
the switching rule, the on-device buffer in memory accounting, and a paper-config cell."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.config import ROOT, Cell, check_config, load_config, resolve_cell
from bench.data import DeviceLoader
from bench.studies.restwake.phases import REST, WAKE, SnapshotBuffer, recompute_batchnorm
from bench.studies.restwake.restwake_improved import RestWakeImproved
from bench.train import build_run, fit, run_cell
from tests.conftest import tiny_cell

STUDY = {"methods": ["sgd", "restwake_original", "restwake_improved"], "epochs": 3,
         "method_options": {"restwake_original": {"rest_every": 3},
                            "restwake_improved": {"tau_warmup_epochs": 1}}}


def test_buffer_keeps_the_newest_snapshots_in_fp16_and_compresses_to_one():
    buf = SnapshotBuffer(capacity=3, device=torch.device("cpu"))
    params = [torch.zeros(2, 3), torch.zeros(4)]
    for step in range(5):
        buf.push([p + step for p in params])
    assert len(buf) == 3
    assert all(t.dtype == torch.float16 for snap in buf.snapshots for t in snap)
    assert [snap[0][0, 0].item() for snap in buf.snapshots] == [2.0, 3.0, 4.0]
    mean = buf.mean()
    assert torch.equal(mean[0], torch.full((2, 3), 3.0)) and mean[1].dtype == torch.float32
    assert buf.nbytes() == 3 * (6 + 4) * 2  # fp16: 2 bytes a value
    buf.compress(mean)
    assert len(buf) == 1 and torch.equal(buf.snapshots[0][1].float(), torch.full((4,), 3.0))
    clone = SnapshotBuffer(3, torch.device("cpu"))
    clone.load_state_dict(buf.state_dict())
    assert torch.equal(clone.snapshots[0][0], buf.snapshots[0][0])


def test_recompute_batchnorm_equals_the_average_of_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3))
    net[1].running_mean.fill_(5.0)  # stale statistics that must be replaced
    x = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.zeros(32, dtype=torch.long), 8, mean=(0.5,), std=(0.25,),
                          shuffle=False, augment=False, generator=None)
    momentum = net[1].momentum
    net.eval()
    assert recompute_batchnorm(net, loader) == 1
    assert not net.training and net[1].momentum == momentum  # restored
    with torch.no_grad():
        feats = [net[0](xb) for xb, _ in loader]  # (8, 3, 6, 6) each
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, var, atol=1e-5)


def test_rest_epoch_makes_no_step_and_sets_weights_to_the_snapshot_mean(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_original", **STUDY)
    run = build_run(cfg, tmp_path, torch.device("cpu"))
    run.method.setup(run)
    steps = {"n": 0}
    original_step = run.optimizer.step

    def counting_step(*args, **kwargs):
        steps["n"] += 1
        return original_step(*args, **kwargs)

    run.optimizer.step = counting_step  # type: ignore[method-assign]
    seen: dict[str, object] = {}
    original_rest = run.method.rest

    def spy_rest(r):
        seen["expected"] = [t.clone() for t in run.method.buffer.mean()]
        seen["bn_before"] = [b.clone() for b in run.model.buffers()]
        original_rest(r)
        seen["after"] = [p.detach().clone() for p in run.model.parameters()]
        seen["bn_after"] = [b.clone() for b in run.model.buffers()]

    run.method.rest = spy_rest  # type: ignore[method-assign]
    fit(run)
    phases = [h["phase"] for h in run.history]
    assert phases == [WAKE, WAKE, REST]
    assert steps["n"] == 2 * len(run.train_loader), "a REST epoch made an optimizer step"
    for p, m in zip(seen["after"], seen["expected"], strict=True):
        assert torch.equal(p, m)
    # the model kept the consolidated weights through the REST epoch (no step afterwards)
    for p, m in zip(run.model.parameters(), seen["expected"], strict=True):
        assert torch.equal(p.detach(), m)
    bn_changed = [not torch.equal(a, b) for a, b in zip(seen["bn_before"], seen["bn_after"])
                  if a.is_floating_point()]
    assert any(bn_changed), "BatchNorm statistics were not recomputed"
    assert len(run.method.buffer) == 1  # compressed to the consolidated snapshot
    rest = run.history[2]
    assert rest["train_loss"] is None and rest["rest"] == 1.0 and math.isfinite(rest["val_acc"])


def scripted(vs, warmup=5, direction="high"):
    method = RestWakeImproved(RestWakeImproved.resolve_options(
        {"tau_warmup_epochs": warmup, "direction": direction}))
    return [method.switch(v) for v in vs], method.tau


def test_switching_rule_on_a_scripted_variance_sequence():
    decisions, tau = scripted([1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 2.0, 3.5, 3.0])
    assert tau == 3.0  # median of the first five WAKE epochs, then frozen
    # warm-up: the fifth v (5 > 3) already counts once tau exists
    assert decisions == [WAKE, WAKE, WAKE, WAKE, REST, REST, WAKE, REST, WAKE]
    low, _ = scripted([1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 2.0], direction="low")
    assert low[-2:] == [WAKE, REST]
    nan, tau_nan = scripted([float("nan"), 1.0, 3.0], warmup=2)
    assert tau_nan == 2.0 and nan == [WAKE, WAKE, REST]


def test_never_two_rests_in_a_row_and_rest_needs_snapshots(tmp_path):
    cfg = tiny_cell(tmp_path, method="restwake_improved", **{**STUDY, "epochs": 6})
    run = build_run(cfg, tmp_path, torch.device("cpu"))
    run.method.setup(run)
    run.method.tau = -1.0  # every v is above tau: the rule always asks for REST
    run.method.warmup_v = [0.0]
    fit(run)
    phases = [h["phase"] for h in run.history]
    assert phases[:2] == [WAKE, WAKE], "rested with fewer than 2 snapshots"
    assert REST in phases
    assert all(not (a == b == REST) for a, b in zip(phases, phases[1:]))
    for h in run.history:
        assert "grad_cv2" in h and "tau" in h


def test_improved_buffer_on_device_is_counted_in_memory(tmp_path):
    results = {}
    for method in ("restwake_original", "restwake_improved"):
        cfg = tiny_cell(tmp_path, method=method, **{**STUDY, "epochs": 2})
        results[method] = run_cell(cfg, tmp_path / method / "result.json")
    orig, impr = results["restwake_original"], results["restwake_improved"]
    params = orig["compute"]["params"]
    fp16_snapshot_mib = params * 2 / 2**20
    # epoch 1 runs with one snapshot in the buffer: on the device for improved, on the host for
    # original; everything else (weights, optimizer, activations) is the same
    diff = impr["history"][1]["modelled_peak_mib"] - orig["history"][1]["modelled_peak_mib"]
    assert diff == pytest.approx(fp16_snapshot_mib, rel=1e-6)
    assert orig["memory"]["method_buffer_mib"] == 0.0
    assert impr["memory"]["method_buffer_mib"] == pytest.approx(2 * fp16_snapshot_mib, rel=1e-6)


def test_a_paper_config_cell_runs_a_few_steps_on_cifar_shaped_data(tmp_path):
    paper = load_config([ROOT / "config" / "paper.yaml"])
    study = copy.deepcopy(paper["studies"]["restwake"])
    assert study["models"] == ["resnet18"] and study["datasets"] == ["cifar10"]
    assert study["epochs"] == 50 and study["seeds"] == 3
    assert study["train"]["batch_size"] == 128 and study["train"]["lr"] == 0.01
    # the same study on synthetic CIFAR-shaped data (3x32x32, 10 classes): 2 steps, 1 epoch
    study.update(datasets=["synthetic"], epochs=1,
                 data_options={"synthetic": {"n_train": 256, "n_val": 64, "num_classes": 10}})
    study["evaluation"] = {**study["evaluation"], "pgd_steps": 2, "adv_max_images": 32}
    cfg = check_config({**paper, "device": "cpu", "threads": 2, "results": str(tmp_path),
                        "studies": {"restwake": study}})
    cell = resolve_cell(cfg, Cell("restwake", "restwake_improved", "resnet18", "synthetic",
                                  "none", 0))
    result = run_cell(cell, tmp_path / "result.json")
    assert result["status"] == "ok", result["reason"]
    assert result["compute"]["params"] == 11_181_642  # full-width ResNet-18, 10 classes
    assert result["compute"]["image_shape"] == [3, 32, 32]
    last = result["history"][-1]
    for key in ("fgsm_acc", "pgd_acc", "sym_kl", "elasticity", "grad_cv2"):
        assert key in last and last[key] is not None, key
    assert result["final"]["fgsm_acc"] == last["fgsm_acc"]
