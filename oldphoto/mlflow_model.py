"""The restorer as an MLflow pyfunc model, so that a registered version can be served or loaded by
MLflow's own tools; oldphoto itself loads the bundle file inside it (oldphoto.models)."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class RestorerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from oldphoto.model.engine import Restorer
        from oldphoto.models import load_restorer

        self.restorer = Restorer(load_restorer(context.artifacts["bundle"]))

    # Annotated with a type MLflow infers no signature from: without a hint it prints advice to add one.
    def predict(self, context, model_input: np.ndarray, params=None):
        """A uint8 image (H x W x 3 or H x W) or a list of them -> the restored images."""
        images = model_input if isinstance(model_input, list) else [model_input]
        restored = [self.restorer.restore(np.asarray(image, np.uint8))[0] for image in images]
        return restored if isinstance(model_input, list) else restored[0]
