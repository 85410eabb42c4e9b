"""The one place that talks to MLflow.

Result files are the source of truth; MLflow mirrors them for browsing. One experiment per
study (created before the fan-out, see `init_store`), one run per cell found again by its
`cell_id` tag (get-or-create), so resumes and retries never duplicate runs.

MLflow is imported lazily: planning and aggregation never need it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# MLflow's own limits on param keys/values (mlflow.utils.validation).
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


class TrackingError(BenchError):
    """The tracking store cannot be reached or used."""


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        text = "null" if obj is None else str(obj)
        out[prefix[:-1]] = text[:MAX_PARAM_VALUE]
    return out


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


class Tracker:
    """A thin wrapper over `MlflowClient` with get-or-create semantics."""

    def __init__(self, uri: str, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.artifact_root = artifact_root
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 - any store failure is reported the same way
            raise TrackingError(f"cannot open the MLflow store {uri}: {e}") from e

    # --------------------------------------------------------------- experiments

    def experiment_id(self, study: str) -> str:
        """Get or create the study's experiment (safe when two processes race)."""
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.artifact_root is not None and _is_local_store(self.uri):
            location = (self.artifact_root / study).resolve().as_uri()
        try:
            return self.client.create_experiment(
                study, artifact_location=location, tags={"memrepro.study": study}
            )
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(study)
            if exp is None:
                raise
            return exp.experiment_id

    # --------------------------------------------------------------- runs

    def find_run(self, experiment_id: str, cell_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.cell_id = '{cell_id}'", max_results=2
        )
        return runs[0].info.run_id if runs else None

    def start_cell(self, study: str, cell_id: str, tags: dict[str, str],
                   params: dict[str, Any]) -> tuple[str, str]:
        """The run of a cell (reused if it exists), marked RUNNING. Returns (experiment, run)."""
        exp_id = self.experiment_id(study)
        run_id = self.find_run(exp_id, cell_id)
        if run_id is None:
            run = self.client.create_run(
                exp_id, tags={"cell_id": cell_id, **tags}, run_name=cell_id.split("/", 1)[1]
            )
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.log_params(run_id, flatten(params))
        return exp_id, run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[i : i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epochs(self, run_id: str, history: Iterable[dict[str, Any]],
                   skip_logged: bool = False) -> None:
        """Log numeric history entries as metrics with step = epoch.

        With `skip_logged`, steps already present in the run are not logged again (used on
        resume: a cell killed between logging and checkpointing must not log an epoch twice).
        """
        from mlflow.entities import Metric

        history = list(history)
        logged: dict[str, set[int]] = {}
        if skip_logged and history:
            keys = {k for entry in history for k, v in entry.items() if _is_number(v)}
            for key in keys:
                logged[key] = {m.step for m in self.client.get_metric_history(run_id, key)}
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now_ms, int(entry["epoch"]))
            for entry in history
            for key, value in entry.items()
            if key != "epoch" and _is_number(value)
            and int(entry["epoch"]) not in logged.get(key, set())
        ]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

    def finish(self, run_id: str, status: str, files: Iterable[Path]) -> None:
        """Attach the result files and close the run (FINISHED, or FAILED for a failed cell)."""
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(run_id, str(path))
        self.set_tags(run_id, {"status": status})
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def init_store(uri: str, studies: Iterable[str], artifact_root: Path | None) -> dict[str, str]:
    """Create the store (schema migration) and one experiment per study, once, before the
    fan-out: MLflow's migration races when several processes open a brand-new sqlite file."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri, artifact_root)
    return {study: tracker.experiment_id(study) for study in studies}
