"""The adaptive switching rule of `restwake_improved`, as pure Python (no torch), so that the
method, the tests and the mechanism checks replay the same rule (METHODS.md in this
folder).

After every WAKE epoch, v = squared coefficient of variation of that epoch's minibatch gradient
norms. The rule asks for REST in the next epoch when

- v >= factor x the median of v over the previous `window` WAKE epochs (a trailing reference:
  v drifts as training converges, so a frozen threshold would measure the drift, not the
  spikes); `direction: low` asks on v <= median / factor instead;
- at least `warmup_wake_epochs` WAKE epochs are done (the first five WAKE epochs never rest:
  the earliest REST is epoch 6, compared with the median of WAKE epochs 1-4);
- fewer than `cap` of the last `cap_window` epochs were REST (so at most `cap` in any
  `cap_window` epochs).

The method adds the constraints every variant obeys (`RestWakeBase.can_rest`): never two RESTs
in a row (the rule is only asked after a WAKE epoch), M holds >= `min_snapshots` snapshots, and
the last epoch is WAKE. `simulate` replays all of it on a scripted variance trace.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WAKE, REST = "wake", "rest"


@dataclass(frozen=True)
class Decision:
    """The rule's reading after one WAKE epoch: its v, the trailing reference (median of v over
    the previous WAKE epochs; None while there are none), the threshold v was compared with,
    whether the rule asks for REST, and why (warm-up, no reference, not crossed, cap, crossed)."""

    v: float
    reference: float | None
    threshold: float | None
    rest: bool
    why: str


@dataclass(frozen=True)
class SwitchingRule:
    factor: float = 1.25
    window: int = 5
    warmup_wake_epochs: int = 5
    cap: int = 2
    cap_window: int = 10
    direction: str = "high"

    OPTIONS = ("factor", "window", "warmup_wake_epochs", "cap", "cap_window", "direction")

    @classmethod
    def from_options(cls, o: Mapping[str, Any]) -> SwitchingRule:
        d = cls()
        return cls(float(o.get("factor", d.factor)), int(o.get("window", d.window)),
                   int(o.get("warmup_wake_epochs", d.warmup_wake_epochs)),
                   int(o.get("cap", d.cap)), int(o.get("cap_window", d.cap_window)),
                   str(o.get("direction", d.direction)))

    def problems(self) -> list[str]:
        out = []
        if self.direction not in ("high", "low"):
            out.append(f"direction must be 'high' or 'low', not {self.direction!r}")
        if not self.factor > 0:
            out.append(f"factor must be > 0, not {self.factor}")
        for name in ("window", "cap", "cap_window"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, not {getattr(self, name)}")
        return out

    def decide(self, wake_v: Sequence[float], phases: Sequence[str]) -> Decision:
        """After a WAKE epoch: `wake_v` holds v of every WAKE epoch so far (the one that just
        ended last; NaN where undefined), `phases` the phase of every epoch so far."""
        v = float(wake_v[-1])
        previous = [x for x in wake_v[:-1] if math.isfinite(x)][-self.window:]
        reference = statistics.median(previous) if previous else None
        threshold = None
        if reference is not None:
            threshold = (self.factor * reference if self.direction == "high"
                         else reference / self.factor)
        if len(wake_v) < self.warmup_wake_epochs:
            return Decision(v, reference, threshold, False, "warm-up")
        if threshold is None or not math.isfinite(v):
            return Decision(v, reference, threshold, False, "no reference")
        crossed = v >= threshold if self.direction == "high" else v <= threshold
        if not crossed:
            return Decision(v, reference, threshold, False, "not crossed")
        if list(phases[-self.cap_window:]).count(REST) >= self.cap:
            return Decision(v, reference, threshold, False, "cap")
        return Decision(v, reference, threshold, True, "crossed")


def simulate(rule: SwitchingRule, trace: Sequence[float], buffer_capacity: int = 3,
             min_snapshots: int = 2, last_epoch_wake: bool = True) -> list[str]:
    """The phases `restwake_improved` would run when its WAKE epoch t shows v = trace[t]
    (one entry per epoch; a REST epoch's entry is unused): the rule plus the constraints of
    `RestWakeBase.can_rest`, epoch by epoch."""
    phases: list[str] = []
    wake_v: list[float] = []
    snapshots = 0
    want = False
    epochs = len(trace)
    for t in range(epochs):
        last = phases[-1] if phases else None
        allowed = (last != REST and snapshots >= min_snapshots
                   and not (last_epoch_wake and t >= epochs - 1))
        if want and allowed:
            phases.append(REST)
            snapshots = 1  # compressed to the consolidated snapshot
            want = False
            continue
        phases.append(WAKE)
        snapshots = min(snapshots + 1, buffer_capacity)
        wake_v.append(float(trace[t]))
        want = rule.decide(wake_v, phases).rest
    return phases


def spike_trace(rule: SwitchingRule, epochs: int = 50, base: float = 1.0,
                height: float = 2.0) -> tuple[list[float], list[int]]:
    """A flat trace with a small alternating ripple (+-4%) and isolated spikes of `height` x
    `base`: the first once the warm-up and the trailing window are full, then one every
    `cap_window` + 3 epochs (so neither the cap nor the previous REST can hide one). Returns
    (trace, spike epochs). A spike may be followed by a REST only if the epoch before the
    spike was not a REST, which the spacing ensures when every spike rests."""
    trace = [base * (1.04 if t % 2 else 0.96) for t in range(epochs)]
    first = max(rule.warmup_wake_epochs, rule.window + 1) + 1
    spikes = list(range(first, epochs - 2, rule.cap_window + 3))
    for t in spikes:
        trace[t] = base * height if rule.direction == "high" else base / height
    return trace, spikes


def wake_trace(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """A cell's own variance trace, one entry per recorded epoch: v (`grad_cv2`) of each epoch,
    NaN where it is missing or undefined (REST epochs: their entry is unused by `simulate`)."""
    out = []
    for h in history:
        v = h.get("grad_cv2")
        try:
            out.append(float(v) if v is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


@dataclass(frozen=True)
class Crossings:
    """How often the rule's v reached its threshold on a trace: `crossed` of `decided` WAKE
    epochs (past the warm-up, with a reference and a finite v), and the trace's log-noise: the
    sample sd of log(v / reference) over those epochs (None with fewer than 2)."""

    crossed: int
    decided: int
    log_noise: float | None

    @property
    def rate(self) -> float | None:
        return self.crossed / self.decided if self.decided else None


def crossings(rule: SwitchingRule, trace: Sequence[float], phases: Sequence[str]) -> Crossings:
    """Replay `rule.decide` after every WAKE epoch of `phases` on the v of `trace` (one entry per
    epoch): how many decided epochs crossed the threshold (granted or refused by the cap)."""
    wake_v: list[float] = []
    crossed = decided = 0
    logs: list[float] = []
    for t, phase in enumerate(phases):
        if phase != WAKE:
            continue
        wake_v.append(float(trace[t]) if t < len(trace) else math.nan)
        d = rule.decide(wake_v, phases[:t + 1])
        if d.why in ("warm-up", "no reference"):
            continue
        decided += 1
        crossed += d.why in ("crossed", "cap")
        if d.reference and d.reference > 0 and d.v > 0:
            logs.append(math.log(d.v / d.reference))
    noise = statistics.stdev(logs) if len(logs) >= 2 else None
    return Crossings(crossed, decided, noise)


def noise_crossing_rate(rule: SwitchingRule, log_noise: float, epochs: int = 50,
                        traces: int = 200, seed: int = 0) -> float:
    """The share of decided WAKE epochs on which the rule crosses its threshold when v is pure
    log-normal noise of sd `log_noise` around a flat trend (no spike at all): the rule's
    false-spike rate at that noise (about 0.25 at 0.3 with the default rule). Deterministic."""
    rng = random.Random(seed)
    crossed = decided = 0
    for _ in range(traces):
        trace = [math.exp(rng.gauss(0.0, log_noise)) for _ in range(epochs)]
        c = crossings(rule, trace, [WAKE] * epochs)
        crossed += c.crossed
        decided += c.decided
    return crossed / decided if decided else math.nan


def trace_noise(rule: SwitchingRule, observed: Crossings) -> float | None:
    """The log-sd of v around its trend that a trace's `observed.log_noise` (the sd of
    log(v / reference), which also holds the reference's own noise) stands for: divided by what
    unit log-normal noise gives under the same rule. None when not measured."""
    if observed.log_noise is None:
        return None
    unit = _unit_log_noise(rule.window)
    return observed.log_noise / unit


_UNIT: dict[int, float] = {}


def _unit_log_noise(window: int) -> float:
    if window not in _UNIT:
        rng = random.Random(1)
        logs: list[float] = []
        rule = SwitchingRule(window=window, warmup_wake_epochs=window + 1)
        for _ in range(200):
            trace = [math.exp(rng.gauss(0.0, 1.0)) for _ in range(50)]
            wake_v: list[float] = []
            for v in trace:
                wake_v.append(v)
                d = rule.decide(wake_v, [WAKE] * len(wake_v))
                if d.why not in ("warm-up", "no reference"):
                    logs.append(math.log(d.v / d.reference))
        _UNIT[window] = statistics.stdev(logs)
    return _UNIT[window]
