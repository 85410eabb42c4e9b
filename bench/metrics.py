"""Evaluation metrics any study may ask for, beyond validation loss and accuracy.

- `symmetric_kl`: KL(p||q) + KL(q||p) between the validation label distribution p and the mean
  softmax q over the validation set (`validation_distribution_metrics` computes it in the same
  no-grad pass as val loss / val acc).
- `fgsm`, `pgd`, `adversarial_accuracy`: untargeted L-infinity attacks in [0, 1] *pixel* space
  (the perturbation is applied before normalisation; the model sees normalize(x01, mean, std)),
  model in eval mode. The input gradient comes from `torch.autograd.grad` with respect to the
  input only, so parameters' `.grad` and BatchNorm running statistics are never touched.
- `snapshot_params`, `elasticity`: gamma_t = ||theta_t - theta_{t-1}|| / ||theta_{t-1}||.
- `GradNormTracker`: per-minibatch global gradient L2 norms, their mean, sample variance and
  squared coefficient of variation, with one host sync per `finish()`.
- `EVAL_METRICS`, `compute_eval_metrics`: the optional metric names a study can list, and the
  evaluation-time ones (fgsm_acc, pgd_acc) computed on request.

Units: pixels in [0, 1] (uint8 / 255); eps and step sizes are in the same pixel units
(8/255 = eight grey levels); mean/std are per channel, in [0, 1] pixel units, as in
`DatasetSplits`. Logarithms are natural.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.data import DatasetSplits
from bench.data.loader import normalize, to_unit
from bench.errors import ConfigError

__all__ = [
    "ADV_OPTION_DEFAULTS",
    "EVAL_METRICS",
    "GradNormTracker",
    "LOOP_METRICS",
    "adversarial_accuracy",
    "compute_eval_metrics",
    "elasticity",
    "fgsm",
    "pgd",
    "snapshot_params",
    "symmetric_kl",
    "validation_distribution_metrics",
]

ChannelConstants = Sequence[float] | torch.Tensor  # per channel, [0, 1] pixel units

# ----------------------------------------------------------------------------- registry

EVAL_METRICS: dict[str, str] = {
    "sym_kl": "symmetric KL divergence KL(p||q) + KL(q||p) (nats) between the validation label "
              "distribution p and the mean softmax q over the validation set; computed with val "
              "loss/acc in one pass by validation_distribution_metrics",
    "fgsm_acc": "top-1 accuracy on untargeted FGSM images, L-inf eps in [0,1] pixel space "
                "(perturbed before normalisation), model in eval mode",
    "pgd_acc": "top-1 accuracy on untargeted L-inf PGD images (pgd_steps steps of pgd_step, "
               "projected onto the eps-ball and [0,1]), model in eval mode",
    "elasticity": "neural elasticity gamma_t = ||theta_t - theta_{t-1}|| / ||theta_{t-1}|| over "
                  "all parameters, per epoch; computed by the loop (snapshot_params + elasticity)",
    "grad_variance": "per-minibatch global gradient L2 norms of an epoch: mean, sample variance "
                     "(ddof=1) and squared coefficient of variation var/mean^2; computed by the "
                     "loop (GradNormTracker)",
}

# Metrics the training loop computes itself (across steps / epochs, or in its validation pass);
# compute_eval_metrics accepts them and leaves them out of its result.
LOOP_METRICS: frozenset[str] = frozenset({"sym_kl", "elasticity", "grad_variance"})

# Options of compute_eval_metrics (eps, pgd_step in [0, 1] pixel units).
ADV_OPTION_DEFAULTS: dict[str, Any] = {
    "eps": 8 / 255,
    "pgd_step": 2 / 255,
    "pgd_steps": 10,
    "pgd_random_start": False,
    "pgd_seed": 0,  # seeds PGD's random start (a private generator: the training RNG is untouched)
    "adv_max_images": None,  # None: the whole validation split
}


# ----------------------------------------------------------------------------- distributions


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> float:
    """KL(p||q) + KL(q||p) in nats between two distributions over K classes.

    p: (K,) label counts or probabilities (normalised here); q: (K,) mean softmax (normalised
    here too). Both are clamped to >= eps after normalisation (not renormalised), so an empty
    class gives a large but finite value. Computed in float64 as sum_k (p_k - q_k)(ln p_k - ln q_k).
    """
    p64 = torch.as_tensor(p).detach().to(device="cpu", dtype=torch.float64).flatten()  # (K,)
    q64 = torch.as_tensor(q).detach().to(device="cpu", dtype=torch.float64).flatten()  # (K,)
    if p64.shape != q64.shape:
        raise ValueError(f"symmetric_kl: p and q differ in length: {p64.numel()} vs {q64.numel()}")
    for name, t in (("p", p64), ("q", q64)):
        if not torch.isfinite(t).all() or (t < 0).any() or t.sum() <= 0:
            raise ValueError(f"symmetric_kl: {name} must be finite, >= 0 and not all zero, "
                             f"got {t.tolist()}")
    p64 = (p64 / p64.sum()).clamp_min(eps)
    q64 = (q64 / q64.sum()).clamp_min(eps)
    return float(((p64 - q64) * (p64.log() - q64.log())).sum())


@torch.no_grad()
def validation_distribution_metrics(
    model: torch.nn.Module, data: DatasetSplits, batch_size: int
) -> dict[str, float]:
    """val_loss (mean cross-entropy, nats), val_acc (top-1) and sym_kl in one no-grad pass.

    The validation split in order, in eval mode, without augmentation (the same batches and
    float32 loss accumulation as `bench.train.evaluate`, so val_loss / val_acc agree with it).
    sym_kl = symmetric_kl(label counts of val_y, mean softmax over the split); the softmax sum
    is accumulated in float64 on the data's device. One host sync at the end. The modules'
    training flags are restored afterwards.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = int(data.val_y.shape[0])
    if n == 0:
        raise ValueError(f"{data.name}: the validation split is empty")
    device = data.val_x.device
    modes = _training_modes(model)
    model.eval()
    try:
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        prob_sum = torch.zeros(data.num_classes, device=device, dtype=torch.float64)  # (K,)
        for start in range(0, n, batch_size):
            xb = data.val_x[start : start + batch_size]  # uint8 (B, C, H, W)
            yb = data.val_y[start : start + batch_size]  # (B,)
            logits = model(normalize(to_unit(xb), data.mean, data.std))  # (B, K)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
            prob_sum += logits.float().softmax(1).sum(0, dtype=torch.float64)  # (K,)
        counts = torch.bincount(data.val_y, minlength=data.num_classes)  # (K,)
        # one transfer of everything to the host
        packed = torch.cat([loss_sum.double().reshape(1), correct.double().reshape(1),
                            prob_sum, counts.double()]).cpu()
    finally:
        _restore_modes(modes)
    k = data.num_classes
    mean_softmax = packed[2 : 2 + k] / n  # (K,)
    # a diverged model's softmax is NaN: its KL is undefined, recorded as NaN (the status says why)
    finite = bool(torch.isfinite(mean_softmax).all())
    return {
        "val_loss": float(packed[0]) / n,
        "val_acc": float(packed[1]) / n,
        "sym_kl": symmetric_kl(packed[2 + k :], mean_softmax) if finite else float("nan"),
    }


# ----------------------------------------------------------------------------- attacks


def _check_eval(model: torch.nn.Module, who: str) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{who}: the model must be in eval mode (BatchNorm statistics would change and "
            f"dropout would be random); modules in training mode: {', '.join(training[:5])}"
            + (" ..." if len(training) > 5 else "") + ". Call model.eval() first."
        )


def _input_grad_sign(
    model: torch.nn.Module, x01: torch.Tensor, y: torch.Tensor,
    mean: ChannelConstants, std: ChannelConstants,
) -> torch.Tensor:
    """sign(d CE(model(normalize(x01)), y) / d x01), (B, C, H, W); parameters' .grad untouched."""
    with torch.enable_grad():
        x = x01.detach().clone().requires_grad_(True)  # (B, C, H, W) pixels in [0, 1]
        logits = model(normalize(x, mean, std))  # (B, K)
        # sum over the batch: each image's gradient is its own (no 1/B scaling; sign is the same)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)  # only wrt the input: no parameter .grad written
    return grad.sign()


def fgsm(
    model: torch.nn.Module, x01: torch.Tensor, y: torch.Tensor, eps: float,
    mean: ChannelConstants, std: ChannelConstants,
) -> torch.Tensor:
    """Untargeted FGSM: clamp(x01 + eps * sign(grad_x CE), 0, 1), detached.

    x01: float (B, C, H, W) pixels in [0, 1]; y: int64 (B,); eps in [0, 1] pixel units. The model
    is applied to normalize(x_adv01, mean, std). It must be in eval mode (checked: a module in
    training mode is a ValueError), so BatchNorm running statistics stay as they are.
    """
    _check_attack_args(model, x01, eps, "fgsm")
    direction = _input_grad_sign(model, x01, y, mean, std)
    return (x01.detach() + eps * direction).clamp(0.0, 1.0)


def pgd(
    model: torch.nn.Module, x01: torch.Tensor, y: torch.Tensor, eps: float, step: float,
    steps: int, mean: ChannelConstants, std: ChannelConstants, random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf PGD: `steps` signed-gradient steps of size `step`, each followed by the
    projection onto {|x - x01|_inf <= eps} and [0, 1]; detached.

    x01: float (B, C, H, W) in [0, 1]; y: int64 (B,); eps and step in [0, 1] pixel units.
    random_start: start from x01 + U(-eps, eps) (projected), drawn from `generator` (on x01's
    device; None uses torch's global RNG). With steps=1, step=eps and no random start this is
    exactly `fgsm`. The model must be in eval mode (checked).
    """
    _check_attack_args(model, x01, eps, "pgd")
    if step < 0 or not math.isfinite(step):
        raise ValueError(f"pgd: step must be >= 0 (pixel units), got {step}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"pgd: steps must be a non-negative integer, got {steps!r}")
    x0 = x01.detach()
    low = x0 - eps  # (B, C, H, W) lower edge of the eps-ball
    high = x0 + eps  # (B, C, H, W) upper edge
    x_adv = x0.clone()
    if random_start:
        noise = torch.rand(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_adv = torch.minimum(torch.maximum(x0 + (2 * noise - 1) * eps, low), high).clamp(0, 1)
    for _ in range(steps):
        direction = _input_grad_sign(model, x_adv, y, mean, std)
        x_adv = torch.minimum(torch.maximum(x_adv + step * direction, low), high).clamp(0, 1)
    return x_adv


def _check_attack_args(model: torch.nn.Module, x01: torch.Tensor, eps: float, who: str) -> None:
    _check_eval(model, who)
    if not x01.is_floating_point() or x01.dim() != 4:
        raise ValueError(f"{who}: x01 must be float (B, C, H, W) in [0, 1], "
                         f"got {x01.dtype} {tuple(x01.shape)}")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"{who}: eps must be >= 0 in [0, 1] pixel units, got {eps}")


def adversarial_accuracy(
    model: torch.nn.Module, data: DatasetSplits, batch_size: int, attack: str,
    eps: float = 8 / 255, step: float = 2 / 255, steps: int = 10,
    max_images: int | None = None, random_start: bool = False,
    generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy on adversarial versions of the validation images (the first `max_images`
    if given), attack "fgsm" or "pgd" (step, steps, random_start, generator: PGD only).

    Eval mode during the attack; each module's training flag is restored afterwards. The
    attack's input-gradient graph holds one batch's activations: `batch_size` sets that memory.
    One host sync at the end.
    """
    if attack not in ("fgsm", "pgd"):
        raise ConfigError(f"unknown attack {attack!r}; valid attacks: fgsm, pgd")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = int(data.val_y.shape[0])
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images <= 0:
            raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
        n = min(n, max_images)
    if n == 0:
        raise ValueError(f"{data.name}: the validation split is empty")
    modes = _training_modes(model)
    model.eval()
    try:
        correct = torch.zeros((), device=data.val_x.device, dtype=torch.long)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x01 = to_unit(data.val_x[start:stop])  # (B, C, H, W) in [0, 1]
            yb = data.val_y[start:stop]  # (B,)
            if attack == "fgsm":
                x_adv = fgsm(model, x01, yb, eps, data.mean, data.std)
            else:
                x_adv = pgd(model, x01, yb, eps, step, steps, data.mean, data.std,
                            random_start=random_start, generator=generator)
            with torch.no_grad():
                logits = model(normalize(x_adv, data.mean, data.std))  # (B, K)
                correct += (logits.argmax(1) == yb).sum()
        return correct.item() / n
    finally:
        _restore_modes(modes)


def _training_modes(model: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


# ----------------------------------------------------------------------------- elasticity


def snapshot_params(model: torch.nn.Module, device: torch.device | str | None = "cpu"
                    ) -> list[torch.Tensor]:
    """Detached copies of model.parameters() (in order), same dtype.

    On the host by default, so the snapshot does not count against the accelerator's peak
    memory (one device-to-host copy per call); device=None keeps them where the parameters are.
    """
    if device is None:
        return [p.detach().clone() for p in model.parameters()]
    return [p.detach().to(device, copy=True) for p in model.parameters()]


def elasticity(prev_params: Sequence[torch.Tensor], params: Iterable[torch.Tensor]) -> float:
    """||theta_t - theta_{t-1}||_2 / ||theta_{t-1}||_2 over all parameters flattened.

    prev_params: theta_{t-1} (e.g. `snapshot_params` at the start of the epoch); params:
    theta_t (a snapshot, or `model.parameters()` directly). Each pair is compared in float64 on
    the device of its prev_params tensor (a once-per-epoch cost: with a host snapshot and
    parameters on an accelerator each tensor is copied to the host). ||theta_{t-1}|| = 0 gives
    inf (or nan when nothing moved).
    """
    params = list(params)
    if len(prev_params) != len(params):
        raise ValueError(f"elasticity: {len(prev_params)} previous tensors but {len(params)} now")
    if not params:
        raise ValueError("elasticity: no parameters")
    device = prev_params[0].device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [sum diff^2, sum prev^2]
    for i, (a, b) in enumerate(zip(prev_params, params)):
        if a.shape != b.shape:
            raise ValueError(f"elasticity: parameter {i} changed shape: "
                             f"{tuple(a.shape)} -> {tuple(b.shape)}")
        a64 = a.detach().to(torch.float64)
        b64 = b.detach().to(device=a.device, dtype=torch.float64)
        pair = torch.stack([(b64 - a64).square().sum(), a64.square().sum()])  # (2,)
        sums += pair.to(device)
    diff_sq, prev_sq = sums.tolist()  # the one host sync
    num, den = math.sqrt(diff_sq), math.sqrt(prev_sq)
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    return num / den


# ----------------------------------------------------------------------------- gradient norms


class GradNormTracker:
    """Per-minibatch global gradient L2 norms over an epoch, with one host sync per `finish()`.

    Call `update(model)` once per step after `backward()` and before the gradients are zeroed
    (e.g. in a method's `before_optimizer_step`; after any masking there, the norm is that of
    the gradient the optimizer sees). The global norm is over every parameter whose `.grad` is
    not None (a step where no parameter has a gradient records nothing); it is computed on the
    device and kept there. With gradient scaling (AMP) call it on unscaled gradients.
    """

    CHUNK = 1024  # pending per-step norms are stacked into one tensor every CHUNK steps

    def __init__(self) -> None:
        self._pending: list[torch.Tensor] = []  # 0-d float64 norms, on the grads' device
        self._chunks: list[torch.Tensor] = []  # (n,) float64 norms
        self.n_steps = 0

    def update(self, model: torch.nn.Module) -> None:
        """Record the global L2 norm of the current gradients (no host sync)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)  # 0-d, on the grads' device
        self._pending.append(norm.detach().to(torch.float64))
        self.n_steps += 1
        if len(self._pending) >= self.CHUNK:
            self._chunks.append(torch.stack(self._pending))
            self._pending = []

    def norms(self) -> torch.Tensor:
        """The recorded per-step norms, float64 (n,) on the host (syncs)."""
        parts = self._chunks + ([torch.stack(self._pending)] if self._pending else [])
        if not parts:
            return torch.zeros(0, dtype=torch.float64)
        device = parts[-1].device
        return torch.cat([p.to(device) for p in parts]).cpu()

    def finish(self) -> dict[str, float]:
        """grad_norm_mean, grad_norm_var (sample variance, ddof=1) and grad_cv2 = var / mean^2
        of the recorded norms (NaN where undefined: no steps, or fewer than 2 for var/cv2);
        then reset."""
        norms = self.norms()  # (n,) float64, the one host sync
        self.reset()
        n = int(norms.numel())
        mean = float(norms.mean()) if n >= 1 else math.nan
        if n >= 2:
            var = float(((norms - norms.mean()) ** 2).sum()) / (n - 1)
            cv2 = var / mean**2 if mean != 0.0 else math.nan
        else:
            var = cv2 = math.nan
        return {"grad_norm_mean": mean, "grad_norm_var": var, "grad_cv2": cv2}

    def reset(self) -> None:
        self._pending, self._chunks, self.n_steps = [], [], 0

    def state_dict(self) -> dict[str, Any]:
        """The recorded norms as a list of floats (empty right after `finish()`)."""
        return {"norms": self.norms().tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        norms = torch.as_tensor(list(state.get("norms", [])), dtype=torch.float64)
        self.reset()
        if norms.numel():
            self._chunks = [norms]
            self.n_steps = int(norms.numel())


# ----------------------------------------------------------------------------- on request


def compute_eval_metrics(
    names: Sequence[str], model: torch.nn.Module, data: DatasetSplits, batch_size: int,
    options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """The evaluation-time metrics among `names` (fgsm_acc, pgd_acc) on the validation split.

    names: any of EVAL_METRICS (an unknown one is a ConfigError listing them); the loop-computed
    ones (sym_kl, elasticity, grad_variance) are accepted and left out of the result. options:
    keys of ADV_OPTION_DEFAULTS (eps, pgd_step in [0, 1] pixel units; pgd_steps;
    pgd_random_start, pgd_seed; adv_max_images), an unknown key is a ConfigError.
    """
    unknown = [n for n in names if n not in EVAL_METRICS]
    if unknown:
        raise ConfigError(
            f"unknown evaluation metric(s) {', '.join(map(repr, unknown))}; "
            f"valid metrics: {', '.join(EVAL_METRICS)}"
        )
    options = dict(options or {})
    bad = sorted(set(options) - set(ADV_OPTION_DEFAULTS))
    if bad:
        raise ConfigError(f"unknown evaluation metric option(s) {', '.join(map(repr, bad))}; "
                          f"accepted options: {', '.join(ADV_OPTION_DEFAULTS)}")
    opt = {**ADV_OPTION_DEFAULTS, **options}
    out: dict[str, float] = {}
    if "fgsm_acc" in names:
        out["fgsm_acc"] = adversarial_accuracy(model, data, batch_size, "fgsm", eps=opt["eps"],
                                               max_images=opt["adv_max_images"])
    if "pgd_acc" in names:
        generator = None
        if opt["pgd_random_start"]:
            generator = torch.Generator(device=data.val_x.device)
            generator.manual_seed(int(opt["pgd_seed"]))
        out["pgd_acc"] = adversarial_accuracy(
            model, data, batch_size, "pgd", eps=opt["eps"], step=opt["pgd_step"],
            steps=opt["pgd_steps"], max_images=opt["adv_max_images"],
            random_start=bool(opt["pgd_random_start"]), generator=generator)
    return out
