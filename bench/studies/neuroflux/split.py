"""Splitting a model into NeuroFlux units, and the adaptive auxiliary heads of those units.

See README.md and METHODS.md in this folder."""

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bench.data import DatasetSplits
from bench.errors import ConfigError

SUPPORTED_MODELS = ("vgg16", "vgg19", "resnet18_cifar")
DEFAULT_PROFILE_BATCHES = (8, 16, 32, 64, 128)
R2_MIN = 0.99  # the profiler's linear model is checked against this (a warning, not an error)

# ----------------------------------------------------------------------------- units


def split_named_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, unit) in forward order. VGG: one `nn.Sequential(conv, bn, relu[, maxpool])` per conv
    of `features`, named by the conv's index in `features` ("features.0"); ResNet: "stem" and
    each basic block ("layer1.0", ...). The final head (`model.pool`, `model.fc`) is not a unit."""
    features = getattr(model, "features", None)
    vgg_layers = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
    if (isinstance(features, nn.Sequential) and hasattr(model, "fc")
            and all(isinstance(m, vgg_layers) for m in features)):
        units: list[tuple[str, list[nn.Module]]] = []
        for idx, module in enumerate(features):
            if isinstance(module, nn.Conv2d):
                units.append((f"features.{idx}", [module]))
            elif units:
                units[-1][1].append(module)  # BN, ReLU, and a max-pool attach to the last conv
            else:
                raise ConfigError(f"NeuroFlux cannot cut this VGG: a {type(module).__name__} "
                                  "comes before its first conv")
        return [(name, nn.Sequential(*mods)) for name, mods in units]
    names = ("stem", "layer1", "layer2", "layer3", "layer4")
    if all(hasattr(model, n) for n in names) and hasattr(model, "fc"):
        out: list[tuple[str, nn.Module]] = [("stem", model.stem)]
        for n in names[1:]:
            out += [(f"{n}.{i}", block) for i, block in enumerate(getattr(model, n))]
        return out
    raise ConfigError(f"NeuroFlux cannot cut a {type(model).__name__} into units; supported "
                      f"models: {', '.join(SUPPORTED_MODELS)}")


def split_units(model: nn.Module) -> list[nn.Module]:
    """The model's units in forward order (see `split_named_units`)."""
    return [u for _, u in split_named_units(model)]


def final_head(model: nn.Module) -> nn.Module:
    """The model's own classifier after the last unit: `pool` then `fc` (shared modules)."""
    return nn.Sequential(model.pool, model.fc)


@contextmanager
def eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put modules in eval mode; restore every submodule's training flag afterwards."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def unit_output_shapes(units: Sequence[nn.Module], in_shape: Sequence[int],
                       device: torch.device | str = "cpu") -> list[tuple[int, int, int]]:
    """(C, H, W) of each unit's output for one input of shape `in_shape` (C, H, W)."""
    shapes = []
    with torch.no_grad(), eval_mode(units):
        x = torch.zeros(1, *in_shape, device=device)
        for u in units:
            x = u(x)
            shapes.append(tuple(int(s) for s in x.shape[1:]))
    return shapes  # type: ignore[return-value]


# ----------------------------------------------------------------------------- heads


def head_filters(channels: int, height: int, width: int, numerator: int = 8192,
                 min_filters: int = 8) -> int:
    """F = clip(numerator // (H*W), min_filters, C); F = C when C < min_filters."""
    f = max(numerator // (height * width), min_filters)
    return int(min(f, channels))


class AuxHead(nn.Sequential):
    """conv3x3 (C -> F, no bias) + BN + ReLU + adaptive avg-pool 2x2 + flatten + linear."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int,
                 numerator: int = 8192, min_filters: int = 8) -> None:
        f = head_filters(channels, height, width, numerator, min_filters)
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(channels, f, 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(f)),
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.AdaptiveAvgPool2d(2)),
            ("flatten", nn.Flatten(1)),
            ("fc", nn.Linear(4 * f, num_classes)),
        ]))
        self.filters = f


def build_heads(model: nn.Module, units: Sequence[nn.Module], in_shape: Sequence[int],
                num_classes: int, device: torch.device | str = "cpu", numerator: int = 8192,
                min_filters: int = 8) -> list[nn.Module]:
    """One head per unit: `AuxHead`s for all but the last; the model's pool + fc for the last."""
    shapes = unit_output_shapes(units, in_shape, device)
    heads: list[nn.Module] = [AuxHead(c, h, w, num_classes, numerator, min_filters).to(device)
                              for c, h, w in shapes[:-1]]
    heads.append(final_head(model))
    return heads


# ----------------------------------------------------------------------------- held-out split

HOLDOUT_SEED_SALT = 0x401D  # the held-out split's permutation: seeded by cell seed ^ this


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) sorted indices of a train split of `n` images: `fraction` of them
    (rounded, at least one when fraction > 0) held out by a permutation fixed per seed. The
    early exit is chosen on the held-out images, never on the split that reports its accuracy."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout_fraction must lie in [0, 1), got {fraction}")
    k = 0 if fraction == 0 else max(1, round(n * fraction))
    if k >= n:
        raise ConfigError(f"holdout_fraction {fraction} leaves no training images of {n}")
    gen = torch.Generator().manual_seed(int(seed) ^ HOLDOUT_SEED_SALT)
    perm = torch.randperm(n, generator=gen)
    return perm[k:].sort().values, perm[:k].sort().values


def hold_out(run_data: DatasetSplits, fraction: float, seed: int
             ) -> tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor]]:
    """`run_data` without its held-out training images, and those images as
    (x, y). The normalisation constants stay those of the full train split."""
    keep, held = holdout_indices(run_data.n_train, fraction, seed)
    keep, held = keep.to(run_data.train_x.device), held.to(run_data.train_x.device)
    kept = dataclasses.replace(run_data, train_x=run_data.train_x[keep],
                               train_y=run_data.train_y[keep])
    return kept, (run_data.train_x[held], run_data.train_y[held])
