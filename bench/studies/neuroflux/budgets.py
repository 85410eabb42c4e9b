"""Which budgets bind: backprop's batch and NeuroFlux's blocks per model and budget, from the
profiler (on CPU in saved-tensor mode: the modelled memory of a training step).

    python3 -m bench.studies.neuroflux.budgets --config config/paper.yaml
    python3 -m bench.studies.neuroflux.budgets --models vgg16 --budgets 384MiB 448MiB --width 1

With `--config` the models, budgets, model width, image size and classes are the neuroflux
study's of that config (`--study` names another study key). `--suggest` adds, per model, the
smallest multiple of `--step` MiB at which backprop's batch is 16, 32 and 64. METHODS.md asks
for budgets that bind: backprop's largest batch between 16 and 64.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import measure
from bench.errors import BudgetError
from bench.studies.neuroflux import early_exit, partition, profiler, split

CHANNELS_CLASSES = {"cifar10": (3, 10), "cifar100": (3, 100), "digits": (1, 10),
                    "synthetic": (3, 4)}


@dataclass
class ModelProfiles:
    model: str
    whole: profiler.UnitProfile  # end-to-end backprop
    units: list[profiler.UnitProfile]  # each unit with its head
    names: list[str]


def profile(model_name: str, *, width: float = 1.0, image_size: int = 32, in_channels: int = 3,
            num_classes: int = 10, batches: Sequence[int] = (2, 4), momentum: float = 0.9,
            head_numerator: int = 8192, head_min_filters: int = 8,
            model_options: dict[str, Any] | None = None) -> ModelProfiles:
    """Saved-tensor profiles (CPU) of the whole model and of each unit with its head."""
    from bench.models import build_model

    cpu = torch.device("cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(model_name, num_classes, in_channels,
                            {"width": width, **(model_options or {})})
        named = split.split_named_units(model)
        units = [u for _, u in named]
        in_shape = (in_channels, image_size, image_size)
        shapes = split.unit_output_shapes(units, in_shape)
        heads = split.build_heads(model, units, in_shape, num_classes, cpu, head_numerator,
                                  head_min_filters)
    kw = dict(momentum=momentum, steps=1, mode="saved")
    whole = profiler.profile_model(model, in_shape, num_classes, cpu, batches, **kw)
    ups = profiler.profile_units(units, heads, [in_shape, *shapes[:-1]], num_classes, cpu,
                                 batches, **kw)
    return ModelProfiles(model_name, whole, ups, [n for n, _ in named])


@dataclass
class Row:
    model: str
    budget: str
    backprop_batch: int | None
    blocks: list[partition.Block] | None  # None: a unit does not fit
    first_bstar: int | None

    def blocks_text(self) -> str:
        if self.blocks is None:
            return "a unit does not fit"
        return " | ".join(f"{b.units[0] + 1}-{b.units[-1] + 1}@{b.batch}" for b in self.blocks)


def evaluate(p: ModelProfiles, budget: str, *, slack: float = 0.05,
             max_batch: int = partition.MAX_BATCH, min_batch: int = 8,
             backprop_max_batch: int = partition.MAX_BATCH) -> Row:
    """Backprop's batch and NeuroFlux's greedy blocks under `budget` (a label such as '384MiB')."""
    bytes_ = early_exit.budget_bytes_of(budget)
    assert bytes_ is not None
    bp = partition.largest_batch(p.whole.a_bytes_per_sample, p.whole.c_bytes, bytes_,
                                 slack=slack, max_batch=backprop_max_batch, min_batch=min_batch)
    try:
        blocks = partition.partition(p.units, bytes_, slack=slack, max_batch=max_batch,
                                     min_batch=min_batch, names=p.names)
    except BudgetError:
        blocks = None
    bstar = partition.unit_batches(p.units, bytes_, slack=slack, max_batch=max_batch,
                                   min_batch=min_batch)[0]
    return Row(p.model, budget, bp, blocks, bstar)


def suggest(p: ModelProfiles, target: int, *, slack: float = 0.05, step_mib: int = 16) -> int:
    """The smallest multiple of `step_mib` MiB at which backprop's largest batch is `target`."""
    need = p.whole.memory(target) / (1 - slack) / measure.MIB
    return int(-(-need // step_mib) * step_mib)


def table(rows: Sequence[Row], profiles: dict[str, ModelProfiles]) -> str:
    out = ["| model | budget | backprop batch | NeuroFlux blocks (units@batch) | b*(unit 1) | "
           "first block >= backprop | every block >= backprop |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        fits = r.blocks is not None and r.backprop_batch is not None
        first = fits and r.blocks[0].batch >= r.backprop_batch  # type: ignore[index,operator]
        every = fits and min(b.batch for b in r.blocks) >= r.backprop_batch  # type: ignore
        out.append(f"| {r.model} | {r.budget} | {r.backprop_batch or 'does not fit'} | "
                   f"{r.blocks_text()} | {r.first_bstar} | {'yes' if first else 'no'} | "
                   f"{'yes' if every else 'no'} |")
    out.append("")
    for name, p in profiles.items():
        out.append(f"{name}: backprop {p.whole.a_bytes_per_sample / measure.MIB:.3f} MiB/sample "
                   f"+ {p.whole.c_bytes / measure.MIB:.1f} MiB; units "
                   + ", ".join(f"{u.a_bytes_per_sample / measure.MIB:.3f}" for u in p.units)
                   + " MiB/sample")
    return "\n".join(out)


def _from_config(path: Path, study: str) -> dict[str, Any]:
    from bench.config import check_config, load_config

    cfg = check_config(load_config([path]))
    s = cfg["studies"][study]
    ds = s["datasets"][0]
    in_channels, classes = CHANNELS_CLASSES.get(ds, (3, 10))
    nf = (s.get("method_options") or {}).get("neuroflux") or {}
    return {"models": list(s["models"]), "budgets": [str(b) for b in s["budgets"]],
            "width": float(s["model"].get("width", 1.0)),
            "image_size": int(s["data"].get("image_size", 32)), "in_channels": in_channels,
            "classes": classes, "momentum": float(s["train"]["momentum"]),
            "slack": float(nf.get("slack", 0.05)), "max_batch": int(nf.get("max_batch", 1024)),
            "min_batch": int(nf.get("min_batch", 8)), "dataset": ds}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.studies.neuroflux.budgets",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path)
    ap.add_argument("--study", default="neuroflux")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--budgets", nargs="*")
    ap.add_argument("--width", type=float)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--in-channels", type=int)
    ap.add_argument("--classes", type=int)
    ap.add_argument("--batches", type=int, nargs="*", default=[2, 4],
                    help="profile batches (saved-tensor memory is exactly linear in the batch)")
    ap.add_argument("--suggest", action="store_true")
    ap.add_argument("--step", type=int, default=16, help="MiB granularity of --suggest")
    args = ap.parse_args(argv)
    opts: dict[str, Any] = {"models": ["vgg16"], "budgets": [], "width": 1.0, "image_size": 32,
                            "in_channels": 3, "classes": 10, "momentum": 0.9, "slack": 0.05,
                            "max_batch": 1024, "min_batch": 8, "dataset": "?"}
    if args.config:
        opts.update(_from_config(args.config, args.study))
    for k in ("models", "budgets", "width", "image_size", "in_channels", "classes"):
        if getattr(args, k) is not None:
            opts[k] = getattr(args, k)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    profiles = {m: profile(m, width=opts["width"], image_size=opts["image_size"],
                           in_channels=opts["in_channels"], num_classes=opts["classes"],
                           batches=args.batches, momentum=opts["momentum"]) for m in opts["models"]}
    rows = [evaluate(p, b, slack=opts["slack"], max_batch=opts["max_batch"],
                     min_batch=opts["min_batch"]) for p in profiles.values() for b in opts["budgets"]]
    print(f"# {', '.join(opts['models'])} at width {opts['width']}, {opts['image_size']}x"
          f"{opts['image_size']}x{opts['in_channels']}, {opts['classes']} classes; saved-tensor "
          f"profiles on CPU (batches {args.batches}), slack {opts['slack']:.0%}")
    print(table(rows, profiles))
    if args.suggest:
        for name, p in profiles.items():
            print(f"{name}: backprop batch 16 / 32 / 64 from "
                  + " / ".join(f"{suggest(p, t, slack=opts['slack'], step_mib=args.step)}MiB"
                               for t in (16, 32, 64)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
