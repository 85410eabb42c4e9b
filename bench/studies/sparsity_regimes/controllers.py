"""Keep-ratio controllers of the sparsity-regimes study (seed 002; ../shared/METHODS.md).

Controllers (pure; `step(train_loss, train_acc) -> next r`, `r` is the ratio of the next epoch,
`state_dict` / `load_state_dict`) [ours]:
    - `ConstantController` (dense): r = 1 always.
    - `LossGuardedController` (S1): see its docstring.
    - `AccuracyTargetedController` (S2): see its docstring.
    - `SawtoothController`: r_t = r_min ** ((t mod period) / (period - 1)).
"""

from __future__ import annotations

from typing import Any


class KeepRatioController:
    """Decides the keep ratio r of the next epoch from the last epoch's train loss/accuracy.
    `r` is the ratio the next (or first) epoch runs at."""

    def __init__(self) -> None:
        self.r = 1.0
        self.resets = 0  # returns to r = 1 after a compressed epoch

    def step(self, train_loss: float, train_acc: float) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key not in vars(self):
                raise KeyError(f"{type(self).__name__} has no state {key!r}")
            setattr(self, key, value)


def _check_compression(r_min: float, beta: float) -> None:
    if not 0.0 < r_min <= 1.0:
        raise ValueError(f"r_min must be in (0, 1], got {r_min!r}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")


class ConstantController(KeepRatioController):
    """r = 1 every epoch (the dense reference)."""

    def step(self, train_loss: float, train_acc: float) -> float:
        return self.r


class LossGuardedController(KeepRatioController):
    """S1, loss-guarded compression with reset.

    After an epoch at r with train loss L: if r == 1 the epoch is dense and L becomes the dense
    reference L_ref. Then, if L <= (1 + loss_tolerance) * L_ref and r > r_min: r <- max(r_min,
    beta * r); else r <- 1 (new cycle). Exactly as METHODS.md reads: at r == r_min the next
    epoch is dense even when the loss is fine (the cycle has reached its floor); a non-finite
    loss fails the comparison and resets.
    """

    def __init__(self, r_min: float = 0.05, beta: float = 0.8, loss_tolerance: float = 0.10) -> None:
        super().__init__()
        _check_compression(r_min, beta)
        if not loss_tolerance >= 0:
            raise ValueError(f"loss_tolerance must be >= 0, got {loss_tolerance!r}")
        self.r_min, self.beta, self.loss_tolerance = float(r_min), float(beta), float(loss_tolerance)
        self.ref_loss: float | None = None

    def step(self, train_loss: float, train_acc: float) -> float:
        if self.r == 1.0:
            self.ref_loss = float(train_loss)
        assert self.ref_loss is not None, "the first epoch must be dense (r = 1)"
        if train_loss <= (1.0 + self.loss_tolerance) * self.ref_loss and self.r > self.r_min:
            self.r = max(self.r_min, self.beta * self.r)
        else:
            self.resets += self.r < 1.0
            self.r = 1.0
        return self.r


class AccuracyTargetedController(KeepRatioController):
    """S2, accuracy-targeted compression with patience.

    After an epoch at r with train accuracy A: if r == 1, A becomes the dense reference A_ref
    (and any hold ends). The epoch is fine when A >= A_ref - acc_margin.
    - fine, r > r_min: compress r <- max(r_min, beta * r); the violation count restarts at 0;
    - fine, r == r_min: reset r <- 1 (the cycle reached its floor; a new cycle starts);
    - violated: count it. While the count of consecutive violations <= patience, hold r (so a
      first violation is followed by `patience` more epochs at the same r); when the epoch at
      the end of the patience is still violated (count > patience) reset r <- 1. A fine epoch
      during the hold resumes compression from the held r. patience 0 resets at once.
    A non-finite accuracy counts as a violation.
    """

    def __init__(self, r_min: float = 0.05, beta: float = 0.8, acc_margin: float = 0.02,
                 patience: int = 3) -> None:
        super().__init__()
        _check_compression(r_min, beta)
        if not acc_margin >= 0:
            raise ValueError(f"acc_margin must be >= 0, got {acc_margin!r}")
        if isinstance(patience, bool) or int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.r_min, self.beta, self.acc_margin = float(r_min), float(beta), float(acc_margin)
        self.patience = int(patience)
        self.ref_acc: float | None = None
        self.violations = 0  # consecutive violated epochs at the held r

    def step(self, train_loss: float, train_acc: float) -> float:
        if self.r == 1.0:
            self.ref_acc = float(train_acc)
            self.violations = 0
        assert self.ref_acc is not None, "the first epoch must be dense (r = 1)"
        if train_acc >= self.ref_acc - self.acc_margin:
            self.violations = 0
            if self.r > self.r_min:
                self.r = max(self.r_min, self.beta * self.r)
            else:
                self.resets += 1
                self.r = 1.0
        else:
            self.violations += 1
            if self.violations > self.patience:
                self.resets += 1
                self.r, self.violations = 1.0, 0
        return self.r


class SawtoothController(KeepRatioController):
    """Ablation: r_t = r_min ** ((t mod period) / (period - 1)), t = epochs done; 1 at the start
    of each period, r_min at its last epoch. Ignores loss and accuracy."""

    def __init__(self, r_min: float = 0.05, period: int = 10) -> None:
        super().__init__()
        if not 0.0 < r_min <= 1.0:
            raise ValueError(f"r_min must be in (0, 1], got {r_min!r}")
        if isinstance(period, bool) or int(period) != period or period < 2:
            raise ValueError(f"period must be an integer >= 2, got {period!r}")
        self.r_min, self.period = float(r_min), int(period)
        self.t = 0

    def ratio_at(self, t: int) -> float:
        return self.r_min ** ((t % self.period) / (self.period - 1))

    def step(self, train_loss: float, train_acc: float) -> float:
        self.t += 1
        self.resets += self.t % self.period == 0
        self.r = self.ratio_at(self.t)
        return self.r
