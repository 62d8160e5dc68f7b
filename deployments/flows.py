"""Deployment entrypoints: the flows with the Dask task runner that the settings in the worker's
environment ask for (OLDPHOTO_DASK_ADDRESS: an existing scheduler; unset: a local cluster), as the
CLI runs them. prefect.yaml points here."""

from oldphoto.flows.evaluate import evaluate as _evaluate
from oldphoto.flows.restore import restore_archive as _restore_archive
from oldphoto.flows.retrain import retrain as _retrain
from oldphoto.flows.runner import task_runner
from oldphoto.flows.synth import synthesize as _synthesize
from oldphoto.flows.train import train

restore_archive = _restore_archive.with_options(
    task_runner=task_runner(preload=("oldphoto.tasks.restore", "oldphoto.model.engine")))
synthesize = _synthesize.with_options(task_runner=task_runner(preload=("oldphoto.tasks.synth",)))
evaluate = _evaluate.with_options(task_runner=task_runner(preload=("oldphoto.tasks.evaluate", "oldphoto.model.engine")))
retrain = _retrain.with_options(task_runner=task_runner(preload=("oldphoto.tasks.evaluate", "oldphoto.model.engine")))

__all__ = ["restore_archive", "synthesize", "train", "evaluate", "retrain"]
