"""What the eight TraDy-study methods share (METHODS.md in this folder).

Not a registered method. Each registered method (one file each) picks a *pool* of conv input
channels, a *rule* (random / RGN / all / none) and whether the selection is *dynamic*
(re-chosen every epoch) or *static* (chosen once):

    full_ft        all weights trained (BatchNorm included), budget 'none' only
    last_layer     classifier only, budget 'none' only
    tradyn         D-TopK-Random: dynamic, random over the top-K layers of a ranking file
    d_full_random  dynamic, random over all conv channels
    d_det_rgn      dynamic, highest RGN first over all conv channels
    s_full_random  static, random over all conv channels
    s_det_rgn      static, highest RGN first over all conv channels
    s_topk_random  static, random over the top-K layers of a ranking file (TraDy without
                   reselection: the paper's test of "dynamic reselection matters")

Semantics of the channel methods (every choice marked [ours] is an option or documented here):

- Granularity: (layer, input channel) of every `nn.Conv2d` that runs in a forward
  (`bench.studies.tradyn.channels.conv_layers` on a 2-image batch of the training split at the training
  resolution). Costs per sample in memory units (`channels.channel_costs`).
- Budget: the cell's `budget` label (`bench.config.parse_budget`): a plain number or `units` is
  memory units; `kB` (1000 bytes), `MiB` (2**20 bytes), `GiB` (2**30 bytes) are converted to
  units at 4 bytes per unit (float32), i.e. units = bytes / 4. Budget 'none' is not supported
  (the cell is skipped: "needs a memory budget"). A budget below the cheapest channel of the pool
  raises the library's `BudgetError` at the first selection (the cell fails, with the fix in the
  message). The selected memory never exceeds the budget.
- Filling the budget (option `fill`, default `skip` [ours]): the selection walks its order
  (shuffled pool, or descending RGN) and accepts each channel that still fits the remaining
  budget, passing over those that do not, so the budget is used (>= 99% on the study's
  configs) instead of wasted by one expensive channel early in the order. `fill: stop` ends the
  selection at the first channel that overflows, which handicaps the pools with expensive
  channels (D-Full-Random at the paper's 27,946 units on MobileNetV2-w0.35 at 128x128: 96.3% of
  the budget on average and 54% at worst over 300 draws; `skip`: >= 99.9%).
- What is trained: the selected slices W[:, c] of conv weights, plus the classifier (`model.fc`,
  weight and bias), always. BatchNorm affine parameters and conv biases are frozen [ours, option
  `train_bn: False`]: `build_optimizer` sets their `requires_grad` to False *before* the
  optimizer is built (build_run builds the optimizer before `setup`), so they get no gradient,
  no optimizer state and no update, and count neither in the gradient memory. Every other
  parameter that is neither a conv weight nor the classifier is frozen the same way. With
  `train_bn: True` BatchNorm affine parameters and conv biases are trained too (a conv bias gets
  a gradient only while its layer has a selected channel: `ChannelMask`). BatchNorm running
  statistics keep updating during training (the model is in train mode) [ours].
- Masking: `ChannelMask.apply` in `before_optimizer_step` (vectorised per layer): unselected
  slices of a partly selected layer get zero gradient; a layer without a selected channel gets
  `.grad = None`. The optimizer is the study's (SGD from the `train` block). The paper uses SGD
  without momentum or weight decay; with either, zeroed slices of a partly selected layer could
  still move (momentum from an earlier epoch, decay), so configs for this study set both to 0.
- Option `save_selected_only` (default False [ours]: masking alone reproduces the accuracy
  behaviour and is the cheaper path on small configs; the paper config sets it True): after each
  selection, `channels.enable_selective_saving` makes every conv save only A[:, selected] for
  backward, so the loop's `activation_mib` (measured on each epoch's first step) shows the
  saving. It is disabled before every reselection (and before an RGN pass, which needs the full
  gradient) and re-enabled with the new selection.
- Randomness: a method-owned CPU `torch.Generator` seeded with `cfg["seed"] + SEED_OFFSET` draws
  every random selection (one `randperm` per selection); its state and the current selection
  are in `state_dict`, so a resumed cell makes the same selections as an uninterrupted one.
- RGN (the `*_det_rgn` methods): before the selection, one "full gradient" pass (paper Sec. 4:
  "we first compute the full gradient without updating network weights"): the model in train
  mode, forward + backward of the cross-entropy (the study's label smoothing) over the whole
  training split in order (batches of the study's batch size), without augmentation, with
  every channel's gradient (selective saving off), no optimizer step; the gradient is the mean
  over samples. Channel RGN = `channels.channel_rgn` of it. Option `rgn_batches` (default null
  = the whole split; a number = only the first that many batches [ours], cheaper and a weaker
  oracle). D-Det-RGN pays this pass every epoch, S-Det-RGN once.
  The pass does not disturb training: BatchNorm buffers (running statistics, batch counters)
  are saved and restored, the global torch RNG is forked (dropout), the loader's generator is not
  used, and every `.grad` is set to None afterwards.

Per-epoch metrics (history): weight_sparsity, activation_sparsity, wgrad_flops_saved,
selected_channels, selected_memory_units, budget_units (None for budget 'none'),
selected_layers (layers with at least one selected channel), selection_id (a short hash of the
selection, to compare selections across epochs and runs), selection_s (seconds spent selecting
at the epoch's start: the RGN pass), and for the budgeted methods budget_utilisation
(selected / budget units), pool_memory_units and pool_taken (1.0 when the whole pool is
selected). Final metrics: the means over epochs (mean_weight_sparsity,
mean_activation_sparsity, mean_wgrad_flops_saved, mean_selected_channels), the last epoch's
values, mean_ and min_budget_utilisation, selection_mode (dynamic | static), selection_rule
(random | rgn), selection_fill, selection_pool (all | topk), distinct_selections (selection
ids over the epochs), full_memory_units (all conv channels) and pool_channels. checks.py reads
them.
"""

from __future__ import annotations

import hashlib
import json
import time
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import parse_budget
from bench.data import DeviceLoader
from bench.data.loader import normalize, to_unit
from bench.errors import ConfigError
from bench.methods.base import Method
from bench.studies.tradyn import channels as C

if TYPE_CHECKING:
    from bench.train import Run

SEED_OFFSET = 1001  # selection generator seed = cfg["seed"] + SEED_OFFSET
UNIT_BYTES = {"units": C.BYTES_PER_UNIT, "kB": 1000, "MiB": 2**20, "GiB": 2**30}
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def budget_units(label: str) -> float | None:
    """The cell's budget label in memory units (None for 'none'): units = bytes / 4."""
    parsed = parse_budget(label)
    if parsed is None:
        return None
    value, unit = parsed
    return value * UNIT_BYTES[unit] / C.BYTES_PER_UNIT


def example_input(run: Run) -> torch.Tensor:
    """Two normalised training images at the training resolution, on the run's device."""
    x = to_unit(run.data.train_x[:2])
    return normalize(x, run.data.mean, run.data.std).to(run.device)


def classifier(model: nn.Module) -> nn.Module:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ConfigError(f"model {type(model).__name__} has no classifier module named 'fc'; "
                          "every bench model names its classifier 'fc'")
    return fc


def selection_id(selection: list[C.Channel]) -> str:
    """A short stable fingerprint of a selection (order-independent)."""
    text = json.dumps(sorted([int(i), int(c)] for i, c in selection))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def freeze_except(model: nn.Module, train_conv_weights: bool, train_bn: bool) -> None:
    """requires_grad: classifier always; conv weights if `train_conv_weights`; norm affine and
    conv biases if `train_bn`; every other parameter frozen."""
    keep: set[int] = {id(p) for p in classifier(model).parameters()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if train_conv_weights:
                keep.add(id(m.weight))
            if train_bn and m.bias is not None:
                keep.add(id(m.bias))
        elif train_bn and isinstance(m, NORM_TYPES):
            keep.update(id(p) for p in m.parameters(recurse=False))
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def full_gradient_rgn(run: Run, infos: list[C.ConvInfo], loader: DeviceLoader,
                      batches: int | None = None) -> dict[C.Channel, float]:
    """Channel RGN of the mean gradient (over samples) of every batch of `loader`, or of its
    first `batches` batches.

    Train mode (batch statistics), no optimizer step; BatchNorm buffers and the global RNG are
    restored, every `.grad` is None afterwards. A last batch of one sample is left out (BatchNorm
    in train mode cannot normalise a 1x1 map of one sample). Selective saving must be off (full
    gradient)."""
    model = run.model
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    params = list(model.parameters())
    for p in params:
        p.grad = None
    devices = [run.device] if run.device.type == "cuda" else []
    label_smoothing = run.cfg["train"]["label_smoothing"]
    seen = 0
    try:
        model.train()
        with torch.random.fork_rng(devices=devices):
            for inputs, targets in islice(loader, batches):
                if len(targets) < 2 and seen > 0:
                    continue
                # summed loss: divided by the sample count below, the mean over samples
                loss = F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing,
                                       reduction="sum")
                loss.backward()
                seen += len(targets)
        with torch.no_grad():
            for info in infos:
                g = info.module.weight.grad
                if g is not None and seen > 1:
                    g.div_(seen)
        scores = C.channel_rgn(infos)
    finally:
        for p in params:
            p.grad = None
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was_training)
    return scores


class TraDyBase(Method):
    """Channel selection + masking; subclasses set the pool and the rule."""

    # "random" | "rgn" | "all" (every channel, no masking: full_ft) | "none" (classifier only)
    rule: ClassVar[str] = "random"
    dynamic: ClassVar[bool] = True
    needs_budget: ClassVar[bool] = True
    # "all" (every conv channel) | "topk" (the channels of the ranking's top-K layers)
    pool_kind: ClassVar[str] = "all"
    defaults: ClassVar[dict[str, Any]] = {"train_bn": False, "save_selected_only": False,
                                          "fill": "skip"}
    metrics = ("weight_sparsity", "activation_sparsity", "wgrad_flops_saved",
               "selected_channels", "mean_weight_sparsity", "mean_activation_sparsity",
               "mean_wgrad_flops_saved", "mean_selected_channels", "selected_memory_units",
               "selected_layers", "budget_units", "full_memory_units", "pool_channels",
               "mean_budget_utilisation", "min_budget_utilisation", "selection_mode",
               "selection_rule", "selection_fill", "selection_pool", "distinct_selections")

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        fill = self.options.get("fill", "skip")
        if fill not in C.FILLS:
            raise ConfigError(f"method '{self.name}': option fill must be one of "
                              f"{list(C.FILLS)} (skip: pass over a channel that does not fit; "
                              f"stop: end the selection at the first), not {fill!r}")
        batches = self.options.get("rgn_batches")
        if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int)
                                    or batches < 1):
            raise ConfigError(f"method '{self.name}': option rgn_batches must be null (the "
                              f"whole training split) or a number of batches >= 1, not "
                              f"{batches!r}")
        self.generator: torch.Generator | None = None
        self._pending_generator: torch.Tensor | None = None
        self.selection: list[C.Channel] | None = None
        self.infos: list[C.ConvInfo] = []
        self.pool_layers: list[int] = []
        self.budget: float | None = None
        self.mask: C.ChannelMask | None = None
        self.last_scores: dict[C.Channel, float] | None = None
        self._rgn_loader: DeviceLoader | None = None
        self._selection_s = 0.0

    # -- capabilities ---------------------------------------------------------------------

    def supports(self, cfg: dict[str, Any]) -> tuple[bool, str]:
        unconstrained = budget_units(cfg["budget"]) is None
        if self.needs_budget and unconstrained:
            return False, f"method '{self.name}' needs a memory budget (budget is 'none')"
        if not self.needs_budget and not unconstrained:
            return False, (f"method '{self.name}' has no memory budget; it runs only at budget "
                           f"'none' (got '{cfg['budget']}')")
        return True, ""

    # -- set-up ---------------------------------------------------------------------------

    def build_optimizer(self, model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
        """Freeze what the method never trains (requires_grad False) before the optimizer is
        built, so frozen parameters have no gradient, optimizer state or update."""
        if self.rule != "all":
            freeze_except(model, train_conv_weights=self.rule != "none",
                          train_bn=bool(self.options.get("train_bn", False)))
        return super().build_optimizer(model, train)

    def setup(self, run: Run) -> None:
        self.infos = C.conv_layers(run.model, example_input(run))
        if not self.infos and self.rule in ("random", "rgn"):
            raise ConfigError(f"method '{self.name}': model '{run.cfg['model']}' has no conv layer")
        self.budget = budget_units(run.cfg["budget"])
        self.pool_layers = self.choose_pool_layers(run)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(run.cfg["seed"]) + SEED_OFFSET)
        if self._pending_generator is not None:
            self.generator.set_state(self._pending_generator)
            self._pending_generator = None
        if self.rule == "rgn":
            bs = int(run.cfg["train"]["batch_size"])
            batches = self.options.get("rgn_batches")
            n = len(run.data.train_y) if batches is None else bs * int(batches)
            self._rgn_loader = DeviceLoader(run.data.train_x[:n], run.data.train_y[:n], bs,
                                            mean=run.data.mean, std=run.data.std, shuffle=False,
                                            augment=False, generator=None)

    def choose_pool_layers(self, run: Run) -> list[int]:
        """Indices (into `self.infos`) of the layers whose channels may be selected."""
        return list(range(len(self.infos)))

    # -- selection ------------------------------------------------------------------------

    def pool(self) -> list[C.Channel]:
        return C.all_channels(self.infos, self.pool_layers)

    def select(self, run: Run) -> list[C.Channel]:
        costs = C.layer_unit_costs(self.infos)
        if self.rule == "all":
            return C.all_channels(self.infos)
        if self.rule == "none":
            return []
        assert self.budget is not None and self.generator is not None
        fill = self.options["fill"]
        if self.rule == "random":
            return C.random_selection(self.pool(), costs, self.budget, self.generator, fill)
        if self.rule == "rgn":
            assert self._rgn_loader is not None
            scores = full_gradient_rgn(run, self.infos, self._rgn_loader,
                                       self.options.get("rgn_batches"))
            pool = set(self.pool())
            self.last_scores = {ch: s for ch, s in scores.items() if ch in pool}
            return C.deterministic_selection(self.last_scores, costs, self.budget, fill)
        raise AssertionError(self.rule)

    # -- the loop's hooks -----------------------------------------------------------------

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        if self.dynamic or self.selection is None:
            start = time.perf_counter()
            C.disable_selective_saving(run.model)
            self.selection = [(int(i), int(c)) for i, c in self.select(run)]
            self._selection_s = time.perf_counter() - start
        self._install(run)
        return "train"

    def _install(self, run: Run) -> None:
        """Mask (and, with save_selected_only, selective saving) for the current selection."""
        assert self.selection is not None
        masking = self.rule in ("random", "rgn")
        self.mask = C.ChannelMask(self.infos, self.selection) if masking else None
        C.disable_selective_saving(run.model)
        if masking and self.options.get("save_selected_only", False):
            C.enable_selective_saving(run.model, self.infos, self.selection)

    def before_optimizer_step(self, run: Run) -> None:
        if self.mask is not None:
            self.mask.apply(self.infos)

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        assert self.selection is not None
        m = C.sparsity_metrics(self.infos, self.selection)
        layers = len({i for i, _ in self.selection})
        out: dict[str, Any] = {
            "weight_sparsity": m["weight_sparsity"],
            "activation_sparsity": m["activation_sparsity"],
            "wgrad_flops_saved": m["wgrad_flops_saved"],
            "selected_channels": m["selected_channels"],
            "selected_memory_units": m["selected_memory_units"],
            "budget_units": self.budget,
            "selected_layers": float(layers),
            "selection_id": selection_id(self.selection),
            "selection_s": self._selection_s,  # the selection at this epoch's start (RGN pass)
        }
        if self.budget is not None and self.rule in ("random", "rgn"):
            pool = self.pool_memory_units()
            # used / budget; the whole pool taken counts as full when the pool fits the budget
            out["budget_utilisation"] = m["selected_memory_units"] / self.budget
            out["pool_memory_units"] = pool
            out["pool_taken"] = float(m["selected_memory_units"] >= pool)
        self._selection_s = 0.0
        return out

    def pool_memory_units(self) -> float:
        """Memory units of the whole pool (every channel the method may select)."""
        return C.selection_units(self.pool(), C.layer_unit_costs(self.infos))

    def final_metrics(self, run: Run) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("weight_sparsity", "activation_sparsity", "wgrad_flops_saved",
                    "selected_channels"):
            values = [h[key] for h in run.history if isinstance(h.get(key), (int, float))]
            if values:
                out[f"mean_{key}"] = sum(values) / len(values)
                out[key] = values[-1]
        last = run.history[-1] if run.history else {}
        for key in ("selected_memory_units", "selected_layers"):
            if key in last:
                out[key] = last[key]
        out["budget_units"] = self.budget
        used = [h["budget_utilisation"] for h in run.history
                if isinstance(h.get("budget_utilisation"), (int, float))]
        if used:
            out["mean_budget_utilisation"] = sum(used) / len(used)
            out["min_budget_utilisation"] = min(used)
        if self.rule in ("random", "rgn"):
            out["selection_mode"] = "dynamic" if self.dynamic else "static"
            out["selection_rule"] = self.rule
            out["selection_fill"] = self.options["fill"]
            out["selection_pool"] = self.pool_kind
            ids = [h.get("selection_id") for h in run.history]
            out["distinct_selections"] = float(len(set(ids)))
        if self.infos:
            out["full_memory_units"] = float(C.total_costs(self.infos)["memory_units"])
        if self.infos and self.rule in ("random", "rgn"):
            out["pool_channels"] = float(len(self.pool()))
        return out

    # -- checkpointing --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        gen = (self.generator.get_state() if self.generator is not None
               else self._pending_generator)
        return {"generator": gen,
                "selection": [list(ch) for ch in self.selection] if self.selection is not None
                else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen = state.get("generator")
        if gen is not None:
            if self.generator is not None:
                self.generator.set_state(gen)
            else:
                self._pending_generator = gen
        sel = state.get("selection")
        self.selection = [(int(i), int(c)) for i, c in sel] if sel is not None else None
