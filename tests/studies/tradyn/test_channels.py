"""bench.studies.tradyn.channels: per-channel costs (paper Eq. 3-4), selection under a budget, RGN, gradient
masking, sparsity metrics, and the real activation saving of SelectiveConv2d (measured)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from bench.errors import BudgetError, ConfigError
from bench.measure import activation_bytes_of_step, count_flops
from bench.models import build_model
from bench.models.mobilenetv2 import ConvBNReLU6
from bench.studies.tradyn.channels import (
    ChannelCost,
    ChannelMask,
    ConvInfo,
    RGNAccumulator,
    SelectiveConv2d,
    all_channels,
    channel_costs,
    channel_rgn,
    conv_layers,
    conv_output_hw,
    deterministic_selection,
    disable_selective_saving,
    enable_selective_saving,
    layer_rgn,
    layer_unit_costs,
    random_selection,
    selection_masks,
    sparsity_metrics,
    top_k_layers,
    total_costs,
    units_to_bytes,
)

F32 = 4  # bytes per float32


def sum_loss(out: Tensor, _targets: Tensor) -> Tensor:
    """A loss that saves nothing for backward, so saved bytes are the layer's alone."""
    return out.sum()


def small_mbv2(width: float = 0.35) -> nn.Module:
    """MobileNetV2 (ImageNet strides) without dropout: deterministic forward for comparisons."""
    torch.manual_seed(0)
    return build_model("mobilenetv2", 10, 3, {"width": width, "dropout": 0.0})


def mixed_selection(infos: list[ConvInfo], seed: int = 0) -> list[tuple[int, int]]:
    """Per layer at random: no channel, every channel, or a random subset."""
    g = torch.Generator().manual_seed(seed)
    selected = []
    for i, info in enumerate(infos):
        mode = int(torch.randint(3, (1,), generator=g))
        if mode == 1:
            selected += [(i, c) for c in range(info.c_in)]
        elif mode == 2:
            keep = torch.rand(info.c_in, generator=g) < 0.4
            keep[0] = True  # partial and non-empty
            if info.c_in > 1:
                keep[-1] = False
            selected += [(i, c) for c in torch.nonzero(keep).flatten().tolist()]
    return selected


# --- layers and costs ------------------------------------------------------------------------


def test_conv_layers_real_sizes_and_mode_restored() -> None:
    model = small_mbv2()
    model.train()
    model.features[3].eval()  # a mixed state must survive too
    infos = conv_layers(model, torch.zeros(1, 3, 32, 32))
    assert len(infos) == 52  # stem + 17 blocks (16 with expand: 3 convs, 1 without: 2) + last
    assert sum(info.depthwise for info in infos) == 17
    names = dict(model.named_modules())
    for info in infos:
        assert names[info.name] is info.module
        assert (info.c_out, info.c_in, info.groups) == (
            info.module.out_channels, info.module.in_channels, info.module.groups)
        assert info.out_hw == conv_output_hw(info.module, info.in_hw)
    assert infos[0].in_hw == (32, 32) and infos[0].out_hw == (16, 16)
    assert infos[-1].c_out == 1280 and infos[-1].in_hw == (1, 1)
    assert model.training and not model.features[3].training
    assert model.features[4].training


def test_channel_costs_by_hand() -> None:
    dense = ConvInfo.from_module(nn.Conv2d(4, 8, 3, stride=2, padding=1), (10, 10))
    assert dense.out_hw == (5, 5)
    assert channel_costs(dense) == ChannelCost(8 * 9, 100, 8 * 9 + 100, 9 * 8 * 5 * 5)
    dw = ConvInfo.from_module(nn.Conv2d(6, 6, 3, padding=1, groups=6), (7, 7))
    assert dw.depthwise
    assert channel_costs(dw) == ChannelCost(9, 49, 58, 9 * 49)
    dw_mult = ConvInfo.from_module(nn.Conv2d(6, 12, 3, padding=1, groups=6), (7, 7))
    assert dw_mult.depthwise and channel_costs(dw_mult).weight_units == 2 * 9
    grouped = ConvInfo.from_module(nn.Conv2d(4, 8, (3, 1), groups=2), (6, 5))
    assert not grouped.depthwise and grouped.out_hw == (4, 5)
    assert channel_costs(grouped) == ChannelCost(4 * 3, 30, 42, 3 * 4 * 4 * 5)
    totals = total_costs([dense, dw])
    assert totals == {"weight_units": 4 * 72 + 6 * 9, "activation_units": 400 + 6 * 49,
                      "memory_units": 4 * 172 + 6 * 58, "wgrad_flops": 4 * 1800 + 6 * 441,
                      "channels": 10}
    assert units_to_bytes(1000) == 4000 and units_to_bytes(1000, bytes_per_unit=2) == 2000


def test_total_wgrad_flops_match_measured_conv_weight_gradients() -> None:
    """Eq. 4 counts multiply-adds per sample; torch counts 2 FLOPs each, per batch."""
    model = small_mbv2(0.25)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    infos = conv_layers(model, x[:1])
    counts = count_flops(model, x, y)
    linear = 2 * 2 * model.fc.in_features * model.fc.out_features
    assert counts.weight_grad - linear == 2 * 2 * total_costs(infos)["wgrad_flops"]


def test_mobilenetv2_w035_full_finetuning_budget_vs_paper() -> None:
    """B_mem of full fine-tuning = weight + activation units of every conv channel at 128x128.

    Our `mobilenetv2` (torchvision's width rule: last 1x1 conv 1280 channels whatever the width)
    gives 1,345,504 units: 382,048 weight + 963,456 activation. The paper's 1,252,320 is exactly
    ours with the last conv at 448 = make_divisible(1280 * 0.35) channels (the MCUNet/
    tiny-training mbv2-w0.35 scales the last channel too): 112 * (1280 - 448) = 93,184 fewer
    weight units, same activations. So the paper counts as we do: every conv incl. the stem
    (its activation is the input image), no classifier, no BN, activation = input H x W,
    depthwise weight D x D per channel.
    """
    model = build_model("mobilenetv2", 10, 3, {"width": 0.35})
    example = torch.zeros(1, 3, 128, 128)
    ours = total_costs(conv_layers(model, example))
    assert ours["weight_units"] == 382_048
    assert ours["activation_units"] == 963_456
    assert ours["memory_units"] == 1_345_504
    model.features[-1] = ConvBNReLU6(112, 448, kernel_size=1)  # the paper's backbone
    model.fc = nn.Linear(448, 10)
    paper = total_costs(conv_layers(model, example))
    assert paper["memory_units"] == 1_252_320
    assert ours["memory_units"] - paper["memory_units"] == 112 * (1280 - 448)


# --- selection -------------------------------------------------------------------------------


def _greedy(order, costs, budget, fill):
    """The reference walk: accept what fits; skip (or stop at) what does not."""
    taken, used = [], 0.0
    for ch in order:
        if used + costs[ch[0]] <= budget:
            taken.append(ch)
            used += costs[ch[0]]
        elif fill == "stop":
            break
    return taken


@pytest.mark.parametrize("fill", ["skip", "stop"])
def test_random_selection_walks_the_shuffled_pool_and_is_reproducible(fill) -> None:
    pool = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    costs = [10.0, 3.0]
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    sel = random_selection(pool, costs, 14, g, fill)
    g.set_state(state)
    order = [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]
    assert sel == _greedy(order, costs, 14, fill)
    g.set_state(state)
    assert random_selection(pool, costs, 14, g, fill) == sel
    # a callable cost works the same
    g.set_state(state)
    assert random_selection(pool, lambda ch: costs[ch[0]], 14, g, fill) == sel


def test_skip_fills_the_budget_where_stop_wastes_it() -> None:
    # one expensive channel first in the order: stop takes nothing after it, skip goes on
    scores = {(0, 0): 0.9, (1, 0): 0.8, (2, 0): 0.7, (1, 1): 0.6, (1, 2): 0.5}
    costs = [5, 1, 8]
    assert deterministic_selection(scores, costs, 8, "stop") == [(0, 0), (1, 0)]
    assert deterministic_selection(scores, costs, 8) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ConfigError, match="fill"):
        deterministic_selection(scores, costs, 8, "first")
    with pytest.raises(ConfigError, match="fill"):
        random_selection(list(scores), costs, 8, torch.Generator(), "greedy")


def test_deterministic_selection_by_score() -> None:
    costs = [5, 1]
    scores = {(0, 0): 0.9, (1, 0): 0.8, (1, 1): 0.8, (0, 1): 0.1, (1, 2): 0.05}
    for fill in ("skip", "stop"):
        assert deterministic_selection(scores, costs, 7, fill) == [(0, 0), (1, 0), (1, 1)]
    # (0, 1) overflows at 12 > 11: stop ends there, skip passes over it and takes (1, 2)
    assert deterministic_selection(scores, costs, 11, "stop") == [(0, 0), (1, 0), (1, 1)]
    assert deterministic_selection(scores, costs, 11) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    # top channel too costly: stop takes nothing, skip takes the cheaper ones after it
    assert deterministic_selection(scores, costs, 3, "stop") == []
    assert deterministic_selection(scores, costs, 3) == [(1, 0), (1, 1), (1, 2)]


def test_budget_below_cheapest_channel_is_a_budget_error() -> None:
    pool = [(0, 0), (1, 0)]
    with pytest.raises(BudgetError, match=r"100 units \(400 bytes.*layer 1 channel 0 costs 250"):
        random_selection(pool, [300, 250], 100, torch.Generator().manual_seed(0))
    with pytest.raises(BudgetError, match="raise the budget to at least 250"):
        deterministic_selection({(0, 0): 1.0, (1, 0): 2.0}, [300, 250], 100)
    with pytest.raises(ConfigError):
        random_selection(pool, [1, 1], -1, torch.Generator())
    with pytest.raises(ConfigError):
        random_selection(pool, [1, 1], float("nan"), torch.Generator())
    assert random_selection([], [1], 0, torch.Generator()) == []


layer_shape = st.tuples(
    st.integers(1, 6),  # groups multiplier source
    st.integers(1, 4),  # input channels per group
    st.integers(1, 3),  # output channels per group
    st.sampled_from([1, 3]),  # kernel
    st.integers(1, 9),  # H = W
    st.sampled_from([1, 2]),  # stride
)


def _infos_from_shapes(shapes: list[tuple[int, int, int, int, int, int]]) -> list[ConvInfo]:
    infos = []
    for groups, ipg, opg, k, hw, stride in shapes:
        conv = nn.Conv2d(groups * ipg, groups * opg, k, stride, k // 2, groups=groups,
                         bias=False)
        infos.append(ConvInfo.from_module(conv, (hw, hw)))
    return infos


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(layer_shape, min_size=1, max_size=4),
    budget_fraction=st.floats(0.0, 1.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_selection_properties(shapes: list, budget_fraction: float, seed: int) -> None:
    infos = _infos_from_shapes(shapes)
    pool = all_channels(infos)
    costs = layer_unit_costs(infos)
    total = total_costs(infos)["memory_units"]
    assert total == sum(costs[i] for i, _ in pool)
    budget = budget_fraction * total
    g = torch.Generator().manual_seed(seed)
    if budget < min(costs):
        with pytest.raises(BudgetError):
            random_selection(pool, costs, budget, g)
        with pytest.raises(BudgetError):
            deterministic_selection({ch: 1.0 for ch in pool}, costs, budget)
        return
    state = g.get_state()
    sel = random_selection(pool, costs, budget, g)
    g.set_state(state)
    order = [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]
    g.set_state(state)
    stop = random_selection(pool, costs, budget, g, "stop")
    assert stop == order[: len(stop)]  # stop: a prefix of the shuffled pool
    if len(stop) < len(pool):  # stopped at the first channel that overflows
        assert sum(costs[i] for i, _ in stop) + costs[order[len(stop)][0]] > budget
    assert sel == _greedy(order, costs, budget, "skip")  # skip: in shuffled order
    assert stop == sel[: len(stop)]  # skip only ever adds to what stop takes
    used = sum(costs[i] for i, _ in sel)
    assert used <= budget
    # skip leaves no channel of the pool that would still fit
    assert all(used + costs[i] > budget for i, c in set(pool) - set(sel))
    scores = {ch: float((ch[0] * 7919 + ch[1] * 104729 + seed) % 1000) for ch in pool}
    ranked = sorted(pool, key=lambda ch: (-scores[ch], ch))
    det = deterministic_selection(scores, costs, budget)
    assert det == _greedy(ranked, costs, budget, "skip")
    assert sum(costs[i] for i, _ in det) <= budget
    det_stop = deterministic_selection(scores, costs, budget, "stop")
    assert det_stop == ranked[: len(det_stop)]
    if budget >= total:
        assert sorted(sel) == pool and sorted(det) == pool
    metrics = sparsity_metrics(infos, sel)
    assert metrics["selected_memory_units"] <= budget
    assert 0.0 <= metrics["weight_sparsity"] <= 1.0


def test_selection_masks_reject_unknown_channels() -> None:
    infos = _infos_from_shapes([(1, 2, 2, 1, 3, 1)])
    assert selection_masks(infos, [(0, 1)])[0].tolist() == [False, True]
    with pytest.raises(ConfigError):
        selection_masks(infos, [(0, 2)])
    with pytest.raises(ConfigError):
        selection_masks(infos, [(1, 0)])


# --- reweighted gradient norm ----------------------------------------------------------------


def _grouped_layers() -> tuple[nn.Module, list[ConvInfo], Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1),  # dense
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
        nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6),  # depthwise, multiplier 2
        nn.Conv2d(12, 8, 1, groups=4),  # grouped
    )
    x = torch.randn(3, 4, 8, 8)
    return model, conv_layers(model, x[:1]), x


def _slice_grad(info: ConvInfo, grad: Tensor, c: int) -> Tensor:
    """dL/dW[:, c] (of its group) by plain indexing, one channel at a time (test reference)."""
    group, col = divmod(c, info.in_per_group)
    rows = slice(group * info.out_per_group, (group + 1) * info.out_per_group)
    return grad[rows, col]


def test_channel_rgn_matches_per_channel_definition() -> None:
    model, infos, x = _grouped_layers()
    model(x).square().sum().backward()
    rgn = channel_rgn(infos)
    assert len(rgn) == sum(info.c_in for info in infos)
    for i, info in enumerate(infos):
        units = channel_costs(info).memory_units
        for c in range(info.c_in):
            expected = _slice_grad(info, info.module.weight.grad.double(), c).norm().item()
            assert rgn[(i, c)] == pytest.approx(expected / units, rel=1e-12)
    layers = layer_rgn(infos)
    for i, info in enumerate(infos):
        assert layers[i] == pytest.approx(sum(rgn[(i, c)] for c in range(info.c_in)))
    model[0].weight.grad = None
    assert layer_rgn(infos)[0] == 0.0


def test_rgn_accumulator_sums_backward_passes() -> None:
    model, infos, x = _grouped_layers()
    acc = RGNAccumulator(infos)
    per_pass = []
    for scale in (1.0, 3.0):
        model.zero_grad(set_to_none=True)
        (scale * model(x)).square().sum().backward()
        acc.update()
        per_pass.append(layer_rgn(infos))
    assert acc.steps == 2
    assert acc.layer_scores() == pytest.approx([a + b for a, b in zip(*per_pass)])
    assert sum(acc.channel_scores().values()) == pytest.approx(sum(acc.layer_scores()))
    restored = RGNAccumulator(infos)
    restored.load_state_dict(acc.state_dict())
    assert restored.layer_scores() == acc.layer_scores() and restored.steps == 2


def test_top_k_layers() -> None:
    scores = [1.0, 50.0, 0.0, 30.0, 19.0]
    assert top_k_layers(scores, 0.5) == [1]
    assert top_k_layers(scores, 0.8) == [1, 3]
    assert top_k_layers(scores, 0.97) == [1, 3, 4]
    assert top_k_layers(scores, 1.0) == [0, 1, 3, 4]  # a zero-score layer is never needed
    assert top_k_layers([1.0, 1.0, 1.0], 0.5) == [0, 1]  # ties: lower index first
    with pytest.raises(ConfigError):
        top_k_layers(scores, 0.0)
    with pytest.raises(ConfigError):
        top_k_layers([0.0, 0.0])
    with pytest.raises(ConfigError):
        top_k_layers([1.0, -1.0])


# --- gradient masking and sparsity -----------------------------------------------------------


def test_channel_mask_keeps_only_selected_slices() -> None:
    model, infos, x = _grouped_layers()
    model(x).square().sum().backward()
    full = [info.module.weight.grad.clone() for info in infos]
    full_bias = [info.module.bias.grad.clone() for info in infos]
    selected = [(0, 1), (0, 3), (2, 0), (2, 5), (3, 2), (3, 7)]  # layer 1: nothing
    mask = ChannelMask(infos, selected)
    mask.apply(infos)
    assert infos[1].module.weight.grad is None and infos[1].module.bias.grad is None
    for i in (0, 2, 3):
        info, grad = infos[i], infos[i].module.weight.grad
        expected = torch.zeros_like(full[i])
        for c in [c for (j, c) in selected if j == i]:
            group, col = divmod(c, info.in_per_group)
            rows = slice(group * info.out_per_group, (group + 1) * info.out_per_group)
            expected[rows, col] = full[i][rows, col]
        assert torch.equal(grad, expected)
        assert torch.equal(info.module.bias.grad, full_bias[i])
    assert mask.selected_channels == 6 and mask.total_channels == 4 + 6 + 6 + 12
    assert mask.selected_fraction == pytest.approx(6 / 28)
    assert mask.selected_layers == [0, 2, 3]
    assert mask.layer_fractions() == pytest.approx([0.5, 0.0, 2 / 6, 2 / 12])


def test_masked_sgd_step_moves_only_selected_slices() -> None:
    model, infos, x = _grouped_layers()
    before = [info.module.weight.detach().clone() for info in infos]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().sum().backward()
    ChannelMask(infos, [(0, 2), (3, 5)]).apply()
    opt.step()
    for i, info in enumerate(infos):
        moved = (info.module.weight.detach() != before[i]).any(dim=(0, 2, 3))
        expected = torch.zeros(info.in_per_group, dtype=torch.bool)
        if i == 0:
            expected[2] = True
        if i == 3:  # channel 5 = group 1, column 2: rows 2..3 only
            expected[2] = True
            rows_moved = (info.module.weight.detach() != before[i]).any(dim=(1, 2, 3))
            assert rows_moved.tolist() == [False, False, True, True, False, False, False, False]
        assert moved.tolist() == expected.tolist()


def test_sparsity_metrics() -> None:
    infos = [ConvInfo.from_module(nn.Conv2d(4, 8, 3, padding=1), (10, 10)),
             ConvInfo.from_module(nn.Conv2d(8, 8, 3, padding=1, groups=8), (10, 10))]
    metrics = sparsity_metrics(infos, [(0, 0), (1, 3), (1, 4)])
    total_w, total_a, total_f = 4 * 72 + 8 * 9, 12 * 100, 4 * 7200 + 8 * 900
    assert metrics["weight_sparsity"] == pytest.approx(1 - (72 + 18) / total_w)
    assert metrics["activation_sparsity"] == pytest.approx(1 - 300 / total_a)
    assert metrics["wgrad_flops_saved"] == pytest.approx(1 - (7200 + 1800) / total_f)
    assert metrics["selected_channels"] == 3
    assert metrics["selected_memory_units"] == 172 + 2 * 109
    assert sparsity_metrics(infos, all_channels(infos))["weight_sparsity"] == 0.0
    assert sparsity_metrics(infos, [])["activation_sparsity"] == 1.0


# --- SelectiveConv2d: gradients --------------------------------------------------------------

CONV_CASES = {  # (C, C', kernel, stride, padding, dilation, groups, bias)
    "dense": (6, 8, 3, 1, 1, 1, 1, False),
    "dense_strided_dilated_bias": (6, 5, 3, 2, 2, 2, 1, True),
    "pointwise": (6, 10, 1, 1, 0, 1, 1, False),
    "depthwise": (6, 6, 3, 2, 1, 1, 6, False),
    "depthwise_multiplier": (6, 12, 3, 1, 1, 1, 6, True),
    "grouped": (6, 9, 3, 1, 1, 2, 3, True),
}


def _full_and_selective(conv: nn.Conv2d, x: Tensor, selected: list[tuple[int, int]]):
    info = ConvInfo.from_module(conv, tuple(x.shape[-2:]))
    out = conv(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    full = (x.grad.clone(), conv.weight.grad.clone(),
            None if conv.bias is None else conv.bias.grad.clone())
    x.grad = None
    conv.zero_grad(set_to_none=True)
    enable_selective_saving(conv, [info], selected)
    out_sel = conv(x)
    assert out_sel.grad_fn.name().startswith("SelectiveConv2d")
    assert torch.equal(out_sel, out)
    out_sel.backward(grad_out)
    disable_selective_saving(conv)
    return info, full, (x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("which", ["some", "all", "none"])
def test_selective_conv_gradients_match_full_backprop(case: str, which: str) -> None:
    c_in, c_out, k, s, p, d, g, bias = CONV_CASES[case]
    torch.manual_seed(1)
    conv = nn.Conv2d(c_in, c_out, k, s, p, d, groups=g, bias=bias).double()
    x = torch.randn(3, c_in, 11, 9, dtype=torch.float64, requires_grad=True)
    channels = {"some": [0, 3, 4], "all": list(range(c_in)), "none": []}[which]
    info, full, sel = _full_and_selective(conv, x, [(0, c) for c in channels])
    torch.testing.assert_close(sel[0], full[0], rtol=1e-12, atol=1e-12)  # grad_input
    if bias:
        torch.testing.assert_close(sel[2], full[2], rtol=1e-12, atol=1e-12)
    if not channels:
        assert sel[1] is None
        return
    for c in range(c_in):
        got, want = _slice_grad(info, sel[1], c), _slice_grad(info, full[1], c)
        if c in channels:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        else:
            assert not got.any()


def test_selective_conv_with_frozen_weight_saves_nothing() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).double().requires_grad_(False)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(conv(x).square().sum(), x)[0]
    info = ConvInfo.from_module(conv, (7, 7))
    enable_selective_saving(conv, [info], [(0, 1)])
    saved = activation_bytes_of_step(conv, x, torch.zeros(2), sum_loss)
    got = torch.autograd.grad(conv(x).square().sum(), x)[0]
    disable_selective_saving(conv)
    assert saved == 0  # a frozen weight needs no input for backward (the weight is excluded)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert conv.weight.grad is None


def test_selective_conv_after_disable_and_without_grad() -> None:
    conv = nn.Conv2d(3, 4, 3, padding="same")
    info = ConvInfo.from_module(conv, (5, 5))
    x = torch.randn(2, 3, 5, 5)
    enable_selective_saving(conv, [info], [(0, 1)])
    with torch.no_grad():
        assert conv(x).grad_fn is None
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    disable_selective_saving(conv)
    assert "forward" not in conv.__dict__ and conv(x).grad_fn.name() != "SelectiveConv2dBackward"
    with pytest.raises(ConfigError, match="padding_mode"):
        reflect = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        enable_selective_saving(reflect, [ConvInfo.from_module(reflect, (5, 5))], [])
    with pytest.raises(ConfigError, match="not a module"):
        enable_selective_saving(nn.Sequential(), [info], [])
    assert SelectiveConv2d is not None


def test_selective_saving_whole_mobilenetv2_gradients() -> None:
    model = small_mbv2()
    model.train()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    infos = conv_layers(model, x[:1].detach())
    F.cross_entropy(model(x), y).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    full_x = x.grad.clone()
    model.zero_grad(set_to_none=True)
    x.grad = None
    selected = mixed_selection(infos)
    enable_selective_saving(model, infos, selected)
    F.cross_entropy(model(x), y).backward()
    disable_selective_saving(model)
    # grad_input runs the same kernel as conv2d's backward: equal up to float32 rounding
    torch.testing.assert_close(x.grad, full_x, rtol=1e-6, atol=1e-9)
    conv_weights = {id(info.module.weight) for info in infos}
    for n, p in model.named_parameters():  # BN and classifier
        if id(p) not in conv_weights:
            torch.testing.assert_close(p.grad, full[n], rtol=1e-6, atol=1e-9)
    masks = selection_masks(infos, selected)
    reference = {info.name: full[info.name + ".weight"] for info in infos}
    for info, mask in zip(infos, masks):
        grad = info.module.weight.grad
        if not mask.any():
            assert grad is None
            continue
        expected = reference[info.name].clone()
        info.module.weight.grad = expected
        ChannelMask([info], [(0, c) for c in torch.nonzero(mask).flatten().tolist()]).apply()
        scale = reference[info.name].abs().max().item()
        # a weight gradient of a channel subset sums in another order: float32 rounding only
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6 * scale)


# --- SelectiveConv2d: measured activation memory ---------------------------------------------


def _unselected_activation_bytes(infos: list[ConvInfo], selected, batch: int) -> int:
    """Accounting: activation units of the unselected channels x batch x 4 bytes."""
    units = 0
    for info, mask in zip(infos, selection_masks(infos, selected)):
        units += (info.c_in - int(mask.sum())) * channel_costs(info).activation_units
    return int(units_to_bytes(units * batch))


@pytest.mark.parametrize("case", ["dense", "depthwise", "grouped"])
def test_single_conv_saved_bytes_drop_exactly_as_accounted(case: str) -> None:
    c_in, c_out, k, s, p, d, g, bias = CONV_CASES[case]
    conv = nn.Conv2d(c_in, c_out, k, s, p, d, groups=g, bias=bias)
    batch = 5
    x, y = torch.randn(batch, c_in, 12, 10), torch.zeros(batch)
    infos = [ConvInfo.from_module(conv, (12, 10))]
    full = activation_bytes_of_step(conv, x, y, sum_loss)
    assert full == batch * c_in * 12 * 10 * F32  # the input, once (weight excluded)
    for chosen in ([1, 4], list(range(c_in)), []):
        selected = [(0, c) for c in chosen]
        enable_selective_saving(conv, infos, selected)
        part = activation_bytes_of_step(conv, x, y, sum_loss)
        disable_selective_saving(conv)
        assert full - part == _unselected_activation_bytes(infos, selected, batch)


def test_whole_mobilenetv2_saved_bytes_drop_as_accounted() -> None:
    """Every conv input of MobileNetV2 is saved by that conv alone: BN saves its input (the conv
    output) and ReLU6 (in-place hardtanh_) saves its own copy of the pre-clamp tensor in torch
    2.15, neither depends on the selection, so the measured drop is exactly the accounting."""
    model = small_mbv2()
    model.train()
    batch = 4
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    infos = conv_layers(model, x[:1])
    full = activation_bytes_of_step(model, x, y)
    for seed in (0, 1):
        selected = mixed_selection(infos, seed)
        enable_selective_saving(model, infos, selected)
        part = activation_bytes_of_step(model, x, y)
        disable_selective_saving(model)
        accounted = _unselected_activation_bytes(infos, selected, batch)
        assert 0 < accounted < full
        assert full - part == accounted
    # TraDy-sized selection: random channels of a budget over all layers
    g = torch.Generator().manual_seed(0)
    budget = 0.05 * total_costs(infos)["memory_units"]
    selected = random_selection(all_channels(infos), layer_unit_costs(infos), budget, g)
    enable_selective_saving(model, infos, selected)
    part = activation_bytes_of_step(model, x, y)
    disable_selective_saving(model)
    assert full - part == _unselected_activation_bytes(infos, selected, batch)


def test_input_kept_by_relu_limits_the_saving() -> None:
    """Where another op keeps the conv input alive, freezing its channels frees nothing.

    ReLU saves its *output* for backward, which is the next conv's input: full backprop stores
    it once (shared storage), while the selective conv adds its own copy of the selected
    channels. A caveat for ReLU networks (ResNets), not for MobileNetV2 (see above)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    batch = 2
    x, y = torch.randn(batch, 3, 6, 6), torch.zeros(batch)
    infos = conv_layers(model, x[:1])
    full = activation_bytes_of_step(model, x, y, sum_loss)
    assert full == batch * (3 + 8) * 36 * F32  # input of conv 1; ReLU output shared by conv 2
    selected = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # 3 of 8 channels of conv 2
    enable_selective_saving(model, infos, selected)
    part = activation_bytes_of_step(model, x, y, sum_loss)
    disable_selective_saving(model)
    assert part - full == batch * 3 * 36 * F32  # a copy of 3 channels, nothing freed
    assert math.isclose(_unselected_activation_bytes(infos, selected, batch),
                        batch * 5 * 36 * F32)
