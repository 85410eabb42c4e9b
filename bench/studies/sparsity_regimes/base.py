"""What the four methods of study `sparsity_regimes` share (METHODS.md in this folder).

Every method attaches `TopK` after the ReLUs of the residual blocks (`bench.studies.sparsity_regimes.topk.attach_topk`)
in `setup` and trains with the keep ratio r its controller chose for the epoch:

- `setup`: attach TopK; a controller that needs the probe (S1, S2) gets its probe set: a fixed
  sample of `probe_size` training images (2,048; all of the train split when it is smaller),
  drawn once per seed (a generator seeded by the cell's seed, not the training RNG, so the data
  order is that of the dense cell), without augmentation.
- `on_epoch_start`: r <- controller.r (the next epoch's ratio), set on every TopK; the
  activation counters are reset. The phase recorded in the history is "dense" (r = 1) or
  "sparse".
- evaluation is dense: TopK is the identity in eval mode, and the loop evaluates in eval mode.
- `on_epoch_end`: records `keep_ratio` (the r the epoch trained at) and
  `effective_activation_rate` (non-zero hooked activations / all hooked activations over the
  epoch's training forwards); then the probe (S1, S2): in eval mode, without grad, the probe
  set's mean cross-entropy and accuracy dense (`probe_dense_loss`, `probe_dense_acc`) and with
  TopK forced on at the epoch's r (`probe_loss`, `probe_acc`; one pass only when r = 1), its
  cost `probe_s` and `probe_fraction` = probe_s / the epoch's training seconds; then the
  controller's step on those numbers, recorded as `next_keep_ratio`, `controller_action`
  (compress / hold / reset / stay), `reset_cause` (guard / floor / schedule, "" when no reset),
  the 0/1 flags `reset`, `reset_guard`, `reset_floor`, `reset_schedule` (numbers, so that
  history.csv keeps them) and `guard_ok` (1 / 0; None without a guard).
- `final_metrics`: `acc_at_r{r:g}` for r in `eval_ratios`: validation accuracy in eval mode with
  TopK forced on at r (same split and batches as val_acc, which is the dense accuracy), the mean
  keep ratio / effective activation rate over training epochs, the resets by cause, and the
  probe's total cost (`probe_s_total`, `probe_fraction` of the training time, `probe_size`).

`dense` attaches the same TopK modules at r = 1 (bit-identical to no TopK) only to count the
natural ReLU sparsity of the same hooked outputs, and to evaluate at the `eval_ratios`.
Controller state, the epoch's r and the per-epoch lists go into `state_dict` for resume (the
probe set is redrawn from the seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bench import measure, metrics
from bench.data.loader import normalize, to_unit
from bench.errors import ConfigError
from bench.methods.base import Method
from bench.studies.sparsity_regimes.controllers import (
    RESET_CAUSES,
    KeepRatioController,
    Probe,
)
from bench.studies.sparsity_regimes.topk import SCOPES, TopKHandle, attach_topk

if TYPE_CHECKING:
    from bench.train import Run

COMMON_DEFAULTS: dict[str, Any] = {
    "scope": "layer",  # layer | network (one per-sample top-k over all hooked layers)
    "eval_ratios": [0.5, 0.25, 0.1, 0.05],  # final accuracy with TopK forced on at these r
}
COMPRESSION_DEFAULTS: dict[str, Any] = {
    "r_min": 0.05,  # floor of the keep ratio [ours]
    "beta": 0.8,  # compression factor per epoch [ours]
    "probe_size": 2048,  # training images the guards measure on (all when fewer) [ours]
}
PROBE_SEED_OFFSET = 1_000_003  # the probe set's generator: cell seed + this (not the data RNG)


def acc_key(r: float) -> str:
    return f"acc_at_r{r:g}"


def probe_indices(n_train: int, size: int, seed: int) -> torch.Tensor:
    """The probe set: `size` distinct training indices (all of them when n_train <= size),
    sorted, drawn from a generator seeded by `seed` alone (the same set for every method of a
    seed)."""
    if size >= n_train:
        return torch.arange(n_train)
    g = torch.Generator().manual_seed(int(seed) + PROBE_SEED_OFFSET)
    return torch.randperm(n_train, generator=g)[:size].sort().values


class SparsityMethod(Method):
    """TopK after the residual blocks' ReLUs, keep ratio from a per-epoch controller."""

    defaults: dict[str, Any] = dict(COMMON_DEFAULTS)
    metrics = ("mean_keep_ratio", "mean_effective_activation_rate", "keep_ratio_resets",
               "guard_resets", "floor_resets", "schedule_resets", "probe_size", "probe_s_total",
               "probe_fraction", "acc_at_r*")

    @classmethod
    def resolve_options(cls, options: dict[str, Any] | None) -> dict[str, Any]:
        resolved = super().resolve_options(options)
        if resolved["scope"] not in SCOPES:
            raise ConfigError(f"method '{cls.name}': scope must be one of {', '.join(SCOPES)}, "
                              f"not {resolved['scope']!r}")
        ratios = resolved["eval_ratios"]
        if not isinstance(ratios, (list, tuple)) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r <= 1
                for r in ratios):
            raise ConfigError(f"method '{cls.name}': eval_ratios must be a list of numbers in "
                              f"(0, 1], not {ratios!r}")
        size = resolved.get("probe_size", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"method '{cls.name}': probe_size must be an integer >= 1, "
                              f"not {size!r}")
        try:
            cls.make_controller(resolved)
        except ValueError as e:
            raise ConfigError(f"method '{cls.name}': {e}") from None
        return resolved

    @classmethod
    def make_controller(cls, options: dict[str, Any]) -> KeepRatioController:
        raise NotImplementedError

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.controller = self.make_controller(self.options)
        self.handle: TopKHandle | None = None
        self.epoch_ratio = self.controller.r
        self.ratios: list[float] = []  # r per trained epoch
        self.rates: list[float] = []  # effective activation rate per trained epoch
        self.probe_s_total = 0.0
        self.train_s_total = 0.0  # training seconds of the epochs the probe ran after
        self._train_s_at_start = 0.0
        self.probe_x: torch.Tensor | None = None  # uint8 (P, C, H, W) on the device
        self.probe_y: torch.Tensor | None = None  # (P,)

    def setup(self, run: Run) -> None:
        self.handle = attach_topk(run.model, self.options["scope"], ratio=1.0)
        if self.controller.needs_probe:
            idx = probe_indices(len(run.data.train_y), int(self.options["probe_size"]),
                                int(run.cfg["seed"])).to(run.data.train_y.device)
            self.probe_x, self.probe_y = run.data.train_x[idx], run.data.train_y[idx]

    # -- the probe -----------------------------------------------------------------------

    def _probe_pass(self, run: Run) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the model on the probe set, in eval mode, no grad."""
        assert self.probe_x is not None and self.probe_y is not None
        batch = int(run.cfg["train"]["eval_batch_size"])
        data = run.data
        loss_sum = torch.zeros((), device=self.probe_x.device)
        correct = torch.zeros((), device=self.probe_x.device, dtype=torch.long)
        for start in range(0, len(self.probe_y), batch):
            xb = self.probe_x[start:start + batch]  # uint8 (B, C, H, W)
            yb = self.probe_y[start:start + batch]  # (B,)
            logits = run.model(normalize(to_unit(xb), data.mean, data.std))  # (B, K)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        packed = torch.stack([loss_sum.double(), correct.double()]).cpu()
        n = len(self.probe_y)
        return float(packed[0]) / n, float(packed[1]) / n

    def measure_probe(self, run: Run, ratio: float) -> Probe:
        """Dense and at-`ratio` loss/accuracy on the probe set at the current weights."""
        assert self.handle is not None
        modes = [(m, m.training) for m in run.model.modules()]
        run.model.eval()
        try:
            with torch.no_grad():
                dense_loss, dense_acc = self._probe_pass(run)
                if ratio >= 1.0:
                    loss, acc = dense_loss, dense_acc
                else:
                    with self.handle.forced(ratio):
                        loss, acc = self._probe_pass(run)
        finally:
            for m, training in modes:
                m.training = training
        return Probe(dense_loss, dense_acc, loss, acc)

    # -- the loop's hooks ----------------------------------------------------------------

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        assert self.handle is not None
        self.epoch_ratio = float(self.controller.r)
        self.handle.set_ratio(self.epoch_ratio)
        self.handle.reset_stats()
        self._train_s_at_start = float(run.timing["train_s"])
        return "dense" if self.epoch_ratio == 1.0 else "sparse"

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        assert self.handle is not None
        rate = self.handle.effective_rate()
        out: dict[str, Any] = {"keep_ratio": self.epoch_ratio, "effective_activation_rate": rate}
        probe: Probe | None = None
        if self.controller.needs_probe:
            with measure.Stopwatch(run.device) as sw:
                probe = self.measure_probe(run, self.epoch_ratio)
            train_s = float(run.timing["train_s"]) - self._train_s_at_start
            self.probe_s_total += sw.elapsed_s
            self.train_s_total += train_s
            out.update(probe_dense_loss=probe.dense_loss, probe_loss=probe.loss,
                       probe_dense_acc=probe.dense_acc, probe_acc=probe.acc,
                       probe_loss_ratio=(probe.loss / probe.dense_loss
                                         if probe.dense_loss > 0 else None),
                       probe_acc_drop=probe.dense_acc - probe.acc,
                       probe_s=sw.elapsed_s,
                       probe_fraction=sw.elapsed_s / train_s if train_s > 0 else None)
        c = self.controller
        c.step(probe)
        self.ratios.append(self.epoch_ratio)
        if rate is not None:
            self.rates.append(rate)
        out.update(next_keep_ratio=float(c.r), controller_action=c.action,
                   reset_cause=c.reset_cause, reset=int(c.action == "reset"),
                   guard_ok=None if c.guard_ok is None else int(c.guard_ok),
                   **{f"reset_{cause}": int(c.reset_cause == cause) for cause in RESET_CAUSES})
        return out

    def final_metrics(self, run: Run) -> dict[str, Any]:
        c = self.controller
        final: dict[str, Any] = {
            "mean_keep_ratio": sum(self.ratios) / len(self.ratios) if self.ratios else None,
            "mean_effective_activation_rate": (sum(self.rates) / len(self.rates)
                                               if self.rates else None),
            "keep_ratio_resets": int(c.resets),
            **{f"{cause}_resets": int(getattr(c, f"{cause}_resets")) for cause in RESET_CAUSES},
        }
        if c.needs_probe:
            final.update(probe_size=int(len(self.probe_y)) if self.probe_y is not None else None,
                         probe_s_total=self.probe_s_total,
                         probe_fraction=(self.probe_s_total / self.train_s_total
                                         if self.train_s_total > 0 else None))
        if self.handle is None or run.status != "ok":
            return final  # a diverged / OOM cell: no extra evaluation
        batch = run.cfg["train"]["eval_batch_size"]
        for r in self.options["eval_ratios"]:
            with self.handle.forced(float(r)):
                final[acc_key(float(r))] = metrics.validation_distribution_metrics(
                    run.model, run.data, batch)["val_acc"]
        return final

    # -- checkpointing -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "epoch_ratio": self.epoch_ratio,
                "ratios": list(self.ratios), "rates": list(self.rates),
                "probe_s_total": self.probe_s_total, "train_s_total": self.train_s_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "controller" in state:
            self.controller.load_state_dict(state["controller"])
        self.epoch_ratio = float(state.get("epoch_ratio", self.controller.r))
        self.ratios = list(state.get("ratios", []))
        self.rates = list(state.get("rates", []))
        self.probe_s_total = float(state.get("probe_s_total", 0.0))
        self.train_s_total = float(state.get("train_s_total", 0.0))
