"""Top-k activation sparsity (bench.studies.sparsity_regimes.topk, .controllers) and the methods of study `sparsity_regimes`."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.methods import METHODS
from bench.models import build_model
from bench.studies.sparsity_regimes.base import probe_indices
from bench.studies.sparsity_regimes.controllers import (
    AccuracyTargetedController,
    ConstantController,
    LossGuardedController,
    Probe,
    SawtoothController,
    open_loop_ratios,
)
from bench.studies.sparsity_regimes.topk import TopK, attach_topk, keep_count
from bench.train import run_cell
from tests.conftest import tiny_cell

SPARSITY_METHODS = ["dense", "topk_s1", "topk_s2", "topk_sawtooth"]


def small_wrn(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    return build_model("wrn28_4", 10, 3, {"width": 0.125, "norm": norm})


# ----------------------------------------------------------------------------- TopK


def test_keep_count_is_ceil_with_float_guard():
    assert keep_count(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001 in floating point
    assert keep_count(0.5, 7) == 4
    assert keep_count(0.05, 100) == 5
    assert keep_count(0.051, 100) == 6
    assert keep_count(1e-9, 100) == 1  # r > 0 keeps at least one entry
    assert keep_count(1.0, 13) == 13
    with pytest.raises(ValueError):
        keep_count(0.0, 10)


@pytest.mark.parametrize("ratio", [1e-6, 0.05, 0.1, 0.3, 0.7, 0.999])
def test_topk_keeps_exactly_ceil_r_chw_largest_per_sample(ratio):
    torch.manual_seed(1)
    x = torch.rand(5, 3, 4, 6) + 0.01  # strictly positive: kept == non-zero
    n = 3 * 4 * 6
    k = math.ceil(round(ratio * n, 6))
    out = TopK(ratio)(x)
    flat_x, flat_out = x.reshape(5, -1), out.reshape(5, -1)
    kept = flat_out != 0
    assert kept.sum(1).tolist() == [k] * 5
    for b in range(5):  # the kept ones are the largest, unchanged
        assert torch.equal(flat_out[b][kept[b]], flat_x[b][kept[b]])
        if k < n:
            assert flat_x[b][kept[b]].min() >= flat_x[b][~kept[b]].max()


@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.5, 0.9])
def test_topk_exact_count_with_ties(ratio):
    # every value tied (a constant) and coarse integer values with many ties
    const = torch.full((3, 2, 5, 5), 2.0)
    coarse = torch.randint(1, 4, (3, 2, 5, 5), generator=torch.Generator().manual_seed(0)).float()
    k = keep_count(ratio, 50)
    for x in (const, coarse):
        out = TopK(ratio)(x)
        assert (out.reshape(3, -1) != 0).sum(1).tolist() == [k] * 3
        flat_x, kept = x.reshape(3, -1), out.reshape(3, -1) != 0
        for b in range(3):
            if k < 50:
                assert flat_x[b][kept[b]].min() >= flat_x[b][~kept[b]].max()


def test_topk_gradient_flows_through_kept_entries_only():
    torch.manual_seed(2)
    x = (torch.rand(4, 3, 5, 5) + 0.1).requires_grad_(True)
    upstream = torch.randn(4, 3, 5, 5)
    out = TopK(0.2)(x)
    out.backward(upstream)
    kept = out.detach() != 0
    assert kept.sum() == 4 * keep_count(0.2, 75)
    assert torch.equal(x.grad[kept], upstream[kept])
    assert torch.all(x.grad[~kept] == 0)


def test_ratio_one_is_the_identity_object():
    x = torch.randn(2, 3, 4, 4)
    layer = TopK(1.0)
    assert layer(x) is x


def test_topk_is_identity_in_eval_mode_unless_forced():
    x = torch.rand(2, 3, 4, 4) + 0.1
    layer = TopK(0.25).eval()
    assert layer(x) is x
    layer.force = True
    assert (layer(x).reshape(2, -1) != 0).sum(1).tolist() == [12, 12]


@pytest.mark.parametrize("scope", ["layer", "network"])
def test_ratio_one_attached_is_bit_identical_to_the_plain_wrn(scope):
    plain = small_wrn()
    hooked = copy.deepcopy(plain)
    handle = attach_topk(hooked, scope, ratio=1.0)
    assert len(handle.layers) == 24
    torch.manual_seed(3)
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))
    outs = []
    for model in (plain, hooked):
        model.train()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, p), (_, q) in zip(plain.named_parameters(), hooked.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), (_, c) in zip(plain.named_buffers(), hooked.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert set(plain.state_dict()) == set(hooked.state_dict())


def test_attach_rule_and_detach():
    wrn = small_wrn()
    before = copy.deepcopy(wrn)
    handle = attach_topk(wrn, "layer", 0.5)
    hooked = {n for n, m in wrn.named_modules() if isinstance(m, TopK)}
    assert len(hooked) == 24
    assert all(n.startswith("layer") and n.split(".")[2] in ("relu1", "relu2") for n in hooked)
    assert isinstance(wrn.final[1], nn.ReLU)  # the ReLU before pooling is not in a block
    with pytest.raises(ValueError, match="already"):
        attach_topk(wrn)
    handle.detach()
    assert not any(isinstance(m, TopK) for m in wrn.modules())
    assert [type(m) for m in wrn.modules()] == [type(m) for m in before.modules()]
    torch.manual_seed(0)
    resnet = build_model("resnet18_cifar", 10, 3, {"width": 0.125})
    handle = attach_topk(resnet, "layer")
    assert len(handle.layers) == 16  # relu1 + relu2 of 8 basic blocks; not the stem's
    assert isinstance(resnet.stem[2], nn.ReLU)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        attach_topk(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))


def test_network_scope_keeps_ceil_r_total_per_sample_across_layers():
    model = small_wrn().train()
    handle = attach_topk(model, "network", ratio=1.0)
    torch.manual_seed(4)
    x = torch.randn(3, 3, 16, 16)
    # the dense activations every TopK sees (train mode: batch statistics)
    dense_inputs: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}

    def grab(store):
        def hook(module, args):
            if module._collect is None:
                store[id(module)] = (module._mask.clone() if module._mask is not None
                                     else args[0].detach().clone())
        return hook

    hooks = [layer.register_forward_pre_hook(grab(dense_inputs)) for layer in handle.layers]
    reference = copy.deepcopy(model)  # BatchNorm state before any forward
    model(x)
    for h in hooks:
        h.remove()
    first_norm = [b.clone() for b in model.layer1[0].norm1.buffers()]

    model.load_state_dict(reference.state_dict())
    handle.set_ratio(0.1)
    hooks = [layer.register_forward_pre_hook(grab(masks)) for layer in handle.layers]
    out = model(x)
    for h in hooks:
        h.remove()
    # BatchNorm running statistics moved once (the first pass's update was undone): the norm
    # before any TopK has exactly the statistics of one dense forward
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert b.item() == 1, name
    for b, c in zip(model.layer1[0].norm1.buffers(), first_norm, strict=True):
        assert torch.equal(b, c)
    total = sum(layer_in[0].numel() for layer_in in dense_inputs.values())
    k = keep_count(0.1, total)
    cat_mask = torch.cat([masks[id(layer)].reshape(3, -1) for layer in handle.layers], 1)
    cat_dense = torch.cat([dense_inputs[id(layer)].reshape(3, -1) for layer in handle.layers], 1)
    assert cat_mask.dtype == torch.bool and cat_mask.shape == cat_dense.shape
    assert cat_mask.sum(1).tolist() == [k] * 3
    per_layer = [masks[id(layer)].reshape(3, -1).sum(1) for layer in handle.layers]
    assert len({tuple(p.tolist()) for p in per_layer}) > 1  # not a per-layer quota
    for b in range(3):  # the per-sample global top-k of the dense activations
        assert cat_dense[b][cat_mask[b]].min() >= cat_dense[b][~cat_mask[b]].max()
    assert all(layer._mask is None for layer in handle.layers)  # cleared after the forward
    out.sum().backward()  # gradients flow through the second pass
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_attached_model_evaluates_densely_in_eval_mode():
    plain = small_wrn().eval()
    for scope in ("layer", "network"):
        hooked = copy.deepcopy(plain)
        handle = attach_topk(hooked, scope, ratio=0.1)
        hooked.eval()
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(plain(x), hooked(x))
            with handle.forced(0.1):
                assert not torch.equal(plain(x), hooked(x))
            assert all(not layer.force for layer in handle.layers)
            assert torch.equal(plain(x), hooked(x))


def test_effective_activation_rate_equals_a_hand_count():
    model = nn.Sequential(OrderedDict(layer1=nn.Sequential(nn.ReLU())))
    handle = attach_topk(model, "layer", ratio=0.5)
    x = torch.tensor([[3.0, -1, 2, -5, 0.5, 1, -2, 4],  # 5 positive, k = 4 -> 4 non-zero
                      [-1.0, -1, -1, 1, -1, -1, -1, -1]]).reshape(2, 1, 2, 4)  # 1 positive
    assert handle.effective_rate() is None
    model(x)
    assert handle.stats() == (5, 16)
    assert handle.effective_rate() == 5 / 16
    model(x)
    assert handle.stats() == (10, 32)
    model.eval()
    model(x)  # evaluation is not counted
    assert handle.stats() == (10, 32)
    model.train()
    handle.reset_stats()
    handle.set_ratio(1.0)
    model(x)  # dense: the natural ReLU sparsity, 6 of 16
    assert handle.effective_rate() == 6 / 16


# ----------------------------------------------------------------------------- controllers


def P(dense_loss=1.0, loss=None, dense_acc=0.9, acc=None):  # noqa: N802
    """A probe reading; loss/acc at r default to the dense ones (no cost of sparsity)."""
    return Probe(dense_loss, dense_acc, dense_loss if loss is None else loss,
                 dense_acc if acc is None else acc)


def drive(controller, probes):
    """(the keep ratio each epoch trains at + the next one, the actions, the reset causes)."""
    ratios, actions, causes = [], [], []
    for probe in probes:
        ratios.append(controller.r)
        controller.step(probe)
        actions.append(controller.action)
        causes.append(controller.reset_cause)
    return ratios + [controller.r], actions, causes


def first_rule_ratios(train_losses, r_min=0.05, beta=0.8, tol=0.10):
    """S1 as first specified (and implemented): this epoch's *training* loss against that of the
    last dense epoch. Kept here only to show the scripted sequences below defeat it."""
    r, ref, out = 1.0, None, []
    for loss in train_losses:
        out.append(r)
        ref = loss if r == 1.0 else ref
        r = max(r_min, beta * r) if loss <= (1 + tol) * ref and r > r_min else 1.0
    return out + [r]


def test_large_progress_with_a_costly_sparsity_resets_by_the_guard():
    # Training progresses fast (train loss 2.0 -> 0.8, accuracy 0.5 -> 0.93) while the probe
    # says that sparsity costs more and more at the current weights.
    train_losses = [2.0, 1.5, 1.1, 0.8]
    assert first_rule_ratios(train_losses) == pytest.approx([1.0, 0.8, 0.64, 0.512, 0.4096])
    probes = [P(1.90), P(1.40, 1.45), P(1.00, 1.30), P(0.70)]  # Lr/L1: 1, 1.04, 1.30
    ratios, actions, causes = drive(LossGuardedController(), probes)
    assert ratios[:4] == pytest.approx([1.0, 0.8, 0.64, 1.0])
    assert actions[:3] == ["compress", "compress", "reset"] and causes[2] == "guard"
    # S2 on the same run: the accuracy drop at r grows past 2 points, persists past patience
    accs = [P(dense_acc=0.50), P(dense_acc=0.70, acc=0.69), P(dense_acc=0.85, acc=0.80),
            P(dense_acc=0.90, acc=0.85), P(dense_acc=0.92, acc=0.86), P(dense_acc=0.93, acc=0.88)]
    s2 = AccuracyTargetedController()
    ratios, actions, causes = drive(s2, accs)
    assert ratios == pytest.approx([1.0, 0.8, 0.64, 0.64, 0.64, 0.64, 1.0])
    assert actions == ["compress", "compress", "hold", "hold", "hold", "reset"]
    assert causes[-1] == "guard" and s2.guard_resets == 1 and s2.floor_resets == 0
    # the first rule, fed the training accuracy (rising), never violates: no reset
    train_accs, ref, r = [0.50, 0.70, 0.85, 0.90, 0.92, 0.93], None, 1.0
    for acc in train_accs:
        ref = acc if r == 1.0 else ref
        assert acc >= ref - 0.02
        r = max(0.05, 0.8 * r)


def test_s1_compress_floor_and_guard():
    c = LossGuardedController(r_min=0.1, beta=0.5, loss_tolerance=0.10)
    probes = [P(2.0),  # dense: Lr = L1, compress
              P(1.8, 1.9), P(1.5, 1.65), P(1.4, 1.5),  # within 10%: 0.5 -> 0.25 -> 0.125 -> 0.1
              P(1.3, 1.3),  # fine but r == r_min: floor reset
              P(1.2),  # dense: compress
              P(1.2, 1.33),  # 1.33 > 1.32: guard reset
              P(1.1)]
    ratios, actions, causes = drive(c, probes)
    assert ratios == [1.0, 0.5, 0.25, 0.125, 0.1, 1.0, 0.5, 1.0, 0.5]
    assert causes == ["", "", "", "", "floor", "", "guard", ""]
    assert (c.resets, c.guard_resets, c.floor_resets) == (2, 1, 1)
    c2 = LossGuardedController(r_min=0.1, beta=0.5)
    ratios, _, causes = drive(c2, [P(1.0), P(1.0, float("nan"))])
    assert ratios == [1.0, 0.5, 1.0] and causes[1] == "guard"  # a non-finite loss fails
    c3 = LossGuardedController(r_min=0.5, beta=0.5)
    ratios, _, causes = drive(c3, [P(1.0), P(1.0, 9.0)])  # violated at the floor: floor reset
    assert ratios == [1.0, 0.5, 1.0] and causes[1] == "floor" and c3.guard_resets == 0


def test_s1_defaults_with_a_guard_that_always_holds_is_the_open_loop_schedule():
    c = LossGuardedController()  # r_min 0.05, beta 0.8
    ratios, _, causes = drive(c, [P()] * 16)
    expected = [0.8 ** i for i in range(14)] + [0.05, 1.0, 0.8]  # 0.8**14 = 0.044 < 0.05
    assert ratios == pytest.approx(expected)
    assert ratios[:16] == pytest.approx(open_loop_ratios(0.05, 0.8, 16))
    assert causes.count("floor") == 1 and c.guard_resets == 0


def test_s2_compress_hold_and_reset_trajectory():
    c = AccuracyTargetedController(r_min=0.1, beta=0.5, acc_margin=0.02, patience=3)
    probes = [P(dense_acc=0.50),  # dense: compress
              P(dense_acc=0.60, acc=0.59),  # drop 1 point: 0.5 -> 0.25
              P(dense_acc=0.60, acc=0.57), P(dense_acc=0.60, acc=0.575),  # violations 1, 2: hold
              P(dense_acc=0.60, acc=0.58),  # drop exactly 2 points: fine, 0.25 -> 0.125
              P(acc=0.80), P(acc=0.80), P(acc=0.80),  # violations 1..3: hold (patience)
              P(acc=0.80),  # violation 4 > patience: guard reset
              P(), P(), P(), P(),  # 1 -> 0.5 -> 0.25 -> 0.125 -> 0.1 (floor)
              P()]  # fine at r_min: floor reset
    ratios, actions, causes = drive(c, probes)
    assert ratios == [1.0, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125,
                      1.0, 0.5, 0.25, 0.125, 0.1, 1.0]
    assert actions[2:4] == ["hold", "hold"] and causes[8] == "guard" and causes[13] == "floor"
    assert (c.resets, c.guard_resets, c.floor_resets) == (2, 1, 1)


def test_s2_violation_at_r_min_holds_then_resets_and_patience_zero_resets_at_once():
    c = AccuracyTargetedController(r_min=0.25, beta=0.5, acc_margin=0.0, patience=1)
    ratios, _, causes = drive(c, [P(), P(), P(acc=0.8), P(acc=0.8)])
    assert ratios == [1.0, 0.5, 0.25, 0.25, 1.0] and causes[3] == "guard"
    c0 = AccuracyTargetedController(r_min=0.1, beta=0.5, acc_margin=0.02, patience=0)
    ratios, _, causes = drive(c0, [P(), P(acc=0.5), P()])
    assert ratios == [1.0, 0.5, 1.0, 0.5] and causes[1] == "guard"


@pytest.mark.parametrize("probe,s1,s2", [
    # loss 30% above dense, accuracy unchanged: S1's guard trips, S2 compresses
    (P(1.0, 1.3, 0.9, 0.9), ("reset", "guard"), ("compress", "")),
    # loss within 10%, accuracy 5 points down: S1 compresses, S2 holds
    (P(1.0, 1.05, 0.9, 0.85), ("compress", ""), ("hold", "")),
])
def test_s1_and_s2_on_the_same_probe_numbers_act_differently_where_their_rules_differ(
        probe, s1, s2):
    c1, c2 = LossGuardedController(), AccuracyTargetedController()
    c1.step(P())
    c2.step(P())  # both at 0.8 after the same dense epoch
    assert c1.r == c2.r == pytest.approx(0.8)
    c1.step(probe)
    c2.step(probe)
    assert (c1.action, c1.reset_cause) == s1
    assert (c2.action, c2.reset_cause) == s2
    assert c1.r != c2.r


def test_s1_and_s2_diverge_on_one_scripted_run_and_differ_from_the_sawtooth():
    # the probe of a net whose sparsity cost grows as r falls: loss ratio 1 + 0.6 (1 - r),
    # accuracy drop 5 (1 - r) points
    def probe(r):
        return P(1.0, 1.0 + 0.6 * (1 - r), 0.95, 0.95 - 0.05 * (1 - r))

    runs = {}
    for name, c in (("s1", LossGuardedController()), ("s2", AccuracyTargetedController()),
                    ("saw", SawtoothController())):
        ratios = []
        for _ in range(24):
            ratios.append(c.r)
            c.step(probe(c.r))
        runs[name] = (ratios, c)
    (r1, c1), (r2, c2), (rs, cs) = runs["s1"], runs["s2"], runs["saw"]
    assert r1 != r2 and r1 != rs and r2 != rs
    assert c1.guard_resets >= 1 and c2.guard_resets >= 1
    assert rs == pytest.approx([0.05 ** ((t % 10) / 9) for t in range(24)])
    assert cs.resets == cs.schedule_resets == 2


def test_sawtooth_is_the_open_loop_reference():
    c = SawtoothController(r_min=0.125, period=4)  # r_t = 0.125 ** (t mod 4 / 3) = 0.5 ** (t mod 4)
    ratios, actions, causes = drive(c, [None] * 9)
    assert ratios == pytest.approx([1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125, 1.0, 0.5])
    assert causes == ["", "", "", "schedule", "", "", "", "schedule", ""]
    # whatever the probe says (no cost, a huge cost, nothing), the same schedule
    for probes in ([P()] * 9, [P(1.0, 50.0, 0.9, 0.0)] * 9):
        assert drive(SawtoothController(r_min=0.125, period=4), probes)[0] == ratios
    d = SawtoothController()  # r_min 0.05, period 10
    ratios = drive(d, [None] * 10)[0]
    assert ratios[0] == 1.0 and ratios[9] == pytest.approx(0.05) and ratios[10] == 1.0
    assert ratios[1] == pytest.approx(0.05 ** (1 / 9))
    with pytest.raises(ValueError):
        SawtoothController(period=1)


def test_adaptive_controllers_need_the_probe():
    assert LossGuardedController.needs_probe and AccuracyTargetedController.needs_probe
    assert not SawtoothController.needs_probe and not ConstantController.needs_probe
    with pytest.raises(ValueError, match="probe"):
        LossGuardedController().step(None)


def test_controller_state_round_trips():
    c = AccuracyTargetedController(r_min=0.1, beta=0.5)
    drive(c, [P(), P(), P(acc=0.3)])
    clone = AccuracyTargetedController(r_min=0.1, beta=0.5)
    clone.load_state_dict(c.state_dict())
    more = [P(acc=0.3)] * 3
    assert drive(clone, more) == drive(c, more)
    assert drive(ConstantController(), [None, None])[0] == [1.0, 1.0, 1.0]


def test_probe_set_is_fixed_per_seed():
    a, b = probe_indices(5000, 2048, 0), probe_indices(5000, 2048, 0)
    assert torch.equal(a, b) and len(a) == 2048 and len(set(a.tolist())) == 2048
    assert torch.equal(a, a.sort().values)
    assert not torch.equal(a, probe_indices(5000, 2048, 1))
    assert torch.equal(probe_indices(1437, 2048, 3), torch.arange(1437))  # all when fewer


def test_method_state_resumes_the_controller():
    cls = METHODS.get("topk_s1")
    m = cls(cls.resolve_options({"beta": 0.5}))
    m.controller.step(P())
    clone = cls(cls.resolve_options({"beta": 0.5}))
    clone.load_state_dict(m.state_dict())
    assert clone.controller.r == 0.5 and clone.controller.action == "compress"


@pytest.mark.parametrize("bad", [{"scope": "global"}, {"beta": 1.0}, {"r_min": 0.0},
                                 {"eval_ratios": [0.5, 0]}, {"patience": -1},
                                 {"probe_size": 0}, {"probe_size": 1.5}])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        METHODS.get("topk_s2").resolve_options(bad)


def test_every_constant_is_an_option_with_the_methods_md_default():
    s1 = METHODS.get("topk_s1").resolve_options({})
    s2 = METHODS.get("topk_s2").resolve_options({})
    saw = METHODS.get("topk_sawtooth").resolve_options({})
    for o in (s1, s2):
        assert (o["r_min"], o["beta"], o["probe_size"]) == (0.05, 0.8, 2048)
    assert s1["loss_tolerance"] == 0.10
    assert (s2["acc_margin"], s2["patience"]) == (0.02, 3)
    assert (saw["r_min"], saw["period"]) == (0.05, 10)


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name,options", [
    ("dense", {}), ("topk_s1", {}), ("topk_s2", {}), ("topk_sawtooth", {"period": 2}),
    ("topk_s1", {"scope": "network", "eval_ratios": [0.5, 0.1]}),
])
def test_sparsity_method_cell(name, options, tmp_path):
    cfg = tiny_cell(tmp_path, method=name, methods=sorted({name, "sgd"}), epochs=3,
                    method_options={name: options})
    result = run_cell(cfg, tmp_path / "result.json", tracker=None)
    assert result["status"] == "ok", result["reason"]
    history, final = result["history"], result["final"]
    ratios = [h["keep_ratio"] for h in history]
    rates = [h["effective_activation_rate"] for h in history]
    assert len(ratios) == len(rates) == 3
    assert ratios[0] == 1.0 and all(0 < r <= 1 for r in ratios)
    assert all(0 < a <= 1 for a in rates)
    if name == "dense":
        assert ratios == [1.0, 1.0, 1.0]
    if name == "topk_sawtooth":
        assert ratios == pytest.approx([1.0, 0.05, 1.0])
        assert rates[1] <= 0.055  # ceil(0.05 n) per sample and layer
        assert rates[0] > rates[1]
    if name in ("topk_s1", "topk_s2"):
        # the probe ran every epoch; replaying its numbers through a fresh controller gives the
        # same keep ratios and actions (the recorded numbers are what drove the controller)
        replay = METHODS.get(name).make_controller(METHODS.get(name).resolve_options(options))
        for h in history:
            assert replay.r == pytest.approx(h["keep_ratio"])
            replay.step(Probe(h["probe_dense_loss"], h["probe_dense_acc"], h["probe_loss"],
                              h["probe_acc"]))
            assert h["controller_action"] == replay.action
            assert h["reset_cause"] == replay.reset_cause
            assert h["reset"] == int(replay.action == "reset")
            assert h["probe_s"] > 0 and h["probe_fraction"] > 0
        assert history[0]["probe_loss"] == history[0]["probe_dense_loss"]  # r = 1: one pass
        assert final["probe_size"] == 128  # the tiny study's train split (128 images), all of it
        assert final["probe_s_total"] == pytest.approx(sum(h["probe_s"] for h in history))
        assert 0 < final["probe_fraction"]
    else:
        assert "probe_loss" not in history[0] and "probe_size" not in final
    for h, nxt in zip(history, ratios[1:], strict=False):
        assert h["next_keep_ratio"] == nxt
        assert h["phase"] == ("dense" if h["keep_ratio"] == 1.0 else "sparse")
    for r in options.get("eval_ratios", [0.5, 0.25, 0.1, 0.05]):
        assert 0.0 <= final[f"acc_at_r{r:g}"] <= 1.0
    assert "acc_at_r0.5" in final
    assert final["mean_keep_ratio"] == pytest.approx(sum(ratios) / 3)


def test_the_paper_config_uses_the_papers_global_top_k_the_quick_one_per_layer():
    from bench.config import ROOT, Cell, check_config, load_config, resolve_cell

    for name, scope in (("paper.yaml", "network"), ("config.yaml", "layer")):
        cfg = check_config(load_config([ROOT / "config" / name]))
        study = cfg["studies"]["sparsity_regimes"]
        for method in study["methods"]:
            cell = resolve_cell(cfg, Cell("sparsity_regimes", method, study["models"][0],
                                          study["datasets"][0], str(study["budgets"][0]), 0))
            assert cell["method_options"]["scope"] == scope, (name, method)


@pytest.mark.parametrize("options,bites", [
    ({"scope": "network", "beta": 0.3, "loss_tolerance": 100.0}, True),  # r 1, 0.3, 0.09
    ({"scope": "network", "r_min": 0.9, "beta": 0.95, "loss_tolerance": 100.0}, False),
])
def test_sparsity_bites_on_a_trained_cell(options, bites, tmp_path):
    from bench.checks import checks_table
    from bench.studies.sparsity_regimes import checks  # noqa: F401 (registers the checks)

    cfg = tiny_cell(tmp_path, method="topk_s1", methods=["sgd", "topk_s1"], epochs=3,
                    method_options={"topk_s1": options})
    result = run_cell(cfg, tmp_path / "result.json", tracker=None)
    assert result["status"] == "ok", result["reason"]
    density = result["history"][0]["effective_activation_rate"]  # r = 1: the ReLUs' own
    assert 0.2 < density < 0.9
    result["axes"]["study"] = "sparsity_regimes"
    t = checks_table("sparsity_regimes", [result])
    row = t[t["check"] == "sparsity_bites"].iloc[0]
    assert bool(row["passed"]) is bites, row.to_dict()
    assert f"vs density {density:.3g}" in row["value"]
