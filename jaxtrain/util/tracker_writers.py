"""Experiment-tracker writers: MLflow and Weights & Biases, one interface.

`start(params)` opens the tracker's run; `where()` says where it went (for the console);
`metrics(values, step)`, `summary(values)` and
`files(paths)` log to it; `close(ok)` ends it. Each tracker is an optional extra
(`pip install 'jaxtrain[mlflow]'`, `'jaxtrain[wandb]'`). The tracker hook
(training/hooks/trackers.py) calls these from a background thread.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any


class MlflowWriter:
    """MLflow through `MlflowClient` at MLFLOW_TRACKING_URI, else MLflow's own default,
    `sqlite:///mlflow.db` in the working directory, which MLflow's CLI and UI open with no
    settings (`mlflow ui` there). The experiment is MLFLOW_EXPERIMENT_NAME, else the config's name."""

    name = "mlflow"

    def __init__(self, experiment: str, run_name: str):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith("file:") or uri.startswith("/"):
            # MLflow 3 refuses its file store unless told: a file: URI is that request.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow
        from mlflow.entities import Metric, Param
        for name in ("mlflow.store.db.utils", "alembic"):  # the store's set-up chatter on first use
            logging.getLogger(name).setLevel(logging.WARNING)
        self._metric, self._param = Metric, Param
        self.uri = mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.uri)
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment)
        self.run_name = run_name
        self.run_id: str | None = None

    def start(self, params: dict[str, Any]) -> None:
        found = self.client.get_experiment_by_name(self.experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
        items = [self._param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def where(self) -> str:
        """Where the run went, for the console."""
        return f"mlflow: run {self.run_id} in experiment '{self.experiment}' at {self.uri}"

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, float(v), now, step)
                                                    for k, v in values.items()])

    def summary(self, values: dict[str, float]) -> None:
        # Under summary/: train/loss and friends are already the per-epoch series.
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(f"summary/{k}", float(v), now, 0)
                                                    for k, v in values.items()])

    def files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "report" if path.suffix == ".png" else None)

    def close(self, ok: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbWriter:
    """W&B through `wandb.init`, which honours WANDB_MODE (offline works without network),
    WANDB_PROJECT (else the config's name) and the rest of W&B's environment. Files go to
    WORKDIR/wandb/."""

    name = "wandb"

    def __init__(self, project: str, run_name: str, workdir: Path):
        import wandb
        self.wandb = wandb
        self.project, self.run_name, self.workdir = project, run_name, Path(workdir)
        self.run = None

    def start(self, params: dict[str, Any]) -> None:
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", self.project), name=self.run_name,
                                   dir=str(self.workdir), config=params)

    def where(self) -> str:
        return f"wandb: run {self.run.path} (files in {self.run.dir})"

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def files(self, paths: list[Path]) -> None:
        images = {f"report/{p.stem}": self.wandb.Image(str(p)) for p in paths if p.suffix == ".png"}
        if images:
            self.run.log(images, commit=True)
        for p in paths:
            if p.suffix != ".png":
                self.run.save(str(p), base_path=str(p.parent), policy="now")

    def close(self, ok: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
