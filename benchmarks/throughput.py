"""Harness overhead: the baseline cell's training throughput as a ratio to a bare PyTorch loop.

Both loops train the same model (same initial weights) on the same device-resident data with
the same batch size, augmentation ops and optimizer, epoch for epoch, alternating which goes
first; each epoch is timed with the device synchronised. The harness side is exactly what a
cell runs per epoch (`bench.train.train_one_epoch` with the `sgd` method: schedule, hooks, the
instrumented first step that measures activation memory, divergence checks, progress). Eval is
excluded from both. Goal: ratio >= 0.95.

    python benchmarks/throughput.py                 # digits, resnet18_cifar w0.25, CPU
    python benchmarks/throughput.py --model mobilenetv2_cifar --width 0.5 --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.config import Cell, check_config, resolve_cell
from bench.data.loader import normalize, random_crop, random_flip, to_unit
from bench.measure import sync
from bench.train import build_run, resolve_device, train_one_epoch


def bare_epoch(model, opt, x_u8, y, mean, std, batch_size, pad, gen) -> None:
    """The plainest loop that does the same work: shuffle, crop, normalise, step."""
    model.train()
    perm = torch.randperm(len(y), device=x_u8.device, generator=gen)
    for i in range(0, len(y), batch_size):
        idx = perm[i : i + batch_size]
        xb = random_crop(x_u8[idx], pad, gen)  # (B, C, H, W) uint8
        xb = normalize(to_unit(xb), mean, std)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), y[idx])
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6, help="timed epochs per side (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cfg = check_config({"device": args.device, "studies": {"bench": {
        "reference": "sgd", "methods": ["sgd"], "models": [args.model],
        "datasets": [args.dataset], "seeds": 1, "epochs": args.epochs + 1,
        "train": {"batch_size": args.batch_size, "lr": 0.05, "momentum": 0.9,
                  "weight_decay": 5e-4, "schedule": "constant", "warmup_steps": 0},
        "data": {"image_size": args.image_size, "augment": True, "crop_padding": 4,
                 "flip": False},
        "model": {"width": args.width}}}})
    cell_cfg = resolve_cell(cfg, Cell("bench", "sgd", args.model, args.dataset, "none", 0))
    device = resolve_device(args.device)
    run = build_run(cell_cfg, Path("/tmp"), device)
    data = run.data
    bare_model = copy.deepcopy(run.model)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    n = len(data.train_y)

    def time_it(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    bare = lambda: bare_epoch(bare_model, bare_opt, data.train_x, data.train_y, data.mean,  # noqa: E731
                              data.std, args.batch_size, 4, gen)
    harness = lambda: train_one_epoch(run, run.epoch)  # noqa: E731
    time_it(bare), time_it(harness)  # warm-up epoch each, not timed
    bare_s, harness_s = [], []
    for rep in range(args.epochs):
        pair = [("bare", bare), ("harness", harness)]
        if rep % 2:
            pair.reverse()
        for name, fn in pair:
            (bare_s if name == "bare" else harness_s).append(time_it(fn))
    bare_ips = n / statistics.median(bare_s)
    harness_ips = n / statistics.median(harness_s)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)")
    print(f"| model | data | batch | device | n epochs/side | bare img/s | harness img/s | ratio |")
    print(f"|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} w{args.width} | {args.dataset} {n}x{tuple(data.train_x.shape[1:])} | "
          f"{args.batch_size} | {device_name} | {args.epochs} | {bare_ips:.1f} | {harness_ips:.1f} | "
          f"**{harness_ips / bare_ips:.3f}** |")
    print(f"\nper-epoch seconds: bare {[round(s, 3) for s in bare_s]}, "
          f"harness {[round(s, 3) for s in harness_s]}")


if __name__ == "__main__":
    main()
