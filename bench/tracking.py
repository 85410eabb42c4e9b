"""The one place that talks to MLflow.

Result files are the source of truth; MLflow mirrors them for browsing. One experiment per
study (created before the fan-out, see `init_store`), one run per cell found again by its
`cell_id` tag (get-or-create), so resumes and retries never duplicate runs.

MLflow is imported lazily: planning and aggregation never need it.
"""

from __future__ import annotations

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

    def find_run(self, experiment_id: str, cell_id: str, config_hash: str | None = None
                 ) -> str | None:
        """The run of a cell for one config: a changed config is a new run (the old one stays,
        with its own config_hash tag), a resume or retry of the same config reuses it."""
        flt = f"tags.cell_id = '{cell_id}'"
        if config_hash:
            flt += f" and tags.config_hash = '{config_hash}'"
        runs = self.client.search_runs([experiment_id], filter_string=flt, max_results=2)
        return runs[0].info.run_id if runs else None

    def start_cell(self, study: str, cell_id: str, tags: dict[str, str],
                   params: dict[str, Any]) -> tuple[str, str]:
        """The run of a cell (reused if it exists), marked RUNNING. Returns (experiment, run).

        The steps a reused run already holds are remembered, so a cell that starts over (a
        damaged checkpoint) never logs an epoch twice."""
        exp_id = self.experiment_id(study)
        run_id = self.find_run(exp_id, cell_id, tags.get("config_hash"))
        if run_id is None:
            run = self.client.create_run(
                exp_id, tags={"cell_id": cell_id, **tags}, run_name=cell_id.split("/", 1)[1]
            )
            run_id = run.info.run_id
            self._logged[run_id] = {}
        else:
            self.client.update_run(run_id, status="RUNNING")
            keys = self.client.get_run(run_id).data.metrics
            self._logged[run_id] = {
                k: {m.step for m in self.client.get_metric_history(run_id, k)} for k in keys}
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
