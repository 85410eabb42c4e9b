"""Input-channel-level fine-tuning (TraDy, study `tradyn`): costs, selection, RGN, masking.

Granularity: the **input channel** c of a conv layer i (a `Channel = (i, c)`, i the index in
`conv_layers(...)`). Updating it needs the weight slice W[:, c] and the input activation A[:, c];
freezing it removes both (paper Sec. 3.1, Eq. 2-4).

Costs are per input sample, in **memory units** (one scalar slot; 4 bytes in float32), paper
Eq. 3-4, for conv i with weights C' x C/groups x D x D, input H x W and output H' x W':

- weight units of one channel     = (C'/groups) * D * D   (dense: C' D D; depthwise: D D)
- activation units of one channel = H * W
- weight-derivative FLOPs         = D * D * (C'/groups) * H' * W'  (paper Eq. 4: one
  multiply-add counts 1, i.e. half of torch's FLOP count; depthwise: D D H' W' [ours, as
  tiny-training]).

For a grouped conv (1 < groups < C) input channel c of group g = c // (C/groups) meets only the
C'/groups output channels of its group, at weight column c % (C/groups); the same formulas hold
with C'/groups (a depthwise conv is the case C/groups = 1). Biases are outside the accounting (the
paper's convs have none); a layer's bias is updated iff the layer has a selected channel.

The parts:
- `conv_layers` (shapes at the training resolution), `channel_costs`, `total_costs`.
- `random_selection` (TraDy / D-Full-Random) and `deterministic_selection` (Det-RGN): walk an
  order and accept each channel that still fits, skipping those that do not (`fill="skip"`, the
  default [ours]), or stop at the first overflow (`fill="stop"`).
- `channel_rgn`, `layer_rgn`, `RGNAccumulator`, `top_k_layers` (offline layer ranking).
- `ChannelMask`: zero the gradients of unselected channels (reproduces the accuracy behaviour).
- `SelectiveConv2d`, `enable_selective_saving`: realise the activation saving (only A[:, selected]
  is kept for backward), verified with `bench.measure.saved_activation_bytes`.
- `sparsity_metrics` (METHODS.md metrics).

Training-step paths (masking, SelectiveConv2d, RGN) are vectorised per layer; only selection
loops over channels in Python.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from bench.errors import BudgetError, ConfigError

Channel = tuple[int, int]  # (layer index in conv_layers(...), input channel index)
Costs = Callable[[Channel], float] | Sequence[float]  # per-channel fn, or units per layer
BYTES_PER_UNIT = 4  # float32


# --- layers ----------------------------------------------------------------------------------


@dataclass(eq=False)
class ConvInfo:
    """One conv layer at the training resolution (spatial sizes of its real input/output)."""

    name: str  # module path in the model, e.g. "features.3.conv.1.0"
    module: nn.Conv2d
    c_out: int  # C'
    c_in: int  # C
    groups: int
    kernel: tuple[int, int]  # (kh, kw); D * D = kh * kw
    in_hw: tuple[int, int]  # (H, W) of the input
    out_hw: tuple[int, int]  # (H', W') of the output

    @property
    def depthwise(self) -> bool:
        """groups > 1 and groups == C (every input channel its own group)."""
        return self.groups > 1 and self.groups == self.c_in

    @property
    def in_per_group(self) -> int:
        """C / groups: weight columns (input channels) per group."""
        return self.c_in // self.groups

    @property
    def out_per_group(self) -> int:
        """C' / groups: output channels an input channel feeds."""
        return self.c_out // self.groups

    @classmethod
    def from_module(cls, module: nn.Conv2d, in_hw: tuple[int, int], name: str = "") -> ConvInfo:
        """Build from a conv and its input size; the output size by conv arithmetic."""
        return cls(
            name=name,
            module=module,
            c_out=module.out_channels,
            c_in=module.in_channels,
            groups=module.groups,
            kernel=(int(module.kernel_size[0]), int(module.kernel_size[1])),
            in_hw=(int(in_hw[0]), int(in_hw[1])),
            out_hw=conv_output_hw(module, in_hw),
        )


def _int_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The conv's symmetric zero padding as ints ('valid' -> 0, odd 'same' -> half)."""
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        out = []
        for k, d in zip(module.kernel_size, module.dilation):
            total = d * (k - 1)
            if total % 2:
                raise ConfigError(
                    f"conv {module} uses padding='same' with an even effective kernel, which "
                    "pads asymmetrically; channels.py supports symmetric padding only"
                )
            out.append(total // 2)
        return (out[0], out[1])
    return (int(pad[0]), int(pad[1]))


def conv_output_hw(module: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    """(H', W') = floor((H + 2p - d (k - 1) - 1) / s) + 1 per dimension."""
    pad = _int_padding(module)
    return tuple(  # type: ignore[return-value]
        (int(n) + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(in_hw, pad, module.dilation, module.kernel_size, module.stride)
    )


def conv_layers(model: nn.Module, example_input: Tensor) -> list[ConvInfo]:
    """Every `nn.Conv2d` of `model` that runs in a forward, in module order, with real sizes.

    Runs one no-grad forward of `example_input` (batch 1 is enough, at the training resolution)
    in eval mode with forward hooks, then restores each module's training flag. A conv that runs
    more than once keeps the sizes of its first call; a conv that never runs is left out (it can
    receive no gradient). Linear layers (the classifier) are not convs and are not listed.
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    shapes: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        shapes.setdefault(id(module), (tuple(args[0].shape[-2:]), tuple(out.shape[-2:])))

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for _, m in convs]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    infos = []
    for name, m in convs:
        if id(m) not in shapes:
            continue
        in_hw, out_hw = shapes[id(m)]
        infos.append(
            ConvInfo(name, m, m.out_channels, m.in_channels, m.groups,
                     (int(m.kernel_size[0]), int(m.kernel_size[1])),
                     (int(in_hw[0]), int(in_hw[1])), (int(out_hw[0]), int(out_hw[1])))
        )
    return infos


# --- costs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelCost:
    """Cost of updating one input channel of a layer, per input sample (paper Eq. 3-4)."""

    weight_units: int  # (C'/groups) * D * D
    activation_units: int  # H * W
    memory_units: int  # weight_units + activation_units (Theta_space)
    wgrad_flops: int  # D * D * (C'/groups) * H' * W' multiply-adds (Theta_time)


def channel_costs(info: ConvInfo) -> ChannelCost:
    """Per-channel costs of a layer (every channel of a layer costs the same)."""
    kk = info.kernel[0] * info.kernel[1]
    weight = info.out_per_group * kk
    activation = info.in_hw[0] * info.in_hw[1]
    flops = kk * info.out_per_group * info.out_hw[0] * info.out_hw[1]
    return ChannelCost(weight, activation, weight + activation, flops)


def layer_unit_costs(infos: Sequence[ConvInfo]) -> list[int]:
    """Memory units of one channel, per layer: the `costs` argument of the selections."""
    return [channel_costs(info).memory_units for info in infos]


def total_costs(infos: Sequence[ConvInfo]) -> dict[str, int]:
    """Totals over all conv channels = full fine-tuning (the paper's B_mem of the baseline).

    Keys: weight_units, activation_units, memory_units, wgrad_flops (multiply-adds per sample),
    channels.
    """
    out = {"weight_units": 0, "activation_units": 0, "memory_units": 0, "wgrad_flops": 0,
           "channels": 0}
    for info in infos:
        cost = channel_costs(info)
        out["weight_units"] += cost.weight_units * info.c_in
        out["activation_units"] += cost.activation_units * info.c_in
        out["memory_units"] += cost.memory_units * info.c_in
        out["wgrad_flops"] += cost.wgrad_flops * info.c_in
        out["channels"] += info.c_in
    return out


def units_to_bytes(units: float, bytes_per_unit: int = BYTES_PER_UNIT) -> float:
    """Memory units -> bytes (4 bytes per unit for float32)."""
    return units * bytes_per_unit


# --- selection -------------------------------------------------------------------------------


def _cost_fn(costs: Costs) -> Callable[[Channel], float]:
    if callable(costs):
        return costs
    per_layer = list(costs)
    return lambda ch: per_layer[ch[0]]


def _check_budget(pool: Sequence[Channel], cost: Callable[[Channel], float],
                  budget_units: float) -> None:
    """ConfigError for a non-number budget; BudgetError if no channel of the pool fits."""
    if isinstance(budget_units, bool) or not isinstance(budget_units, int | float) or (
        math.isnan(budget_units) or budget_units < 0
    ):
        raise ConfigError(f"memory budget must be a number of units >= 0, got {budget_units!r}")
    if not pool:
        return
    cheapest = min(pool, key=cost)
    cheapest_units = cost(cheapest)
    if budget_units < cheapest_units:
        raise BudgetError(
            f"memory budget {budget_units:g} units ({units_to_bytes(budget_units):g} bytes at "
            f"{BYTES_PER_UNIT} B/unit) is smaller than the cheapest channel of the pool: layer "
            f"{cheapest[0]} channel {cheapest[1]} costs {cheapest_units:g} units "
            f"({units_to_bytes(cheapest_units):g} bytes). No channel could be updated; raise the "
            f"budget to at least {cheapest_units:g} units, or widen the pool (e.g. more top-K "
            "layers) to include cheaper channels."
        )


FILLS = ("skip", "stop")  # how a selection walks its order when a channel overflows


def random_selection(
    pool: Sequence[Channel], costs: Costs, budget_units: float, generator: torch.Generator,
    fill: str = "skip",
) -> list[Channel]:
    """TraDy's online selection: shuffle the pool uniformly and walk that order, accepting each
    channel whose cost still fits the remaining budget ("sample until B_mem is met").

    `fill="skip"` (default [ours]): a channel that does not fit is skipped and the walk goes on,
    so the budget is filled (one expensive channel early in the order wastes nothing).
    `fill="stop"`: stop at the first channel that overflows (the first implementation's rule).
    Draws exactly one `torch.randperm(len(pool), generator=generator)`, so the generator's
    state (checkpointable) fixes the selection. Returns the accepted channels in shuffled order.
    `costs`: a function of the channel, or units per layer (`layer_unit_costs`). BudgetError if
    the budget is below the cheapest channel of the pool.
    """
    cost = _cost_fn(costs)
    _check_budget(pool, cost, budget_units)
    _check_fill(fill)
    order = torch.randperm(len(pool), generator=generator).tolist()
    return _take(pool, order, cost, budget_units, fill)


def deterministic_selection(
    scores: dict[Channel, float], costs: Costs, budget_units: float, fill: str = "skip"
) -> list[Channel]:
    """Det-RGN: channels by descending score (ties: lower (layer, channel) first), accepted while
    they fit, with the same `fill` rule as `random_selection` (skip: a costly channel that does
    not fit is passed over for the next ones; stop: it ends the selection). BudgetError if no
    channel of the pool could fit."""
    cost = _cost_fn(costs)
    pool = list(scores)
    _check_budget(pool, cost, budget_units)
    _check_fill(fill)
    ordered = sorted(pool, key=lambda ch: (-scores[ch], ch))
    return _take(ordered, range(len(ordered)), cost, budget_units, fill)


def _check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ConfigError(f"selection fill must be one of {list(FILLS)}, got {fill!r}")


def _take(pool: Sequence[Channel], order: Iterable[int], cost: Callable[[Channel], float],
          budget_units: float, fill: str) -> list[Channel]:
    """Walk `pool` in `order`, accepting channels that fit (see `random_selection`)."""
    cheapest = min((cost(ch) for ch in pool), default=0.0)
    taken: list[Channel] = []
    used = 0.0
    for j in order:
        ch = pool[j]
        c = cost(ch)
        if used + c > budget_units:
            if fill == "stop" or budget_units - used < cheapest:
                break  # stop; or nothing left in the pool can fit any more
            continue
        used += c
        taken.append(ch)
    return taken


def selection_units(selected: Iterable[Channel], costs: Costs) -> float:
    """Memory units of a selection (per sample)."""
    cost = _cost_fn(costs)
    return float(sum(cost(ch) for ch in selected))


def all_channels(infos: Sequence[ConvInfo], layers: Iterable[int] | None = None) -> list[Channel]:
    """The pool {(i, c)} of the given layers (default: all), in layer then channel order."""
    idx = range(len(infos)) if layers is None else sorted(set(layers))
    return [(i, c) for i in idx for c in range(infos[i].c_in)]


def selection_masks(infos: Sequence[ConvInfo], selected: Iterable[Channel]) -> list[Tensor]:
    """Per layer a bool (C,) tensor: True where the input channel is selected.

    ConfigError for a channel outside the layers."""
    masks = [torch.zeros(info.c_in, dtype=torch.bool) for info in infos]
    for i, c in selected:
        if not (0 <= i < len(infos) and 0 <= c < infos[i].c_in):
            raise ConfigError(f"channel {(i, c)} is not an input channel of the {len(infos)} "
                              "conv layers")
        masks[i][c] = True
    return masks


# --- reweighted gradient norm ----------------------------------------------------------------


def _channel_grad_norms(info: ConvInfo, grad: Tensor) -> Tensor:
    """||dL/dW[:, c]||_2 for every input channel c of the layer, shape (C,), float64.

    Weight (C', C/g, kh, kw) -> (g, C'/g, C/g, kh*kw): channel c = group * (C/g) + column.
    """
    g = grad.detach().to(torch.float64).reshape(
        info.groups, info.out_per_group, info.in_per_group, -1
    )
    return g.square().sum(dim=(1, 3)).sqrt().reshape(info.c_in)


def _layer_channel_rgn(infos: Sequence[ConvInfo]) -> list[Tensor]:
    """Per layer (C,) float64 on the weight's device: channel gradient norm / memory units of
    one channel (paper Eq. 7), from the current `.grad`; zeros where `.grad` is None."""
    out = []
    for info in infos:
        weight = info.module.weight
        if weight.grad is None:
            out.append(torch.zeros(info.c_in, dtype=torch.float64, device=weight.device))
        else:
            units = channel_costs(info).memory_units
            out.append(_channel_grad_norms(info, weight.grad) / units)
    return out


def channel_rgn_tensors(infos: Sequence[ConvInfo]) -> list[Tensor]:
    """`channel_rgn` as one (C,) float64 CPU tensor per layer."""
    return [t.cpu() for t in _layer_channel_rgn(infos)]


def _as_channel_dict(per_layer: Sequence[Tensor]) -> dict[Channel, float]:
    return {(i, c): float(v) for i, t in enumerate(per_layer) for c, v in enumerate(t.tolist())}


def channel_rgn(infos: Sequence[ConvInfo]) -> dict[Channel, float]:
    """RGN_c = ||dL/dW[:, c]||_2 / (C_W + C_A of one channel) for every (layer, channel)
    (paper Eq. 7), from the current `.grad` of each conv weight (0 where there is none)."""
    return _as_channel_dict(channel_rgn_tensors(infos))


def layer_rgn(infos: Sequence[ConvInfo]) -> list[float]:
    """Layer RGN = sum over its channels of RGN_c (paper Eq. 8)."""
    return [float(t.sum()) for t in channel_rgn_tensors(infos)]


class RGNAccumulator:
    """Sums channel RGN over backward passes: call `update()` after each backward (before the
    gradients are masked or zeroed). Sums stay on the weights' device (no sync per update)."""

    def __init__(self, infos: Sequence[ConvInfo]) -> None:
        self.infos = list(infos)
        self.sums = [torch.zeros(info.c_in, dtype=torch.float64, device=info.module.weight.device)
                     for info in self.infos]
        self.steps = 0

    def update(self) -> None:
        """Add the RGN of the current gradients."""
        for acc, rgn in zip(self.sums, _layer_channel_rgn(self.infos)):
            acc += rgn.to(acc.device)
        self.steps += 1

    def channel_scores(self) -> dict[Channel, float]:
        """Accumulated RGN per (layer, channel)."""
        return _as_channel_dict([t.cpu() for t in self.sums])

    def layer_scores(self) -> list[float]:
        """Accumulated layer RGN (sum over channels), per layer."""
        return torch.stack([t.sum().cpu() for t in self.sums]).tolist() if self.sums else []

    def state_dict(self) -> dict[str, object]:
        """CPU copies of the sums and the step count (for checkpoints)."""
        return {"sums": [t.detach().cpu().clone() for t in self.sums], "steps": self.steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        sums = state["sums"]
        if not isinstance(sums, list) or len(sums) != len(self.infos):
            raise ConfigError("RGN accumulator state does not match the conv layers")
        self.sums = [torch.as_tensor(t, dtype=torch.float64).to(acc.device).clone()
                     for t, acc in zip(sums, self.sums)]
        self.steps = int(state["steps"])  # type: ignore[call-overload]


def top_k_layers(layer_scores: Sequence[float], fraction: float = 0.97) -> list[int]:
    """The smallest set of highest-scoring layers holding >= `fraction` of the total score,
    sorted by layer index (paper D.5: 97% gives K = 35 for MobileNetV2-w0.35).
    Ties in score: the lower layer index first."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"top-K fraction must be in (0, 1], got {fraction!r}")
    scores = [float(s) for s in layer_scores]
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise ConfigError("layer scores must be finite and >= 0")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    total = 0.0
    for i in order:  # the total in the same summation order as the running sum below
        total += scores[i]
    if total <= 0.0:
        raise ConfigError("all layer scores are zero: accumulate RGN over some backward passes "
                          "before ranking layers")
    chosen: list[int] = []
    running = 0.0
    for i in order:
        chosen.append(i)
        running += scores[i]
        if running >= fraction * total:
            break
    return sorted(chosen)


# --- gradient masking ------------------------------------------------------------------------


def _weight_mask(info: ConvInfo, channel_mask: Tensor) -> Tensor:
    """Bool (C', C/g, 1, 1): True on W[rows of c's group, column of c] for selected c."""
    m = channel_mask.reshape(info.groups, 1, info.in_per_group)
    m = m.expand(info.groups, info.out_per_group, info.in_per_group)
    return m.reshape(info.c_out, info.in_per_group, 1, 1)


class ChannelMask:
    """Keeps only the gradients of selected input channels (plus nothing else of the convs).

    `apply()` after backward, before the optimizer step: a layer with no selected channel gets
    `.grad = None` for weight and bias (the optimizer skips it: no update, no momentum, no
    weight decay); a partly selected layer has W[:, c] (depthwise W[c]) zeroed in place for
    every unselected c. With momentum or weight decay the zeroed slices of a partly selected
    layer would still move; the paper uses plain SGD without either.
    """

    def __init__(self, infos: Sequence[ConvInfo], selected: Iterable[Channel]) -> None:
        self.infos = list(infos)
        self.channel_masks = selection_masks(self.infos, selected)  # bool (C,) per layer
        self.counts = [int(m.sum()) for m in self.channel_masks]
        # True where the gradient is dropped; moved to the gradient's device on first use
        self._drop_masks = [
            ~_weight_mask(info, m) if 0 < n < info.c_in else None
            for info, m, n in zip(self.infos, self.channel_masks, self.counts)
        ]

    def apply(self, infos: Sequence[ConvInfo] | None = None) -> None:
        """Mask the `.grad` of every conv weight (and bias) in place."""
        infos = self.infos if infos is None else list(infos)
        if len(infos) != len(self.infos):
            raise ConfigError(f"ChannelMask built for {len(self.infos)} layers, got {len(infos)}")
        for i, (info, n) in enumerate(zip(infos, self.counts)):
            weight, bias = info.module.weight, info.module.bias
            drop = self._drop_masks[i]
            if n == 0:
                weight.grad = None
                if bias is not None:
                    bias.grad = None
            elif drop is not None and weight.grad is not None:
                if drop.device != weight.grad.device:
                    drop = self._drop_masks[i] = drop.to(weight.grad.device)
                weight.grad.masked_fill_(drop, 0)

    @property
    def selected_channels(self) -> int:
        return sum(self.counts)

    @property
    def total_channels(self) -> int:
        return sum(info.c_in for info in self.infos)

    @property
    def selected_fraction(self) -> float:
        """Selected / all conv input channels."""
        return self.selected_channels / max(1, self.total_channels)

    @property
    def selected_layers(self) -> list[int]:
        """Layers with at least one selected channel."""
        return [i for i, n in enumerate(self.counts) if n > 0]

    def layer_fractions(self) -> list[float]:
        """Per layer: selected / C."""
        return [n / info.c_in for n, info in zip(self.counts, self.infos)]


# --- sparsity metrics ------------------------------------------------------------------------


def sparsity_metrics(infos: Sequence[ConvInfo], selected: Iterable[Channel]) -> dict[str, float]:
    """METHODS.md metrics of a selection against full fine-tuning (all conv channels).

    weight_sparsity = 1 - selected weight units / total; activation_sparsity likewise;
    wgrad_flops_saved = 1 - selected weight-derivative FLOPs / total; plus selected_channels and
    selected_memory_units (per sample), selected_weight_units, selected_activation_units.
    """
    counts = [int(m.sum()) for m in selection_masks(infos, selected)]
    total = total_costs(infos)
    sel = {"weight_units": 0, "activation_units": 0, "memory_units": 0, "wgrad_flops": 0}
    for info, n in zip(infos, counts):
        cost = channel_costs(info)
        sel["weight_units"] += n * cost.weight_units
        sel["activation_units"] += n * cost.activation_units
        sel["memory_units"] += n * cost.memory_units
        sel["wgrad_flops"] += n * cost.wgrad_flops

    def saved(key: str) -> float:
        return 1.0 - sel[key] / total[key] if total[key] else 0.0

    return {
        "weight_sparsity": saved("weight_units"),
        "activation_sparsity": saved("activation_units"),
        "wgrad_flops_saved": saved("wgrad_flops"),
        "selected_channels": float(sum(counts)),
        "selected_memory_units": float(sel["memory_units"]),
        "selected_weight_units": float(sel["weight_units"]),
        "selected_activation_units": float(sel["activation_units"]),
    }


# --- real activation savings -----------------------------------------------------------------


class _LayerPlan:
    """Index tensors of one layer's selection, for SelectiveConv2d.

    index: selected input channels (k,), ascending. For grouped/depthwise convs, each selected
    channel j becomes its own group of a k-group weight-gradient conv: `rows` (k * C'/g,) are the
    output channels (weight rows) of its group, `cols` (k * C'/g,) its weight column.
    """

    def __init__(self, info: ConvInfo, channel_mask: Tensor) -> None:
        self.c_in = info.c_in
        self.groups = info.groups
        self.index = torch.nonzero(channel_mask, as_tuple=False).flatten()
        self.k = int(self.index.numel())
        opg, ipg = info.out_per_group, info.in_per_group
        group = torch.div(self.index, ipg, rounding_mode="floor")
        self.rows = (group[:, None] * opg + torch.arange(opg)[None, :]).flatten()
        self.cols = torch.remainder(self.index, ipg).repeat_interleave(opg)
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> _LayerPlan:
        if device != self._device:
            self.index, self.rows, self.cols = (
                t.to(device) for t in (self.index, self.rows, self.cols)
            )
            self._device = device
        return self


class SelectiveConv2d(torch.autograd.Function):
    """conv2d whose backward computes the weight gradient of selected input channels only,
    and saves for backward only those channels of the input (plus the weight).

    Forward: the normal conv output. Saved: A[:, selected] (the whole input if all channels are
    selected, nothing if none is or the weight is frozen) and the weight. Backward: grad_input
    exactly as conv2d's (from weight and grad_output; the input shape is kept as a tuple);
    grad_weight zero except at the selected channels (None when no channel is selected); the
    full bias gradient if the bias requires grad. Not autocast-aware (run it in one dtype).

    Caveat: the saving is real only where no other op keeps the conv input alive. MobileNetV2 is
    fine (BN saves the conv output; in-place ReLU6 saves its own pre-clamp copy in torch 2.15),
    but ReLU saves its output, which is the next conv's input: there freezing frees nothing
    and the selected slice is an extra copy (tests/test_channels.py measures both cases).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        plan: _LayerPlan,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> Tensor:
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.conf = (stride, padding, dilation, groups)  # type: ignore[attr-defined]
        ctx.input_shape = tuple(x.shape)  # type: ignore[attr-defined]
        ctx.plan = plan  # type: ignore[attr-defined]
        saved: Tensor | None = None
        if ctx.needs_input_grad[1] and plan.k > 0:  # type: ignore[attr-defined]
            saved = x if plan.k == plan.c_in else x.index_select(1, plan.to(x.device).index)
        ctx.save_for_backward(saved, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x_sel, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        plan: _LayerPlan = ctx.plan
        grad_in = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_in = conv2d_input(ctx.input_shape, weight, grad_out, stride, padding, dilation,
                                   groups)
        if ctx.needs_input_grad[1] and x_sel is not None:
            if plan.k == plan.c_in:
                grad_w = conv2d_weight(x_sel, weight.shape, grad_out, stride, padding, dilation,
                                       groups)
            elif groups == 1:
                part = conv2d_weight(x_sel, (weight.shape[0], plan.k, *weight.shape[2:]),
                                     grad_out, stride, padding, dilation, 1)
                grad_w = weight.new_zeros(weight.shape).index_copy_(1, plan.index, part)
            else:  # grouped / depthwise: each selected channel its own group
                go = grad_out.index_select(1, plan.rows)
                part = conv2d_weight(x_sel, (plan.rows.numel(), 1, *weight.shape[2:]), go,
                                     stride, padding, dilation, plan.k)
                grad_w = weight.new_zeros(weight.shape)
                grad_w.index_put_((plan.rows, plan.cols), part[:, 0])
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_in, grad_w, grad_b, None, None, None, None, None


def _selective_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    plan: _LayerPlan = self._channels_plan  # type: ignore[assignment]
    needs_graph = torch.is_grad_enabled() and (
        x.requires_grad or self.weight.requires_grad
        or (self.bias is not None and self.bias.requires_grad)
    )
    if not needs_graph:
        return F.conv2d(x, self.weight, self.bias, self.stride, self._channels_padding,
                        self.dilation, self.groups)
    plan.to(x.device)
    return SelectiveConv2d.apply(x, self.weight, self.bias, plan, tuple(self.stride),
                                 self._channels_padding, tuple(self.dilation), self.groups)


def enable_selective_saving(
    model: nn.Module, infos: Sequence[ConvInfo], selected: Iterable[Channel]
) -> None:
    """Make every conv of `infos` run as `SelectiveConv2d` with this selection.

    Swaps the instance's `forward` (call again with a new selection each epoch; undo with
    `disable_selective_saving`). `model` is only checked to own the convs. Supports stride,
    padding (zeros, symmetric), dilation and groups; other padding modes are a ConfigError.
    """
    owned = {id(m) for m in model.modules()}
    masks = selection_masks(infos, selected)
    for info, mask in zip(infos, masks):
        m = info.module
        if id(m) not in owned:
            raise ConfigError(f"conv '{info.name}' is not a module of the model")
        if m.padding_mode != "zeros":
            raise ConfigError(f"conv '{info.name}' uses padding_mode={m.padding_mode!r}; "
                              "selective saving supports zero padding only")
        m._channels_padding = _int_padding(m)  # type: ignore[assignment]
        m._channels_plan = _LayerPlan(info, mask).to(m.weight.device)  # type: ignore[assignment]
        m.forward = types.MethodType(_selective_forward, m)  # type: ignore[method-assign]


def disable_selective_saving(model: nn.Module) -> None:
    """Restore the normal forward of every conv of `model` that selective saving swapped."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and "_channels_plan" in m.__dict__:
            for attr in ("forward", "_channels_plan", "_channels_padding"):
                m.__dict__.pop(attr, None)
