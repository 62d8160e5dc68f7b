"""MLflow conventions shared by the tasks that track runs."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment called name, created by whichever run needs it first."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another run created it meanwhile
        return client.get_experiment_by_name(name).experiment_id
