"""Model registry: every registered model is built, run forward and backward, and checked
against the contract (registry-driven: a new model is tested without a new test)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.errors import ConfigError
from bench.models import MODELS, accepted_options, build_model
from bench.models.mobilenetv2 import _make_divisible
from bench.models.wrn import RMSNorm2d

ALL_MODELS = MODELS.names()
SMALL_WIDTH = 0.25  # CPU-sized models: 0.2M - 1.3M parameters


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_contract_models() -> None:
    expected = {
        "resnet18",
        "resnet18_cifar",
        "wrn28_4",
        "vgg16",
        "vgg19",
        "mobilenetv2",
        "mobilenetv2_cifar",
    }
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_factory_signature(name: str) -> None:
    params = inspect.signature(MODELS.get(name)).parameters
    names = list(params)
    assert names[:3] == ["num_classes", "in_channels", "width"]
    assert params["in_channels"].default == 3
    assert params["width"].default == 1.0
    assert all(p.kind != inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "width" in accepted_options(name)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels, {"width": SMALL_WIDTH})
    model.train()
    x = torch.randn(2, in_channels, 32, 32)  # (B, C, H, W)
    y = torch.tensor([3, 7])
    logits = model(x)
    assert logits.shape == (2, 10)
    loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    grads_nonzero = [bool(p.grad.abs().sum() > 0) for p in model.parameters()]
    assert sum(grads_nonzero) >= 0.9 * len(grads_nonzero)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_children_in_order_are_the_forward(name: str) -> None:
    # Block-wise methods cut a model into units along its top-level children.
    torch.manual_seed(0)
    model = build_model(name, 10, 3, {"width": SMALL_WIDTH}).eval()
    x = torch.randn(2, 3, 32, 32)
    h = x
    for child in model.children():
        h = child(h)
    with torch.no_grad():
        torch.testing.assert_close(h, model(x))
    assert list(dict(model.named_children()))[-1] == "fc"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_scales_parameters_roughly_quadratically(name: str) -> None:
    counts = {w: n_params(build_model(name, 10, 3, {"width": w})) for w in (0.25, 0.5, 1.0)}
    assert counts[0.25] < counts[0.5] < counts[1.0]
    # Quadratic in width for the conv weights; mobilenet's last channel (1280 for width <= 1)
    # and the linear heads make it less than 4x.
    assert 2.5 < counts[1.0] / counts[0.5] < 4.5


@pytest.mark.parametrize("name", ["resnet18", "resnet18_cifar", "wrn28_4", "vgg16", "vgg19"])
def test_width_scaling_is_quadratic_for_plain_convnets(name: str) -> None:
    ratio = n_params(build_model(name, 10, 3, {"width": 1.0})) / n_params(
        build_model(name, 10, 3, {"width": 0.5})
    )
    assert 3.8 < ratio < 4.1


def test_resnet18_cifar_has_11_17m_parameters() -> None:
    model = build_model("resnet18_cifar", 10, 3, {})
    assert n_params(model) == 11_173_962
    assert [n for n, _ in model.named_children()] == [
        "stem", "layer1", "layer2", "layer3", "layer4", "pool", "fc"
    ]  # fmt: skip
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)


def test_resnet18_matches_torchvision() -> None:
    model = build_model("resnet18", 10, 3, {})
    assert n_params(model) == n_params(torchvision.models.resnet18(num_classes=10))
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (7, 7) and stem_conv.stride == (2, 2)
    assert isinstance(model.stem[3], nn.MaxPool2d)
    # total stride 32: a 64x64 input leaves 2x2 maps after layer4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
    assert h.shape == (1, 512, 2, 2)


@pytest.mark.parametrize("width", [1.0, 0.35])
def test_mobilenetv2_matches_torchvision(width: float) -> None:
    ours = build_model("mobilenetv2", 10, 3, {"width": width})
    theirs = torchvision.models.mobilenet_v2(num_classes=10, width_mult=width)
    assert n_params(ours) == n_params(theirs)


@pytest.mark.parametrize(("name", "size"), [("mobilenetv2", 128), ("mobilenetv2_cifar", 32)])
def test_mobilenetv2_strides_and_depthwise(name: str, size: int) -> None:
    model = build_model(name, 10, 3, {"width": 0.35})
    with torch.no_grad():
        h = model.features(torch.randn(1, 3, size, size))
    assert h.shape[-2:] == (4, 4)  # total stride 32 (ImageNet) or 8 (CIFAR)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert len(depthwise) == 17  # one per inverted-residual block
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    for m in convs[1:]:  # every width-scaled channel count is a multiple of 8
        assert m.out_channels % 8 == 0
    assert model.fc.in_features == 1280  # max(1, width) * 1280


def test_make_divisible_rule() -> None:
    assert _make_divisible(32 * 0.35) == 16  # 11.2 -> 8 would lose > 10%, so 16
    assert _make_divisible(16 * 0.25) == 8  # never below 8
    assert _make_divisible(24 * 1.0) == 24
    assert _make_divisible(1280 * 1.4) == 1792


@pytest.mark.parametrize(("name", "n_convs"), [("vgg16", 13), ("vgg19", 16)])
def test_vgg_features_are_flat_conv_bn_relu_units(name: str, n_convs: int) -> None:
    model = build_model(name, 10, 3, {"width": SMALL_WIDTH})
    kinds = [type(m) for m in model.features]
    assert set(kinds) == {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d}
    assert kinds.count(nn.Conv2d) == n_convs and kinds.count(nn.MaxPool2d) == 5
    for i, kind in enumerate(kinds):
        if kind is nn.Conv2d:
            assert kinds[i + 1 : i + 3] == [nn.BatchNorm2d, nn.ReLU]


def test_wrn28_4_layout_and_relus() -> None:
    model = build_model("wrn28_4", 10, 3, {})
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [4, 4, 4]
    assert model.stem.out_channels == 16
    assert [getattr(model, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3)] == [64, 128, 256]
    block_relus = [
        m
        for i in (1, 2, 3)
        for m in getattr(model, f"layer{i}").modules()
        if isinstance(m, nn.ReLU)
    ]
    assert len(block_relus) == 3 * 4 * 2
    assert len({id(m) for m in block_relus}) == len(block_relus)  # distinct instances


def test_wrn28_4_rms_norm_has_no_batchnorm() -> None:
    model = build_model("wrn28_4", 10, 3, {"width": SMALL_WIDTH, "norm": "rms"})
    assert any(isinstance(m, RMSNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    batch = build_model("wrn28_4", 10, 3, {"width": SMALL_WIDTH})
    assert not any(isinstance(m, RMSNorm2d) for m in batch.modules())
    # 3 * 4 blocks * 2 norms + the final norm
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 25


def test_wrn28_4_dropout_option() -> None:
    assert not any(isinstance(m, nn.Dropout) for m in build_model("wrn28_4", 10, 3, {}).modules())
    model = build_model("wrn28_4", 10, 3, {"width": SMALL_WIDTH, "dropout": 0.3})
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 12 and all(d.p == 0.3 for d in drops)


def test_rmsnorm2d_matches_hand_computation() -> None:
    torch.manual_seed(0)
    norm = RMSNorm2d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y = norm.double()(x)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                v = [float(x[b, c, i, j]) for c in range(3)]
                rms = (sum(t * t for t in v) / 3 + 1e-6) ** 0.5
                for c, g in enumerate([0.5, 2.0, -1.0]):
                    assert float(y[b, c, i, j]) == pytest.approx(v[c] / rms * g, rel=1e-12)
    assert norm.eps == 1e-6 and norm.weight.shape == (3,)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unknown_option_lists_accepted_ones(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(name, 10, 3, {"width": 0.25, "widht": 0.5})
    message = str(err.value)
    assert "'widht'" in message
    assert ", ".join(accepted_options(name)) in message


def test_accepted_options_come_from_the_signature() -> None:
    assert accepted_options("wrn28_4") == ["dropout", "norm", "width"]
    assert accepted_options("resnet18_cifar") == ["width"]


def test_unknown_model_and_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet18_cifar"):
        build_model("resnet18_cifr", 10, 3, {})
    with pytest.raises(ConfigError, match="norm"):
        build_model("wrn28_4", 10, 3, {"norm": "layer"})
    with pytest.raises(ConfigError, match="width"):
        build_model("vgg16", 10, 3, {"width": 0})
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("vgg16", 10, 3, {"num_classes": 5})
