"""The GPU check: one command, a few minutes on one GPU, one JSON and one Markdown table.

    python benchmarks/gpu_check.py --out-dir gpu_check/          # on the GPU box (< 8 min)
    python benchmarks/gpu_check.py --smoke --out-dir /tmp/gc     # CPU, tiny sizes (the tests)

Sections, each timed on the current device with synthetic data shaped like the paper's
(CIFAR-shaped: 3 x image_size^2, the dataset's classes; bench.estimate.nominal_shape) and
kept on the device, tracking off; a section that fails records its error and the next runs:

  models     every model of config/paper.yaml at its study's batch and image size, trained with
             plain SGD through the harness's own loop (bench.train.build_run, train_one_epoch,
             Run.evaluate): train images/s (warm-up steps excluded), eval images/s, the
             projected epoch time on the full dataset, peak_alloc_mib and peak_train_mib
             (training steps only, minus the device-resident dataset) against the modelled
             peak (params + grads + optimizer state + saved activations); fp32, then bf16 with
             channels_last (train.precision / train.channels_last)
  neuroflux  the NeuroFlux study's allocator profile (memory of a training step per unit, fitted
             a * batch + c, through the study's public profiler) and one truncated cell run
             (bench.train.run_cell): each block's batch, modelled memory and measured
             peak_train_mib against the budget
  sharing    2 and 4 cells on one GPU at once, each started through `python -m bench.slots`
             (K slots per GPU): images/s per cell and in total, beside the single cell's rate
  paper      projected GPU-hours of config/paper.yaml from those rates: per cell epochs x
             (n_train / train images/s + n_val / eval images/s) + adversarial passes, the
             study's upstream stages at the same rates, the reference-model rate for every
             method of a study (methods that skip or mask work are faster: an upper bound)

Needs torch (and PyYAML to read the config); no snakemake, mlflow, pandas or scikit-learn.
The JSON holds every number; the Markdown is the table docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from bench import measure
from bench.config import (
    Cell,
    CellResolver,
    check_config,
    load_config,
    plan,
    pretrain_spec,
    ranking_spec,
)
from bench.estimate import ADVERSARIAL, DataShape, nominal_shape, profile_adversarial
from bench.methods import METHODS
from bench.train import autocast, build_run, resolve_device, run_cell, train_one_epoch

MIB = measure.MIB
NEUROFLUX = "neuroflux"  # the study whose allocator profile and budget adherence are checked
BUDGET_S = 480.0  # the whole check must fit 8 minutes on one GPU


# ----------------------------------------------------------------------------- set-up


def paper_config(smoke: bool) -> dict[str, Any]:
    """config/paper.yaml, tracking off; `--smoke`: the same grid at CPU-test size."""
    cfg = load_config([ROOT / "config" / "paper.yaml"])
    cfg["tracking"] = {"enabled": False, "uri": None}
    if smoke:
        cfg["threads"] = 1
        for s in cfg["studies"].values():
            s["model"] = {**(s.get("model") or {}), "width": 0.125}
            s["train"] = {**(s.get("train") or {}), "batch_size": 8, "eval_batch_size": 16}
            s["data"] = {**(s.get("data") or {}), "image_size": 32}
            if s.get("pretrain"):
                s["pretrain"]["data"] = {**s["pretrain"].get("data", {}), "image_size": 32}
    return check_config(cfg)


def shape_of(r: dict[str, Any]) -> DataShape:
    return nominal_shape(r["dataset"], r["data"])


def model_cells(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One resolved cell per (study, model): the study's first dataset, plain SGD."""
    resolver, seen, out = CellResolver(cfg), set(), []
    for cell in plan(cfg):
        if (cell.study, cell.model) in seen:
            continue
        seen.add((cell.study, cell.model))
        r = copy.deepcopy(resolver.resolve(cell))
        r.update(method="sgd", method_impl="sgd", budget="none", inputs={},
                 method_options=METHODS.get("sgd").resolve_options({}))
        out.append(r)
    return out


def synthetic_cfg(r: dict[str, Any], shape: DataShape, n_train: int, n_val: int,
                  **train: Any) -> dict[str, Any]:
    """`r` on synthetic data of `shape` with n_train / n_val images (augmentation kept)."""
    from bench.data import LOADER_OPTIONS

    r = copy.deepcopy(r)
    r["dataset"] = "synthetic"
    r["data"] = {**{k: r["data"][k] for k in LOADER_OPTIONS if k in r["data"]},
                 "n_train": n_train, "n_val": n_val, "num_classes": shape.num_classes,
                 "channels": shape.channels, "image_size": shape.size}
    r["train"] = {**r["train"], **train}
    r["evaluation"] = {**r["evaluation"], "metrics": []}
    return r


def dataset_mib(r: dict[str, Any]) -> float:
    d = r["data"]
    return (d["n_train"] + d["n_val"]) * d["channels"] * d["image_size"] ** 2 / MIB


# ----------------------------------------------------------------------------- sections


def time_model(r: dict[str, Any], device: torch.device, warm: int, steps: int,
               **speed: Any) -> dict[str, Any]:
    """Train one truncated epoch of `r` through the harness's loop; its rates and peaks."""
    shape = shape_of(r)
    batch = int(r["train"]["batch_size"])
    n_val = min(shape.n_val, 2 * int(r["train"]["eval_batch_size"]))
    cfg = synthetic_cfg(r, shape, (warm + steps) * batch, n_val, warmup_steps=warm, **speed)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        run = build_run(cfg, Path(tmp), device)
        run.method.setup(run)
        peak = measure.AcceleratorPeak(device)
        with autocast(run):
            peak.start()
            stats = train_one_epoch(run, 0)
            peak_train, _ = peak.stop()
            peak.start()
            with measure.Stopwatch(device) as sw:
                run.evaluate()
            peak_eval, _ = peak.stop()
        modelled = run.modelled_peak_mib(stats["activation_bytes"])
        del run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ips = stats["train_images_per_s"]
    eval_ips = n_val / sw.elapsed_s if sw.elapsed_s > 0 else None
    data_mib = dataset_mib(cfg)
    return {
        "batch": batch, "input": [shape.channels, shape.size, shape.size],
        "precision": speed.get("precision", "fp32"),
        "channels_last": bool(speed.get("channels_last", False)),
        "timed_steps": steps, "train_images_per_s": ips, "eval_images_per_s": eval_ips,
        "epoch_s": (shape.n_train / ips + shape.n_val / eval_ips) if ips and eval_ips else None,
        "full_epoch_images": [shape.n_train, shape.n_val],
        "peak_alloc_mib": peak_train,
        "peak_train_mib": peak_train - data_mib if peak_train is not None else None,
        "peak_eval_mib": peak_eval - data_mib if peak_eval is not None else None,
        "modelled_peak_mib": modelled, "dataset_mib": data_mib,
    }


def section_models(cfg: dict[str, Any], device: torch.device, warm: int, steps: int,
                   out: dict[str, Any], deadline: float, smoke: bool) -> None:
    rows = out.setdefault("models", [])
    for r in model_cells(cfg)[:1] if smoke else model_cells(cfg):  # smoke: the first model
        for speed in ({}, {"precision": "bf16", "channels_last": True}):
            row = {"study": r["study"], "model": r["model"], **speed}
            if time.perf_counter() > deadline:
                rows.append({**row, "error": "skipped: the check's time budget is spent"})
                continue
            try:
                row.update(time_model(r, device, warm, steps, **speed))
            except Exception as e:  # noqa: BLE001 - an OOM or a failure is a row, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"  models: {row}", file=sys.stderr, flush=True)


def section_neuroflux(cfg: dict[str, Any], device: torch.device, steps: int,
                      out: dict[str, Any], smoke: bool) -> None:
    """The study's allocator profile (public profiler) and a truncated cell's block peaks."""
    from bench.models import build_model
    from bench.studies.neuroflux import profiler, split
    from bench.studies.neuroflux.early_exit import budget_bytes_of

    if NEUROFLUX not in cfg["studies"]:
        out["neuroflux"] = {"error": f"config/paper.yaml has no study '{NEUROFLUX}'"}
        return
    s = cfg["studies"][NEUROFLUX]
    cell = Cell(NEUROFLUX, NEUROFLUX, s["models"][0], s["datasets"][0], str(s["budgets"][0]), 0)
    r = CellResolver(cfg).resolve(cell)
    shape = shape_of(r)
    section: dict[str, Any] = {"model": cell.model, "budget": cell.budget,
                               "budget_mib": budget_bytes_of(cell.budget) / MIB}
    out["neuroflux"] = section
    opts = r["method_options"]
    batches = [8, 16] if smoke else list(opts["profile_batches"])
    mode = "allocator" if device.type == "cuda" else "saved"
    torch.manual_seed(0)
    model = build_model(cell.model, shape.num_classes, shape.channels,
                        r["model_options"]).to(device)
    in_shape = (shape.channels, shape.size, shape.size)
    units = [u for _, u in split.split_named_units(model)]
    names = [n for n, _ in split.split_named_units(model)]
    shapes = split.unit_output_shapes(units, in_shape, device)
    heads = split.build_heads(model, units, in_shape, shape.num_classes, device,
                              opts["head_numerator"], opts["head_min_filters"])
    t0 = time.perf_counter()
    profiles = profiler.profile_units(units, heads, [in_shape, *shapes[:-1]], shape.num_classes,
                                      device, batches, mode=mode,
                                      steps=int(opts["profile_steps"]))
    section["profile"] = {
        "mode": mode, "batches": batches, "seconds": time.perf_counter() - t0,
        "units": [{"unit": n, "a_mib_per_sample": p.a_bytes_per_sample / MIB,
                   "c_mib": p.c_bytes / MIB, "r2": p.r2} for n, p in zip(names, profiles,
                                                                          strict=True)]}
    del model, units, heads
    # one cell, truncated: the blocks the partitioner forms and what each one really peaks at
    batch = int(r["train"]["batch_size"])
    max_batch = 16 if smoke else int(opts["max_batch"])
    small = synthetic_cfg(r, shape, max(steps, 2) * max(batch, max_batch // 4),
                          min(shape.n_val, int(r["train"]["eval_batch_size"])))
    small["epochs"] = 1
    small["method_options"] = {**opts, "profile_batches": batches, "max_batch": max_batch,
                               "throughput_iters": 2, "throughput_warmup": 1}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_cell(small, Path(tmp) / "result.json", tracker=None,
                          threads=int(cfg["threads"]))
    section["status"], section["reason"] = result["status"], result["reason"]
    final, data_mib = result.get("final") or {}, dataset_mib(small)
    blocks = []
    for h in result.get("history") or []:
        alloc = h.get("peak_alloc_mib")
        train_mib = alloc - data_mib if alloc is not None else None
        blocks.append({
            "block": h.get("block"), "units": h.get("units"), "batch": h.get("batch_size"),
            "modelled_mib": h.get("modelled_peak_mib"), "peak_alloc_mib": alloc,
            "peak_train_mib": train_mib,
            "within_budget": None if train_mib is None else train_mib <= section["budget_mib"]})
    section["blocks"] = blocks
    section["final"] = {k: final.get(k) for k in ("n_blocks", "block_batch_sizes",
                                                   "block_memory_mib", "profile_min_r2",
                                                   "profile_warning", "profiling_s")}


def section_sharing(cfg: dict[str, Any], device: torch.device, warm: int, steps: int,
                    out: dict[str, Any], smoke: bool, deadline: float) -> None:
    """K copies of the first model's cell at once on one GPU, each through bench.slots."""
    r = model_cells(cfg)[0]
    rows = out.setdefault("sharing", [])
    for k in (2, 4):
        if time.perf_counter() > deadline:
            rows.append({"cells": k, "error": "skipped: the check's time budget is spent"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "cell.json"
            spec.write_text(json.dumps({"cell": r, "warm": warm, "steps": steps,
                                        "device": str(device), "cells": k, "barrier": tmp}))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMREPRO_TRACKING": "off"}
            if device.type != "cuda":
                env["MEMREPRO_GPUS"] = "1"  # CPU: simulate one device so the slots are used
            cmd = [sys.executable, "-m", "bench.slots", "--lock-dir", str(Path(tmp) / "locks"),
                   "--slots-per-gpu", str(k), "--need", "1", "--",
                   sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)]
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(k)]
            results = []
            for p in procs:
                stdout, stderr = p.communicate(timeout=600)
                if p.returncode != 0:
                    results.append({"error": stderr.strip().splitlines()[-1:] or ["?"]})
                else:
                    results.append(json.loads(stdout.strip().splitlines()[-1]))
        per_cell = [x.get("train_images_per_s") for x in results]
        ok = [x for x in per_cell if x]
        row = {"cells": k, "slots": [x.get("slot") for x in results], "per_cell": per_cell,
               "total_images_per_s": sum(ok) if len(ok) == k else None,
               "errors": [x["error"] for x in results if "error" in x]}
        rows.append(row)
        print(f"  sharing: {row}", file=sys.stderr, flush=True)


def worker(spec_path: str) -> None:
    """One sharing cell: build, wait for the others, train one truncated epoch, print JSON."""
    spec = json.loads(Path(spec_path).read_text())
    device = resolve_device(spec["device"])
    r = spec["cell"]
    shape = shape_of(r)
    batch = int(r["train"]["batch_size"])
    cfg = synthetic_cfg(r, shape, (spec["warm"] + spec["steps"]) * batch,
                        int(r["train"]["eval_batch_size"]), warmup_steps=spec["warm"])
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(int(r.get("threads", 1)))
        run = build_run(cfg, Path(tmp), device)
        barrier = Path(spec["barrier"])
        (barrier / f"ready.{os.getpid()}").touch()
        t0 = time.perf_counter()
        while len(list(barrier.glob("ready.*"))) < spec["cells"] and time.perf_counter() - t0 < 300:
            time.sleep(0.05)  # start together, so that the cells really share the device
        stats = train_one_epoch(run, 0)
    print(json.dumps({"train_images_per_s": stats["train_images_per_s"],
                      "slot": os.environ.get("MEMREPRO_GPU_SLOT")}))


def section_paper(cfg: dict[str, Any], device: torch.device, out: dict[str, Any]) -> None:
    """GPU-hours of config/paper.yaml from the measured fp32 rates (module docstring)."""
    rates = {(m["study"], m["model"]): m for m in out.get("models", [])
             if m.get("precision", "fp32") == "fp32" and m.get("train_images_per_s")}
    resolver = CellResolver(cfg)
    studies: dict[str, dict[str, Any]] = {}
    adv_cache: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for cell in plan(cfg):
        s = studies.setdefault(cell.study, {"cells": 0, "gpu_s": 0.0, "missing": []})
        rate = rates.get((cell.study, cell.model))
        if rate is None:
            s["missing"].append(cell.model)
            continue
        r = resolver.resolve(cell)
        shape = shape_of(r)
        epochs = int(r["epochs"])
        cell_s = epochs * (shape.n_train / rate["train_images_per_s"]
                           + shape.n_val / rate["eval_images_per_s"])
        adv = [m for m in r["evaluation"]["metrics"] if m in ADVERSARIAL]
        if adv:
            if (cell.study, cell.model) not in adv_cache:
                small = copy.deepcopy(r)
                small["train"] = {**r["train"], "eval_batch_size": min(
                    int(r["train"]["eval_batch_size"]), 256)}
                adv_cache[(cell.study, cell.model)] = profile_adversarial(small, shape, device,
                                                                          adv)
            ev = r["evaluation"]
            n_adv = epochs // ev["adv_every"] + (1 if epochs % ev["adv_every"] else 0)
            images = min(shape.n_val, ev.get("adv_max_images") or shape.n_val)
            cell_s += n_adv * images * sum(v[1] for v in adv_cache[(cell.study, cell.model)]
                                           .values())
        s["cells"] += 1
        s["gpu_s"] += cell_s
    for study, s in studies.items():  # upstream stages at the cells' rates
        sc = cfg["studies"][study]
        for model in sc["models"]:
            rate = rates.get((study, model))
            spec = pretrain_spec(cfg, study, model)
            if spec and rate:
                shape = nominal_shape(spec["dataset"], spec["data"])
                s["gpu_s"] += spec["epochs"] * (shape.n_train / rate["train_images_per_s"]
                                                + shape.n_val / rate["eval_images_per_s"])
            if sc.get("ranking") and rate:
                for dataset in sc["datasets"]:
                    spec = ranking_spec(cfg, study, model, dataset)
                    shape = nominal_shape(dataset, spec["data"])
                    s["gpu_s"] += spec["ranking"]["epochs"] * shape.n_train / rate[
                        "train_images_per_s"]
        s["gpu_hours"] = s["gpu_s"] / 3600
        s["missing"] = sorted(set(s["missing"]))
    out["paper"] = {"studies": studies,
                    "gpu_hours": sum(s["gpu_hours"] for s in studies.values())}


# ----------------------------------------------------------------------------- output


def _f(x: Any, fmt: str = ".0f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def markdown(out: dict[str, Any]) -> str:
    smoke = " (smoke: tiny sizes)" if out["smoke"] else ""
    lines = [(f"GPU check on {out['device_name']} ({out['device']}), torch {out['torch']}, "
              f"{out['date']}{smoke}; {out['wall_s']:.0f} s in all"), "",
             ("| study | model | input | batch | numerics | train img/s | eval img/s | epoch s "
              "| peak_alloc MiB | peak_train MiB | modelled MiB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in out.get("models", []):
        numerics = m.get("precision", "fp32") + (" + channels_last" if m.get("channels_last")
                                                 else "")
        if "error" in m:
            lines.append(f"| {m['study']} | {m['model']} | - | - | {numerics} | "
                         f"{m['error']} | | | | | |")
            continue
        lines.append(
            f"| {m['study']} | {m['model']} | {'x'.join(map(str, m['input']))} | {m['batch']} "
            f"| {numerics} | {_f(m['train_images_per_s'])} | {_f(m['eval_images_per_s'])} "
            f"| {_f(m['epoch_s'], '.1f')} | {_f(m['peak_alloc_mib'])} "
            f"| {_f(m['peak_train_mib'])} | {_f(m['modelled_peak_mib'])} |")
    nf = out.get("neuroflux") or {}
    prof = nf.get("profile") or {}
    lines += ["", (f"NeuroFlux ({nf.get('model', '-')}, budget {nf.get('budget', '-')}): "
                   f"profile {prof.get('mode', '-')} over batches {prof.get('batches', '-')}, "
                   f"cell status {nf.get('status', nf.get('error', '-'))}"), "",
              "| unit | a MiB/sample | c MiB | R2 |", "|---|---|---|---|"]
    for u in prof.get("units", []):
        lines.append(f"| {u['unit']} | {_f(u['a_mib_per_sample'], '.3f')} | "
                     f"{_f(u['c_mib'], '.1f')} | {_f(u['r2'], '.4f')} |")
    lines += ["", ("| block | units | batch | modelled MiB | peak_alloc MiB | peak_train MiB "
                   "| within budget |"), "|---|---|---|---|---|---|---|"]
    for b in nf.get("blocks", []):
        lines.append(f"| {b['block']} | {b['units']} | {b['batch']} | "
                     f"{_f(b['modelled_mib'], '.1f')} | {_f(b['peak_alloc_mib'], '.1f')} | "
                     f"{_f(b['peak_train_mib'], '.1f')} | {b['within_budget']} |")
    lines += ["", "| cells sharing one GPU | slots | img/s per cell | img/s in total |",
              "|---|---|---|---|"]
    for sh in out.get("sharing", []):
        per = ", ".join(_f(x) for x in sh.get("per_cell", [])) or sh.get("error", "-")
        lines.append(f"| {sh['cells']} | {', '.join(map(str, sh.get('slots') or []))} | {per} "
                     f"| {_f(sh.get('total_images_per_s'))} |")
    paper = out.get("paper") or {}
    lines += ["", "| config/paper.yaml study | cells | projected GPU-hours |", "|---|---|---|"]
    for study, s in (paper.get("studies") or {}).items():
        missing = f" (no rate for {', '.join(s['missing'])})" if s.get("missing") else ""
        lines.append(f"| {study} | {s['cells']} | {_f(s['gpu_hours'], '.1f')}{missing} |")
    if paper:
        lines.append(f"| total | | {_f(paper.get('gpu_hours'), '.1f')} |")
    errors = out.get("errors") or {}
    if errors:
        lines += ["", *(f"- section {k} failed: {v}" for k, v in errors.items())]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="gpu_check", help="writes gpu_check.json and .md here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    p.add_argument("--only", nargs="+", default=["models", "neuroflux", "sharing", "paper"],
                   choices=["models", "neuroflux", "sharing", "paper"])
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new measurements after this many seconds (default "
                        f"{BUDGET_S:.0f}; --smoke: no limit)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    t0 = time.perf_counter()
    deadline = t0 + (args.budget_s or (1e9 if args.smoke else BUDGET_S))
    steps = args.steps or (2 if args.smoke else 30)
    warm = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    device = resolve_device(args.device)
    cfg = paper_config(args.smoke)
    torch.set_num_threads(int(cfg["threads"]))
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "steps": steps, "warmup": warm, "errors": {},
    }
    sections = {
        "models": lambda: section_models(cfg, device, warm, steps, out, deadline, args.smoke),
        "neuroflux": lambda: section_neuroflux(cfg, device, steps, out, args.smoke),
        "sharing": lambda: section_sharing(cfg, device, warm, steps, out, args.smoke, deadline),
        "paper": lambda: section_paper(cfg, device, out),
    }
    for name in args.only:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            sections[name]()
        except Exception as e:  # noqa: BLE001 - record it; the other sections still run
            out["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    out["wall_s"] = time.perf_counter() - t0
    # what this process needed: the check must run on a bare GPU box (torch only)
    out["imported"] = {m: m in sys.modules for m in ("snakemake", "mlflow", "pandas", "sklearn",
                                                     "matplotlib", "torchvision")}
    folder = Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_check.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (folder / "gpu_check.md").write_text(markdown(out) + "\n")
    print(markdown(out))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
