"""`neuroflux`: block-wise adaptive local learning under a memory budget (study `neuroflux`;
METHODS.md in this folder). The building blocks live in this folder.

`setup(run)`: holds out `holdout_fraction` of the train split (a permutation fixed per seed;
`split.hold_out`): the blocks train on the rest, the early exit is chosen on the held-out images,
and the validation split (CIFAR's test set) only reports. Backprop holds out the same images, so
both methods train on the same data.

`fit(run)`:
1. units + adaptive auxiliary heads (head init under a forked RNG seeded from the cell's seed);
2. profiler (timed: `profiling_s`): per unit with its head, memory = a*b + c and step time =
   alpha*b + beta; the cost of reading an fp16 cache onto the device (seconds per byte);
3. partitioner (`partition.py`): contiguous blocks, each with its batch (largest power of two
   that fits budget * (1 - slack), capped at max_batch = 1024) by the first-unit rule
   (`partition: greedy`) or the cuts minimising the modelled epoch time (`partition: optimal`);
   BudgetError when a unit does not fit alone. The modelled epoch time of both partitions is
   recorded (`modelled_epoch_s_greedy`, `modelled_epoch_s_optimal`);
4. controller/worker: blocks in order; each block trains for the study's `epochs` epochs
   [ours: every block gets `epochs` epochs] with a fresh SGD over its units and heads,
   lr = study lr * block batch / study batch size (linear scaling) under the study's schedule
   restarted per block; each unit learns from its own head, inputs detached between units.
   Augmentation (random crop / flip of the data config) applies to the first block only; later
   blocks read the cache. The per-epoch validation (the block's deepest head, for the history
   only) and the cache passes run at the block's batch (option `eval_batch`). After a block's
   last epoch: one pass in eval mode (BatchNorm running statistics, no augmentation, no grad)
   over the train, held-out and validation images caches its outputs as fp16 on the host, or in
   a numpy memmap in the cell folder when they exceed `cache_host_limit_mib`; the same pass
   gives each head of the block its held-out accuracy (which chooses the exit) and its
   validation accuracy (reported). The last block makes the held-out and validation passes only;
5. early exit: the shallowest head within `exit_tolerance` of the best head *on the held-out
   images*; the deployed model is units 1..exit + that head; its validation accuracy (the
   reported one), held-out accuracy, parameter reduction and inference throughput gain.

History: one record per (block, epoch) - n_blocks x epochs records, `phase` "block<k>"; their
`val_loss` / `val_acc` are the block's deepest head's, `modelled_peak_mib` the block's modelled
memory at its batch (<= the budget by construction). Final `val_acc` / `val_loss` are the exit
model's (measured end to end on the validation split, fp32, no cache); `head_acc_u<i>` every
head's validation accuracy and `head_holdout_acc_u<i>` its held-out accuracy; final `epochs` is
the study's epochs (per block) and `block_epochs` the number of records.

Timing: `train_wall_s` = profiling + partitioning + block training (with its per-epoch
validation) + cache passes, i.e. everything up to a trained network; `method_wall_s` adds the
early-exit analysis (exit model evaluation and throughput timing). Pair `train_wall_s` with the
backprop cell's `train_wall_s` for the speed-up (a cross-cell quantity, not computed here).

Memory: `run.optimizer` (built by the harness over the whole model) is unused; the block
optimizers are local, so `memory.optimizer_state_mib` of the result is 0 and the block records
carry the modelled memory (params, grads, momentum, activations of the block with its heads).

Resume [ours]: at a block boundary. The checkpoint written with a block's last epoch carries the
boundary (`state_dict()["boundary"]`): the weights of the model and of every head, the head
accuracies so far, the history length, timing, data generator and RNG, and the profile and
partition (reused, so a resumed cell trains the same blocks). A cell killed inside block k+1
restarts at that boundary: the records of the unfinished block are discarded, the caches of the
finished blocks are rebuilt by running them once forward (eval mode, the same batches: the same
fp16 values; `resume_rebuild_s`, not counted in `train_wall_s`), and only blocks k+1.. train.
A cell killed inside the first block starts over from its initial weights.
"""

from __future__ import annotations

import dataclasses
import math
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


def _bytes_outside_block(modules: list[nn.Module], optimizer: torch.optim.Optimizer,
                         device: torch.device) -> int | None:
    """Bytes allocated on a CUDA device that are not the block's own state (params, buffers,
    grads, optimizer state): the data on the device, the other units and heads. None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    own = measure.optimizer_state_bytes(optimizer)
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            own += t.numel() * t.element_size()
        for q in m.parameters():
            if q.grad is not None:
                own += q.grad.numel() * q.grad.element_size()
    return int(torch.cuda.memory_allocated(device)) - own


@METHODS.register("neuroflux")
class NeuroFlux(Method):
    name = "neuroflux"
    metrics = ("block_epochs", "exit_unit", "exit_unit_name", "exit_val_acc", "exit_params",
               "full_params", "param_reduction", "exit_images_per_s", "full_images_per_s",
               "inference_throughput_gain", "throughput_batch", "n_units", "n_blocks",
               "block_batch_sizes", "block_units", "block_memory_mib", "budget_mib",
               "head_filters", "profile_min_r2", "profile_warning", "augmented_blocks",
               "cache_storage", "profiling_s", "cache_s", "train_wall_s", "method_wall_s",
               "head_acc_u*", "head_holdout_acc_u*", "exit_holdout_acc", "exit_selection_split",
               "holdout_images", "train_images", "device_data_mib", "partition", "unit_bstar",
               "first_block_bstar", "modelled_epoch_s_greedy", "modelled_epoch_s_optimal",
               "cache_read_ns_per_byte", "resume_rebuild_s")
    description = "NeuroFlux: block-wise local learning with adaptive batches, heads and a cache"
    owns_loop = True
    defaults: dict[str, Any] = {
        "partition": "greedy",  # greedy (the first-unit rule) | optimal (modelled epoch time)
        "slack": 0.05,  # [ours] fraction of the budget kept free
        "max_batch": partition.MAX_BATCH,  # cap of a block's batch
        "min_batch": 8,  # [ours] smallest batch a unit must fit, else BudgetError
        "profile_batches": list(split.DEFAULT_PROFILE_BATCHES),
        "profile_steps": 2,  # steps per batch size (the first untimed)
        "profile_mode": "auto",  # auto (cuda: allocator, cpu: saved) | saved | allocator
        "head_numerator": 8192,  # F = clip(head_numerator // (H*W), head_min_filters, C)
        "head_min_filters": 8,
        "cache_host_limit_mib": 2048,  # [ours] above it (a block's three splits) use a memmap
        "eval_batch": None,  # [ours] batch of the validation / cache passes; None = the block's
        #                      batch (a no-grad pass at the block's batch stays within the budget)
        "holdout_fraction": 0.1,  # of the train split, chooses the exit (fixed per seed)
        "exit_tolerance": 0.005,  # exit within 0.5 points of the best head (held-out accuracy)
        "throughput_batch": 128,
        "throughput_warmup": 3,
        "throughput_iters": 10,
    }
    # the tiny test model at a budget it fits in one block (history length = epochs)
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
        self._plan: dict[str, Any] | None = None  # profiles + partition (checkpointed)
        self._boundary: dict[str, Any] | None = None  # the last finished block (checkpointed)
        self._restored: dict[str, Any] = {}
        self.holdout: tuple[torch.Tensor, torch.Tensor] | None = None
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
        if self.options["partition"] not in partition.RULES:
            return False, (f"method option partition must be one of "
                           f"{', '.join(partition.RULES)}, not {self.options['partition']!r}")
        return True, ""

    # -- set-up ------------------------------------------------------------------------

    def setup(self, run: Run) -> None:
        # before any checkpoint restore: the weights a clean start goes back to
        self._init_state = {k: v.detach().to("cpu", copy=True)
                            for k, v in run.model.state_dict().items()}
        run.data, self.holdout = split.hold_out(
            run.data, float(self.options["holdout_fraction"]), int(run.cfg["seed"]))

    def state_dict(self) -> dict[str, Any]:
        return {"resumable": "block boundary", "plan": self._plan, "boundary": self._boundary}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = dict(state or {})
        self._plan, self._boundary = self._restored.get("plan"), self._restored.get("boundary")

    def _clean_start(self, run: Run) -> None:
        if not (run.epoch or run.history):
            return
        _log(f"neuroflux: no block finished before the interruption: discarding "
             f"{len(run.history)} checkpointed record(s) and starting over")
        if self._init_state is not None:
            run.model.load_state_dict(self._init_state)
        run.epoch, run.steps_done, run.history = 0, 0, []
        run.status, run.reason = "ok", None
        for k in run.timing:
            run.timing[k] = 0.0
        run.generator.manual_seed(int(run.cfg["seed"]))

    def _rewind(self, run: Run, heads: list[nn.Module], b: dict[str, Any]) -> None:
        """Back to the block boundary `b` (weights, heads, history, timing, generator, RNG)."""
        dropped = len(run.history) - int(b["history_len"])
        _log(f"neuroflux: resuming at the boundary after block {b['blocks_done']} of "
             f"{len(self.blocks)}; discarding {dropped} record(s) of the unfinished block")
        run.model.load_state_dict(b["model"])
        for h, st in zip(heads, b["heads"], strict=True):
            h.load_state_dict(st)
        run.history = run.history[:int(b["history_len"])]
        run.epoch, run.steps_done = int(b["epoch"]), int(b["steps_done"])
        run.status, run.reason = "ok", None
        run.timing.update(b["timing"])
        run.generator.set_state(b["generator"])
        torch.set_rng_state(b["torch_rng"])

    # -- the loop ----------------------------------------------------------------------

    def _make_plan(self, run: Run, units: list[nn.Module], heads: list[nn.Module],
                   in_shapes: list[tuple[int, ...]], names: list[str], budget: float
                   ) -> dict[str, Any]:
        """Profile the units (timed) and partition them; the plan is checkpointed."""
        opts, device = self.options, run.device
        with measure.Stopwatch(device) as sw:
            profiles = profiler.profile_units(
                units, heads, in_shapes, run.data.num_classes, device, opts["profile_batches"],
                momentum=float(run.cfg["train"]["momentum"]), steps=opts["profile_steps"],
                mode=opts["profile_mode"])
            read_s = profiler.cache_read_s_per_byte(device)
            kw = dict(slack=opts["slack"], max_batch=opts["max_batch"],
                      min_batch=opts["min_batch"], names=names, n_samples=run.data.n_train,
                      read_s_per_byte=read_s)
            parts = {rule: partition.partition(profiles, budget, rule=rule, **kw)
                     for rule in partition.RULES}
        return {
            "profiles": [p.to_dict() for p in profiles],
            "blocks": [dataclasses.asdict(b) for b in parts[opts["partition"]]],
            "modelled_epoch_s": {rule: partition.modelled_epoch_s(
                profiles, parts[rule], run.data.n_train, read_s) for rule in partition.RULES},
            "read_s_per_byte": read_s,
            "profiling_s": sw.elapsed_s,
            "unit_bstar": partition.unit_batches(profiles, budget, slack=opts["slack"],
                                                 max_batch=opts["max_batch"],
                                                 min_batch=opts["min_batch"]),
        }

    def fit(self, run: Run) -> None:
        from bench.train import lr_factor

        session_start = time.perf_counter()
        opts, cfg, device, data = self.options, run.cfg, run.device, run.data
        train, d = cfg["train"], cfg["data"]
        epochs = run.epochs
        budget = early_exit.budget_bytes_of(cfg["budget"])
        assert budget is not None  # supports() rejects 'none'
        assert self.holdout is not None  # setup() ran
        for stale in run.out_dir.glob(".neuroflux_cache_*"):
            stale.unlink(missing_ok=True)  # a killed session's memmaps
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

        # profiler + partitioner (a resumed cell keeps its plan)
        self._plan = self._restored.get("plan") or self._make_plan(
            run, units, heads, in_shapes, names, budget)
        plan = self._plan
        self.profiles = [profiler.UnitProfile.from_dict(p) for p in plan["profiles"]]
        self.blocks = [partition.Block(**b) for b in plan["blocks"]]
        low_r2 = [(i, p.r2) for i, p in enumerate(self.profiles) if p.r2 < split.R2_MIN]
        if low_r2 and not self._restored.get("plan"):
            _log("warning: the profiler's linear memory model fits poorly for unit(s) "
                 + ", ".join(f"{i + 1} (R2 {r:.3f})" for i, r in low_r2))
        _log(f"neuroflux blocks ({opts['partition']}): " + "; ".join(
            f"units {b.units[0] + 1}-{b.units[-1] + 1} batch {b.batch} "
            f"{b.memory_bytes / measure.MIB:.1f} MiB" for b in self.blocks))

        hx, hy = self.holdout
        sources: dict[str, worker.Source] = {
            "train": worker.ImageSource(
                data.train_x, data.train_y, data.mean, data.std, augment=bool(d["augment"]),
                crop_padding=int(d["crop_padding"]), flip=bool(d["flip"]),
                generator=run.generator),
            "holdout": worker.ImageSource(hx, hy, data.mean, data.std),
            "val": worker.ImageSource(data.val_x, data.val_y, data.mean, data.std),
        }
        labels = {"train": data.train_y, "holdout": hy, "val": data.val_y}
        caches: dict[str, worker.ActivationCache] = {}
        acc: dict[str, dict[int, float]] = {"holdout": {}, "val": {}}
        first_block, prior = 0, {"wall_s": 0.0, "cache_s": 0.0, "train_s": 0.0}
        cache_storage: list[str] = []
        boundary = self._restored.get("boundary")
        rebuild_s = 0.0
        if boundary is not None and (run.epoch or run.history):
            self._rewind(run, heads, boundary)
            first_block = int(boundary["blocks_done"])
            acc = {k: {int(i): float(a) for i, a in v.items()} for k, v in boundary["acc"].items()}
            prior = {k: float(boundary[k]) for k in prior}
            cache_storage = list(boundary["cache_storage"])
            self._boundary = boundary
        else:
            self._clean_start(run)
            self._boundary = None
            if self._restored.get("plan"):
                prior["wall_s"] = float(plan["profiling_s"])  # profiled by an earlier session
        cache_s = prior["cache_s"]
        train_s = prior["train_s"]

        def cache_pass(k: int, with_heads: bool) -> None:
            """Block k once over every split: the next block's caches (not after the last
            block) and, with heads, each head's held-out and validation accuracy."""
            nonlocal caches, sources, cache_storage
            block = self.blocks[k]
            b_units = [units[i] for i in block.units]
            b_heads = [heads[i] for i in block.units] if with_heads else None
            eval_batch = int(opts["eval_batch"] or block.batch)
            is_last = k == len(self.blocks) - 1
            new: dict[str, worker.ActivationCache] = {}
            if not is_last:
                out_shape = shapes[block.units[-1]]
                total = worker.cache_bytes(sum(s.n for s in sources.values()), out_shape)
                disk = total > float(opts["cache_host_limit_mib"]) * measure.MIB
                if len(cache_storage) <= k:
                    cache_storage.append("disk" if disk else "host")
                for name, src in sources.items():
                    path = (run.out_dir / f".neuroflux_cache_b{k + 1}_{name}.f16"
                            if disk else None)
                    new[name] = worker.ActivationCache(src.n, out_shape, path)
            for name, src in sources.items():
                if name == "train" and is_last:
                    continue
                heads_here = b_heads if name != "train" else None
                res = worker.run_block(b_units, heads_here, src, eval_batch, device,
                                       cache=new.get(name))
                if heads_here is not None:
                    for i, (_, a) in zip(block.units, res, strict=True):
                        acc[name][i] = a
            for c in caches.values():
                c.close()
            caches = new
            if new:
                sources = {name: worker.CacheSource(
                    c, labels[name], device, run.generator if name == "train" else None)
                    for name, c in new.items()}

        try:
            if 0 < first_block < len(self.blocks):  # the next block needs its input cache
                with measure.Stopwatch(device) as rb:
                    for k in range(first_block):
                        cache_pass(k, with_heads=False)
                rebuild_s = rb.elapsed_s
                _log(f"neuroflux: rebuilt the caches of blocks 1-{first_block} in "
                     f"{rebuild_s:.1f} s")
            for k in range(first_block, len(self.blocks)):
                block = self.blocks[k]
                b_units = [units[i] for i in block.units]
                b_heads = [heads[i] for i in block.units]
                lr0 = float(train["lr"]) * early_exit.lr_scale(block.batch,
                                                               int(train["batch_size"]))
                optimizer = Method.build_optimizer(
                    self, nn.ModuleList([*b_units, *b_heads]), {**train, "lr": lr0})
                a_sum = sum(self.profiles[i].a_bytes_per_sample for i in block.units)
                eval_batch = int(opts["eval_batch"] or block.batch)
                first, last = block.units[0] + 1, block.units[-1] + 1
                for e in range(epochs):
                    outside = _bytes_outside_block([*b_units, *b_heads], optimizer, device)
                    peak = measure.AcceleratorPeak(device)
                    peak.start()
                    t0 = time.perf_counter()

                    def set_lr(frac: float, e: int = e) -> None:
                        lr = lr0 * lr_factor(train, epochs, e + frac)
                        for g in optimizer.param_groups:
                            g["lr"] = lr

                    stats = worker.train_block_epoch(
                        b_units, b_heads, optimizer, sources["train"], block.batch,
                        set_lr=set_lr, label_smoothing=float(train["label_smoothing"]))
                    measure.sync(device)
                    t_train = time.perf_counter() - t0
                    with measure.Stopwatch(device) as ev:
                        val = worker.run_block(b_units, b_heads, sources["val"], eval_batch,
                                               device)
                    peak_alloc, peak_reserved = peak.stop()
                    train_s += t_train
                    run.timing["train_s"] += t_train
                    run.timing["timed_s"] += t_train
                    run.timing["timed_images"] += stats["images"]
                    run.timing["eval_s"] += ev.elapsed_s
                    run.timing["eval_images"] += sources["val"].n
                    run.steps_done += -(-sources["train"].n // block.batch)
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
                        # the allocator's peak less what lies outside the block (the data on
                        # the device, the other units and heads): what the budget bounds
                        "measured_peak_mib": (peak_alloc - outside / measure.MIB
                                              if peak_alloc is not None and outside is not None
                                              else None),
                    }
                    if e == epochs - 1 and math.isfinite(stats["train_loss"]):
                        # the block is trained: cache pass, then the boundary goes into the
                        # checkpoint written with this record
                        with measure.Stopwatch(device) as cs:
                            cache_pass(k, with_heads=True)
                        cache_s += cs.elapsed_s
                        self._boundary = self._snapshot(
                            run, heads, k + 1, acc, cache_storage,
                            wall_s=prior["wall_s"] + time.perf_counter() - session_start
                            - rebuild_s, cache_s=cache_s, train_s=train_s)
                    run.end_epoch(record)
                    if run.status != "ok":
                        return
                for m in [*b_units, *b_heads]:  # a finished block keeps no gradients
                    m.zero_grad(set_to_none=True)
                del optimizer
        finally:
            for c in caches.values():
                c.close()
        train_wall_s = prior["wall_s"] + time.perf_counter() - session_start - rebuild_s
        self._finish(run, units, heads, names, in_shape, acc, cache_storage, budget,
                     train_wall_s=train_wall_s, cache_s=cache_s, train_s=train_s,
                     rebuild_s=rebuild_s)

    def _snapshot(self, run: Run, heads: list[nn.Module], blocks_done: int,
                  acc: dict[str, dict[int, float]], cache_storage: list[str], *, wall_s: float,
                  cache_s: float, train_s: float) -> dict[str, Any]:
        """The boundary after `blocks_done` blocks, as the checkpoint written with the block's
        last record will hold it (that record not yet appended)."""
        def cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

        return {
            "blocks_done": blocks_done,
            "model": cpu(run.model.state_dict()),
            "heads": [cpu(h.state_dict()) for h in heads],
            "acc": {k: dict(v) for k, v in acc.items()},
            "history_len": len(run.history) + 1,
            "epoch": run.epoch + 1,
            "steps_done": run.steps_done,
            "timing": dict(run.timing),
            "generator": run.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cache_storage": list(cache_storage),
            "wall_s": wall_s,
            "cache_s": cache_s,
            "train_s": train_s,
        }

    def _finish(self, run: Run, units: list[nn.Module], heads: list[nn.Module],
                names: list[str], in_shape: tuple[int, ...], acc: dict[str, dict[int, float]],
                cache_storage: list[str], budget: float, *, train_wall_s: float,
                cache_s: float, train_s: float, rebuild_s: float) -> None:
        """Early exit (chosen on the held-out images) and the final metrics."""
        t0 = time.perf_counter()
        opts, device, plan = self.options, run.device, self._plan
        assert plan is not None and self.holdout is not None
        n = len(units)
        hold = [acc["holdout"][i] for i in range(n)]
        val_accs = [acc["val"][i] for i in range(n)]
        exit_i = early_exit.select_exit(hold, float(opts["exit_tolerance"]))
        exit_model = early_exit.ExitModel(units[:exit_i + 1], heads[exit_i])
        data = run.data
        eval_batch = int(run.cfg["train"]["eval_batch_size"])
        exit_loss, exit_acc = self._evaluate(exit_model, data.val_x, data.val_y, run, eval_batch)
        _, exit_hold_acc = self._evaluate(exit_model, *self.holdout, run, eval_batch)
        full_params = early_exit.count_params(run.model)
        exit_params = early_exit.count_params(exit_model)
        tb = int(opts["throughput_batch"])
        tp = dict(device=device, batch=tb, warmup=int(opts["throughput_warmup"]),
                  iters=int(opts["throughput_iters"]))
        thr_exit = early_exit.measure_throughput(exit_model, in_shape, **tp)
        thr_full = early_exit.measure_throughput(run.model, in_shape, **tp)
        method_wall_s = train_wall_s + time.perf_counter() - t0
        bstar = plan["unit_bstar"]
        first = self.blocks[0]
        self._final = {
            "val_acc": exit_acc,
            "val_loss": exit_loss,
            "epochs": run.epochs,
            "block_epochs": len(run.history),
            "exit_unit": exit_i + 1,
            "exit_unit_name": names[exit_i],
            "exit_val_acc": exit_acc,
            "exit_holdout_acc": exit_hold_acc,
            "exit_selection_split": "holdout",
            "holdout_images": int(self.holdout[1].shape[0]),
            "device_data_mib": worker.device_data_mib(run.data, self.holdout),
            "train_images": data.n_train,
            "exit_params": exit_params,
            "full_params": full_params,
            "param_reduction": full_params / exit_params,
            "exit_images_per_s": thr_exit,
            "full_images_per_s": thr_full,
            "inference_throughput_gain": thr_exit / thr_full,
            "throughput_batch": tb,
            "n_units": n,
            "n_blocks": len(self.blocks),
            "partition": opts["partition"],
            "block_batch_sizes": ",".join(str(b.batch) for b in self.blocks),
            "block_units": ",".join(f"{b.units[0] + 1}-{b.units[-1] + 1}" for b in self.blocks),
            "block_memory_mib": ",".join(f"{b.memory_bytes / measure.MIB:.2f}"
                                         for b in self.blocks),
            "unit_bstar": ",".join(str(b) for b in bstar),
            "first_block_bstar": bstar[first.units[0]],
            "modelled_epoch_s_greedy": plan["modelled_epoch_s"]["greedy"],
            "modelled_epoch_s_optimal": plan["modelled_epoch_s"]["optimal"],
            "cache_read_ns_per_byte": plan["read_s_per_byte"] * 1e9,
            "budget_mib": budget / measure.MIB,
            "head_filters": ",".join(str(getattr(h, "filters", "fc")) for h in heads),
            "profile_min_r2": min(p.r2 for p in self.profiles),
            "profile_warning": (None if min(p.r2 for p in self.profiles) >= split.R2_MIN
                                else "linear memory fit R2 < 0.99 for unit(s) " + ",".join(
                                    str(i + 1) for i, p in enumerate(self.profiles)
                                    if p.r2 < split.R2_MIN)),
            "augmented_blocks": "1" if run.cfg["data"]["augment"] else "",
            "cache_storage": ",".join(cache_storage),
            "profiling_s": plan["profiling_s"],
            "cache_s": cache_s,
            "train_s": train_s,
            "train_wall_s": train_wall_s,
            "method_wall_s": method_wall_s,
            "resume_rebuild_s": rebuild_s,
            **{f"head_acc_u{i + 1}": a for i, a in enumerate(val_accs)},
            **{f"head_holdout_acc_u{i + 1}": a for i, a in enumerate(hold)},
        }

    @staticmethod
    def _evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, run: Run,
                  batch: int) -> tuple[float, float]:
        """(loss, accuracy) of `module` end to end on images `x` (fp32, eval mode)."""
        data, device = run.data, run.device
        src = worker.ImageSource(x, y, data.mean, data.std)
        loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad(), split.eval_mode([module]):
            for xb, yb in src.batches(batch, shuffle=False):
                logits = module(xb)
                loss += F.cross_entropy(logits.float(), yb, reduction="sum")
                correct += (logits.argmax(1) == yb).sum()
        n = max(int(y.shape[0]), 1)
        return loss.item() / n, correct.item() / n

    def final_metrics(self, run: Run) -> dict[str, Any]:
        return dict(self._final)
