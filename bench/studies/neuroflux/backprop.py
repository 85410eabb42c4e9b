"""`backprop`: the reference of study `neuroflux` (METHODS.md in this folder).

End-to-end training with the plain loop at the largest batch that fits the cell's memory budget:
the NeuroFlux profiler (`bench.neuroflux.profile_model`) applied to the whole model as one block
gives memory = a*b + c; the batch is the largest power of two in [min_batch, max_batch] with
a*b + c <= budget * (1 - slack) (a BudgetError when not even min_batch fits). Budget "none" uses
the study's batch size. It trains on the same images as NeuroFlux: the train split less the
`holdout_fraction` NeuroFlux holds out to choose its exit (the same permutation per seed), so
neither method sees more training data than the other. `setup` rebuilds `run.train_loader` with that batch (same generator,
same augmentation) and the lr is scaled linearly, lr * batch / study batch size, on top of the
study's schedule (applied in `before_optimizer_step`, after `run.set_lr` set the schedule's lr).

On an accelerator the harness records the allocator's peak per epoch (`peak_alloc_mib`, with
the per-epoch validation at the study's `eval_batch_size`); `device_data_mib` is the part of it
that is the dataset held on the device, which the budget does not bound (the mechanism check
`peak_within_budget` compares the difference with the budget).

Final metrics: `batch_size` (the chosen one; `memory.batch_size` stays the study's), `lr_scale`,
the profile (`profile_a_bytes_per_sample`, `profile_c_bytes`, `profile_r2`, a warning when
R^2 < 0.99), `profiling_s`, `modelled_batch_memory_mib`, and `train_wall_s` = profiling + the
sum of the epochs' wall times (training + per-epoch validation), the quantity paired with
neuroflux's `train_wall_s` for the speed-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import measure
from bench.data import DeviceLoader
from bench.errors import BudgetError
from bench.methods import METHODS
from bench.methods.base import Method
from bench.studies.neuroflux import early_exit, partition, profiler, split, worker

if TYPE_CHECKING:
    from bench.train import Run


@METHODS.register("backprop")
class Backprop(Method):
    name = "backprop"
    metrics = ("batch_size", "lr_scale", "budget_mib", "profiling_s", "train_wall_s",
               "profile_*", "modelled_batch_memory_mib", "train_images", "device_data_mib")
    description = "end-to-end backprop at the largest batch that fits the memory budget"
    defaults: dict[str, Any] = {
        "slack": 0.05,
        "max_batch": partition.MAX_BATCH,
        "min_batch": 8,
        "holdout_fraction": 0.1,  # the images NeuroFlux holds out (not trained on by either)
        "profile_batches": list(split.DEFAULT_PROFILE_BATCHES),
        "profile_steps": 2,
        "profile_mode": "auto",
    }
    sizes_to_budget = True
    test_study: dict[str, Any] = {
        "budgets": ["64MiB"],
        "method_options": {"backprop": {"profile_batches": [8, 16, 32]}},
    }

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.batch: int | None = None
        self.scale = 1.0
        self.profile: profiler.UnitProfile | None = None
        self.profiling_s = 0.0
        self.budget_bytes: float | None = None

    def supports(self, cfg: dict[str, Any]) -> tuple[bool, str]:
        try:
            early_exit.budget_bytes_of(cfg["budget"])
        except Exception as e:  # noqa: BLE001
            return False, str(e)
        return True, ""

    def choose_batch(self, run: Run) -> int:
        """The profiled largest batch under the budget, or the study's batch without one."""
        study_batch = int(run.cfg["train"]["batch_size"])
        self.budget_bytes = early_exit.budget_bytes_of(run.cfg["budget"])
        if self.budget_bytes is None:
            return study_batch
        o = self.options
        in_shape = tuple(int(s) for s in run.data.train_x.shape[1:])
        with measure.Stopwatch(run.device) as sw:
            self.profile = profiler.profile_model(
                run.model, in_shape, run.data.num_classes, run.device, o["profile_batches"],
                momentum=float(run.cfg["train"]["momentum"]), steps=o["profile_steps"],
                mode=o["profile_mode"])
        self.profiling_s = sw.elapsed_s
        batch = partition.largest_batch(self.profile.a_bytes_per_sample, self.profile.c_bytes,
                                 self.budget_bytes, slack=o["slack"], max_batch=o["max_batch"],
                                 min_batch=o["min_batch"])
        if batch is None:
            raise BudgetError(
                f"memory budget {self.budget_bytes / measure.MIB:.1f} MiB is too small for "
                f"backprop of {run.cfg['model']}: it needs "
                f"{self.profile.memory(o['min_batch']) / measure.MIB:.2f} MiB at the smallest "
                f"batch {o['min_batch']} (modelled) with {o['slack']:.0%} slack")
        return batch

    def setup(self, run: Run) -> None:
        run.data, _ = split.hold_out(run.data, float(self.options["holdout_fraction"]),
                                     int(run.cfg["seed"]))
        self.batch = self.choose_batch(run)
        study_batch = int(run.cfg["train"]["batch_size"])
        self.scale = early_exit.lr_scale(self.batch, study_batch)
        d, data = run.cfg["data"], run.data
        run.train_loader = DeviceLoader(
            data.train_x, data.train_y, self.batch, mean=data.mean, std=data.std, shuffle=True,
            augment=d["augment"], crop_padding=d["crop_padding"], flip=d["flip"],
            generator=run.generator)

    def before_optimizer_step(self, run: Run) -> None:
        if self.scale != 1.0:
            for group in run.optimizer.param_groups:
                group["lr"] *= self.scale  # run.set_lr resets it from the schedule every step

    def final_metrics(self, run: Run) -> dict[str, Any]:
        epochs_s = sum(h.get("epoch_s") or 0.0 for h in run.history)
        p = self.profile
        out: dict[str, Any] = {
            "batch_size": self.batch,
            "lr_scale": self.scale,
            "budget_mib": (self.budget_bytes / measure.MIB
                           if self.budget_bytes is not None else None),
            "train_images": run.data.n_train,
            "device_data_mib": worker.device_data_mib(run.data),
            "profiling_s": self.profiling_s,
            "train_wall_s": self.profiling_s + epochs_s,
        }
        if p is not None and self.batch is not None:
            out.update({
                "profile_a_bytes_per_sample": p.a_bytes_per_sample,
                "profile_c_bytes": p.c_bytes,
                "profile_r2": p.r2,
                "profile_warning": (f"linear memory fit R2 {p.r2:.4f} < {split.R2_MIN}"
                                    if p.r2 < split.R2_MIN else None),
                "modelled_batch_memory_mib": p.memory(self.batch) / measure.MIB,
            })
        return out
