"""bench.measure against hand counts: memory (bytes saved for backward), FLOPs, timers."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import (
    MIB,
    AcceleratorPeak,
    FlopCounts,
    Stopwatch,
    activation_bytes_of_step,
    count_flops,
    cudnn_flags,
    grad_bytes,
    optimizer_state_bytes,
    param_bytes,
    per_image,
    saved_activation_bytes,
    sync,
)
from bench.models import build_model

F32 = 4  # bytes per float32
I64 = 8  # bytes per int64


def sum_loss(out: Tensor, _targets: Tensor) -> Tensor:
    """A loss that costs no FLOPs and saves nothing, so counts are the layer's alone."""
    return out.sum()


# --- model-state memory ---------------------------------------------------------------------


def test_param_and_grad_bytes() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8 parameters
    assert param_bytes(model) == 23 * F32
    assert grad_bytes(model) == 23 * F32
    model[0].weight.requires_grad_(False)  # frozen: no gradient
    assert param_bytes(model) == 23 * F32
    assert grad_bytes(model) == (23 - 12) * F32
    assert param_bytes(model.half()) == 23 * 2


def test_optimizer_state_bytes() -> None:
    model = nn.Linear(4, 3)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert optimizer_state_bytes(sgd) == 0  # state is created lazily by the first step
    model(torch.randn(2, 4)).sum().backward()
    sgd.step()
    assert optimizer_state_bytes(sgd) == param_bytes(model)  # one momentum buffer per parameter
    adam = torch.optim.Adam(model.parameters())
    adam.step()
    # exp_avg + exp_avg_sq per parameter, plus a float32 scalar `step` per parameter tensor
    assert optimizer_state_bytes(adam) == 2 * param_bytes(model) + 2 * F32


# --- bytes saved for backward ---------------------------------------------------------------


def test_saved_bytes_linear_relu_linear_by_hand() -> None:
    torch.manual_seed(0)
    B = 5
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(B, 4)  # does not require grad, like a batch of images
    params = list(model.parameters())

    def step() -> None:
        model(x).sum()

    # Saved (checked with a pack hook): Linear 1 saves its input x (B*4 floats) but not its weight,
    # since x needs no gradient; ReLU saves its output (B*3); Linear 2 saves that same output again
    # (shared storage, counted once) and W2^T (a view of a parameter: excluded); sum saves nothing.
    assert saved_activation_bytes(step, exclude=params) == B * 4 * F32 + B * 3 * F32
    # Without the exclusion W2's storage (3*2 floats) is counted too.
    assert saved_activation_bytes(step) == B * 4 * F32 + B * 3 * F32 + 3 * 2 * F32

    def step_ce() -> None:
        F.cross_entropy(model(x), torch.zeros(B, dtype=torch.long))

    # Cross-entropy = log_softmax (saves its output, B*2) + nll_loss (saves that output again,
    # the int64 targets and a scalar total_weight).
    expected_ce = B * 4 * F32 + B * 3 * F32 + B * 2 * F32 + B * I64 + 1 * F32
    assert saved_activation_bytes(step_ce, exclude=params) == expected_ce


def test_saved_bytes_shared_storage_counted_once() -> None:
    x = torch.randn(10, requires_grad=True)

    def step() -> None:
        y = x * 2  # saves nothing for x (constant factor)
        (y * y).sum()  # saves y twice (both operands): one storage
        (y[:5] * 3).sum()  # saves nothing
        (y[:5] * y[5:]).sum()  # saves two views of y's storage: still that one storage

    assert saved_activation_bytes(step) == 10 * F32


@pytest.mark.parametrize("inplace", [False, True])
def test_saved_bytes_conv_bn_relu_by_hand(inplace: bool) -> None:
    B, C_in, C_out, H, W = 2, 3, 4, 5, 5
    model = nn.Sequential(
        nn.Conv2d(C_in, C_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(C_out),
        nn.ReLU(inplace=inplace),
    ).train()
    x = torch.randn(B, C_in, H, W)

    def step() -> None:
        model(x).sum()

    # Saved, as a pack hook lists them (same with an in-place ReLU, whose output is the BN output):
    #   conv: its input x (B*C_in*H*W) and its weight (parameter: excluded);
    #   BN (training): its input = the conv output (B*C_out*H*W), its weight (parameter), its
    #     running_mean and running_var (buffers, C_out each), and the batch statistics save_mean
    #     and save_invstd (C_out each);
    #   ReLU: its output (B*C_out*H*W).
    activations = B * C_in * H * W + 2 * B * C_out * H * W
    batch_stats = 2 * C_out
    running_stats = 2 * C_out
    params = list(model.parameters())
    buffers = list(model.buffers())
    assert saved_activation_bytes(step, exclude=params + buffers) == (
        (activations + batch_stats) * F32
    )
    assert saved_activation_bytes(step, exclude=params) == (
        (activations + batch_stats + running_stats) * F32
    )
    # activation_bytes_of_step excludes parameters and buffers and uses cross-entropy, which on
    # (B, C_out, H, W) "logits" saves log_softmax's output and the targets (B, H, W) int64.
    y = torch.zeros(B, H, W, dtype=torch.long)
    ce = B * C_out * H * W * F32 + B * H * W * I64 + F32
    assert activation_bytes_of_step(model, x, y) == (activations + batch_stats) * F32 + ce


def test_saved_bytes_is_the_peak_of_live_saved_tensors() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    params = list(model.parameters())
    one = saved_activation_bytes(lambda: model(x).sum(), exclude=params)

    def three_micro_batches() -> None:
        for _ in range(3):  # backward frees each micro-batch's saved tensors
            model(x).sum().backward()

    assert saved_activation_bytes(three_micro_batches, exclude=params) == one

    kept = []

    def three_kept_graphs() -> None:
        for _ in range(3):
            kept.append(model(x).sum())  # graphs stay alive: saved tensors accumulate

    # x is the same tensor in all three graphs (one storage); the ReLU outputs are three
    assert one == 5 * 4 * F32 + 5 * 3 * F32
    assert saved_activation_bytes(three_kept_graphs, exclude=params) == 5 * 4 * F32 + 3 * (
        5 * 3 * F32
    )


def test_saved_bytes_do_not_leak_the_graph() -> None:
    # A pack hook holding a saved *output* (here ReLU's) would form an uncollectable cycle.
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    refs: list[weakref.ref[Tensor]] = []

    def step() -> None:
        h = model[1](model[0](torch.randn(5, 4)))
        refs.append(weakref.ref(h))
        model[2](h).sum()

    saved_activation_bytes(step, exclude=list(model.parameters()))
    gc.collect()
    assert refs[0]() is None


def test_saved_bytes_keep_gradients_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    x = torch.randn(2, 3, 6, 6)
    model(x).pow(2).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    saved_activation_bytes(lambda: model(x).pow(2).sum().backward(), list(model.parameters()))
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)


def test_activation_bytes_of_step_leaves_the_model_untouched() -> None:
    torch.manual_seed(0)
    model = build_model("wrn28_4", 10, 3, {"width": 0.125, "dropout": 0.5})  # dropout draws
    bn = model.layer1[0].norm1
    running_mean = bn.running_mean.clone()
    tracked = bn.num_batches_tracked.clone()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    rng = torch.get_rng_state()
    assert activation_bytes_of_step(model, x, y) > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, running_mean)
    assert torch.equal(bn.num_batches_tracked, tracked)
    assert torch.equal(torch.get_rng_state(), rng)


def test_resnet18_cifar_reference_activation_memory() -> None:
    # Reference (docs/design.md): torchvision-style CIFAR ResNet-18, fp32, batch 128, 32x32 saves
    # about 574 MiB for a forward + loss; its parameters are 42.6 MiB.
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 10, 3, {})
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    activation_mib = activation_bytes_of_step(model, x, y) / MIB
    assert activation_mib == pytest.approx(574, rel=0.02)
    assert param_bytes(model) / MIB == pytest.approx(42.6, abs=0.05)


# --- FLOPs ----------------------------------------------------------------------------------


def conv_flops(n: int, c_out: int, c_in_per_group: int, k: int, h_out: int, w_out: int) -> int:
    """2 * multiply-adds of one conv forward (bias not counted, as torch)."""
    return 2 * n * c_out * c_in_per_group * k * k * h_out * w_out


def test_flops_conv2d_by_hand() -> None:
    N, C_in, C_out, K, H = 2, 3, 5, 3, 8
    conv = nn.Conv2d(C_in, C_out, K, padding=1, bias=False)
    fwd = conv_flops(N, C_out, C_in, K, H, H)
    x = torch.randn(N, C_in, H, H)
    counts = count_flops(conv, x, x, loss_fn=sum_loss)
    # the input needs no gradient (a first layer): backward is the weight gradient only
    assert counts == FlopCounts(forward=fwd, backward=fwd, weight_grad=fwd)
    counts = count_flops(conv, x.requires_grad_(), x, loss_fn=sum_loss)
    assert counts == FlopCounts(forward=fwd, backward=2 * fwd, weight_grad=fwd)


@pytest.mark.parametrize("stride", [1, 2])
def test_flops_depthwise_conv_by_hand(stride: int) -> None:
    N, C, K, H = 2, 8, 3, 8
    conv = nn.Conv2d(C, C, K, stride=stride, padding=1, groups=C, bias=False)
    H_out = H // stride
    fwd = conv_flops(N, C, 1, K, H_out, H_out)  # each output channel sees one input channel
    x = torch.randn(N, C, H, H)
    counts = count_flops(conv, x, x, loss_fn=sum_loss)
    assert counts == FlopCounts(forward=fwd, backward=fwd, weight_grad=fwd)
    xg = x.clone().requires_grad_()
    counts = count_flops(conv, xg, x, loss_fn=sum_loss)
    assert counts == FlopCounts(forward=fwd, backward=2 * fwd, weight_grad=fwd)
    # torch's own formula treats the weight gradient as an ungrouped conv: C times too high
    uncorrected = count_flops(conv, x, x, loss_fn=sum_loss, corrected=False)
    assert uncorrected.forward == fwd
    assert uncorrected.backward == C * fwd
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == fwd + C * fwd
    conv.zero_grad(set_to_none=True)


def test_flops_grouped_conv_by_hand() -> None:
    N, C_in, C_out, G, K, H = 2, 8, 12, 4, 3, 6
    conv = nn.Conv2d(C_in, C_out, K, padding=1, groups=G, bias=False)
    fwd = conv_flops(N, C_out, C_in // G, K, H, H)
    x = torch.randn(N, C_in, H, H, requires_grad=True)
    assert count_flops(conv, x, x, loss_fn=sum_loss) == FlopCounts(fwd, 2 * fwd, fwd)


@pytest.mark.parametrize("groups", [1, 4])
def test_flops_transposed_conv(groups: int) -> None:
    N, C_in, C_out, K, H = 2, 8, 4, 3, 5
    deconv = nn.ConvTranspose2d(C_in, C_out, K, stride=2, groups=groups, bias=False)
    x = torch.randn(N, C_in, H, H, requires_grad=True)
    fwd = 2 * N * C_in * (C_out // groups) * K * K * H * H  # per input position
    counts = count_flops(deconv, x, x, loss_fn=sum_loss)
    assert counts == FlopCounts(fwd, 2 * fwd, fwd)
    if groups == 1:  # nothing to correct: torch's own formula agrees
        assert count_flops(deconv, x, x, loss_fn=sum_loss, corrected=False) == FlopCounts(
            fwd, 2 * fwd, 0
        )


def test_flops_linear_by_hand() -> None:
    N, D_in, D_out = 4, 5, 3
    fc = nn.Linear(D_in, D_out)
    fwd = 2 * N * D_in * D_out  # bias adds not counted
    x = torch.randn(N, D_in)
    assert count_flops(fc, x, x, loss_fn=sum_loss) == FlopCounts(fwd, fwd, fwd)
    assert count_flops(fc, x.requires_grad_(), x, loss_fn=sum_loss) == FlopCounts(
        fwd, 2 * fwd, fwd
    )
    # (N, T, D_in) input: the layer is applied to N*T rows
    x3 = torch.randn(N, 2, D_in)
    assert count_flops(fc, x3, x3, loss_fn=sum_loss) == FlopCounts(2 * fwd, 2 * fwd, 2 * fwd)
    # frozen weight: no weight gradient is computed or counted
    fc.weight.requires_grad_(False)
    assert count_flops(fc, x, x, loss_fn=sum_loss).weight_grad == 0


def test_count_flops_restores_grads_buffers_and_rng() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10))  # fmt: skip
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([1, 2])
    model[0].weight.grad = torch.ones_like(model[0].weight)
    running_var = model[1].running_var.clone()
    rng = torch.get_rng_state()
    count_flops(model, x, y)
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None
    assert torch.equal(model[1].running_var, running_var)
    assert torch.equal(torch.get_rng_state(), rng)


def test_mobilenetv2_cifar_flops_per_image() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenetv2_cifar", 10, 3, {})
    x, y = torch.randn(1, 3, 32, 32), torch.tensor([3])  # FLOPs are linear in the batch
    ours = per_image(count_flops(model, x, y), batch=1)
    total_gflops = (ours["forward_flops_per_image"] + ours["backward_flops_per_image"]) / 1e9
    assert 0.45 < total_gflops < 0.65
    # every conv and linear layer's weight gradient costs what its forward costs
    assert ours["weight_grad_flops_per_image"] == ours["forward_flops_per_image"]
    uncorrected = per_image(count_flops(model, x, y, corrected=False), batch=1)
    wrong_gflops = (
        uncorrected["forward_flops_per_image"] + uncorrected["backward_flops_per_image"]
    ) / 1e9
    assert wrong_gflops > 3.0  # torch's figure, ~3.9: ~7x too high
    assert all(p.grad is None for p in model.parameters())


def test_per_image() -> None:
    assert per_image(FlopCounts(100, 200, 50), batch=4) == {
        "forward_flops_per_image": 25.0,
        "backward_flops_per_image": 50.0,
        "weight_grad_flops_per_image": 12.5,
    }


# --- accelerator memory and time ------------------------------------------------------------


def test_accelerator_peak_is_none_on_cpu() -> None:
    peak = AcceleratorPeak("cpu")
    peak.start()
    torch.zeros(1000)
    assert peak.stop() == (None, None)
    assert AcceleratorPeak(torch.device("cpu")).stop() == (None, None)


def test_stopwatch_and_sync_on_cpu() -> None:
    sync("cpu")
    with Stopwatch("cpu") as sw:
        time.sleep(0.02)
    assert 0.02 <= sw.elapsed_s < 1.0
    sw2 = Stopwatch()
    sw2.start()
    assert sw2.stop() == sw2.elapsed_s >= 0.0
    with pytest.raises(RuntimeError):
        Stopwatch().stop()


def test_cudnn_flags() -> None:
    flags = cudnn_flags()
    assert set(flags) == {"benchmark", "deterministic"}
    assert all(isinstance(v, bool) for v in flags.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accelerator_peak_on_cuda() -> None:
    device = torch.device("cuda")
    peak = AcceleratorPeak(device)
    peak.start()
    big = torch.empty(64 * MIB, dtype=torch.uint8, device=device)  # 64 MiB
    del big
    alloc_mib, reserved_mib = peak.stop()
    assert alloc_mib is not None and reserved_mib is not None
    assert alloc_mib >= 64 and reserved_mib >= alloc_mib
    peak.start()  # reset: the freed 64 MiB no longer counts
    small = torch.empty(MIB, dtype=torch.uint8, device=device)
    alloc_mib, _ = peak.stop()
    assert alloc_mib is not None and alloc_mib < 64
    del small
    with Stopwatch(device) as sw:
        torch.randn(256, 256, device=device).sum()
    assert sw.elapsed_s > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_saved_bytes_and_flops_match_on_cuda() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenetv2_cifar", 10, 3, {"width": 0.5})
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    cpu_bytes = activation_bytes_of_step(model, x, y)
    cpu_flops = count_flops(model, x, y)
    model.cuda()
    assert activation_bytes_of_step(model, x.cuda(), y.cuda()) == cpu_bytes
    assert count_flops(model, x.cuda(), y.cuda()) == cpu_flops
