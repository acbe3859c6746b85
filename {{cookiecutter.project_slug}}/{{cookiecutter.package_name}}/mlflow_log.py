"""MLflow (tracker=mlflow): each epoch's metrics, the config as parameters, and the run's
files (config, manifest, plots, best checkpoint) as artefacts at the end.

Where it goes, read from the environment variables MLflow itself honours:

    MLFLOW_TRACKING_URI     a server or database; unset: a SQLite store beside the run
                            folders, runs/mlflow.db, artefacts in runs/mlartifacts/
    MLFLOW_EXPERIMENT_NAME  the experiment (default: the package name)

See the runs with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`. The MLflow run's
id is kept in every checkpoint: a resumed run goes on logging into the same MLflow run.
"""

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from .trackers import flat_config, link_artefacts

PACKAGE = __name__.rsplit(".", 1)[0]
logger = logging.getLogger(PACKAGE)
# Silenced while MLflow works (see trackers.quiet): each logs a whole traceback of an error
# that the project says in one line.
LIBRARY_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3")
# MLflow refuses more in one call (its log_batch limit) and longer parameter values.
PARAMS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000


def tracking_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite store beside the run folders (an absolute path:
    the store is the same whichever folder training starts in)."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    return given or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"


def open_tracker(
    run_dir: Path,
    model: nn.Module,
    val_loader,
    device: torch.device,
    resumed: bool,
    saved: dict | None = None,
) -> "MLflowRun":
    """The MLflow run of the checkpoint resumed from (or of a start of this run folder killed
    before its first checkpoint), or a new one with the config logged."""
    uri = tracking_uri(run_dir)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = experiment_of(client, run_dir)
    run_id = (saved or {}).get("run_id") or killed_run_of(client, experiment_id, run_dir)
    if run_id and run_exists(client, run_id, uri):
        client.update_run(run_id, status="RUNNING")
        logger.info("MLflow: continuing run %s in %s", run_id, uri)
        return MLflowRun(client, run_id, run_dir)
    run = client.create_run(
        experiment_id, run_name=run_dir.name, tags={"run_folder": str(run_dir.resolve())}
    )
    log_config(client, run.info.run_id, run_dir)
    logger.info("MLflow: run %s in %s", run.info.run_id, uri)
    return MLflowRun(client, run.info.run_id, run_dir)


def killed_run_of(client: MlflowClient, experiment_id: str, run_dir: Path) -> str | None:
    """The MLflow run of `run_dir` that is still marked running: a start killed before the
    folder had a checkpoint, which the start now beginning in it takes over."""
    folder = str(run_dir.resolve())
    if "'" in folder:  # not expressible in MLflow's filter syntax
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.run_folder = '{folder}' and attributes.status = 'RUNNING'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def run_exists(client: MlflowClient, run_id: str, uri: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        logger.warning(
            "MLflow: the run %s of the checkpoint is not in %s (another MLFLOW_TRACKING_URI?); "
            "starting a new MLflow run",
            run_id,
            uri,
        )
        return False
    return True


def experiment_of(client: MlflowClient, run_dir: Path) -> str:
    """The id of MLFLOW_EXPERIMENT_NAME (default: the package name), made if new; in the
    default store its artefacts go beside it, not into the folder training starts in."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PACKAGE
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    default_store = not os.environ.get("MLFLOW_TRACKING_URI")
    artefacts = (run_dir.parent / "mlartifacts").resolve().as_uri() if default_store else None
    return client.create_experiment(name, artifact_location=artefacts)


def log_config(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """config.yaml's settings as the run's parameters ("optim.lr", ...)."""
    params = [
        Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flat_config(run_dir).items()
    ]
    for start in range(0, len(params), PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[start : start + PARAMS_PER_CALL])


class MLflowRun:
    """Writes each metrics.csv row as metrics at its optimizer step."""

    def __init__(self, client: MlflowClient, run_id: str, run_dir: Path) -> None:
        self.client, self.run_id, self.run_dir = client, run_id, run_dir

    def write(self, row: dict) -> None:
        now = int(time.time() * 1000)
        step = int(row["step"])
        metrics = [Metric(key, float(value), now, step) for key, value in row.items()]
        self.client.log_batch(self.run_id, metrics=[m for m in metrics if m.key != "step"])

    def logged_steps(self) -> set[int]:
        """The steps of the rows this run holds (every row logs "epoch")."""
        return {metric.step for metric in self.client.get_metric_history(self.run_id, "epoch")}

    def state(self) -> dict:
        return {"run_id": self.run_id}

    def close(self) -> None:
        """Upload the run's files, then mark the MLflow run finished."""
        with tempfile.TemporaryDirectory(dir=self.run_dir, prefix=".mlflow-upload-") as folder:
            if link_artefacts(self.run_dir, Path(folder)):
                self.client.log_artifacts(self.run_id, folder)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def end_failed(self) -> None:
        """Mark the MLflow run failed (MLflow failed during training)."""
        self.client.set_terminated(self.run_id, status="FAILED")
