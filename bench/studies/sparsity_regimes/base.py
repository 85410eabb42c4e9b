"""What the four methods of study `sparsity_regimes` share (seed 002; ../shared/METHODS.md).

Every method attaches `TopK` after the ReLUs of the residual blocks (`bench.studies.sparsity_regimes.topk.attach_topk`)
in `setup` and trains with the keep ratio r its controller chose for the epoch:

- `on_epoch_start`: r <- controller.r (the next epoch's ratio), set on every TopK; the
  activation counters and the epoch's loss/accuracy accumulators are reset. The phase recorded in
  the history is "dense" (r = 1) or "sparse".
- `training_step`: the base step (TopK active, the model is in train mode), plus the epoch's
  train loss and accuracy accumulated on the device exactly as the loop does
  (sum of loss.float() * batch, correct count): the loop appends its own record only after
  `on_epoch_end`, so the controller reads these instead (one host sync per epoch).
- evaluation is dense: TopK is the identity in eval mode, and the loop evaluates in eval mode.
- `on_epoch_end`: records `keep_ratio` (the r the epoch trained at) and
  `effective_activation_rate` (non-zero hooked activations / all hooked activations over the
  epoch's training forwards), then steps the controller with the epoch's train loss/accuracy.
- `final_metrics`: `acc_at_r{r:g}` for r in `eval_ratios`: validation accuracy in eval mode with
  TopK forced on at r (same split and batches as val_acc, which is the dense accuracy), plus the
  mean keep ratio / effective activation rate over training epochs and the number of resets.

`dense` attaches the same TopK modules at r = 1 (bit-identical to no TopK) only to count the
natural ReLU sparsity of the same hooked outputs, and to evaluate at the `eval_ratios`.
Controller state and the epoch's r go into `state_dict` for resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from bench import metrics
from bench.errors import ConfigError
from bench.methods.base import Method
from bench.studies.sparsity_regimes.controllers import KeepRatioController
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
}


def acc_key(r: float) -> str:
    return f"acc_at_r{r:g}"


class SparsityMethod(Method):
    """TopK after the residual blocks' ReLUs, keep ratio from a per-epoch controller."""

    defaults: dict[str, Any] = dict(COMMON_DEFAULTS)
    metrics = ("mean_keep_ratio", "mean_effective_activation_rate", "keep_ratio_resets",
               "acc_at_r*")

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
        self._loss_sum: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._seen = 0

    def setup(self, run: Run) -> None:
        self.handle = attach_topk(run.model, self.options["scope"], ratio=1.0)

    # -- the loop's hooks ----------------------------------------------------------------

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        assert self.handle is not None
        self.epoch_ratio = float(self.controller.r)
        self.handle.set_ratio(self.epoch_ratio)
        self.handle.reset_stats()
        self._loss_sum = torch.zeros((), device=run.device)
        self._correct = torch.zeros((), device=run.device, dtype=torch.long)
        self._seen = 0
        return "dense" if self.epoch_ratio == 1.0 else "sparse"

    def training_step(self, run: Run, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = super().training_step(run, inputs, targets)
        batch = targets.shape[0]
        assert self._loss_sum is not None and self._correct is not None
        self._loss_sum += loss.float() * batch
        self._correct += (logits.argmax(1) == targets).sum()
        self._seen += batch
        return loss, logits

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        assert self.handle is not None
        rate = self.handle.effective_rate()
        out: dict[str, Any] = {"keep_ratio": self.epoch_ratio, "effective_activation_rate": rate}
        if self._seen:
            assert self._loss_sum is not None and self._correct is not None
            packed = torch.stack([self._loss_sum.double(), self._correct.double()]).cpu()
            loss, acc = float(packed[0]) / self._seen, float(packed[1]) / self._seen
            self.controller.step(loss, acc)
            self.ratios.append(self.epoch_ratio)
            if rate is not None:
                self.rates.append(rate)
        out["next_keep_ratio"] = float(self.controller.r)
        return out

    def final_metrics(self, run: Run) -> dict[str, Any]:
        final: dict[str, Any] = {
            "mean_keep_ratio": sum(self.ratios) / len(self.ratios) if self.ratios else None,
            "mean_effective_activation_rate": (sum(self.rates) / len(self.rates)
                                               if self.rates else None),
            "keep_ratio_resets": int(self.controller.resets),
        }
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
                "ratios": list(self.ratios), "rates": list(self.rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "controller" in state:
            self.controller.load_state_dict(state["controller"])
        self.epoch_ratio = float(state.get("epoch_ratio", self.controller.r))
        self.ratios = list(state.get("ratios", []))
        self.rates = list(state.get("rates", []))
