"""Top-k activation sparsity (METHODS.md in this folder, "Top-k
constraint").

`TopK(ratio, scope)`
    Per sample, keeps the k = ceil(r * C*H*W) largest entries of the layer's activation tensor
    (after a ReLU: values >= 0, "largest" by value) and zeroes the rest, as `x * mask` with a bool
    mask, so the gradient flows through the kept entries only (upstream gradient on kept entries,
    zero on dropped ones). r = 1 returns the input object itself: bit-identical to no TopK.
    - k: `keep_count(r, n)` = ceil(r * n) with r * n rounded to 6 decimals first (so that
      0.07 * 100 = 7.000000000000001 keeps 7, not 8), clamped to [1, n] (r > 0 keeps >= 1 entry).
    - ties: `torch.topk(k, sorted=False)` indices scattered into the mask, so exactly k entries
      are kept per sample even when values tie (which of the tied entries survive is torch.topk's
      choice). Ties at value 0 (the usual case after a ReLU) change neither the output nor the
      gradient: a kept zero is still zero and the ReLU's own backward zeroes its gradient.
    - active only while the module is in train mode (or `force` is set): in eval mode it is the
      identity, so the training loop's evaluation (model.eval()) is dense automatically.
    - effective activation rate: in train mode every forward adds count_nonzero(output) to a
      device counter (no host sync per step) and numel to a host int; `reset_stats()` /
      `stats()` / `effective_rate()` (one sync) read them. Counters are plain attributes, not
      buffers, so the model's state_dict is unchanged by attaching.

`scope`
    - "layer": every TopK keeps its own ceil(r * size) per sample.
    - "network": one per-sample selection over all hooked layers together: exactly
      ceil(r * total hooked size) entries per sample, summed over the layers. A single forward
      cannot know later layers' activations when it sparsifies an earlier one, so attach_topk
      registers a forward pre-hook on the model that runs a **first, no-grad, dense pass**
      (TopK layers record their inputs; BatchNorm running statistics and the RNG streams are
      saved and restored, so the second pass sees the same batch statistics and dropout masks),
      takes the per-sample top-k over the concatenation of all hooked activations (topk indices
      + scatter: exact count), splits that mask back to the layers, and the real forward (second
      pass) multiplies each layer's activation by its mask. Positions are chosen on the dense
      activations; because upstream layers are sparsified in the second pass, the values at the
      kept positions are the second pass's (some may be 0). Cost: one extra no-grad forward per
      step (about +1/3 of a forward+backward step's compute) and, transiently, a no-grad copy of
      all hooked activations (+ their concatenation) and a bool mask of the same size.
      Hooked outputs must not be modified in place later in the forward (true for WRN / ResNet
      here).

`attach_topk(model, scope, ratio=1.0) -> TopKHandle`
    Hooking rule: every `nn.ReLU` module that lies inside a module whose class name ends with
    "Block" or whose qualified name starts with `layer<N>.` (the residual stages). The ReLU is
    replaced in its parent by `nn.Sequential(relu, TopK)`; `handle.detach()` puts the original
    ReLU back. For WRN-28-4 that is relu1/relu2 of all 12 pre-activation blocks (the `final`
    norm+ReLU before pooling is not hooked); for ResNet-18 relu1/relu2 of the 8 basic blocks (the
    stem's ReLU is not hooked). Functional relu calls cannot be hooked (ValueError if none found).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SCOPES",
    "TopK",
    "TopKHandle",
    "attach_topk",
    "keep_count",
    "topk_mask",
]

SCOPES = ("layer", "network")
_STAGE = re.compile(r"^layer\d+\.")


def keep_count(ratio: float, n: int) -> int:
    """ceil(ratio * n), with ratio * n rounded to 6 decimals first, clamped to [1, n]."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r}")
    return min(n, max(1, math.ceil(round(ratio * n, 6))))


def topk_mask(flat: Tensor, k: int) -> Tensor:
    """(B, N) -> bool (B, N) with exactly k True entries per row: the k largest (topk indices
    scattered; ties broken by torch.topk)."""
    idx = flat.topk(k, dim=1, largest=True, sorted=False).indices  # (B, k)
    return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(1, idx, True)


class TopK(nn.Module):
    """Per-sample top-k of a (B, ...) activation; identity at ratio 1 or in eval mode (unless
    `force`). See the module docstring."""

    def __init__(self, ratio: float = 1.0, scope: str = "layer") -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.ratio = 1.0
        self.set_ratio(ratio)
        self.force = False  # active in eval mode too (evaluation at a given r)
        # network scope: set by the coordinating pre-hook of attach_topk
        self._collect: list[tuple[TopK, Tensor]] | None = None  # first pass: record inputs
        self._mask: Tensor | None = None  # second pass: the mask to apply
        self.reset_stats()

    def set_ratio(self, ratio: float) -> None:
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r}")
        self.ratio = ratio

    @property
    def active(self) -> bool:
        return (self.training or self.force) and self.ratio < 1.0

    # -- statistics -----------------------------------------------------------------

    def reset_stats(self) -> None:
        self._nonzero: Tensor | None = None  # device long scalar
        self._total = 0

    def stats(self) -> tuple[int, int]:
        """(non-zero outputs, all outputs) counted in train-mode forwards since the last reset
        (one host sync)."""
        return (int(self._nonzero.item()) if self._nonzero is not None else 0), self._total

    def _count(self, out: Tensor) -> None:
        nz = torch.count_nonzero(out.detach())
        self._nonzero = nz if self._nonzero is None else self._nonzero + nz
        self._total += out.numel()

    # -- forward ----------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:  # (B, ...) -> (B, ...)
        if self._collect is not None:  # network scope, first (dense, no-grad) pass
            self._collect.append((self, x.detach()))
            return x
        out = x
        if self.active:
            if self.scope == "network":
                if self._mask is None:
                    raise RuntimeError("a network-scope TopK needs the coordinating forward "
                                       "pre-hook of attach_topk on the model")
                mask = self._mask
            else:
                flat = x.reshape(x.shape[0], -1)  # (B, C*H*W)
                mask = topk_mask(flat, keep_count(self.ratio, flat.shape[1])).view(x.shape)
            out = x * mask
        if self.training:
            self._count(out)
        return out

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:g}, scope={self.scope}"


# ----------------------------------------------------------------------------- network scope


def _network_layers(model: nn.Module) -> list[TopK]:
    return [m for m in model.modules() if isinstance(m, TopK) and m.scope == "network"]


@contextlib.contextmanager
def _preserved_buffers_and_rng(model: nn.Module, fork_rng: bool) -> Iterator[None]:
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({str(b.device) for _, b in buffers} | {str(p.device) for p in model.parameters()})
    cuda = [torch.device(d) for d in devices if d.startswith("cuda")]
    rng = torch.random.fork_rng(devices=cuda) if fork_rng else contextlib.nullcontext()
    with rng:
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _network_pre_hook(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Two-pass network scope: dense no-grad pass -> per-sample global top-k mask per layer."""
    layers = _network_layers(model)
    for layer in layers:
        layer._mask = None
    active = [layer for layer in layers if layer.active]
    if not active or any(layer._collect is not None for layer in layers):
        return  # dense, or re-entered from the first pass
    ratios = {layer.ratio for layer in active}
    if len(ratios) != 1:
        raise RuntimeError(f"network-scope TopK layers disagree on the keep ratio: {ratios}")
    store: list[tuple[TopK, Tensor]] = []
    random = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
                 for m in model.modules())
    for layer in layers:
        layer._collect = store
    try:
        with torch.no_grad(), _preserved_buffers_and_rng(model, random):
            model.forward(*args)
    finally:
        for layer in layers:
            layer._collect = None
    seen = [id(layer) for layer, _ in store]
    if len(set(seen)) != len(seen):
        raise RuntimeError("a network-scope TopK ran twice in one forward (shared module)")
    store = [(layer, x) for layer, x in store if layer.active]
    if not store:
        return
    batch = store[0][1].shape[0]
    flats = [x.reshape(batch, -1) for _, x in store]
    sizes = [f.shape[1] for f in flats]
    cat = torch.cat(flats, dim=1)  # (B, total)
    del flats
    mask = topk_mask(cat, keep_count(ratios.pop(), cat.shape[1]))
    del cat
    for (layer, x), m in zip(store, mask.split(sizes, dim=1), strict=True):
        layer._mask = m.reshape(x.shape)


def _network_post_hook(model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    for layer in _network_layers(model):
        layer._mask = None


# ----------------------------------------------------------------------------- attaching


def hookable_relus(model: nn.Module) -> list[tuple[nn.Module, str, nn.ReLU]]:
    """(parent, attribute name, relu) of every ReLU the hooking rule selects, in module order."""
    found: list[tuple[nn.Module, str, nn.ReLU]] = []
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.ReLU):
            counts[id(m)] = counts.get(id(m), 0) + 1

    def walk(module: nn.Module, prefix: str, in_block: bool) -> None:
        for name, child in module.named_children():
            qual = f"{prefix}{name}"
            if isinstance(child, nn.ReLU):
                if in_block or _STAGE.match(qual):
                    if counts[id(child)] > 1:
                        raise ValueError(f"ReLU module {qual} is shared between places in the "
                                         f"model; TopK needs one ReLU instance per activation")
                    found.append((module, name, child))
            else:
                walk(child, qual + ".", in_block or type(child).__name__.endswith("Block"))

    walk(model, "", False)
    return found


class TopKHandle:
    """The TopK modules attach_topk inserted: set r, force them on, read/reset statistics,
    detach."""

    def __init__(self, model: nn.Module, scope: str,
                 places: list[tuple[nn.Module, str, nn.ReLU, TopK]]) -> None:
        self.model = model
        self.scope = scope
        self.places = places
        self.hooks: list[Any] = []

    @property
    def layers(self) -> list[TopK]:
        return [topk for *_, topk in self.places]

    @property
    def ratio(self) -> float:
        return self.layers[0].ratio

    def set_ratio(self, ratio: float) -> None:
        for layer in self.layers:
            layer.set_ratio(ratio)

    def set_force(self, on: bool) -> None:
        for layer in self.layers:
            layer.force = bool(on)

    @contextlib.contextmanager
    def forced(self, ratio: float) -> Iterator[None]:
        """TopK on at `ratio` also in eval mode (evaluation at r); restores r and force after."""
        old, forces = self.ratio, [layer.force for layer in self.layers]
        self.set_ratio(ratio)
        self.set_force(True)
        try:
            yield
        finally:
            self.set_ratio(old)
            for layer, f in zip(self.layers, forces, strict=True):
                layer.force = f

    def reset_stats(self) -> None:
        for layer in self.layers:
            layer.reset_stats()

    def stats(self) -> tuple[int, int]:
        """(non-zero hooked outputs, all hooked outputs) over train-mode forwards since the last
        reset; one host sync."""
        nz = [layer._nonzero for layer in self.layers if layer._nonzero is not None]
        total = sum(layer._total for layer in self.layers)
        return (int(torch.stack(nz).sum().item()) if nz else 0), total

    def effective_rate(self) -> float | None:
        """Non-zero hooked outputs / all hooked outputs (None before any train-mode forward)."""
        nz, total = self.stats()
        return nz / total if total else None

    def detach(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for parent, name, relu, _ in self.places:
            setattr(parent, name, relu)
        self.places = []


def attach_topk(model: nn.Module, scope: str = "layer", ratio: float = 1.0) -> TopKHandle:
    """Insert a TopK after every ReLU the hooking rule selects (see the module docstring)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if any(isinstance(m, TopK) for m in model.modules()):
        raise ValueError("the model already has TopK modules attached")
    relus = hookable_relus(model)
    if not relus:
        raise ValueError(f"{type(model).__name__}: no nn.ReLU module inside residual blocks "
                         f"(class name ending in 'Block' or under layer<N>) to attach TopK to")
    places = []
    for parent, name, relu in relus:
        topk = TopK(ratio, scope)
        topk.train(relu.training)
        setattr(parent, name, nn.Sequential(relu, topk))
        places.append((parent, name, relu, topk))
    handle = TopKHandle(model, scope, places)
    if scope == "network":
        handle.hooks = [model.register_forward_pre_hook(_network_pre_hook),
                        model.register_forward_hook(_network_post_hook)]
    return handle
