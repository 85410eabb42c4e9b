"""`neuroflux`: block-wise adaptive local learning under a memory budget (study `neuroflux`;
../shared/METHODS.md, seed 003). The building blocks live in `bench.neuroflux`.

`fit(run)`:
1. units + adaptive auxiliary heads (head init under a forked RNG seeded from the cell's seed);
2. profiler (timed: `profiling_s`): per unit with its head, memory = a*b + c;
3. partitioner: contiguous blocks, each with its batch (largest power of two that fits
   budget * (1 - slack), capped at max_batch); BudgetError when a unit does not fit alone;
4. controller/worker: blocks in order; each block trains for the study's `epochs` epochs
   [ours: every block gets `epochs` epochs] with a fresh SGD over its units and heads,
   lr = study lr * block batch / study batch size (linear scaling) under the study's schedule
   restarted per block; each unit learns from its own head, inputs detached between units.
   Augmentation (random crop / flip of the data config) applies to the first block only; later
   blocks read the cache. The per-epoch validation and the cache passes run at the block's
   batch (option `eval_batch`). After a block: one pass in eval mode (BatchNorm running statistics,
   no augmentation, no grad) over train and validation caches its outputs as fp16 on the host, or
   in a numpy memmap in the cell folder when train + val exceed `cache_host_limit_mib`; the same
   pass gives each head's validation accuracy (the last block only makes the validation pass);
5. early exit: the shallowest head within `exit_tolerance` of the best head; the deployed model
   is units 1..exit + that head; its accuracy, parameter reduction and inference throughput gain.

History: one record per (block, epoch) - n_blocks x epochs records, `phase` "block<k>"; their
`val_loss` / `val_acc` are the block's deepest head's, `modelled_peak_mib` the block's modelled
memory at its batch (<= the budget by construction). Final `val_acc` / `val_loss` are the exit
model's (measured end to end on the validation split, fp32, no cache); final `epochs` is the
study's epochs (per block) and `block_epochs` the number of records.

Timing: `train_wall_s` = profiling + partitioning + block training (with its per-epoch
validation) + cache passes, i.e. everything up to a trained network; `method_wall_s` adds the
early-exit analysis (exit model evaluation and throughput timing). Pair `train_wall_s` with the
backprop cell's `train_wall_s` for the speed-up (a cross-cell quantity, not computed here).

Memory: `run.optimizer` (built by the harness over the whole model) is unused; the block
optimizers are local, so `memory.optimizer_state_mib` of the result is 0 and the block records
carry the modelled memory (params, grads, momentum, activations of the block with its heads).

Resume: a neuroflux cell is not resumable mid-way [ours]. A checkpoint of a partial run is
restored by the harness (its weights, history, timing, RNG); `fit` then starts over cleanly:
initial weights (kept by `setup`), empty history, zeroed timing, reseeded data generator. The
result's `provenance.resumed_from_epoch` then names the discarded epoch count.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import measure
from bench.methods import METHODS
from bench.methods.base import Method
from bench.studies.neuroflux import early_exit, partition, profiler, split, worker

if TYPE_CHECKING:
    from bench.train import Run


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


@METHODS.register("neuroflux")
class NeuroFlux(Method):
    name = "neuroflux"
    metrics = ("block_epochs", "exit_unit", "exit_unit_name", "exit_val_acc", "exit_params",
               "full_params", "param_reduction", "exit_images_per_s", "full_images_per_s",
               "inference_throughput_gain", "throughput_batch", "n_units", "n_blocks",
               "block_batch_sizes", "block_units", "block_memory_mib", "budget_mib",
               "head_filters", "profile_min_r2", "profile_warning", "augmented_blocks",
               "cache_storage", "profiling_s", "cache_s", "train_wall_s", "method_wall_s",
               "head_acc_u*")
    description = "NeuroFlux: block-wise local learning with adaptive batches, heads and a cache"
    owns_loop = True
    defaults: dict[str, Any] = {
        "slack": 0.05,  # [ours] fraction of the budget kept free
        "max_batch": 512,  # cap of a block's batch
        "min_batch": 8,  # [ours] smallest batch a unit must fit, else BudgetError
        "max_drop": 2.0,  # start a new block when the batch would drop by more than this
        "profile_batches": list(split.DEFAULT_PROFILE_BATCHES),
        "profile_steps": 2,  # steps per batch size (allocator mode)
        "profile_mode": "auto",  # auto (cuda: allocator, cpu: saved) | saved | allocator
        "head_numerator": 8192,  # F = clip(head_numerator // (H*W), head_min_filters, C)
        "head_min_filters": 8,
        "cache_host_limit_mib": 2048,  # [ours] above it (train + val of a block) use a memmap
        "eval_batch": None,  # [ours] batch of the validation / cache passes; None = the block's
        #                      batch (a no-grad pass at the block's batch stays within the budget)
        "exit_tolerance": 0.005,  # exit within 0.5 points of the best head
        "throughput_batch": 128,
        "throughput_warmup": 3,
        "throughput_iters": 10,
    }
    # one block on the tiny test model (history length = epochs as the contract test expects)
    sizes_to_budget = True
    test_study: dict[str, Any] = {
        "budgets": ["256MiB"],
        "method_options": {"neuroflux": {"profile_batches": [8, 16, 32],
                                         "throughput_batch": 16, "throughput_warmup": 1,
                                         "throughput_iters": 2}},
    }

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self._init_state: dict[str, torch.Tensor] | None = None
        self._final: dict[str, Any] = {}
        self.blocks: list[partition.Block] = []
        self.profiles: list[profiler.UnitProfile] = []

    # -- capabilities ------------------------------------------------------------------

    def supports(self, cfg: dict[str, Any]) -> tuple[bool, str]:
        if cfg["model"] not in split.SUPPORTED_MODELS:
            return False, (f"neuroflux cuts VGG-16/19 and ResNet-18 (CIFAR stem) into units; "
                           f"model '{cfg['model']}' is not supported "
                           f"({', '.join(split.SUPPORTED_MODELS)})")
        if cfg["budget"] == "none":
            return False, "neuroflux needs a memory budget in MiB (budget 'none' given)"
        try:
            early_exit.budget_bytes_of(cfg["budget"])
        except Exception as e:  # noqa: BLE001
            return False, str(e)
        return True, ""

    # -- set-up ------------------------------------------------------------------------

    def setup(self, run: Run) -> None:
        # before any checkpoint restore: the weights a clean start goes back to
        self._init_state = {k: v.detach().to("cpu", copy=True)
                            for k, v in run.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"resumable": False}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # not resumable: fit() starts over (see the module docstring)

    def _clean_start(self, run: Run) -> None:
        if not (run.epoch or run.history):
            return
        _log(f"neuroflux cells are not resumable mid-way: discarding {len(run.history)} "
             f"checkpointed record(s) and starting over")
        if self._init_state is not None:
            run.model.load_state_dict(self._init_state)
        run.epoch, run.steps_done, run.history = 0, 0, []
        run.status, run.reason = "ok", None
        for k in run.timing:
            run.timing[k] = 0.0
        run.generator.manual_seed(int(run.cfg["seed"]))

    # -- the loop ----------------------------------------------------------------------

    def fit(self, run: Run) -> None:
        from bench.train import lr_factor

        self._clean_start(run)
        opts, cfg, device, data = self.options, run.cfg, run.device, run.data
        train, d = cfg["train"], cfg["data"]
        epochs = run.epochs
        t_start = time.perf_counter()
        budget = early_exit.budget_bytes_of(cfg["budget"])
        assert budget is not None  # supports() rejects 'none'
        named = split.split_named_units(run.model)
        names = [n for n, _ in named]
        units = [u for _, u in named]
        in_shape = tuple(int(s) for s in data.train_x.shape[1:])
        shapes = split.unit_output_shapes(units, in_shape, device)
        in_shapes = [in_shape, *shapes[:-1]]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(cfg["seed"]) ^ 0x5EED)
            heads = split.build_heads(run.model, units, in_shape, data.num_classes, device,
                                   opts["head_numerator"], opts["head_min_filters"])

        # profiler + partitioner
        with measure.Stopwatch(device) as sw:
            momentum = float(train["momentum"])
            self.profiles = profiler.profile_units(
                units, heads, in_shapes, data.num_classes, device, opts["profile_batches"],
                momentum=momentum, steps=opts["profile_steps"], mode=opts["profile_mode"])
        profiling_s = sw.elapsed_s
        low_r2 = [(i, p.r2) for i, p in enumerate(self.profiles) if p.r2 < split.R2_MIN]
        if low_r2:
            _log("warning: the profiler's linear memory model fits poorly for unit(s) "
                 + ", ".join(f"{i + 1} (R2 {r:.3f})" for i, r in low_r2))
        self.blocks = partition.partition(self.profiles, budget, slack=opts["slack"],
                                   max_batch=opts["max_batch"], min_batch=opts["min_batch"],
                                   max_drop=opts["max_drop"], names=names)
        _log("neuroflux blocks: " + "; ".join(
            f"units {b.units[0] + 1}-{b.units[-1] + 1} batch {b.batch} "
            f"{b.memory_bytes / measure.MIB:.1f} MiB" for b in self.blocks))

        train_src: worker.Source = worker.ImageSource(
            data.train_x, data.train_y, data.mean, data.std, augment=bool(d["augment"]),
            crop_padding=int(d["crop_padding"]), flip=bool(d["flip"]), generator=run.generator)
        val_src: worker.Source = worker.ImageSource(data.val_x, data.val_y, data.mean, data.std)
        caches: list[worker.ActivationCache] = []
        head_acc: dict[int, float] = {}
        cache_s = train_s = 0.0
        cache_storage: list[str] = []
        try:
            for k, block in enumerate(self.blocks):
                b_units = [units[i] for i in block.units]
                b_heads = [heads[i] for i in block.units]
                lr0 = float(train["lr"]) * early_exit.lr_scale(block.batch, int(train["batch_size"]))
                optimizer = Method.build_optimizer(
                    self, nn.ModuleList([*b_units, *b_heads]), {**train, "lr": lr0})
                a_sum = sum(self.profiles[i].a_bytes_per_sample for i in block.units)
                eval_batch = int(opts["eval_batch"] or block.batch)
                first, last = block.units[0] + 1, block.units[-1] + 1
                for e in range(epochs):
                    peak = measure.AcceleratorPeak(device)
                    peak.start()
                    t0 = time.perf_counter()

                    def set_lr(frac: float, e: int = e) -> None:
                        lr = lr0 * lr_factor(train, epochs, e + frac)
                        for g in optimizer.param_groups:
                            g["lr"] = lr

                    stats = worker.train_block_epoch(
                        b_units, b_heads, optimizer, train_src, block.batch, set_lr=set_lr,
                        label_smoothing=float(train["label_smoothing"]))
                    measure.sync(device)
                    t_train = time.perf_counter() - t0
                    with measure.Stopwatch(device) as ev:
                        val = worker.run_block(b_units, b_heads, val_src, eval_batch, device)
                    peak_alloc, peak_reserved = peak.stop()
                    train_s += t_train
                    run.timing["train_s"] += t_train
                    run.timing["timed_s"] += t_train
                    run.timing["timed_images"] += stats["images"]
                    run.timing["eval_s"] += ev.elapsed_s
                    run.timing["eval_images"] += val_src.n
                    run.steps_done += -(-train_src.n // block.batch)
                    saved = stats["saved_bytes"]
                    record = {
                        "phase": f"block{k + 1}",
                        "block": k + 1,
                        "block_epoch": e + 1,
                        "units": f"{first}-{last}",
                        "unit_first": first,
                        "unit_last": last,
                        "batch_size": block.batch,
                        "augment": bool(d["augment"]) and k == 0,
                        "train_loss": stats["train_loss"],
                        "train_acc": stats["train_acc"],
                        "val_loss": val[-1][0],
                        "val_acc": val[-1][1],
                        "lr": optimizer.param_groups[0]["lr"],
                        "epoch_s": time.perf_counter() - t0,
                        "train_images_per_s": stats["images"] / t_train if t_train > 0 else None,
                        "peak_alloc_mib": peak_alloc,
                        "peak_reserved_mib": peak_reserved,
                        "activation_mib": a_sum * block.batch / measure.MIB,
                        "measured_activation_mib": (saved / measure.MIB
                                                    if saved is not None else None),
                        "modelled_peak_mib": block.memory_bytes / measure.MIB,
                    }
                    run.end_epoch(record)
                    if run.status != "ok":
                        return
                # cache pass: train outputs (not after the last block) and validation outputs,
                # which also give every head of the block its final validation accuracy
                is_last = k == len(self.blocks) - 1
                with measure.Stopwatch(device) as cs:
                    out_shape = shapes[block.units[-1]]
                    new: list[worker.ActivationCache] = []
                    if not is_last:
                        total = worker.cache_bytes(train_src.n + val_src.n, out_shape)
                        disk = total > float(opts["cache_host_limit_mib"]) * measure.MIB
                        cache_storage.append("disk" if disk else "host")

                        def path(split: str) -> Any:
                            return (run.out_dir / f".neuroflux_cache_b{k + 1}_{split}.f16"
                                    if disk else None)

                        tr = worker.ActivationCache(train_src.n, out_shape, path("train"))
                        va = worker.ActivationCache(val_src.n, out_shape, path("val"))
                        new = [tr, va]
                        worker.run_block(b_units, None, train_src, eval_batch, device, cache=tr)
                        val = worker.run_block(b_units, b_heads, val_src, eval_batch, device, cache=va)
                    else:
                        val = worker.run_block(b_units, b_heads, val_src, eval_batch, device)
                    for i, (_, acc) in zip(block.units, val, strict=True):
                        head_acc[i] = acc
                    for c in caches:
                        c.close()
                    caches = new
                    if new:
                        train_src = worker.CacheSource(new[0], data.train_y, device, run.generator)
                        val_src = worker.CacheSource(new[1], data.val_y, device)
                cache_s += cs.elapsed_s
        finally:
            for c in caches:
                c.close()
        train_wall_s = time.perf_counter() - t_start

        # early exit
        accs = [head_acc[i] for i in range(len(units))]
        exit_i = early_exit.select_exit(accs, float(opts["exit_tolerance"]))
        exit_model = early_exit.ExitModel(units[:exit_i + 1], heads[exit_i])
        exit_loss, exit_acc = self._evaluate(run, exit_model)
        full_params = early_exit.count_params(run.model)
        exit_params = early_exit.count_params(exit_model)
        tb = int(opts["throughput_batch"])
        tp = dict(device=device, batch=tb, warmup=int(opts["throughput_warmup"]),
                  iters=int(opts["throughput_iters"]))
        thr_exit = early_exit.measure_throughput(exit_model, in_shape, **tp)
        thr_full = early_exit.measure_throughput(run.model, in_shape, **tp)
        method_wall_s = time.perf_counter() - t_start
        self._final = {
            "val_acc": exit_acc,
            "val_loss": exit_loss,
            "epochs": epochs,
            "block_epochs": len(run.history),
            "exit_unit": exit_i + 1,
            "exit_unit_name": names[exit_i],
            "exit_val_acc": exit_acc,
            "exit_params": exit_params,
            "full_params": full_params,
            "param_reduction": full_params / exit_params,
            "exit_images_per_s": thr_exit,
            "full_images_per_s": thr_full,
            "inference_throughput_gain": thr_exit / thr_full,
            "throughput_batch": tb,
            "n_units": len(units),
            "n_blocks": len(self.blocks),
            "block_batch_sizes": ",".join(str(b.batch) for b in self.blocks),
            "block_units": ",".join(f"{b.units[0] + 1}-{b.units[-1] + 1}" for b in self.blocks),
            "block_memory_mib": ",".join(f"{b.memory_bytes / measure.MIB:.2f}"
                                         for b in self.blocks),
            "budget_mib": budget / measure.MIB,
            "head_filters": ",".join(str(getattr(h, "filters", "fc")) for h in heads),
            "profile_min_r2": min(p.r2 for p in self.profiles),
            "profile_warning": (None if not low_r2 else "linear memory fit R2 < 0.99 for unit(s) "
                                + ",".join(str(i + 1) for i, _ in low_r2)),
            "augmented_blocks": "1" if d["augment"] else "",
            "cache_storage": ",".join(cache_storage),
            "profiling_s": profiling_s,
            "cache_s": cache_s,
            "train_s": train_s,
            "train_wall_s": train_wall_s,
            "method_wall_s": method_wall_s,
            **{f"head_acc_u{i + 1}": a for i, a in enumerate(accs)},
        }

    def _evaluate(self, run: Run, module: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) of `module` end to end on the validation images (fp32, eval mode)."""
        data, device = run.data, run.device
        src = worker.ImageSource(data.val_x, data.val_y, data.mean, data.std)
        loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad(), split.eval_mode([module]):
            for x, y in src.batches(int(run.cfg["train"]["eval_batch_size"]), shuffle=False):
                logits = module(x)
                loss += F.cross_entropy(logits.float(), y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        n = max(int(data.val_y.shape[0]), 1)
        return loss.item() / n, correct.item() / n

    def final_metrics(self, run: Run) -> dict[str, Any]:
        return dict(self._final)

