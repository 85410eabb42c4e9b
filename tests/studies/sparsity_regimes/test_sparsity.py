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
from bench.studies.sparsity_regimes.controllers import (
    AccuracyTargetedController,
    ConstantController,
    LossGuardedController,
    SawtoothController,
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


def drive(controller, losses=None, accs=None):
    """The keep ratio each epoch trains at, for scripted epoch losses / accuracies."""
    n = len(losses if losses is not None else accs)
    losses = losses if losses is not None else [0.0] * n
    accs = accs if accs is not None else [0.0] * n
    ratios = []
    for loss, acc in zip(losses, accs, strict=True):
        ratios.append(controller.r)
        controller.step(loss, acc)
    return ratios + [controller.r]


def test_s1_compress_and_reset_trajectory():
    c = LossGuardedController(r_min=0.1, beta=0.5, loss_tolerance=0.10)
    losses = [2.0,  # dense: reference 2.0, bound 2.2
              2.1, 2.2, 2.0,  # within the bound: compress 0.5 -> 0.25 -> 0.125 -> 0.1 (floor)
              1.9,  # fine but r == r_min: reset (new cycle)
              1.5,  # dense: reference 1.5, bound 1.65
              1.7,  # 1.7 > 1.65: reset
              1.6]  # dense: reference 1.6
    assert drive(c, losses=losses) == [1.0, 0.5, 0.25, 0.125, 0.1, 1.0, 0.5, 1.0, 0.5]
    assert c.ref_loss == 1.6 and c.resets == 2
    c2 = LossGuardedController(r_min=0.1, beta=0.5)
    assert drive(c2, losses=[1.0, float("nan")]) == [1.0, 0.5, 1.0]  # non-finite loss resets


def test_s1_defaults_reach_r_min_then_reset():
    c = LossGuardedController()  # r_min 0.05, beta 0.8
    ratios = drive(c, losses=[1.0] * 16)
    expected = [0.8 ** i for i in range(14)] + [0.05, 1.0, 0.8]  # 0.8**14 = 0.044 < 0.05
    assert ratios == pytest.approx(expected)


def test_s2_compress_hold_and_reset_trajectory():
    c = AccuracyTargetedController(r_min=0.1, beta=0.5, acc_margin=0.02, patience=3)
    accs = [0.50,  # dense: reference 0.50, floor 0.48
            0.49,  # fine: 0.5 -> 0.25
            0.47, 0.475,  # violations 1, 2: hold 0.25
            0.485,  # fine again: compress 0.25 -> 0.125
            0.40, 0.40, 0.40,  # violations 1..3: hold 0.125 (patience)
            0.40,  # violation 4 > patience: reset
            0.60,  # dense: reference 0.60, floor 0.58
            0.59, 0.59, 0.59,  # compress 0.5 -> 0.25 -> 0.125 -> 0.1 (floor)
            0.59]  # fine at r_min: reset (new cycle)
    assert drive(c, accs=accs) == [1.0, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125,
                                   1.0, 0.5, 0.25, 0.125, 0.1, 1.0]
    assert c.ref_acc == 0.60 and c.resets == 2


def test_s2_violation_at_r_min_holds_then_resets_and_patience_zero_resets_at_once():
    c = AccuracyTargetedController(r_min=0.25, beta=0.5, acc_margin=0.0, patience=1)
    assert drive(c, accs=[0.9, 0.9, 0.8, 0.8]) == [1.0, 0.5, 0.25, 0.25, 1.0]
    c0 = AccuracyTargetedController(r_min=0.1, beta=0.5, acc_margin=0.02, patience=0)
    assert drive(c0, accs=[0.5, 0.3, 0.5]) == [1.0, 0.5, 1.0, 0.5]


def test_sawtooth_trajectory():
    c = SawtoothController(r_min=0.125, period=4)  # r_t = 0.125 ** (t mod 4 / 3) = 0.5 ** (t mod 4)
    assert drive(c, losses=[9.0] * 9) == pytest.approx(
        [1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125, 1.0, 0.5])
    d = SawtoothController()  # r_min 0.05, period 10
    ratios = drive(d, losses=[0.0] * 10)
    assert ratios[0] == 1.0 and ratios[9] == pytest.approx(0.05) and ratios[10] == 1.0
    assert ratios[1] == pytest.approx(0.05 ** (1 / 9))
    with pytest.raises(ValueError):
        SawtoothController(period=1)


def test_controller_state_round_trips():
    c = AccuracyTargetedController(r_min=0.1, beta=0.5)
    drive(c, accs=[0.5, 0.49, 0.3])
    clone = AccuracyTargetedController(r_min=0.1, beta=0.5)
    clone.load_state_dict(c.state_dict())
    assert drive(clone, accs=[0.3, 0.3, 0.3]) == drive(c, accs=[0.3, 0.3, 0.3])
    assert drive(ConstantController(), losses=[1.0, 2.0]) == [1.0, 1.0, 1.0]


def test_method_state_resumes_the_controller():
    cls = METHODS.get("topk_s1")
    m = cls(cls.resolve_options({"beta": 0.5}))
    m.controller.step(1.0, 0.5)
    clone = cls(cls.resolve_options({"beta": 0.5}))
    clone.load_state_dict(m.state_dict())
    assert clone.controller.r == 0.5 and clone.controller.ref_loss == 1.0


@pytest.mark.parametrize("bad", [{"scope": "global"}, {"beta": 1.0}, {"r_min": 0.0},
                                 {"eval_ratios": [0.5, 0]}, {"patience": -1}])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        METHODS.get("topk_s2").resolve_options(bad)


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
    if name == "topk_s1":
        assert ratios[1] in (1.0, 0.8)
    for h, nxt in zip(history, ratios[1:], strict=False):
        assert h["next_keep_ratio"] == nxt
        assert h["phase"] == ("dense" if h["keep_ratio"] == 1.0 else "sparse")
    for r in options.get("eval_ratios", [0.5, 0.25, 0.1, 0.05]):
        assert 0.0 <= final[f"acc_at_r{r:g}"] <= 1.0
    assert "acc_at_r0.5" in final
    assert final["mean_keep_ratio"] == pytest.approx(sum(ratios) / 3)
