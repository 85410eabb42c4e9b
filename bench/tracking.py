"""The one place that talks to MLflow.

Result files are the source of truth; MLflow mirrors them for browsing. One experiment per
study (created before the fan-out, see `init_store`), tagged as a model-training experiment so
MLflow 3's UI opens it on its runs table. One run per cell and config hash, found again by its
`cell_id` tag: a resume (the checkpoint names its run) or a retry that logged nothing reuses
it; a cell that trains again from scratch (`-R train` after a code change, a damaged
checkpoint, other threads or another device) gets a new run and the old one is tagged
`superseded_by`, so a run never mixes epochs of two trainings.

What a run holds equals its `result.json` (`result_metrics` says exactly what, and
`bench.verify` checks it): every numeric history value at step = epoch, and every numeric final
value (`final.*` under its own name, `memory.*`/`compute.*`/`timing.*` as `memory/<key>`...)
as the metric's latest value; a final value that differs from the curve's last point (e.g.
NeuroFlux's exit-model `val_acc` after the blocks' head accuracies) is logged at step = number
of epochs, "after training". Each run also names its dataset (`mlflow.data`: name, digest of
the prepared tensors, source), its git commit and a short name `method · model · budget · s<seed>`.
A per-study summary run (`publish_report`) holds the study's report figures and tables.

MLflow is imported lazily: planning and aggregation never need it.
"""

from __future__ import annotations

import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import BenchError

T = TypeVar("T")

# MLflow's own limits on param keys/values (mlflow.utils.validation).
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_VALUE = 5000

# Waiting for a tracking server (http/https URIs only): how long, by default, and how often.
WAIT_ENV = "MEMREPRO_TRACKING_WAIT_S"
DEFAULT_WAIT_S = 120.0
PROBE_TIMEOUT_S = 5.0  # one GET /health
PROBE_EVERY_S = 1.0  # pause between probes
WAIT_PROGRESS_EVERY_S = 10.0  # a progress line while waiting

# MLflow's HTTP client retries each request with exponential backoff (7 retries, factor 2,
# 120 s timeout: minutes per request against a dead server). A cell detects a down server in
# seconds instead and our own wait loop (`Tracker.wait_for_server`) governs; a value the user
# set is kept. Names checked against mlflow/environment_variables.py (mlflow 3.x).
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


# MLflow 3's UI reads this experiment tag to choose between its GenAI overview (traces, token
# usage) and the runs table of model training; checked against the 3.x UI bundle
# (mlflow/server/js: `ExperimentKind.CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description shown on an experiment's or run's page
SUPERSEDED_TAG = "superseded_by"  # on a run whose cell trained again from scratch: the new run
RUN_KIND_TAG = "run_kind"  # "cell" (one per cell and config) or "study_summary"
SECTIONS = ("memory", "compute", "timing")  # result sections logged as "<section>/<key>"
DIGEST_HEX = 16  # characters of the dataset digest (MLflow's column holds 36)
DATASET_RACE_TRIES = 4  # see Tracker.log_dataset


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


HOW_TO_FIX = ("Start the server (see README, \"Cluster run\"), allow a longer wait with "
              f"{WAIT_ENV}=<seconds>, or set MEMREPRO_TRACKING=off to train without "
              "mirroring to MLflow.")


def is_server_uri(uri: str) -> bool:
    """An MLflow tracking server (http/https), as opposed to a store opened in-process."""
    return uri.lower().startswith(("http://", "https://"))


def default_wait_s() -> float:
    """$MEMREPRO_TRACKING_WAIT_S, else 120 s."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise TrackingError(f"{WAIT_ENV}={text!r} is not a number of seconds >= 0")
    return value


def set_http_client_defaults() -> dict[str, str]:
    """Set MLflow's HTTP retry/timeout variables where the user has not; returns those set."""
    applied = {}
    for key, value in HTTP_CLIENT_DEFAULTS.items():
        if not os.environ.get(key):
            os.environ[key] = value
            applied[key] = value
    return applied


def brief_error(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters (MLflow's are long)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Tracker:
    """A thin wrapper over `MlflowClient` with get-or-create semantics.

    For a tracking server (http/https) the constructor waits up to `wait_s` seconds (default
    $MEMREPRO_TRACKING_WAIT_S, else 120) for `GET {uri}/health` to answer, and raises
    `TrackingError` if it never does: a cell never starts training without its mirror.
    """

    def __init__(self, uri: str, artifact_root: Path | None = None,
                 wait_s: float | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.artifact_root = artifact_root
        self.remote = is_server_uri(uri)
        self._logged: dict[str, dict[str, set[int]]] = {}  # run -> metric -> steps in the run
        self.wait_s = default_wait_s() if wait_s is None else max(0.0, float(wait_s))
        if self.remote:
            set_http_client_defaults()
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 - any store failure is reported the same way
            raise TrackingError(f"cannot open the MLflow store {uri}: {e}") from e
        if self.remote:
            self.wait_for_server()

    # --------------------------------------------------------------- reachability

    def healthy(self, timeout: float = PROBE_TIMEOUT_S) -> bool:
        """One probe of the server (`GET {uri}/health`); always True for an in-process store.

        Any HTTP answer below 500 counts as reachable (a 401/403/404 comes from the server or
        its proxy, and MLflow's own calls will report what is wrong); a 5xx (a proxy whose
        backend is down), a refused connection or a timeout do not.
        """
        if not self.remote:
            return True
        url = self.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=max(0.1, timeout)) as response:
                return response.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except Exception:  # noqa: BLE001 - URLError, timeout, reset: all mean "not reachable"
            return False

    def unreachable_message(self, waited_s: float) -> str:
        return (f"the MLflow tracking server at {self.uri} is unreachable after "
                f"{waited_s:.0f} s")

    def wait_for_server(self, wait_s: float | None = None, purpose: str = "") -> float:
        """Block until the server answers or `wait_s` (default: the tracker's) has passed.

        Returns the seconds waited; raises `TrackingError` if the server never answered.
        Prints a line to stderr about every 10 s while waiting. No-op for in-process stores.
        """
        if not self.remote:
            return 0.0
        wait_s = self.wait_s if wait_s is None else max(0.0, wait_s)
        start = time.monotonic()
        deadline = start + wait_s
        next_line = start + WAIT_PROGRESS_EVERY_S
        first = True
        while True:
            now = time.monotonic()
            if self.healthy(min(PROBE_TIMEOUT_S, max(deadline - now, 0.1))):
                if not first:
                    _log(f"tracking: the MLflow server at {self.uri} answers again "
                         f"(after {time.monotonic() - start:.0f} s)")
                return time.monotonic() - start
            now = time.monotonic()
            if first:
                _log(f"tracking: the MLflow server at {self.uri} does not answer; waiting up "
                     f"to {wait_s:.0f} s for it{purpose} ({WAIT_ENV})")
                first = False
            if now >= deadline:
                raise TrackingError(f"{self.unreachable_message(now - start)}. {HOW_TO_FIX}")
            if now >= next_line:
                _log(f"tracking: still waiting for {self.uri} ({now - start:.0f} s of "
                     f"{wait_s:.0f} s)")
                next_line += WAIT_PROGRESS_EVERY_S
            time.sleep(min(PROBE_EVERY_S, max(deadline - now, 0.0)))

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, waiting for the server and trying again when it fails.

        A failure while the server does not answer waits for it (up to `wait_s` in all), then
        tries again; a failure while it answers (or of an in-process store, e.g. a locked
        sqlite file) is tried once more, then raised as `TrackingError`: it is not an outage.
        """
        start = time.monotonic()
        deadline = start + self.wait_s
        failures_while_up = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - MlflowException, requests errors, ...
                err = e
            summary = brief_error(err)
            if self.healthy():  # always, for an in-process store
                failures_while_up += 1
                if failures_while_up >= 2:
                    raise TrackingError(f"MLflow ({self.uri}) failed to {what}: {summary}") from err
                _log(f"tracking: could not {what} ({summary}); trying again")
                continue
            _log(f"tracking: could not {what}: the server at {self.uri} does not answer")
            try:
                self.wait_for_server(max(0.0, deadline - time.monotonic()), f" to {what}")
            except TrackingError:
                raise TrackingError(
                    f"{self.unreachable_message(time.monotonic() - start)} (trying to {what}). "
                    f"{HOW_TO_FIX}") from None

    # --------------------------------------------------------------- experiments

    def experiment_id(self, study: str) -> str:
        """Get or create the study's experiment (safe when two processes race), tagged as a
        model-training experiment (an experiment of an older store gets the tag here)."""
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                               EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.artifact_root is not None and _is_local_store(self.uri):
            location = (self.artifact_root / study).resolve().as_uri()
        try:
            return self.client.create_experiment(
                study, artifact_location=location,
                tags={"memrepro.study": study, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(study)
            if exp is None:
                raise
            return exp.experiment_id

    # --------------------------------------------------------------- runs

    def cell_runs(self, experiment_id: str, cell_id: str, config_hash: str | None = None
                  ) -> list[Any]:
        """The runs of a cell (of one config, if given) not superseded, newest first."""
        flt = f"tags.cell_id = '{cell_id}'"
        if config_hash:
            flt += f" and tags.config_hash = '{config_hash}'"
        runs = self.client.search_runs([experiment_id], filter_string=flt, max_results=1000,
                                       order_by=["attributes.start_time DESC"])
        return [r for r in runs if SUPERSEDED_TAG not in r.data.tags]

    def find_run(self, experiment_id: str, cell_id: str, config_hash: str | None = None
                 ) -> str | None:
        """The current run of a cell for one config: a changed config is a new run (the old
        one stays, with its own config_hash tag)."""
        runs = self.cell_runs(experiment_id, cell_id, config_hash)
        return runs[0].info.run_id if runs else None

    def start_cell(self, study: str, cell_id: str, tags: dict[str, str],
                   params: dict[str, Any], resume_run: str | None = None) -> tuple[str, str]:
        """The run of a cell, marked RUNNING. Returns (experiment, run).

        `resume_run` is the run the cell's checkpoint names: a resume continues it. Otherwise
        the cell trains from its first epoch, and an earlier run of the same cell and config
        is reused only if it holds no metric (an attempt stopped before its first epoch
        ended); one that does (a finished cell trained again, a damaged checkpoint, other
        threads) is tagged `superseded_by` the new run: its epochs came from another training.
        """
        exp_id = self.experiment_id(study)
        runs = self.cell_runs(exp_id, cell_id, tags.get("config_hash"))
        name = run_name(cell_id)
        reuse = next((r for r in runs if r.info.run_id == resume_run), None) if resume_run \
            else None
        if reuse is None:
            reuse = next((r for r in runs if not r.data.metrics), None)
        if reuse is None:
            run = self.client.create_run(
                exp_id, tags={"cell_id": cell_id, RUN_KIND_TAG: "cell", **tags}, run_name=name)
            run_id = run.info.run_id
            self._logged[run_id] = {}
        else:
            run_id = reuse.info.run_id
            self.client.update_run(run_id, status="RUNNING", name=name)
            self.set_tags(run_id, {RUN_KIND_TAG: "cell", **tags})
            keys = reuse.data.metrics
            self._logged[run_id] = {
                k: {m.step for m in self.client.get_metric_history(run_id, k)} for k in keys}
        for old in runs:
            if old.info.run_id == run_id:
                continue
            self.set_tags(old.info.run_id, {SUPERSEDED_TAG: run_id})
            if old.info.status == "RUNNING":
                self.client.set_terminated(old.info.run_id, "KILLED")
            _log(f"tracking: cell {cell_id} trains again from its first epoch; its earlier run "
                 f"{old.info.run_id} is tagged {SUPERSEDED_TAG}={run_id}")
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
        logged = self._logged.setdefault(run_id, {})  # steps this process knows are in the run
        if skip_logged and history:
            keys = {k for entry in history for k, v in entry.items() if _is_number(v)}
            for key in keys:
                logged.setdefault(key, set()).update(
                    m.step for m in self.client.get_metric_history(run_id, key))
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now_ms, int(entry["epoch"]))
            for entry in history
            for key, value in entry.items()
            if key != "epoch" and _is_number(value)
            and int(entry["epoch"]) not in logged.get(key, set())
        ]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[i : i + MAX_METRICS_PER_BATCH]
            self.client.log_batch(run_id, metrics=batch)
            for m in batch:
                logged.setdefault(m.key, set()).add(m.step)

    def log_dataset(self, run_id: str, dataset: Any, context: str = "training") -> None:
        """Name the run's dataset (an `mlflow.data` dataset, see `prepared_dataset`): the UI's
        Dataset column. Logging the same dataset again is a no-op in MLflow."""
        import random

        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(dataset._to_mlflow_entity(),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        # The cells of a study start together and share a dataset: MLflow inserts it once per
        # experiment (primary key experiment, name, digest), and the cells that lose that race
        # get an integrity error. Trying again finds the row the winner wrote.
        for attempt in range(DATASET_RACE_TRIES):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except Exception:  # an IntegrityError arrives wrapped by the store
                if attempt == DATASET_RACE_TRIES - 1:
                    raise
                time.sleep(random.uniform(0.1, 0.5))

    def log_result(self, run_id: str, result: dict[str, Any]) -> None:
        """Log what a finished result adds to its epochs (see `after_training_metrics`), so
        that each metric's latest value in the run is the result's; non-numeric final values
        become tags `final.<key>`. Safe to repeat: a value already latest is not logged again.
        """
        from mlflow.entities import Metric

        latest = self.client.get_run(run_id).data.metrics
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, value, now_ms, step)
                   for key, (step, value) in after_training_metrics(result).items()
                   if not _same(latest.get(key), value)]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
        texts = {f"final.{k}": (v if isinstance(v, str) else _json_text(v))[:MAX_TAG_VALUE]
                 for k, v in (result.get("final") or {}).items()
                 if v is not None and not _is_number(v)}
        if texts:
            self.set_tags(run_id, texts)

    def finish(self, run_id: str, status: str, files: Iterable[Path]) -> None:
        """Attach the result files and close the run (FINISHED, or FAILED for a failed cell)."""
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(run_id, str(path))
        self.set_tags(run_id, {"status": status})
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _same(logged: float | None, value: float | None) -> bool:
    """Equal as MLflow stores them: doubles compare exactly (sqlite REAL, PostgreSQL double,
    JSON floats all round-trip); a non-finite logged value matches a null in result.json
    (which stores NaN/inf as null)."""
    if logged is None:
        return value is None
    if not math.isfinite(logged) or abs(logged) >= 1.7e308:  # MLflow stores +-inf as +-max
        return value is None
    return value is not None and math.isclose(logged, value, rel_tol=1e-12, abs_tol=0.0)


# ----------------------------------------------------------------------------- what a run holds


def run_name(cell_id: str) -> str:
    """`study/method/model/dataset/budget/s0` -> `method · model · budget · s0` (the study is
    the experiment, the dataset the Dataset column; the full id is the `cell_id` tag)."""
    parts = cell_id.split("/")
    if len(parts) != 6:
        return cell_id
    return " · ".join([parts[1], parts[2], parts[4], parts[5]])


def source_tags(provenance: dict[str, Any]) -> dict[str, str]:
    """MLflow's source tags (the UI's Source and Version columns) from a result's provenance,
    plus where the cell ran (threads and device make a CPU result, see `bench.train`)."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    tags = {MLFLOW_SOURCE_NAME: "bench/train.py", MLFLOW_SOURCE_TYPE: "LOCAL"}
    if provenance.get("git_sha"):
        tags[MLFLOW_GIT_COMMIT] = str(provenance["git_sha"])
    if provenance.get("git_dirty") is not None:
        tags["git_dirty"] = str(bool(provenance["git_dirty"])).lower()
    for key in ("threads", "device", "device_name", "host"):
        if provenance.get(key) is not None:
            tags[key] = str(provenance[key])
    return tags


def data_digest(splits: Any) -> str:
    """sha256 (first 16 hex digits) of the prepared data a cell trains and evaluates on: the
    uint8 train/val images and int64 labels after resizing and subsetting (`DatasetSplits`),
    with their shapes and dtypes. Two cells share a digest exactly when they saw the same data.
    """
    import hashlib

    h = hashlib.sha256()
    for name in ("train_x", "train_y", "val_x", "val_y"):
        t = getattr(splits, name).detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:DIGEST_HEX]


def prepared_dataset(name: str, splits: Any, data_root: str | Path) -> Any:
    """An `mlflow.data` dataset for a cell's prepared data: its name, `data_digest`, its
    source (the local data root it was read from) and a profile (split sizes, image shape,
    classes)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    profile = {"train_images": int(splits.train_x.shape[0]),
               "val_images": int(splits.val_x.shape[0]),
               "image_shape": list(splits.train_x.shape[1:]),
               "num_classes": int(splits.num_classes)}

    class PreparedDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, Any]:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": _json_text(profile)}

    return PreparedDataset(local(str(Path(data_root).resolve())), name=name,
                           digest=data_digest(splits))


def final_step(history: list[dict[str, Any]]) -> int:
    """The step of values that belong to the end of training: one past the last epoch."""
    steps = [int(e["epoch"]) for e in history if isinstance(e.get("epoch"), int)]
    return max(steps) + 1 if steps else 0


def after_training_metrics(result: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """The metrics a result adds to its per-epoch curves: key -> (step, value).

    Every numeric value of `final` under its own name (`val_acc`, `acc_at_r0.5`,
    `param_reduction`, ...) and of `memory`/`compute`/`timing` as `<section>/<key>`, at
    `final_step`, unless the last number on the curve of that key is that value (then the
    latest value is already the result's and the chart gets no extra point).
    """
    history = result.get("history") or []
    curves = epoch_metrics(history)
    step = final_step(history)
    values: dict[str, Any] = dict((result.get("final") or {}).items())
    for section in SECTIONS:
        values.update({f"{section}/{k}": v for k, v in (result.get(section) or {}).items()})
    out = {}
    for key, value in values.items():
        if not _is_number(value) or not math.isfinite(value):
            continue
        # the latest value MLflow shows is the last one logged (null epochs log nothing)
        logged = [x for _, x in sorted(curves.get(key, {}).items()) if x is not None]
        if logged and _same(logged[-1], float(value)):
            continue
        out[key] = (step, float(value))
    return out


def epoch_metrics(history: list[dict[str, Any]]) -> dict[str, dict[int, float | None]]:
    """key -> epoch -> value of a result's history as logged (`log_epochs`): numbers, and
    None where result.json holds null (a NaN/inf the run may hold, or nothing at all)."""
    out: dict[str, dict[int, float | None]] = {}
    for entry in history:
        for key, value in entry.items():
            if key == "epoch" or not (value is None or _is_number(value)):
                continue
            out.setdefault(key, {})[int(entry["epoch"])] = (
                None if value is None else float(value))
    return out


def result_metrics(result: dict[str, Any]) -> dict[str, dict[int, float | None]]:
    """Everything the MLflow run of `result` holds: key -> step -> value (None: null in
    result.json, so absent or non-finite in the run). `bench.verify` compares with this."""
    out = epoch_metrics(result.get("history") or [])
    for key, (step, value) in after_training_metrics(result).items():
        out.setdefault(key, {})[step] = value
    return out


# ----------------------------------------------------------------------------- the report


def publish_report(uri: str, studies: dict[str, dict[str, Any]], report_dir: Path,
                   tables_dir: Callable[[str], Path] | None = None,
                   artifact_root: Path | None = None) -> dict[str, str]:
    """Give each study's experiment a summary run holding its report figures, its summary
    and claims tables and the report page, and an experiment description linking them.

    `studies` maps study name -> its config block (for the description); figures are
    `report_dir/figures/<study>_*.png`; `tables_dir(study)` is where its tables are. The
    summary run is found again by its tags (get-or-create), so a report rerun updates it.
    Call after the report is written (the report step). Returns {study: summary run id}.
    """
    tracker = Tracker(uri, artifact_root)
    report_dir = Path(report_dir)
    report = report_dir / "report.html"
    out = {}
    for study, block in studies.items():
        exp_id = tracker.experiment_id(study)
        flt = f"tags.{RUN_KIND_TAG} = 'study_summary'"
        found = tracker.client.search_runs([exp_id], filter_string=flt, max_results=1)
        if found:
            run_id = found[0].info.run_id
            tracker.client.update_run(run_id, status="RUNNING")
        else:
            run_id = tracker.client.create_run(
                exp_id, run_name=f"{study} · report", tags={RUN_KIND_TAG: "study_summary"}
            ).info.run_id
        figures = _study_files(report_dir / "figures", study, list(studies), ".png")
        for path in figures:
            tracker.client.log_artifact(run_id, str(path), "figures")
        tdir = tables_dir(study) if tables_dir else None
        for name in ("summary.csv", "claims.csv", "paired_tests.csv"):
            if tdir is not None and (tdir / name).is_file():
                tracker.client.log_artifact(run_id, str(tdir / name), "tables")
        if report.is_file():
            tracker.client.log_artifact(run_id, str(report), "report")
        run_url = f"#/experiments/{exp_id}/runs/{run_id}"
        lines = [f"**{study}**: {str(block.get('description') or '').strip()}", "",
                 (f"Report: `{report.resolve()}` (also in the [summary run]({run_url}), "
                  f"artifacts `report/report.html`; figures under `figures/`)."), "",
                 ("One run per cell, named `method · model · budget · s<seed>`; the full cell "
                  "id is the `cell_id` tag. Runs tagged `superseded_by` were trained again.")]
        note = "\n".join(lines)[:MAX_TAG_VALUE]
        tracker.set_tags(run_id, {NOTE_TAG: note})
        tracker.client.set_experiment_tag(exp_id, NOTE_TAG, note)
        tracker.client.set_terminated(run_id, "FINISHED")
        out[study] = run_id
    return out


def publish_study_reports(cfg: dict[str, Any], report_dir: Path) -> dict[str, str]:
    """`publish_report` for a checked config, for the report step to call after the report is
    written: `bench.cli.cmd_report`, after `build_report(...)`:

        from bench.tracking import publish_study_reports
        publish_study_reports(cfg, Path(args.out_dir))

    Does nothing with tracking off (config or MEMREPRO_TRACKING=off). The report is already
    complete and the result files are the source of truth, so an unreachable store prints one
    warning line and returns {} instead of failing the report (Snakemake would delete it).
    """
    from bench.config import tracking_uri

    if not cfg["tracking"]["enabled"] or os.environ.get("MEMREPRO_TRACKING", "on") == "off":
        return {}
    results = Path(cfg["results"])
    try:
        return publish_report(tracking_uri(cfg), cfg["studies"], Path(report_dir),
                              tables_dir=lambda study: results / study / "tables",
                              artifact_root=results / "mlartifacts")
    except Exception as e:  # noqa: BLE001 - TrackingError, MlflowException, OSError alike
        _log(f"warning: the report is written, but its MLflow summary runs are not "
             f"({brief_error(e)}); rerun the report step once the store answers")
        return {}


def _study_files(folder: Path, study: str, studies: list[str], suffix: str) -> list[Path]:
    """`folder/<study>_*<suffix>`, not those of another study whose name extends this one."""
    longer = [s for s in studies if s != study and s.startswith(f"{study}_")]
    return sorted(p for p in folder.glob(f"{study}_*{suffix}")
                  if not any(p.name.startswith(f"{s}_") for s in longer))


def init_store(uri: str, studies: Iterable[str], artifact_root: Path | None) -> dict[str, str]:
    """Create the store (schema migration) and one experiment per study, once, before the
    fan-out: MLflow's migration races when several processes open a brand-new sqlite file."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri, artifact_root)
    return {study: tracker.experiment_id(study) for study in studies}
