"""bench.metrics: symmetric KL, FGSM / PGD in pixel space, elasticity, gradient-norm variance."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DatasetSplits
from bench.errors import ConfigError
from bench.metrics import (
    EVAL_METRICS,
    GradNormTracker,
    adversarial_accuracy,
    compute_eval_metrics,
    elasticity,
    fgsm,
    pgd,
    snapshot_params,
    symmetric_kl,
    validation_distribution_metrics,
)

IDENTITY = ((0.0,), (1.0,))  # mean, std of one channel: normalize() is the identity


def splits(val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
           mean=(0.0,), std=(1.0,)) -> DatasetSplits:
    """A DatasetSplits whose train split is a copy of the validation split."""
    return DatasetSplits(train_x=val_x.clone(), val_x=val_x, train_y=val_y.clone(), val_y=val_y,
                         num_classes=num_classes, mean=tuple(mean), std=tuple(std), name="tiny")


def pixels(*pairs: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, 1, 1, 2) 'images' of two pixels each."""
    return torch.tensor(pairs, dtype=torch.uint8).reshape(-1, 1, 1, 2)


def linear_model() -> nn.Module:
    """logits = W x with W = [[1, -1], [-1, 1]] on a (1, 1, 2) image x = (a, b).

    z0 - z1 = 2 (a - b): class 0 iff a > b. d CE / dx = W^T (softmax - onehot): for y = 0 it is
    p1 * (w1 - w0) = p1 * (-2, 2), sign (-1, +1); for y = 1 it is p0 * (2, -2), sign (+1, -1).
    FGSM with eps moves (a, b) by (-eps, +eps) for y = 0, cutting the margin a - b by 2 eps.
    """
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    return nn.Sequential(nn.Flatten(), lin).eval()


class SquareModel(nn.Module):
    """logits = (0, sum of squares of the *normalised* input): the sign of the input gradient
    for y = 0 is sign(x - mean), so it tells whether the model saw normalised pixels."""

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        z1 = xn.square().flatten(1).sum(1)  # (B,)
        return torch.stack([torch.zeros_like(z1), z1], dim=1)  # (B, 2)


def small_cnn(channels: int = 1, classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes),
    )


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 6, 6) noisy images of two classes: a brighter left or right half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    base = torch.full((n, 1, 6, 6), 90.0)
    base[y == 0, :, :, :3] += 40
    base[y == 1, :, :, 3:] += 40
    x = (base + 40 * torch.randn(base.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    return x, y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, DatasetSplits]:
    """A small CNN trained for a few dozen steps on the two-blob task, in eval mode."""
    torch.manual_seed(0)
    x, y = blobs(256, seed=1)
    vx, vy = blobs(96, seed=2)
    data = DatasetSplits(train_x=x, val_x=vx, train_y=y, val_y=vy, num_classes=2,
                         mean=(0.5,), std=(0.25,), name="blobs")
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xs = (x.float() / 255 - 0.5) / 0.25
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(xs), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), data


# ----------------------------------------------------------------------------- symmetric KL


def test_symmetric_kl_matches_a_hand_computation():
    # p = (0.5, 0.5), q = (0.9, 0.1)
    # KL(p||q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = -0.293893 + 0.804719 = 0.510826
    # KL(q||p) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) =  0.529008 - 0.160944 = 0.368064
    hand = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
            + 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert hand == pytest.approx(0.878890, abs=1e-6)
    q = torch.tensor([0.9, 0.1], dtype=torch.float64)  # float64: 0.9 is not exact in float32
    assert symmetric_kl(torch.tensor([0.5, 0.5]), q) == pytest.approx(hand, rel=1e-9)
    # label counts are normalised: 5 and 5 labels are p = (0.5, 0.5)
    assert symmetric_kl(torch.tensor([5, 5]), q) == pytest.approx(hand, rel=1e-9)
    # three classes: p = (0.25, 0.25, 0.5), q = (0.5, 0.25, 0.25):
    # sum (p - q)(ln p - ln q) = (-0.25)(ln 0.25 - ln 0.5) + 0 + 0.25 (ln 0.5 - ln 0.25) = 0.5 ln 2
    assert symmetric_kl(torch.tensor([1, 1, 2]), torch.tensor([0.5, 0.25, 0.25])) == pytest.approx(
        0.5 * math.log(2), rel=1e-9)


def test_symmetric_kl_is_zero_for_equal_and_symmetric():
    p = torch.tensor([0.2, 0.3, 0.5])
    q = torch.tensor([0.6, 0.1, 0.3])
    assert symmetric_kl(p, p) == 0.0
    assert symmetric_kl(torch.tensor([2, 3, 5]), p) == pytest.approx(0.0, abs=1e-15)
    assert symmetric_kl(p, q) == pytest.approx(symmetric_kl(q, p), rel=1e-12)
    assert symmetric_kl(p, q) > 0


def test_symmetric_kl_clamps_zeros_with_eps():
    # p = (1, 0), q = (0, 1), both clamped to eps: (1 - eps)(0 - ln eps) + (eps - 1)(ln eps - 0)
    eps = 1e-12
    expected = -2 * (1 - eps) * math.log(eps)  # about 55.26
    assert symmetric_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), eps=eps) == \
        pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="differ in length"):
        symmetric_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        symmetric_kl(torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.5]))


def test_validation_distribution_metrics_matches_evaluate_and_a_hand_kl():
    # constant logits ln(0.5, 0.25, 0.25): mean softmax q = (0.5, 0.25, 0.25) exactly-ish;
    # labels 0, 1, 2, 2: p = (0.25, 0.25, 0.5); sym KL = 0.5 ln 2 (see the test above)
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.5, 0.25, 0.25]).log())
    model = nn.Sequential(nn.Flatten(), lin)
    data = splits(pixels((1, 2), (3, 4), (5, 6), (7, 8)), torch.tensor([0, 1, 2, 2]), 3)
    model.train()
    out = validation_distribution_metrics(model, data, batch_size=3)
    assert model.training  # restored
    assert out["sym_kl"] == pytest.approx(0.5 * math.log(2), rel=1e-6)
    assert out["val_acc"] == 0.25  # always class 0: only the first image is right
    # CE = -mean(ln q_y) = -(ln 0.5 + ln 0.25 + 2 ln 0.25) / 4
    assert out["val_loss"] == pytest.approx(-(math.log(0.5) + 3 * math.log(0.25)) / 4, rel=1e-6)


def test_validation_distribution_metrics_agrees_with_a_direct_computation():
    torch.manual_seed(3)
    model = small_cnn(channels=1, classes=3)
    x = torch.randint(0, 256, (37, 1, 5, 5), dtype=torch.uint8)
    y = torch.randint(0, 3, (37,))
    data = splits(x, y, 3, mean=(0.4,), std=(0.3,))
    with torch.no_grad():  # make the BN statistics non-trivial
        model.train()
        model(torch.randn(16, 1, 5, 5))
    out = validation_distribution_metrics(model, data, batch_size=8)
    model.eval()
    with torch.no_grad():  # the whole split in one batch, by hand
        logits = model((x.float() / 255 - 0.4) / 0.3)
        q = logits.softmax(1).mean(0)
    assert out["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert out["val_acc"] == (logits.argmax(1) == y).sum().item() / len(y)
    p = torch.bincount(y, minlength=3)
    assert out["sym_kl"] == pytest.approx(symmetric_kl(p, q), rel=1e-5)


# ----------------------------------------------------------------------------- FGSM


def test_fgsm_perturbs_by_the_hand_computed_sign_and_clamps():
    model = linear_model()
    # (0.6, 0.4) y=0 -> (0.6 - eps, 0.4 + eps); (0.3, 0.5) y=1 -> (0.3 + eps, 0.5 - eps);
    # (0.03, 0.98) y=0 -> (0.03 - 0.05, 0.98 + 0.05) clamped to (0, 1)
    x = torch.tensor([[0.6, 0.4], [0.3, 0.5], [0.03, 0.98]]).reshape(3, 1, 1, 2)
    y = torch.tensor([0, 1, 0])
    adv = fgsm(model, x, y, 0.05, *IDENTITY)
    expected = torch.tensor([[0.55, 0.45], [0.35, 0.45], [0.0, 1.0]]).reshape(3, 1, 1, 2)
    torch.testing.assert_close(adv, expected, atol=1e-7, rtol=0)
    assert not adv.requires_grad
    # eps = 0 is the identity
    assert torch.equal(fgsm(model, x, y, 0.0, *IDENTITY), x)


def test_fgsm_large_enough_eps_flips_the_prediction():
    model = linear_model()
    x = torch.tensor([[0.6, 0.4]]).reshape(1, 1, 1, 2)  # margin a - b = 0.2, class 0
    y = torch.tensor([0])
    small = fgsm(model, x, y, 0.09, *IDENTITY)  # margin 0.2 - 0.18 > 0: still class 0
    large = fgsm(model, x, y, 0.11, *IDENTITY)  # margin 0.2 - 0.22 < 0: class 1
    assert model(small).argmax(1).item() == 0
    assert model(large).argmax(1).item() == 1


def test_fgsm_perturbs_pixels_before_normalisation():
    # one channel, mean 0.5, std 0.25: the linear model's gradient sign is the same, and the
    # step is eps in pixel units (not eps * std, not eps in normalised units)
    model = linear_model()
    x = torch.tensor([[0.6, 0.4]]).reshape(1, 1, 1, 2)
    adv = fgsm(model, x, torch.tensor([0]), 0.05, (0.5,), (0.25,))
    torch.testing.assert_close(adv, torch.tensor([[0.55, 0.45]]).reshape(1, 1, 1, 2),
                               atol=1e-7, rtol=0)
    # the model sees normalised pixels: with SquareModel the sign for y=0 is sign(x - mean)
    square = SquareModel().eval()
    x = torch.tensor([[0.4, 0.7]]).reshape(1, 1, 1, 2)
    adv = fgsm(square, x, torch.tensor([0]), 0.05, (0.5,), (0.25,))
    torch.testing.assert_close(adv, torch.tensor([[0.35, 0.75]]).reshape(1, 1, 1, 2),
                               atol=1e-7, rtol=0)
    # without normalisation (mean 0) both pixels would be pushed up instead
    adv0 = fgsm(square, x, torch.tensor([0]), 0.05, *IDENTITY)
    torch.testing.assert_close(adv0, torch.tensor([[0.45, 0.75]]).reshape(1, 1, 1, 2),
                               atol=1e-7, rtol=0)
    # per-channel constants: two channels with different std, the step is eps in both
    x2 = torch.tensor([0.4, 0.7]).reshape(1, 2, 1, 1)
    adv2 = fgsm(square, x2, torch.tensor([0]), 0.05, (0.5, 0.5), (0.1, 2.0))
    torch.testing.assert_close(adv2, torch.tensor([0.35, 0.75]).reshape(1, 2, 1, 1),
                               atol=1e-7, rtol=0)


def test_adversarial_accuracy_drops_to_hand_known_values():
    model = linear_model()
    # margins a - b in grey levels: A +51 (y=0), B +51 (y=1: b - a), C +153 (y=0), D wrong
    data = splits(pixels((153, 102), (102, 153), (204, 51), (51, 204)),
                  torch.tensor([0, 1, 0, 0]), 2)
    model.train()  # adversarial_accuracy switches to eval and back
    # FGSM cuts each margin by 2 eps: eps = 8/255 -> 16 levels, nothing flips: 3/4
    assert adversarial_accuracy(model, data, 3, "fgsm", eps=8 / 255) == 0.75
    assert model.training and all(m.training for m in model.modules())
    # eps = 30/255 -> 60 levels: A and B flip, C survives: 1/4
    assert adversarial_accuracy(model, data, 3, "fgsm", eps=30 / 255) == 0.25
    # eps = 80/255 -> 160 levels: C flips too
    assert adversarial_accuracy(model, data, 3, "fgsm", eps=80 / 255) == 0.0
    # the first two images only
    assert adversarial_accuracy(model, data, 3, "fgsm", eps=30 / 255, max_images=2) == 0.0
    assert adversarial_accuracy(model, data, 3, "fgsm", eps=8 / 255, max_images=2) == 1.0
    # PGD: 3 steps of 10/255 reach the 30/255 ball: the same answer as FGSM on a linear model
    assert adversarial_accuracy(model, data, 2, "pgd", eps=30 / 255, step=10 / 255,
                                steps=3) == 0.25
    # but PGD-10 with step 2/255 only gets 20/255 of the way: 40 levels, nothing flips
    assert adversarial_accuracy(model, data, 2, "pgd", eps=30 / 255, step=2 / 255,
                                steps=10) == 0.75
    with pytest.raises(ConfigError, match="fgsm, pgd"):
        adversarial_accuracy(model, data, 2, "cw")


def test_attacks_refuse_a_model_in_training_mode():
    model = small_cnn()
    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(ValueError, match="eval mode"):
        fgsm(model, x, torch.tensor([0, 1]), 0.1, (0.5,), (0.25,))
    model.eval()
    model[1].train()  # one BatchNorm left in training mode is enough to refuse
    with pytest.raises(ValueError, match="eval mode"):
        pgd(model, x, torch.tensor([0, 1]), 0.1, 0.05, 2, (0.5,), (0.25,))


# ----------------------------------------------------------------------------- PGD


def test_pgd_stays_in_the_eps_ball_and_in_unit_range():
    torch.manual_seed(1)
    model = small_cnn(channels=2, classes=3).eval()
    x = torch.rand(8, 2, 5, 5)
    x[0] = 0.0  # on the edges of [0, 1]
    x[1] = 1.0
    y = torch.randint(0, 3, (8,))
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    for random_start in (False, True):
        adv = pgd(model, x, y, eps, 3 / 255, 7, (0.5, 0.4), (0.25, 0.2),
                  random_start=random_start, generator=g)
        assert adv.shape == x.shape
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert (adv - x).abs().max() > eps / 2  # it did move


def test_pgd_random_start_is_reproducible_with_a_generator():
    torch.manual_seed(1)
    model = small_cnn().eval()
    x = torch.rand(4, 1, 5, 5)
    y = torch.tensor([0, 1, 2, 0])
    a = pgd(model, x, y, 0.05, 0.01, 3, (0.5,), (0.25,), random_start=True,
            generator=torch.Generator().manual_seed(7))
    b = pgd(model, x, y, 0.05, 0.01, 3, (0.5,), (0.25,), random_start=True,
            generator=torch.Generator().manual_seed(7))
    c = pgd(model, x, y, 0.05, 0.01, 3, (0.5,), (0.25,), random_start=True,
            generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_with_one_step_of_eps_is_fgsm():
    torch.manual_seed(2)
    model = small_cnn(channels=2, classes=3).eval()
    x = torch.rand(6, 2, 5, 5)
    y = torch.randint(0, 3, (6,))
    mean, std = (0.5, 0.4), (0.25, 0.2)
    eps = 8 / 255
    assert torch.equal(pgd(model, x, y, eps, eps, 1, mean, std), fgsm(model, x, y, eps, mean, std))


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, data = trained
    clean = validation_distribution_metrics(model, data, 32)["val_acc"]
    fgsm_acc = adversarial_accuracy(model, data, 32, "fgsm", eps=16 / 255)
    pgd_acc = adversarial_accuracy(model, data, 32, "pgd", eps=16 / 255, step=4 / 255, steps=10)
    assert clean > 0.9  # trained (1.0 with these seeds)
    assert fgsm_acc < clean  # the attack works (0.77 with these seeds)
    assert pgd_acc <= fgsm_acc  # (0.70 with these seeds)
    assert not model.training


def test_attacks_leave_grads_and_batchnorm_statistics_alone():
    torch.manual_seed(4)
    model = small_cnn(channels=1, classes=3)
    with torch.no_grad():
        model.train()
        model(torch.randn(16, 1, 5, 5))  # non-trivial running statistics
    model.eval()
    bn = model[1]
    stats = {k: v.clone() for k, v in bn.state_dict().items()}
    params = dict(model.named_parameters())
    x = torch.rand(5, 1, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1])
    assert all(p.grad is None for p in params.values())
    fgsm(model, x, y, 0.03, (0.5,), (0.25,))
    pgd(model, x, y, 0.03, 0.01, 3, (0.5,), (0.25,), random_start=True)
    assert all(p.grad is None for p in params.values())  # None stays None
    # existing gradients keep their values
    for p in params.values():
        p.grad = torch.full_like(p, 0.5)
    fgsm(model, x, y, 0.03, (0.5,), (0.25,))
    pgd(model, x, y, 0.03, 0.01, 3, (0.5,), (0.25,))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params.values())
    for k, v in bn.state_dict().items():
        assert torch.equal(v, stats[k]), k
    # adversarial_accuracy too, from training mode, and inside torch.no_grad()
    model.train()
    data = splits(torch.randint(0, 256, (5, 1, 5, 5), dtype=torch.uint8), y, 3,
                  mean=(0.5,), std=(0.25,))
    with torch.no_grad():
        adversarial_accuracy(model, data, 2, "pgd", steps=2)
    assert model.training
    for k, v in bn.state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params.values())


# ----------------------------------------------------------------------------- elasticity


def test_elasticity_matches_a_hand_computation():
    # theta_{t-1} = (3, 0 | 4): norm 5; theta_t = (4, 2 | 2): difference (1, 2 | -2), norm 3
    prev = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    now = [torch.tensor([4.0, 2.0]), torch.tensor([[2.0]])]
    assert elasticity(prev, now) == pytest.approx(0.6, rel=1e-12)
    assert elasticity(prev, prev) == 0.0
    with pytest.raises(ValueError, match="shape"):
        elasticity(prev, [torch.tensor([4.0, 2.0]), torch.tensor([2.0])])
    with pytest.raises(ValueError):
        elasticity(prev, now[:1])


def test_snapshot_params_are_detached_copies_on_the_host():
    model = nn.Linear(3, 2)
    snap = snapshot_params(model)
    assert [s.shape for s in snap] == [p.shape for p in model.parameters()]
    assert all(s.device.type == "cpu" and not s.requires_grad for s in snap)
    before = [s.clone() for s in snap]
    with torch.no_grad():
        model.weight.add_(1.0)  # an in-place update does not reach the snapshot
    assert all(torch.equal(a, b) for a, b in zip(snap, before))
    # elasticity of that update: ||1|| over 6 weights = sqrt(6)
    expected = math.sqrt(6) / math.sqrt(sum(float((b.double() ** 2).sum()) for b in before))
    assert elasticity(snap, model.parameters()) == pytest.approx(expected, rel=1e-6)
    same_device = snapshot_params(model, device=None)
    assert all(torch.equal(a, p) for a, p in zip(same_device, model.parameters()))


# ----------------------------------------------------------------------------- gradient norms


def test_grad_norm_tracker_matches_a_direct_computation():
    torch.manual_seed(5)
    model = small_cnn(channels=1, classes=3)
    model[0].bias.requires_grad_(False)  # a parameter without a gradient is left out
    tracker = GradNormTracker()
    direct = []
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        x = torch.randn(4, 1, 5, 5)
        F.cross_entropy(model(x), torch.randint(0, 3, (4,))).backward()
        tracker.update(model)
        flat = torch.cat([p.grad.double().flatten() for p in model.parameters()
                          if p.grad is not None])
        direct.append(float(flat.norm()))
    assert tracker.n_steps == 6
    out = tracker.finish()
    mean, var = statistics.fmean(direct), statistics.variance(direct)  # variance: ddof = 1
    assert out["grad_norm_mean"] == pytest.approx(mean, rel=1e-5)
    assert out["grad_norm_var"] == pytest.approx(var, rel=1e-4)
    assert out["grad_cv2"] == pytest.approx(var / mean**2, rel=1e-4)
    assert len(set(direct)) == 6 and out["grad_norm_var"] > 0
    # finish() resets
    assert tracker.n_steps == 0
    assert all(math.isnan(v) for v in tracker.finish().values())


def test_grad_norm_tracker_hand_values_and_too_few_steps():
    # one parameter whose gradient is set by hand: norms 3, 4 (as (3, 4) -> 5), 5 ... (0, 3)
    p = nn.Parameter(torch.zeros(2))
    holder = nn.Module()
    holder.p = p
    tracker = GradNormTracker()
    p.grad = torch.tensor([0.0, 3.0])
    tracker.update(holder)
    one = tracker.finish()
    assert one["grad_norm_mean"] == 3.0
    assert math.isnan(one["grad_norm_var"]) and math.isnan(one["grad_cv2"])
    for g in ([0.0, 3.0], [3.0, 4.0], [0.0, 4.0]):  # norms 3, 5, 4: mean 4, var 1, cv2 1/16
        p.grad = torch.tensor(g)
        tracker.update(holder)
    p.grad = None
    tracker.update(holder)  # no gradient: nothing recorded
    out = tracker.finish()
    assert out == pytest.approx({"grad_norm_mean": 4.0, "grad_norm_var": 1.0,
                                 "grad_cv2": 1.0 / 16}, rel=1e-12)


def test_grad_norm_tracker_state_dict_round_trip():
    p = nn.Parameter(torch.zeros(2))
    holder = nn.Module()
    holder.p = p
    a, b = GradNormTracker(), GradNormTracker()
    for g in ([1.0, 0.0], [0.0, 2.0], [3.0, 4.0]):
        p.grad = torch.tensor(g)
        a.update(holder)
    b.load_state_dict(a.state_dict())
    assert b.n_steps == 3
    for t in (a, b):
        p.grad = torch.tensor([0.0, 7.0])
        t.update(holder)
    assert a.finish() == b.finish()
    assert a.state_dict() == {"norms": []}


# ----------------------------------------------------------------------------- on request


def test_compute_eval_metrics_rejects_unknown_names_with_the_valid_list():
    model = linear_model()
    data = splits(pixels((153, 102), (102, 153)), torch.tensor([0, 1]), 2)
    with pytest.raises(ConfigError) as info:
        compute_eval_metrics(["fgsm_acc", "cka"], model, data, 2, {})
    message = str(info.value)
    assert "'cka'" in message
    for name in ("sym_kl", "fgsm_acc", "pgd_acc", "elasticity", "grad_variance"):
        assert name in message and name in EVAL_METRICS
    with pytest.raises(ConfigError, match="pgd_steps"):
        compute_eval_metrics(["pgd_acc"], model, data, 2, {"step": 0.1})


def test_compute_eval_metrics_computes_the_adversarial_ones():
    model = linear_model()
    data = splits(pixels((153, 102), (102, 153), (204, 51), (51, 204)),
                  torch.tensor([0, 1, 0, 0]), 2)
    out = compute_eval_metrics(["sym_kl", "fgsm_acc", "pgd_acc", "elasticity"], model, data, 4,
                               {"eps": 30 / 255, "pgd_step": 10 / 255, "pgd_steps": 3})
    assert out == {"fgsm_acc": 0.25, "pgd_acc": 0.25}  # loop metrics are left to the loop
    assert compute_eval_metrics(["fgsm_acc"], model, data, 4, {"adv_max_images": 3}) == {
        "fgsm_acc": 1.0}  # default eps 8/255 flips nothing
    assert compute_eval_metrics([], model, data, 4, None) == {}
