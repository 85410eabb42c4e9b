"""Keep-ratio controllers of the sparsity-regimes study (METHODS.md in this
folder, "Controllers").

A controller holds `r`, the keep ratio the next (or first) epoch trains at, and is stepped once
per epoch end with what the probe measured at the current weights (`Probe`): the dense loss and
accuracy (L1, A1) and those at the r the epoch trained at (Lr, Ar), on a fixed probe set of
training images, without augmentation or gradient [ours]. Comparing this epoch's training loss
with the one of an earlier dense epoch (the first specification) cannot trip while the network
still learns: both adaptive controllers then collapse to the same open-loop sawtooth.

`step(probe) -> next r` also sets `action`, what the controller did:
    - "compress": r <- max(r_min, beta r)
    - "hold": r unchanged (S2's patience)
    - "reset": r <- 1, a new cycle; `reset_cause` says which rule fired:
        "guard"    the measured cost of sparsity exceeded the guard (S1: Lr > (1 + tol) L1 at
                   r > r_min; S2: A1 - Ar > margin for more than `patience` epochs),
        "floor"    r had reached r_min (S1 resets there whatever the guard says; S2 resets there
                   when the guard holds),
        "schedule" the open-loop sawtooth's period ended.
    - "stay": r stays 1 (the dense reference, or r_min = 1)

Controllers (pure: no torch; `state_dict` / `load_state_dict` for resume):
    - `ConstantController` (dense): r = 1 always; no probe.
    - `LossGuardedController` (S1), `AccuracyTargetedController` (S2): see their docstrings;
      they need the probe (`needs_probe`).
    - `SawtoothController` (ablation, open loop): r_t = r_min ** ((t mod period) / (period - 1));
      no probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

ACTIONS = ("compress", "hold", "reset", "stay")
RESET_CAUSES = ("guard", "floor", "schedule")


@dataclass(frozen=True)
class Probe:
    """What the probe measured at an epoch end, at the current weights: the dense loss and
    accuracy (`dense_loss`, `dense_acc`; accuracy as a fraction) and those at the keep ratio the
    epoch trained at (`loss`, `acc`; equal to the dense ones when that r is 1)."""

    dense_loss: float
    dense_acc: float
    loss: float
    acc: float


class KeepRatioController:
    """Decides the keep ratio r of the next epoch from the probe of the last one."""

    needs_probe: ClassVar[bool] = False

    def __init__(self) -> None:
        self.r = 1.0
        self.resets = 0  # returns to r = 1 from r < 1, any cause
        self.guard_resets = 0
        self.floor_resets = 0
        self.schedule_resets = 0
        self.action = ""  # what the last step did (ACTIONS)
        self.reset_cause = ""  # the cause of the last step's reset (RESET_CAUSES), else ""
        self.guard_ok: bool | None = None  # the last step's guard (None: the controller has none)

    def step(self, probe: Probe | None) -> float:
        raise NotImplementedError

    # -- helpers for the subclasses ----------------------------------------------------

    def _compress(self, beta: float, r_min: float) -> None:
        self.r = max(r_min, beta * self.r)
        self.action, self.reset_cause = "compress", ""

    def _hold(self) -> None:
        self.action, self.reset_cause = "hold", ""

    def _reset(self, cause: str) -> None:
        assert cause in RESET_CAUSES, cause
        if self.r >= 1.0:  # already dense: nothing to reset
            self.action, self.reset_cause = "stay", ""
            return
        self.resets += 1
        setattr(self, f"{cause}_resets", getattr(self, f"{cause}_resets") + 1)
        self.r = 1.0
        self.action, self.reset_cause = "reset", cause

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


def _need(probe: Probe | None, who: str) -> Probe:
    if probe is None:
        raise ValueError(f"{who} needs the probe's dense and current-r loss/accuracy")
    return probe


def open_loop_ratios(r_min: float, beta: float, epochs: int) -> list[float]:
    """The keep ratios of `epochs` epochs of an adaptive controller whose guard never acts:
    compress by beta from 1 down to r_min, reset at the floor (the degenerate schedule both
    controllers reduced to when the guard compared with an earlier dense epoch)."""
    out, r = [], 1.0
    for _ in range(epochs):
        out.append(r)
        r = max(r_min, beta * r) if r > r_min else 1.0
    return out


class ConstantController(KeepRatioController):
    """r = 1 every epoch (the dense reference)."""

    def step(self, probe: Probe | None) -> float:
        self.action, self.reset_cause = "stay", ""
        return self.r


class LossGuardedController(KeepRatioController):
    """S1, loss-guarded compression with reset.

    After an epoch at r, with the probe's L1 (dense) and Lr (at r) at the current weights: if
    Lr <= (1 + loss_tolerance) * L1 and r > r_min, r <- max(r_min, beta * r); otherwise r <- 1,
    a new cycle, caused by the guard when r > r_min (Lr too large) and by the floor when r has
    reached r_min (whatever the guard says). A non-finite probe loss fails the guard. At r = 1,
    Lr = L1 and the guard holds.
    """

    needs_probe = True

    def __init__(self, r_min: float = 0.05, beta: float = 0.8, loss_tolerance: float = 0.10) -> None:
        super().__init__()
        _check_compression(r_min, beta)
        if not loss_tolerance >= 0:
            raise ValueError(f"loss_tolerance must be >= 0, got {loss_tolerance!r}")
        self.r_min, self.beta, self.loss_tolerance = float(r_min), float(beta), float(loss_tolerance)

    def guard(self, probe: Probe) -> bool:
        bound = (1.0 + self.loss_tolerance) * probe.dense_loss
        return math.isfinite(probe.loss) and math.isfinite(bound) and probe.loss <= bound

    def step(self, probe: Probe | None) -> float:
        p = _need(probe, "S1")
        self.guard_ok = self.guard(p)
        if self.r <= self.r_min:
            self._reset("floor")
        elif self.guard_ok:
            self._compress(self.beta, self.r_min)
        else:
            self._reset("guard")
        return self.r


class AccuracyTargetedController(KeepRatioController):
    """S2, accuracy-targeted compression with patience.

    After an epoch at r, with the probe's A1 (dense) and Ar (at r) at the current weights: while
    A1 - Ar <= acc_margin (2 points: 0.02) the guard holds and r <- max(r_min, beta * r), or, at
    r_min, r <- 1 (floor reset). On a violation r is held; after `patience` held epochs still in
    violation (the patience + 1-th consecutive violation) r <- 1 (guard reset; at r_min too: S2
    holds there as anywhere). A non-finite probe accuracy is a violation.
    """

    needs_probe = True

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
        self.violations = 0  # consecutive violated epochs at the held r

    def guard(self, probe: Probe) -> bool:
        drop = probe.dense_acc - probe.acc
        # a 1e-9 slack so that exactly 2 points, computed in floating point, still holds
        return math.isfinite(drop) and drop <= self.acc_margin + 1e-9

    def step(self, probe: Probe | None) -> float:
        p = _need(probe, "S2")
        self.guard_ok = self.guard(p)
        if self.guard_ok:
            self.violations = 0
            if self.r > self.r_min:
                self._compress(self.beta, self.r_min)
            else:
                self._reset("floor")
        else:
            self.violations += 1
            if self.violations > self.patience:
                self.violations = 0
                self._reset("guard")
            else:
                self._hold()
        return self.r


class SawtoothController(KeepRatioController):
    """Ablation, open loop: r_t = r_min ** ((t mod period) / (period - 1)), t = epochs done; 1 at
    the start of each period, r_min at its last epoch, then reset (cause "schedule"). Ignores the
    probe (needs none)."""

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

    def step(self, probe: Probe | None = None) -> float:
        self.t += 1
        if self.t % self.period == 0:
            self._reset("schedule")
        else:
            self.r = self.ratio_at(self.t)
            self.action, self.reset_cause = "compress", ""
        return self.r
