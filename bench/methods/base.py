"""The method contract.

A method changes training through a few named hooks of the plain loop in `bench.train`
(`on_epoch_start`, `training_step`, `before_optimizer_step`, `on_epoch_end`), or, when its
training really differs (block-wise local learning), owns the loop by setting
`owns_loop = True` and implementing `fit`.

Options are data: `defaults` lists every option with its default; a config may override
them, and an unknown option is an error that names the accepted ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.train import Run


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    owns_loop: ClassVar[bool] = False
    # Study settings under which the registry-driven contract tests run this method (e.g. a
    # budget axis or a reference method it needs); merged over the tests' tiny study.
    test_study: ClassVar[dict[str, Any]] = {}
    # The method reads per-minibatch gradient norms (run.grad_stats after each epoch).
    needs_grad_norms: ClassVar[bool] = False
    # The method reads the study's offline layer ranking (cfg["inputs"]["ranking"]).
    needs_ranking: ClassVar[bool] = False
    # The method sizes its batch to a memory budget given in bytes (e.g. "512MiB") and stops
    # with a BudgetError naming what does not fit when nothing does (the fault suite uses it).
    sizes_to_budget: ClassVar[bool] = False
    # Final metrics the method adds to result.json (`final_metrics`), as names or fnmatch
    # patterns ("acc_at_r*"): a study may name them in `metrics`, a typo stops before any job.
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = self.resolve_options(options)

    @classmethod
    def resolve_options(cls, options: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.defaults))
        if unknown:
            accepted = ", ".join(sorted(cls.defaults)) or "none"
            raise ConfigError(
                f"method '{cls.name}' has no option {', '.join(map(repr, unknown))}; "
                f"accepted options: {accepted}"
            )
        return {**cls.defaults, **options}

    # -- capabilities ---------------------------------------------------------------

    def supports(self, cfg: dict[str, Any]) -> tuple[bool, str]:
        """(True, '') when the method can run this cell, else (False, reason): the cell is
        recorded as `skipped` with that reason."""
        return True, ""

    # -- set-up ---------------------------------------------------------------------

    def build_optimizer(self, model: torch.nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
        """SGD from the study's `train` block (weight decay off for norm gains and biases)."""
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": train["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.SGD(
            groups, lr=train["lr"], momentum=train["momentum"],
            nesterov=train["nesterov"] and train["momentum"] > 0,
        )

    def setup(self, run: Run) -> None:
        """Called once after the model and optimizer exist (before a resume restores state)."""

    # -- the loop's hooks --------------------------------------------------------------

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        """The epoch's phase, recorded in the history. The loop runs the epoch's training steps
        when `steps_in(phase)`; otherwise the method did its own work here."""
        return "train"

    def steps_in(self, phase: str) -> bool:
        """Whether the loop runs optimisation steps in an epoch of this phase."""
        return True

    def training_step(self, run: Run, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, logits), both detached."""
        run.optimizer.zero_grad(set_to_none=True)
        logits = run.model(inputs)  # (B, num_classes)
        loss = F.cross_entropy(logits, targets, label_smoothing=run.cfg["train"]["label_smoothing"])
        loss.backward()
        run.after_backward()
        self.before_optimizer_step(run)
        run.optimizer.step()
        return loss.detach(), logits.detach()

    def before_optimizer_step(self, run: Run) -> None:
        """Gradients are ready: mask or rescale them here."""

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        """Extra per-epoch metrics (numbers or strings) for the history."""
        return {}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        """Extra final metrics for result.json."""
        return {}

    def buffer_bytes(self) -> int:
        """Bytes the method keeps on the training device beyond params/grads/optimizer state
        (e.g. a snapshot buffer); counted in the modelled peak memory."""
        return 0

    # -- methods that own their loop ------------------------------------------------------

    def fit(self, run: Run) -> None:
        """Train the whole cell. Only for `owns_loop = True`; must call `run.end_epoch(...)`
        once per epoch so history, checkpoints and tracking stay uniform."""
        raise NotImplementedError

    # -- checkpointing ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
